"""``scdm.tl.label_issues``, ``scdm.tl.influence_removal``, ``scdm.tl.debias``: data cleaning
with attribution, for datamodels (``key="datamodels"``) and TRAK (``key="trak"``) alike."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from .._anndata import get_codes, get_labels, uns_safe
from .._checks import check_fraction
from .._seeding import CLEANING_PURPOSE, check_random_state, derived_seed
from .._settings import settings
from ..cleaning import (
    NEIGHBOURHOOD_SIZE,
    NEIGHBOURHOOD_WEIGHT,
    confident_labels,
    confident_thresholds,
    group_weights,
    label_issue_scores,
    neighbourhood_probabilities,
    other_label_influence,
    removal_effect,
    top_influencers,
)
from ..ensemble import resolve_device
from ._attribution import attribution
from ._recorded import RecordedTraining, check_n_models, one_view, recorded_training
from ._retrain import heldout_performance, retrain_without, stored_params

logger = logging.getLogger("scdm")

MIN_CLASS_SIZE = 4  # two cells in and two out of a balanced mask at alpha = 0.5
# Models trained by label_issues itself: 60 epochs at lr 1e-2, not train_models' 20 at 1e-3,
# which underfit small data. Measured (200 checkpoints): on three separable planted types
# without flips, held-out accuracy 0.81-0.85 -> 0.95-0.98 and false flags 1-3 of 120 -> 0;
# with 8 % flips AUROC 0.89 -> 0.98; on pbmc68k_reduced with 8 % confusable flips held-out
# accuracy 0.54 -> 0.71, AUROC 0.856 -> 0.861, precision of the flag 0.15 -> 0.24.
# Subgroup discovery keeps its own defaults.
LABEL_ISSUE_TRAIN = {"epochs": 60, "lr": 1e-2}


def _check_trained_label(adata: AnnData, key: str, label_key: str) -> RecordedTraining:
    training = recorded_training(adata, key)
    trained = training.params["label_key"]
    if trained != label_key:
        raise ValueError(f"the models of adata.uns[{key!r}] predict {trained!r}, not "
                         f"{label_key!r}; pass label_key={trained!r}, or train on "
                         f"{label_key!r} first (scdm.tl.trak or scdm.tl.datamodels).")
    return training


def _check_classes(adata: AnnData, label_key: str) -> tuple[np.ndarray, list[str]]:
    y, classes = get_labels(adata, label_key)
    counts = np.bincount(y, minlength=len(classes))
    small = [f"{classes[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < MIN_CLASS_SIZE)]
    if small:
        raise ValueError(f"classes of {label_key!r} too small to train on: {', '.join(small)}; "
                         f"each needs at least {MIN_CLASS_SIZE} cells (merge or drop them).")
    return y, classes


def _heldout_probabilities(training: RecordedTraining, n_models: int, device: str,
                           chunk_size: int | None, progress: bool) -> np.ndarray:
    """Mean class probabilities of each cell over the first ``n_models`` stored models that did
    not train on it, from the models' parameters (kept in the store, or retrained from their
    seeds the first time: :func:`stored_params`)."""
    completed = training.store.completed_indices()[:n_models]
    trainer = training.trainer(int(training.params["random_state"]), device)
    chunk = int(chunk_size or trainer.auto_chunk_size())
    n, C = training.inputs.y.size, len(training.inputs.classes)
    total, count = np.zeros((n, C)), np.zeros(n)
    for start in tqdm(range(0, completed.size, chunk), desc="held-out class probabilities",
                      unit="chunk", disable=not progress):
        masks, params = stored_params(training, trainer, completed[start : start + chunk])
        logits = trainer.logits(params)
        if logits.ndim == 2:  # two classes: the logit difference (class 1 minus class 0)
            logits = torch.stack([torch.zeros_like(logits), logits], dim=-1)
        probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        out = ~masks
        total += np.einsum("kn,knc->nc", out.astype(np.float64), probs)
        count += out.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count[:, None]


@one_view
def label_issues(
    adata: AnnData,
    label_key: str,
    *,
    use_rep: str | None = None,
    layer: str | None = None,
    group_key: str | None = None,
    key: str | None = None,
    n_models: int = 200,
    train_kwds: Mapping | None = None,
    n_probability_models: int = 200,
    random_state: int = 0,
    device: str = "auto",
    chunk_size: int | None = None,
    key_added: str = "label_issue",
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Rank cells by how likely their annotation is wrong, flag the likely ones and suggest a
    label.

    Every model of an attribution store trained on a random half of the cells, so each cell
    was left out of about half of them. The score is the held-out probability margin: over
    ``n_probability_models`` of the models that never saw the cell, the mean probability of
    the most probable other class minus that of the given label
    (:func:`scdm.cleaning.label_issue_scores`), with the cell's held-out probabilities
    averaged half and half with those of its 15 nearest cells in the models' input
    representation (:func:`scdm.cleaning.neighbourhood_probabilities`: a mislabeled cell sits
    among cells of its true type). The cell's own margin (``_cell_score``) and the plain vote
    (the share of all held-out models not predicting the label) are reported beside it. The
    flag is confident learning (Northcutt et al. 2021) on the cells' own held-out class
    probabilities: a cell is flagged when another class reaches its per-class threshold (the
    mean probability of that class over the cells labelled with it), and that class is the
    suggestion (see :func:`scdm.cleaning.confident_labels`). Beside the score, the
    attribution's own evidence is reported: the cell's self-influence (how much training on
    it raises its own margin: memorised cells have large values) and the summed influence of
    cells of other labels (negative: they pull it away).
    On confusable label flips (``workflows/benchmarks/cleaning.py``, RESULTS.md) the score
    ranked mislabeled cells best of these, above cleanlab and kNN label disagreement.

    Parameters
    ----------
    adata
        Annotated data matrix.
    label_key
        Column of ``adata.obs`` with the annotation to check.
    use_rep, layer, group_key
        As in :func:`scdm.tl.train_models` (only when models are trained here). With
        ``group_key`` a donor's cells are held out together, so a cell is judged by models
        that saw none of its donor.
    key
        An existing result of :func:`scdm.tl.datamodels` or :func:`scdm.tl.trak` trained on
        ``label_key`` to reuse. Default: train ``n_models`` TRAK checkpoints under
        ``f"{key_added}_trak"``.
    n_models
        Checkpoints to train when ``key`` is None (each cell is held out of about half).
    train_kwds
        Training settings when ``key`` is None (see :func:`scdm.tl.trak`); default 60 epochs
        at ``lr=1e-2``: the vote is only as good as the models, and ``train_models``' defaults
        underfit small data (measured in the source). A reused ``key`` keeps its models;
        their mean held-out accuracy is recorded with the result.
    n_probability_models
        Stored models whose held-out class probabilities give the flag and the suggestion
        (their parameters are kept in the store after the first call, retrained from their
        seeds until then).
    random_state, device, chunk_size
        Seed of the training (when ``key`` is None); where and how many models at once.
    key_added
        Prefix of the results.
    verbose
        Progress bars (default ``scdm.settings.verbosity >= 1``).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy, with ``adata.obs[f"{key_added}_score"]`` (higher = more likely
    mislabeled), ``[key_added]`` (bool), ``[f"{key_added}_suggested"]`` (categorical, flagged
    cells only), ``[f"{key_added}_cell_score"]`` (the margin from the cell's own held-out
    probabilities), ``[f"{key_added}_vote"]`` (share of held-out models not predicting the label),
    ``[f"{key_added}_margin"]`` (mean held-out margin),
    ``[f"{key_added}_self_influence"]``, ``[f"{key_added}_other_influence"]``, and
    ``adata.uns[key_added]`` (``params``, ``rule``, counts per class and suggestion).
    """
    n_probability_models = check_n_models(n_probability_models)
    y, classes = _check_classes(adata, label_key)
    resolve_device(device)
    if key is not None:
        training = _check_trained_label(adata, key, label_key)
    adata = adata.copy() if copy else adata
    progress = settings.progress(verbose)
    if key is None:
        from ._trak import trak

        key = f"{key_added}_trak"
        trak(adata, label_key, use_rep=use_rep, layer=layer, group_key=group_key,
             n_models=check_n_models(n_models), random_state=random_state, device=device,
             key_added=key, verbose=verbose,
             train_kwds={**LABEL_ISSUE_TRAIN, **dict(train_kwds or {})})
        training = recorded_training(adata, key)

    accuracy, margin, held = heldout_performance(training.store)
    if (held == 0).any():
        raise ValueError(f"{int((held == 0).sum())} cells were never held out of the models of "
                         f"{key!r} (too few models); train more (n_models) before checking "
                         "labels.")
    probs = _heldout_probabilities(training, n_probability_models, device, chunk_size, progress)
    if np.isnan(probs).any():
        raise ValueError(f"{int(np.isnan(probs).any(1).sum())} cells were never held out of the "
                         f"first {n_probability_models} models; raise n_probability_models.")
    # neighbourhoods in the representation as the user gave it (as validate_subgroups' null)
    cell_score = label_issue_scores(probs, y)
    score = label_issue_scores(
        neighbourhood_probabilities(probs, training.unscaled_features(adata)), y)
    suggestion = confident_labels(probs, y)
    flagged = suggestion != y

    att = attribution(adata, key, device=device)
    onehot = np.eye(len(classes))[y]
    sums = att.class_sums(onehot)
    sums[np.arange(y.size), y] -= att.diagonal  # other cells only
    other = other_label_influence(sums, y)
    self_influence = np.asarray(adata.uns[key].get("self_influence", np.full(y.size, np.nan)),
                                dtype=np.float64)

    names = np.asarray(classes, dtype=object)
    thresholds = confident_thresholds(probs, y)
    suggested = pd.Categorical(np.where(flagged, names[suggestion], None), categories=classes)
    adata.obs[f"{key_added}_score"] = score.astype(np.float32)
    adata.obs[f"{key_added}_cell_score"] = cell_score.astype(np.float32)
    adata.obs[f"{key_added}_vote"] = (1.0 - accuracy).astype(np.float32)
    adata.obs[key_added] = flagged
    adata.obs[f"{key_added}_suggested"] = suggested
    adata.obs[f"{key_added}_margin"] = margin.astype(np.float32)
    adata.obs[f"{key_added}_self_influence"] = self_influence.astype(np.float32)
    adata.obs[f"{key_added}_other_influence"] = other.astype(np.float32)
    pairs = pd.crosstab(pd.Series(names[y][flagged], name="given"),
                        pd.Series(names[suggestion][flagged], name="suggested"))
    adata.uns[key_added] = uns_safe({
        "params": {"label_key": label_key, "key": key,
                   "n_probability_models": n_probability_models, "random_state": random_state,
                   "method": att.method},
        "rule": ("flagged when another class reaches its confident-learning threshold (the "
                 "mean held-out probability of that class over the cells labelled with it) in "
                 "the held-out probabilities of "
                 f"{min(n_probability_models, training.store.n_completed)} "
                 f"models; score: the held-out probability margin from the same probabilities, "
                 f"averaged with weight {NEIGHBOURHOOD_WEIGHT} over the {NEIGHBOURHOOD_SIZE} "
                 "nearest cells"),
        "thresholds": thresholds,
        "n_flagged": int(flagged.sum()),
        "mean_heldout_accuracy": float(np.mean(accuracy)),
        # lists, not a dict: class names such as "CD4+/CD25" are not valid h5ad keys
        "flagged_per_class": {"classes": list(classes),
                              "counts": np.bincount(y[flagged], minlength=len(classes))},
        "pairs": {"given": pairs.index.astype(str).tolist(),
                  "suggested": pairs.columns.astype(str).tolist(),
                  "counts": pairs.to_numpy()},
    })
    logger.info("label issues: %d of %d cells flagged (%s)", flagged.sum(), y.size,
                adata.uns[key_added]["rule"])
    return adata if copy else None


