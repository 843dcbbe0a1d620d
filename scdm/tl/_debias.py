"""``scdm.tl.debias``: D3M on AnnData — which training cells make the classifier fail on its
worst (label, group) combination; the rule, split and scoring are :mod:`scdm.cleaning`'s."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .._anndata import get_codes, uns_safe
from .._checks import check_fraction
from .._seeding import CLEANING_PURPOSE, check_random_state, derived_seed
from .._settings import settings
from ..cleaning import (
    default_removal_sizes,
    group_accuracy_table,
    group_weights,
    recommend_removal,
    selection_half,
    top_influencers,
)
from ..ensemble import resolve_device
from ._attribution import attribution
from ._recorded import check_n_models, check_trained_label, one_view
from ._retrain import heldout_performance, retrain_without

logger = logging.getLogger("scdm")


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
    training = check_trained_label(adata, key, label_key)
    group_codes, group_names = get_codes(adata, group_key, "group_key")
    if len(group_names) < 2:
        raise ValueError(f"adata.obs[{group_key!r}] has a single value; debiasing needs at least "
                         "two groups to compare.")
    n_models, n_random = check_n_models(n_models), check_n_models(n_random)
    check_fraction("max_accuracy_loss", max_accuracy_loss, "[0, 1)")
    check_fraction("min_gain", min_gain, "[0, 1)")
    sizes = default_removal_sizes(adata.n_obs) if n_remove is None else sorted(
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
    members = {g: np.flatnonzero(names.to_numpy() == g) for g in kept_groups}
    selection = selection_half(names.to_numpy(), kept_groups, rng)

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
    # reported on the evaluation half: the cells that did not choose the removals
    table = group_accuracy_table(rows, held.accuracy(), {
        g: members[g][~selection[members[g]]] for g in kept_groups})
    recommended, reason = recommend_removal(table, n_random=n_random, min_gain=min_gain,
                                            max_accuracy_loss=max_accuracy_loss)

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
