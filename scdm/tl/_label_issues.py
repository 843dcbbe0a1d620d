"""``scdm.tl.label_issues``: mislabeled cells from held-out class probabilities, with datamodels
(``key="datamodels"``) or TRAK (``key="trak"``, or trained here when ``key=None``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from .._anndata import AUTO, get_labels, uns_safe
from .._settings import settings
from ..cleaning import (
    NEIGHBOURHOOD_SIZE,
    NEIGHBOURHOOD_WEIGHT,
    confident_labels,
    confident_thresholds,
    label_issue_scores,
    neighbourhood_probabilities,
    other_label_influence,
)
from ..ensemble import resolve_device
from ._attribution import attribution
from ._recorded import (
    RecordedTraining,
    check_n_models,
    check_trained_label,
    one_view,
    recorded_training,
)
from ._retrain import heldout_performance, stored_params

logger = logging.getLogger("scdm")

MIN_CLASS_SIZE = 4  # two cells in and two out of a balanced mask at alpha = 0.5
# Models trained by label_issues itself: 60 epochs at lr 1e-2, not train_models' 20 at 1e-3,
# which underfit small data. Measured (200 checkpoints): on three separable planted types
# without flips, held-out accuracy 0.81-0.85 -> 0.95-0.98 and false flags 1-3 of 120 -> 0;
# with 8 % flips AUROC 0.89 -> 0.98; on pbmc68k_reduced with 8 % confusable flips held-out
# accuracy 0.54 -> 0.71, AUROC 0.856 -> 0.861, precision of the flag 0.15 -> 0.24.
# Subgroup discovery keeps its own defaults.
LABEL_ISSUE_TRAIN = {"epochs": 60, "lr": 1e-2}


def check_classes(adata: AnnData, label_key: str) -> tuple[np.ndarray, list[str]]:
    y, classes = get_labels(adata, label_key)
    counts = np.bincount(y, minlength=len(classes))
    small = [f"{classes[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < MIN_CLASS_SIZE)]
    if small:
        raise ValueError(f"classes of {label_key!r} too small to train on: {', '.join(small)}; "
                         f"each needs at least {MIN_CLASS_SIZE} cells (merge or drop them).")
    return y, classes


def heldout_probabilities(training: RecordedTraining, n_models: int, device: str,
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
    use_rep: str | None = AUTO,
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
    y, classes = check_classes(adata, label_key)
    resolve_device(device)
    if key is not None:
        training = check_trained_label(adata, key, label_key)
    adata = adata.copy() if copy else adata
    progress = settings.progress(verbose)
    if key is None:
        from ._trak import trak

        key = f"{key_added}_trak"
        try:
            trak(adata, label_key, use_rep=use_rep, layer=layer, group_key=group_key,
                 n_models=check_n_models(n_models), random_state=random_state, device=device,
                 key_added=key, verbose=verbose,
                 train_kwds={**LABEL_ISSUE_TRAIN, **dict(train_kwds or {})})
        except MemoryError as refused:  # refused by its cost check, before any work
            raise MemoryError(
                f"{refused} For label issues, key= an earlier scdm.tl.trak result reuses its "
                f"checkpoints and features instead of training {n_models} more (at atlas "
                "scale: scdm.tl.trak(adata, label_key) then scdm.tl.label_issues(adata, "
                "label_key, key='trak')).") from None
        training = recorded_training(adata, key)

    accuracy, margin, held = heldout_performance(training.store)
    if (held == 0).any():
        raise ValueError(f"{int((held == 0).sum())} cells were never held out of the models of "
                         f"{key!r} (too few models); train more (n_models) before checking "
                         "labels.")
    probs = heldout_probabilities(training, n_probability_models, device, chunk_size, progress)
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