def target_indices(adata: AnnData, targets) -> np.ndarray:
    """Cells named by ``targets``: a boolean mask, obs names, or ``{obs column: value(s)}``."""
    if isinstance(targets, Mapping):
        keep = np.ones(adata.n_obs, dtype=bool)
        for column, values in targets.items():
            if column not in adata.obs:
                raise KeyError(f"targets: {column!r} is not a column of adata.obs.")
            values = [values] if isinstance(values, (str, int, float, bool)) else list(values)
            keep &= adata.obs[column].astype(str).isin([str(v) for v in values]).to_numpy()
        cells = np.flatnonzero(keep)
        if cells.size == 0:
            raise ValueError(f"targets {dict(targets)} select no cell.")
        return cells
    values = np.asarray(targets)
    if values.dtype == bool:
        if values.shape != (adata.n_obs,):
            raise ValueError(f"a boolean targets mask needs {adata.n_obs} entries, got "
                             f"{values.shape}.")
        cells = np.flatnonzero(values)
    else:
        index = adata.obs_names.get_indexer(values.astype(str).reshape(-1))
        if (index < 0).any():
            missing = values.reshape(-1)[index < 0]
            raise KeyError(f"{missing.size} targets are not in adata.obs_names (e.g. "
                           f"{list(missing[:3])}); pass obs names, a boolean mask or "
                           "{column: value}.")
        cells = np.unique(index)
    if cells.size == 0:
        raise ValueError("targets select no cell.")
    return cells


