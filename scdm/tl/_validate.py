"""``scdm.tl.validate_subgroups`` and ``scdm.tl.signal_to_noise``: evidence by retraining."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.stats import false_discovery_control

from .._anndata import uns_safe
from .._seeding import VALIDATION_PURPOSE, check_random_state, derived_seed
from .._settings import settings
from ..ensemble import resolve_device
from ..evaluation import permutation_p_value
from ..get import UNASSIGNED
from ._recorded import RecordedTraining, check_n_models, one_view, recorded_training
from ._retrain import heldout_performance, retrain_without

NULL_SETS = ("cuts", "neighbourhood", "random")
# A cut is made along a random direction of a region's top CUT_AXES principal axes, weighted by
# their singular values, as a clustering cut runs. Measured (workflows/benchmarks/validation.py,
# RESULTS.md): along all axes (covariance-weighted directions) 4 of 24 k-means cuts of Gaussian
# null data still validated; along the top 3, none of 36 (Gaussian and Poisson), while 31 of 33
# true subtypes did.
CUT_AXES = 3

# Shared regions are the clusters of the other classes in the models' input, if they have any:
# k-means for k = 2..MAX_REGIONS, kept when its silhouette reaches REGION_SILHOUETTE. Measured
# (2026-12-02, the scenario suite's controls): batches reach 0.34-0.37 (3 batches, raw Gaussian
# features), 0.40-0.42 (their 50 PCs), 0.48 (4 batches, 50 PCs of Poisson counts), 0.29 with a
# gradient besides; structureless data stays below 0.03 (isotropic Gaussian, 50 and 80
# features; Poisson counts of one batch) for every k, and then there is one region.
REGION_SILHOUETTE = 0.25
MAX_REGIONS = 8
REGION_MIN_SIZE = 10  # other-class cells per region at least, so that a region is a cluster
REGION_SAMPLE = 2000  # cells the silhouette is measured on
REGION_FIT_MAX = 20_000  # other-class cells the regions are fitted on, at most


def shared_regions(X: np.ndarray, y: np.ndarray, cls: int, *, strata: np.ndarray | None = None,
                   random_state: int = 0) -> np.ndarray:
    """The region of every observation of class ``cls`` in the structure the classes share.

    A nuisance that every class carries (batch, donor, cycle) is structure of the other
    classes too; a subtype of ``cls`` is not. The regions are the recorded strata when the
    training named them (``stratify_key``), else the clusters of the other classes' rows of
    ``X`` (k-means, the k of the best silhouette if it reaches ``REGION_SILHOUETTE``), each
    observation of ``cls`` taking the region of most of its 15 nearest other-class rows.
    One region (all zeros) when the other classes have no clusters.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    from ..clustering import nearest_vote

    members = np.flatnonzero(y == cls)
    if strata is not None:
        return np.unique(strata[members], return_inverse=True)[1]
    other = np.flatnonzero(y != cls)
    if other.size > REGION_FIT_MAX:  # the regions of a large class from a random subsample
        rng = np.random.default_rng(random_state)
        other = np.sort(rng.choice(other, REGION_FIT_MAX, replace=False))
    best, best_score = None, REGION_SILHOUETTE
    for k in range(2, min(MAX_REGIONS, other.size // REGION_MIN_SIZE) + 1):
        codes = KMeans(k, n_init=4, random_state=random_state % 2**32).fit_predict(X[other])
        if np.bincount(codes).min() < REGION_MIN_SIZE:
            continue
        score = silhouette_score(X[other], codes, sample_size=min(REGION_SAMPLE, other.size),
                                 random_state=random_state % 2**32)
        if score > best_score:
            best, best_score = codes, score
    if best is None:
        return np.zeros(members.size, dtype=np.int64)
    return nearest_vote(X[other], best, X[members], 15)


def comparison_sets(X: np.ndarray | None, pool: np.ndarray, size: int, n_sets: int,
                    rng: np.random.Generator, null: str,
                    regions: np.ndarray | None = None,
                    subgroup: np.ndarray | None = None) -> list[np.ndarray]:
    """``n_sets`` sets of ``size`` observations of ``pool``.

    ``"random"``: uniform draws. Otherwise each set takes as many members of every region
    (``regions``: a code per member of ``pool``; one region if ``None``) as ``subgroup`` has
    there, and within a region the members nearest to a random member of it
    (``"neighbourhood"``, rows of ``X``) or the members furthest along a random direction of
    the region's top ``CUT_AXES`` principal axes (``"cuts"``).
    """
    if null == "random":
        return [np.sort(rng.choice(pool, size, replace=False)) for _ in range(n_sets)]
    from sklearn.neighbors import NearestNeighbors

    if X is None:
        raise ValueError(f"the {null} null needs the features the models train on.")
    if regions is None or subgroup is None:
        regions, counts = np.zeros(pool.size, dtype=np.int64), np.array([size])
    else:
        counts = np.bincount(regions[np.isin(pool, subgroup)],
                             minlength=int(regions.max()) + 1)
    parts = []
    for region in np.flatnonzero(counts):
        local, count = pool[regions == region], int(counts[region])
        if null == "cuts":
            centred = X[local] - X[local].mean(0)
            _, singular, axes = np.linalg.svd(centred, full_matrices=False)
            m = min(CUT_AXES, singular.size)
            directions = (rng.standard_normal((n_sets, m)) * singular[:m]) @ axes[:m]
            order = np.argsort(-(centred @ directions.T), axis=0, kind="stable")[:count]
            parts.append(local[order.T])
        else:
            index = NearestNeighbors(n_neighbors=count).fit(X[local])
            centres = rng.choice(local.size, n_sets, replace=n_sets > local.size)
            parts.append(local[index.kneighbors(X[local[centres]], return_distance=False)])
    return [np.sort(np.concatenate([part[s] for part in parts])) for s in range(n_sets)]


def _train_without(training: RecordedTraining, heldout_sets: Sequence[np.ndarray],
                   n_models: int, seed: int, device: str, chunk_size: int | None,
                   progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Train ``n_models`` per set on masks drawn from everything but the set; return the
    accuracy and mean margin of each set's models on the set's own observations."""
    held = retrain_without(
        training, heldout_sets, n_models, seed,
        [derived_seed(seed, VALIDATION_PURPOSE, s) for s in range(len(heldout_sets))],
        paired=False, device=device, chunk_size=chunk_size, progress=progress,
        desc="retraining without subsets")
    accuracy, margin = held.accuracy(), held.margin()
    return (np.array([accuracy[s, cells].mean() for s, cells in enumerate(heldout_sets)]),
            np.array([margin[s, cells].mean() for s, cells in enumerate(heldout_sets)]))


@one_view
def validate_subgroups(
    adata: AnnData,
    *,
    key: str = "datamodels",
    subgroup_key: str = "datamodels_subgroup",
    subgroups: Sequence[str] | None = None,
    null: str = "cuts",
    n_random: int = 99,
    n_models: int = 16,
    min_size: int = 5,
    device: str = "auto",
    chunk_size: int | None = None,
    random_state: int = 0,
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | pd.DataFrame:
    """Test each proposed subgroup by retraining without it, against equally coherent sets.

    A subgroup whose members share a biology that the classifier relies on loses that support
    when all of it is left out of training: its members are then predicted worse than when
    they were held out one model at a time. For each subgroup, ``n_models`` models are trained
    (with the recorded settings) on masks drawn from everything but the subgroup, and as many
    for each of ``n_random`` comparison sets of the same size and class; the drop in accuracy
    (and mean margin) of each set relative to the training models' held-out baseline gives an
    empirical one-sided p-value, and Benjamini-Hochberg q-values across the tested subgroups.

    The comparison sets matter. Any coherent region of feature space loses support when it is
    left out whole, so a subgroup compared with sets drawn uniformly from its class always
    "validates", even a cluster of structureless data (measured: every such cluster got the
    smallest p-value). The comparison sets are therefore as coherent as a cluster of the
    models' input (``use_rep``/``layer``, unscaled) can be, and spread like the subgroup over
    the structure the classes share:

    - *Regions* (:func:`shared_regions`): the recorded ``stratify_key``, else the clusters of
      the other classes, such as an unrecorded batch. Each comparison set takes as many cells
      of every region as the subgroup has there. Without that, a subtype spread over three
      batches was compared with sets inside one batch, which a model of batch-dominated input
      treats as a unit more than the subtype (measured on raw features with a batch: 0 of 15
      true subtypes validated; 15 of 15 with region-matched sets).
    - *Shape*: with ``null="cuts"`` (the default), within each region the cells furthest along
      a random direction of the region's top principal axes — the shape a clustering cut has.
      With ``null="neighbourhood"``, the cells nearest to a random cell of the region (the
      former default, then without regions). A cut through a cluster is left out with
      support on one side only, and loses more than a neighbourhood of its size: against
      neighbourhoods, 7 of 36 k-means clusters of structureless data validated (all cuts
      through a batch cluster of Gaussian data), against cuts none, while 31 of 33 true
      subtypes still did (``workflows/benchmarks/validation.py``).

    A subgroup that is itself a tight, isolated cluster of the input features cannot beat such
    sets (some of them are the same cells) and will not validate here; expression clustering
    already shows it. ``null="random"`` restores uniform sets (a weaker check). With many
    classes, the other classes' cell types are regions too, and a subtype whose cells sit
    nearest to different other types is compared within them: stricter.

    A small p-value says that the classifier treats the subgroup as a unit; whether that unit
    is biology is for its markers and known nuisances (``stratify_key``, donors) to tell.

    Leaving a set out also shrinks its class's share of each training set; the comparison
    sets pay the same, so the p-value is fair, but the absolute drops include it.

    Parameters
    ----------
    adata
        After :func:`scdm.tl.datamodels` and :func:`scdm.tl.subgroups`.
    key
        Key of the datamodels (for the recorded training settings and store).
    subgroup_key
        Column of ``adata.obs`` with the proposed subgroups (each within one class;
        ``"unassigned"`` is never tested).
    subgroups
        Subgroups to test (default: all).
    null
        ``"cuts"``, ``"neighbourhood"`` or ``"random"`` comparison sets (see above).
    n_random
        Comparison sets per subgroup; the smallest attainable p-value is
        ``1 / (n_random + 1)`` (0.01 by default, so that q ≤ 0.01 is reachable).
    n_models
        Models trained per held-out set.
    min_size
        Subgroups smaller than this, or larger than half their class (a comparison set
        would then largely be the subgroup), are reported as skipped.
    device, chunk_size
        Where to train and how many models at once.
    random_state
        Seed of the comparison sets and the retraining (independent of the training models).
    verbose
        Progress bar (default: ``scdm.settings.verbosity >= 1``).
    copy
        Return a copy of ``adata`` instead of writing into it.

    Returns
    -------
    The table (a DataFrame, one row per subgroup) if not ``copy``, else the annotated copy.
    Columns: ``class``, ``n_cells``, ``n_regions`` / ``regions_spanned`` (the class's shared
    regions and how many the subgroup has cells in; not with ``null="random"``), ``status``,
    baseline/held-out accuracy and margin, the drops and the comparison sets' mean drops,
    ``p_value`` / ``q_value`` (accuracy) and ``p_value_margin`` / ``q_value_margin``. Also sets
    ``adata.uns[subgroup_key]["validation"]`` with ``"table"``, ``"random"`` (the baseline
    margin and drops of every comparison set) and ``"params"``.
    """
    n_random = check_n_models(n_random)
    n_models = check_n_models(n_models)
    if null not in NULL_SETS:
        raise ValueError(f"null must be one of {NULL_SETS}, got {null!r}.")
    random_state = check_random_state(random_state)
    if subgroup_key not in adata.obs:
        raise KeyError(f"adata.obs has no column {subgroup_key!r}; run scdm.tl.subgroups first "
                       "or pass subgroup_key= (any categorical column of proposed subgroups).")
    training = recorded_training(adata, key)
    resolve_device(device)
    labels = adata.obs[subgroup_key].astype("category")
    names = [str(c) for c in labels.cat.categories if (labels == c).any() and c != UNASSIGNED]
    if subgroups is not None:
        unknown = sorted(set(map(str, subgroups)) - set(names))
        if unknown:
            raise ValueError(f"unknown subgroups {unknown}; {subgroup_key!r} has {names}.")
        names = [n for n in names if n in set(map(str, subgroups))]
    y, classes = training.inputs.y, training.inputs.classes
    values = labels.astype(str).to_numpy()
    seed = derived_seed(int(training.params["random_state"]), VALIDATION_PURPOSE, random_state)
    rng = np.random.default_rng(seed)
    # neighbourhoods in the representation as the user gave it (e.g. PCA, whose top axes
    # carry most of the variance), not standardised per feature as the models see it: a
    # cluster of that geometry is then as tight as the neighbourhoods it is compared with
    space = training.unscaled_features(adata) if null != "random" else None

    rows: list[dict] = []
    regions: dict[int, np.ndarray] = {}  # per class, of its members
    sets: list[np.ndarray] = []
    owners: list[tuple[int, int]] = []
    for name in names:
        cells = np.flatnonzero(values == name)
        cls = np.unique(y[cells])
        if cls.size > 1:
            raise ValueError(f"subgroup {name!r} spans the classes "
                             f"{[classes[c] for c in cls]}; validation compares a subgroup with "
                             "random sets of its own class, so each must lie within one class.")
        same_class = np.flatnonzero(y == cls[0])
        row = {"subgroup": name, "class": classes[cls[0]], "n_cells": cells.size}
        if space is not None:
            if cls[0] not in regions:
                regions[cls[0]] = shared_regions(space, y, cls[0], strata=training.inputs.strata,
                                                 random_state=random_state)
            row["n_regions"] = int(regions[cls[0]].max()) + 1
            row["regions_spanned"] = int(np.unique(
                regions[cls[0]][np.isin(same_class, cells)]).size)
        if cells.size < min_size or 2 * cells.size > same_class.size:
            row["status"] = (f"skipped: {cells.size} cells, outside [{min_size}, "
                             f"{same_class.size // 2}] (half its class)")
        else:
            row["status"] = "tested"
            sets.append(cells)
            owners.append((len(rows), 0))
            for k, other in enumerate(comparison_sets(space, same_class, cells.size, n_random,
                                                      rng, null, regions.get(cls[0]), cells)):
                sets.append(other)
                owners.append((len(rows), k + 1))
        rows.append(row)
    if not sets:
        raise ValueError(f"no subgroup of {subgroup_key!r} can be tested (sizes must lie in "
                         f"[min_size={min_size}, half the class]).")

    base_accuracy, base_margin, _ = heldout_performance(training.store)
    accuracy, margin = _train_without(training, sets, n_models, seed, device, chunk_size,
                                      settings.progress(verbose))
    acc_drop = np.array([base_accuracy[s].mean() for s in sets]) - accuracy
    margin_drop = np.array([base_margin[s].mean() for s in sets]) - margin

    random_rows = []
    for i, row in enumerate(rows):
        members = [j for j, (owner, _) in enumerate(owners) if owner == i]
        if not members:
            continue
        own, others = members[0], members[1:]
        row.update({
            "baseline_accuracy": float(base_accuracy[sets[own]].mean()),
            "heldout_accuracy": float(accuracy[own]),
            "accuracy_drop": float(acc_drop[own]),
            "random_accuracy_drop": float(acc_drop[others].mean()),
            "baseline_margin": float(base_margin[sets[own]].mean()),
            "heldout_margin": float(margin[own]),
            "margin_drop": float(margin_drop[own]),
            "random_margin_drop": float(margin_drop[others].mean()),
            "p_value": permutation_p_value(acc_drop[own], acc_drop[others]),
            "p_value_margin": permutation_p_value(margin_drop[own], margin_drop[others]),
        })
        random_rows += [{"subgroup": row["subgroup"], "set": k + 1,
                         "baseline_margin": float(base_margin[sets[j]].mean()),
                         "accuracy_drop": float(acc_drop[j]), "margin_drop": float(margin_drop[j])}
                        for k, j in enumerate(others)]
    table = pd.DataFrame(rows).set_index("subgroup")
    table.index = table.index.astype(str)
    tested = table["status"] == "tested"
    for p, q in (("p_value", "q_value"), ("p_value_margin", "q_value_margin")):
        table[q] = np.nan
        table.loc[tested, q] = false_discovery_control(table.loc[tested, p].to_numpy())
    random = pd.DataFrame(random_rows)

    adata = adata.copy() if copy else adata
    info = dict(adata.uns.get(subgroup_key, {}))
    info["validation"] = {
        "table": table,
        "random": random,
        "params": {"key": key, "null": null, "n_random": n_random, "n_models": n_models,
                   "min_size": min_size, "random_state": random_state},
    }
    adata.uns[subgroup_key] = uns_safe(info)
    return adata if copy else table