@one_view
def influence_removal(
    adata: AnnData,
    *,
    key: str = "datamodels",
    targets,
    n_remove: int | None = None,
    direction: str = "positive",
    n_models: int = 100,
    n_random: int = 19,
    random_state: int = 0,
    device: str = "auto",
    chunk_size: int | None = None,
    key_added: str | None = None,
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | pd.DataFrame:
    """Remove a set of targets' most influential training cells, retrain, and compare with
    removing as many random cells: the counterfactual check of the attribution itself.

    The influence of training cell ``i`` on the targets is ``Σ_j τ(j, i)`` over the targets
    ``j``. The ``n_remove`` cells with the largest (``direction="positive"``: they support the
    targets' labels) or smallest (``"negative"``: they pull the targets away) influence, among
    cells that are not targets themselves, are removed; ``n_models`` models are trained with
    the recorded settings on fresh masks of the remaining cells, and as many after removing
    each of ``n_random`` random sets of the same size, and with nothing removed. All sets use
    the same model seeds, so their differences are not seed noise. Reported: the targets'
    held-out accuracy and mean margin in each case, the change against no removal, the change
    the attribution predicted, and a one-sided empirical p-value of the attribution's removal
    against the random ones (removing positive influencers should lower the targets' margin,
    negative ones raise it; the smallest p is ``1 / (n_random + 1)``).

    Use targets whose supporters lie around them: a few cells, a subgroup. With a whole class
    as targets the pool is the other classes only, and on pbmc68k_reduced the attribution's
    choice there did not beat random removal (RESULTS.md), while for 15 cells of a type it
    beat all 19 random removals in 5 of 6 cases.

    Parameters
    ----------
    adata
        After :func:`scdm.tl.datamodels` or :func:`scdm.tl.trak`.
    key
        Key of the attribution.
    targets
        A boolean mask, obs names, or ``{obs column: value(s)}`` (e.g. a class or a subgroup:
        ``{"datamodels_subgroup": "disease:1"}``).
    n_remove
        Cells to remove (default 5 % of the non-target cells).
    direction
        ``"positive"`` or ``"negative"``.
    n_models
        Models per removal set.
    n_random
        Random removal sets.
    random_state, device, chunk_size
        Seed of the masks and random sets; where and how many models at once.
    key_added
        Default ``f"{key}_removal"``.
    verbose, copy
        Progress bars; return a copy instead of writing into ``adata``.

    Returns
    -------
    The per-set table (or a copy of ``adata`` with ``copy``). Sets ``adata.uns[key_added]``
    (``table``, ``summary`` with effects, random mean/sd, z and p for accuracy and margin,
    ``predicted_margin_change``, ``params``) and ``adata.obs[f"{key_added}_removed"]``.
    """
    if direction not in ("positive", "negative"):
        raise ValueError(f"direction must be 'positive' or 'negative', got {direction!r}.")
    n_models, n_random = check_n_models(n_models), check_n_models(n_random)
    seed = check_random_state(random_state)
    resolve_device(device)
    training = recorded_training(adata, key)
    cells = target_indices(adata, targets)
    pool = np.setdiff1d(np.arange(adata.n_obs), cells)
    if n_remove is None:
        n_remove = max(1, round(0.05 * pool.size))
    n_remove = check_n_models(n_remove)
    if n_remove > pool.size // 2:
        raise ValueError(f"n_remove={n_remove} is more than half of the {pool.size} non-target "
                         f"cells it is drawn from (random sets must differ); lower it.")
    key_added = key_added or f"{key}_removal"

    att = attribution(adata, key, device=device)
    weights = np.zeros((adata.n_obs, 1))
    weights[cells] = 1.0 / cells.size
    influence = att.target_sums(weights)[:, 0]
    chosen = top_influencers(influence, pool, n_remove, direction)
    base = derived_seed(int(training.params["random_state"]), CLEANING_PURPOSE, seed)
    rng = np.random.default_rng(base)
    random_sets = [np.sort(rng.choice(pool, n_remove, replace=False)) for _ in range(n_random)]
    held = retrain_without(training, [np.array([], dtype=np.int64), chosen, *random_sets],
                           n_models, base, [base] * (n_random + 2), paired=True, device=device,
                           chunk_size=chunk_size, progress=settings.progress(verbose),
                           desc="retraining after removals")
    accuracy = held.accuracy()[:, cells].mean(1)
    margin = held.margin()[:, cells].mean(1)
    kinds = ["none", "attribution"] + ["random"] * n_random
    table = pd.DataFrame({"removal": kinds, "n_removed": [0] + [n_remove] * (n_random + 1),
                          "accuracy": accuracy, "margin": margin,
                          "accuracy_change": accuracy - accuracy[0],
                          "margin_change": margin - margin[0]})
    alpha = float(training.params["alpha"])
    # a linear attribution predicts the targets' mean margin to move by -α Σ_removed τ(j, i):
    # each removed cell was in a model's mask with probability α
    predicted = float(-alpha * influence[chosen].sum())
    summary = {f"{name}_{k}": v for name in ("accuracy", "margin")
               for k, v in removal_effect(float(table[f"{name}_change"].iloc[1]),
                                          table[f"{name}_change"].iloc[2:].to_numpy(),
                                          direction).items()}
    summary["predicted_margin_change"] = predicted
    adata = adata.copy() if copy else adata
    removed = np.zeros(adata.n_obs, dtype=bool)
    removed[chosen] = True
    adata.obs[f"{key_added}_removed"] = removed
    adata.uns[key_added] = uns_safe({
        "table": table, "summary": summary,
        "params": {"key": key, "n_targets": int(cells.size), "n_remove": n_remove,
                   "direction": direction, "n_models": n_models, "n_random": n_random,
                   "random_state": seed},
    })
    logger.info("removing the %d most %s influencers changed the targets' margin by %+.3f "
                "(random: %+.3f; p = %.3f)", n_remove, direction, summary["margin_effect"],
                summary["margin_random_mean"], summary["margin_p_value"])
    return adata if copy else table


def _default_removal_sizes(n_obs: int) -> list[int]:
    """1, 2, 5, 10 and 20 % of the cells (at least 1 each, distinct)."""
    return sorted({max(1, round(f * n_obs)) for f in (0.01, 0.02, 0.05, 0.1, 0.2)})


@one_view
def debias(
    adata: AnnData,
    label_key: str,
    group_key: str,
    *,
    key: str = "datamodels",
    n_remove: Sequence[int] | None = None,
    n_models: int = 100,
    n_random: int = 9,
    max_accuracy_loss: float = 0.01,
    min_gain: float = 0.02,
    min_group_size: int = 4,
    random_state: int = 0,
    device: str = "auto",
    chunk_size: int | None = None,
    key_added: str = "debias",
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | pd.DataFrame:
    """D3M: remove the training cells that make the classifier fail on its worst group.

    Groups are the (label, ``group_key``) combinations, e.g. disease × batch: a label that a
    batch predicts by accident is learnt from the majority combinations and fails on the
    minority ones. Each cell's held-out accuracy comes from the attribution store; cells are
    split at random, within each group, into a *selection* half, whose group accuracies weight
    each cell's influence into D3M's group alignment (Jain et al. 2024; see
    :func:`scdm.cleaning.group_weights`), and an *evaluation* half on which the result is
    reported, so the gain is not measured on the cells that chose the removals. For each size
    in ``n_remove`` the least aligned cells are removed, ``n_models`` models retrained on fresh
    masks, and worst-group and overall accuracy compared with ``n_random`` random removals of
    the same size and with no removal (same model seeds). The recommended removal is the size
    with the best worst-group accuracy among those that beat *every* random removal of that
    size (an empirical p ≤ 1 / (n_random + 1)), raise worst-group accuracy by at least
    ``min_gain`` over no removal, and lose at most ``max_accuracy_loss`` of overall accuracy;
    none when no size does. (On data without a shortcut, D3M removals beat all random ones in
    3 of 6 runs, for worst-group gains of 0.007-0.017 bought with 0.8 points of overall
    accuracy; with the shortcut the recommended gains were 0.04-0.10:
    ``workflows/benchmarks/cleaning.py``.)

    Parameters
    ----------
    adata
        After :func:`scdm.tl.datamodels` or :func:`scdm.tl.trak` on ``label_key``.
    label_key
        The label the models predict.
    group_key
        Column of ``adata.obs`` with the attribute to be robust to (batch, sex, site).
    key
        Key of the attribution.
    n_remove
        Removal sizes (default 1, 2, 5, 10 and 20 % of the cells).
    n_models
        Models per removal set.
    n_random
        Random removal sets per size; a recommended removal must beat all of them.
    max_accuracy_loss
        Largest drop of overall accuracy a recommended removal may cost.
    min_gain
        Smallest worst-group accuracy gain over no removal worth removing cells for.
    min_group_size
        Groups with fewer cells are left out of the worst-group accuracy (listed in ``uns``).
    random_state, device, chunk_size
        Seed of the split, masks and random sets; where and how many models at once.
    key_added
        Key of the results.
    verbose, copy
        Progress bars; return a copy instead of writing into ``adata``.

    Returns
    -------
    The per-step table (or a copy with ``copy``). Sets ``adata.obs[f"{key_added}_score"]``
    (group alignment; lowest removed first), ``[f"{key_added}_remove"]`` (the recommended
    set), and ``adata.uns[key_added]`` (``table``, ``groups``, ``recommended_n_remove``,
    ``reason``, ``params``).
    """
    training = _check_trained_label(adata, key, label_key)
    group_codes, group_names = get_codes(adata, group_key, "group_key")
    if len(group_names) < 2:
        raise ValueError(f"adata.obs[{group_key!r}] has a single value; debiasing needs at least "
                         "two groups to compare.")
    n_models, n_random = check_n_models(n_models), check_n_models(n_random)
    check_fraction("max_accuracy_loss", max_accuracy_loss, "[0, 1)")
    if not 0 <= min_gain < 1:
        raise ValueError(f"min_gain must lie in [0, 1), got {min_gain!r}.")
    sizes = _default_removal_sizes(adata.n_obs) if n_remove is None else sorted(
        {check_n_models(int(k)) for k in n_remove})
    if sizes[-1] > adata.n_obs // 2:
        raise ValueError(f"n_remove up to {sizes[-1]} is more than half of the {adata.n_obs} "
                         "cells; lower it.")
    seed = check_random_state(random_state)
    resolve_device(device)

    labels = adata.obs[label_key].astype(str).to_numpy()
    names = pd.Series(labels + " | " + np.asarray(group_names, dtype=object)[group_codes])
    sizes_by_group = names.value_counts()
    kept_groups = sorted(g for g, c in sizes_by_group.items() if c >= min_group_size)
    if len(kept_groups) < 2:
        raise ValueError(f"fewer than two ({label_key}, {group_key}) groups have "
                         f"{min_group_size} cells; lower min_group_size or use a coarser "
                         "group_key.")
    base = derived_seed(int(training.params["random_state"]), CLEANING_PURPOSE, seed, 1)
    rng = np.random.default_rng(base)
    selection = np.zeros(adata.n_obs, dtype=bool)
    members = {g: np.flatnonzero(names.to_numpy() == g) for g in kept_groups}
    for cells in members.values():
        selection[rng.permutation(cells)[: cells.size // 2]] = True
    evaluation = ~selection & names.isin(kept_groups).to_numpy()

    accuracy, _, _ = heldout_performance(training.store)
    group_acc = np.array([accuracy[members[g][selection[members[g]]]].mean()
                          for g in kept_groups])
    weights = np.zeros((adata.n_obs, 1))
    for g, w in zip(kept_groups, group_weights(group_acc), strict=True):
        sel = members[g][selection[members[g]]]
        weights[sel, 0] = w / sel.size
    att = attribution(adata, key, device=device)
    alignment = att.target_sums(weights)[:, 0] - att.diagonal * weights[:, 0]
    pool = np.arange(adata.n_obs)

    removal_sets, rows = [np.array([], dtype=np.int64)], [("none", 0, 0)]
    d3m_sets = {k: top_influencers(alignment, pool, k, "negative") for k in sizes}
    for k in sizes:
        removal_sets.append(d3m_sets[k])
        rows.append(("d3m", k, 0))
        for r in range(n_random):
            removal_sets.append(np.sort(rng.choice(pool, k, replace=False)))
            rows.append(("random", k, r + 1))
    held = retrain_without(training, removal_sets, n_models, base,
                           [base] * len(removal_sets), paired=True, device=device,
                           chunk_size=chunk_size, progress=settings.progress(verbose),
                           desc="retraining after removals")
    cell_acc = held.accuracy()
    table = pd.DataFrame(rows, columns=["removal", "n_removed", "set"])
    for g in kept_groups:
        cells = members[g][evaluation[members[g]]]
        table[g] = np.nanmean(cell_acc[:, cells], axis=1)
    table["worst_group_accuracy"] = table[kept_groups].min(axis=1)
    table["worst_group"] = table[kept_groups].idxmin(axis=1)
    table["overall_accuracy"] = np.nanmean(cell_acc[:, evaluation], axis=1)

    baseline = table.iloc[0]
    steps = table[table["removal"] != "random"]
    random = table[table["removal"] == "random"].groupby("n_removed")[
        ["worst_group_accuracy", "overall_accuracy"]].agg(["mean", "std", "max"])
    recommended = 0
    reason = (f"no removal size beat all {n_random} random removals of its size and raised "
              f"worst-group accuracy by {min_gain} within {max_accuracy_loss:.0%} of overall "
              "accuracy")
    best = baseline["worst_group_accuracy"] + min_gain
    for _, row in steps.iloc[1:].iterrows():
        k = int(row["n_removed"])
        beats_random = row["worst_group_accuracy"] > random.loc[k, ("worst_group_accuracy",
                                                                    "max")]
        keeps_accuracy = row["overall_accuracy"] >= baseline["overall_accuracy"] - \
            max_accuracy_loss
        if beats_random and keeps_accuracy and row["worst_group_accuracy"] >= best:
            best, recommended = row["worst_group_accuracy"], k
            reason = (f"removing {k} cells raised worst-group accuracy from "
                      f"{baseline['worst_group_accuracy']:.3f} to {best:.3f} (random removals: "
                      f"{random.loc[k, ('worst_group_accuracy', 'mean')]:.3f} on average, "
                      f"{random.loc[k, ('worst_group_accuracy', 'max')]:.3f} at best) at overall "
                      f"accuracy {row['overall_accuracy']:.3f} (from "
                      f"{baseline['overall_accuracy']:.3f})")

    adata = adata.copy() if copy else adata
    remove = np.zeros(adata.n_obs, dtype=bool)
    if recommended:
        remove[d3m_sets[recommended]] = True
    adata.obs[f"{key_added}_score"] = alignment.astype(np.float32)
    adata.obs[f"{key_added}_remove"] = remove
    left_out = sorted(set(sizes_by_group.index) - set(kept_groups))
    # group names (e.g. "CD4+/CD25 | batch1") are not valid h5ad keys: their accuracies are
    # stored as a matrix beside the table
    adata.uns[key_added] = uns_safe({
        "table": table.drop(columns=kept_groups),
        "groups": {"names": kept_groups, "selection_accuracy": group_acc,
                   "accuracy": table[kept_groups].to_numpy(), "left_out": left_out},
        "recommended_n_remove": int(recommended),
        "reason": reason,
        "params": {"key": key, "label_key": label_key, "group_key": group_key,
                   "n_remove": sizes, "n_models": n_models, "n_random": n_random,
                   "max_accuracy_loss": float(max_accuracy_loss), "min_gain": float(min_gain),
                   "min_group_size": int(min_group_size), "random_state": seed},
    })
    if left_out:
        warnings.warn(f"groups with fewer than {min_group_size} cells are left out of the "
                      f"worst-group accuracy: {left_out}.", UserWarning, stacklevel=2)
    logger.info("debias: %s", reason)
    return adata if copy else table
