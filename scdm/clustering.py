"""Subgroups of an embedding: kNN graphs, Leiden, and how many clusters the data support.

Array-level engine behind :func:`scdm.tl.subgroups`; it knows nothing of AnnData.

How many subgroups, including none, is decided by reproducibility and separation against a
null. The models are split into two disjoint halves and the datamodels of each half embedded
on their own, so the two embeddings share the signal and nothing of each other's noise. At
every resolution of a grid, both halves are clustered (kNN graph, Leiden), and two numbers are
measured: how well the two partitions agree (``reproducibility``, the adjusted Rand index; a
resolution at which neither half splits scores 0) and how far apart each half's clusters lie
in the *other* half's embedding (``separation``, the share of variance between them).

Noise alone does not reproduce, but a smooth, unclustered signal does, partly: two halves of a
continuum are cut in similar places (measured on planted data without subtypes: ARI up to
0.64), and a long Gaussian cloud cut across its long axis reproduces as well as two clusters
do. So the null is not "no signal" but "no clusters": pairs of halves with the same shared
(signal) and independent (noise) covariance as the observed halves, and the same spread of
distances from their centre, clustered the same way (:func:`null_factors`). A
resolution is accepted when the halves find the same number of clusters, their partitions agree
at least ``min_reproducibility`` and the clusters are more separated than in every null draw
(empirical p-value ``≤ alpha``), by at least ``MIN_MARGIN``. Among accepted resolutions the
most reproducible partition wins, ties (within 0.02) going to the one with more clusters
(merging true groups reproduces as well as keeping them apart). If none is accepted, the class
is one subgroup; it is *undecided* where the halves find the same clusters beyond the null but
agree under the bar (at least ``UNDECIDED_FLOOR``): more models may decide.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from scipy.linalg import orthogonal_procrustes
from sklearn.metrics import adjusted_rand_score

from ._checks import check_fraction

DEFAULT_RESOLUTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.4, 2.0)


EXACT_KNN_MAX = 100_000  # above this many points, neighbours come from a partitioned search


def knn_indices(rep: np.ndarray, n_neighbors: int, *, random_state: int = 0,
                exact: bool | None = None) -> np.ndarray:
    """Each point's ``n_neighbors`` nearest other points (``n × n_neighbors`` indices).

    Exact (scikit-learn) up to :data:`EXACT_KNN_MAX` points; above that the exact search is
    O(n²) (a million cells: hours on 2 cores) and :func:`partitioned_knn` is used instead.
    ``exact`` forces one or the other.
    """
    rep = np.asarray(rep)
    if exact is None:
        exact = rep.shape[0] <= EXACT_KNN_MAX
    if not exact:
        return partitioned_knn(rep, n_neighbors, random_state=random_state)
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(rep)
    return index.kneighbors(rep)[1][:, 1:]


def _sq_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    return (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.T) + b_sq[None, :]


def _nearest(points: torch.Tensor, centres: torch.Tensor, block: int = 65536) -> torch.Tensor:
    sq = (centres * centres).sum(1)
    return torch.cat([_sq_distances(points[i:i + block], centres, sq).argmin(1)
                      for i in range(0, points.shape[0], block)])


def partitioned_knn(rep: np.ndarray, n_neighbors: int, *, random_state: int = 0,
                    n_lists: int | None = None, n_probe: int = 20,
                    budget: int = 2**24) -> np.ndarray:
    """Approximate nearest neighbours by an inverted-file search, in O(n^1.5) rather than O(n²).

    k-means (on a seeded subsample, 10 Lloyd steps) cuts the points into ``n_lists`` ≈ √n
    lists; the points of each list are compared, exactly, with every point of the
    ``n_probe`` lists whose centres lie nearest to their own list's centre. A neighbour is
    missed only where it sits in none of those lists. Measured: ≥ 99.99 % of the exact
    neighbours of 100,000 points (20 Gaussian clusters, 50 dimensions of isotropic noise, the
    hard case); at 1,000,000 such points 71 %, the neighbours found lying 1 % farther on
    average than the exact ones (RESULTS.md). Deterministic for a ``random_state``
    (no approximate-search package is, across thread counts: pynndescent's graph changes with
    ``n_jobs``). Recall against the exact search is measured in the tests.

    Returns ``n × n_neighbors`` indices of other points, nearest first.
    """
    X = torch.as_tensor(np.ascontiguousarray(rep, dtype=np.float32))
    X = X - X.mean(0)  # the squared-norm expansion loses less to rounding near the origin
    n = X.shape[0]
    k = int(n_neighbors)
    if k >= n:
        raise ValueError(f"{k} neighbours asked of {n} points; ask for fewer than the points.")
    n_lists = int(n_lists or max(1, round(np.sqrt(n))))
    rng = np.random.default_rng(int(random_state))
    sample = X[torch.from_numpy(np.sort(rng.choice(n, min(n, 32 * n_lists), replace=False)))]
    centres = sample[torch.from_numpy(np.sort(rng.choice(sample.shape[0], n_lists,
                                                         replace=False)))].clone()
    for _ in range(10):
        owner = _nearest(sample, centres)
        sums = torch.zeros_like(centres).index_add_(0, owner, sample)
        counts = torch.bincount(owner, minlength=n_lists)
        filled = counts > 0  # an empty list keeps its centre
        centres[filled] = sums[filled] / counts[filled, None].to(sums.dtype)
    lists = _nearest(X, centres).numpy()
    order = np.argsort(lists, kind="stable")
    starts = np.searchsorted(lists[order], np.arange(n_lists + 1))
    members = [order[starts[c]:starts[c + 1]] for c in range(n_lists)]
    between = _sq_distances(centres, centres, (centres * centres).sum(1))
    between.fill_diagonal_(-np.inf)  # a list always searches itself, even beside a twin centre
    probe = torch.topk(-between, min(n_probe, n_lists), dim=1).indices.numpy()
    out = np.empty((n, k), dtype=np.int64)
    for c in range(n_lists):
        queries = members[c]
        if queries.size == 0:
            continue
        candidates = np.concatenate([members[p] for p in probe[c]])
        if candidates.size <= k:  # too few near lists: this list searches all points
            candidates = np.arange(n)
        cand = X[torch.from_numpy(candidates)]
        cand_sq = (cand * cand).sum(1)[None, :]
        sorter = np.argsort(candidates)
        self_at = sorter[np.searchsorted(candidates[sorter], queries)]  # where each query sits
        step = max(1, budget // candidates.size)
        for i in range(0, queries.size, step):
            q = queries[i:i + step]
            # ‖c‖² − 2 q·c ranks the candidates as the distance does (‖q‖² is the same for all)
            d = torch.addmm(cand_sq, X[torch.from_numpy(q)], cand.T, alpha=-2.0)
            d[torch.arange(q.size), torch.from_numpy(self_at[i:i + step])] = np.inf
            out[q] = candidates[torch.topk(d, k, dim=1, largest=False).indices.numpy()]
    return out


def knn_adjacency(rep: np.ndarray, n_neighbors: int, *, random_state: int = 0
                  ) -> sparse.csr_matrix:
    """Symmetric, unweighted kNN graph (an edge where either point lists the other), exact up
    to :data:`EXACT_KNN_MAX` points (:func:`knn_indices`).

    Unweighted on purpose: kernel weights need a per-point bandwidth, which is zero (and the
    weights undefined) where several targets share an identical embedding.
    """
    neighbors = knn_indices(rep, n_neighbors, random_state=random_state)
    n = neighbors.shape[0]
    rows = np.repeat(np.arange(n), neighbors.shape[1])
    graph = sparse.csr_matrix((np.ones(rows.size), (rows, neighbors.ravel())), shape=(n, n))
    graph = graph.maximum(graph.T)
    graph.setdiag(0)
    graph.eliminate_zeros()
    return graph.tocsr()


def _graph(adjacency: sparse.csr_matrix):
    import igraph as ig

    upper = sparse.triu(adjacency, k=1).tocoo()
    return ig.Graph(n=adjacency.shape[0], edges=np.column_stack([upper.row, upper.col]).tolist())


def by_size(codes: np.ndarray) -> np.ndarray:
    """Relabel clusters by size (largest = 0), ties by first member, so names are stable."""
    sizes = np.bincount(codes)
    first = np.array([np.flatnonzero(codes == c)[0] for c in range(sizes.size)])
    order = np.lexsort((first, -sizes))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[codes]


# Leiden runs per resolution; the partition of highest modularity is kept. One run's partition
# turns on its seed where optima are near-equal: on the TRAK suite (219 classes, the same
# attributions at two seeds of tl.subgroups) 6 counts differed with one run, 3 with five
# (RESULTS.md, session 48); the scan, its null pairs and the baselines all use the same runs.
# The default stays 1: with the current null and the merges, five runs split one more path
# null class on auto for the same number of right counts, and three more null classes on
# X_pca for three more, at 2.5-3x the clustering time (RESULTS.md, sessions 53 and 54).
LEIDEN_RUNS = 1


def leiden_labels(rep: np.ndarray, *, n_neighbors: int, resolutions: Sequence[float],
                  random_state: int = 0, n_runs: int | None = None) -> list[np.ndarray]:
    """Leiden (igraph, modularity, iterated to convergence) on the exact kNN graph of ``rep``,
    one partition per resolution, each as integer labels ordered by size.

    igraph's generator is seeded with ``random_state`` for every call (then set back to its
    default), so the result does not depend on what ran before. ``n_runs`` (default
    :data:`LEIDEN_RUNS`, read at call time) runs are made per resolution, the first seeded with
    ``random_state``, and the partition of highest modularity is kept.
    """
    import igraph as ig

    n_runs = LEIDEN_RUNS if n_runs is None else n_runs
    if n_runs < 1:
        raise ValueError(f"n_runs must be at least 1, got {n_runs}.")
    graph = _graph(knn_adjacency(rep, n_neighbors))
    out = []
    for resolution in resolutions:
        best: Any = None
        for run in range(n_runs):
            # run 0 is seeded as before; the others by a string, so that no run of one
            # random_state is a run of another (the close-split vote checks at seed + 1, + 2)
            seed = random_state if run == 0 else f"{random_state}-{run}"
            ig.set_random_number_generator(random.Random(seed))
            try:
                part = graph.community_leiden(objective_function="modularity",
                                              resolution=float(resolution), n_iterations=-1)
            finally:
                ig.set_random_number_generator(random)  # igraph's default
            if best is None or part.quality > best.quality + 1e-12:  # ties: the earlier run
                best = part
        out.append(by_size(np.asarray(best.membership, dtype=np.int64)))
    return out


def n_substantial(labels: np.ndarray, min_size: int) -> int:
    """Clusters of at least ``min_size`` points."""
    return int((np.bincount(labels) >= min_size).sum())


def split_reproducibility(a: np.ndarray, b: np.ndarray) -> float:
    """Agreement of two partitions of the same points as a split: their adjusted Rand index,
    and 0 when neither splits (an unsplit class reproduces no split)."""
    if a.max() == 0 and b.max() == 0:
        return 0.0
    return float(adjusted_rand_score(a, b))


def cross_separation(half1: np.ndarray, half2: np.ndarray, labels1: np.ndarray,
                     labels2: np.ndarray, min_size: int = 5, balanced: bool = False) -> float:
    """How cleanly the clusters found on one half are separated in the other half.

    For every pair of clusters (of at least ``min_size`` points) found on one half, the other
    half's points of the pair are projected onto the line through their two centroids; the
    share of the projection's variance that lies between the two clusters is 2/π ≈ 0.64 for
    a Gaussian cut at its mean and approaches 1 for two clusters with a gap between them. The
    weakest pair counts (every boundary reported must be a gap), averaged over both ways.
    Labels and points come from independent halves, so noise that one half's clustering
    latched onto does not inflate the other's separation. ``balanced``: each cluster of a
    pair weighs the same (see :func:`pair_separations`).
    """
    def weakest_pair(points: np.ndarray, labels: np.ndarray) -> float:
        pairs = pair_separations(points, labels, min_size, balanced)
        if not np.isfinite(pairs).any():
            return 0.0
        return float(np.nanmin(pairs))

    return (weakest_pair(half2, labels1) + weakest_pair(half1, labels2)) / 2


def pair_separations(points: np.ndarray, labels: np.ndarray, min_size: int = 5,
                     balanced: bool = False) -> np.ndarray:
    """Separation of every pair of clusters of ``labels`` in ``points``: the share of the
    variance along the line through the pair's centroids that lies between them (2/π ≈ 0.64
    for a Gaussian cut at its mean, near 1 with a gap). A symmetric ``k × k`` array (``k`` =
    ``labels.max() + 1``), NaN on the diagonal and for pairs with a cluster of fewer than
    ``min_size`` points; 0 for two clusters with the same centroid.

    Weighted by size, a small cluster beside a large one shows little variance between them
    even with a gap (a 30-point cluster 4 SDs from 270 others: 0.59). ``balanced`` weighs the
    two clusters alike: a quarter of the squared gap between their means against the mean of
    their variances along the line (those two clusters: 0.80; a Gaussian cut at its mean: the
    same 2/π; cut at its 10 % quantile: 0.68, against 0.34 weighted by size)."""
    k = int(labels.max()) + 1 if labels.size else 0
    out = np.full((k, k), np.nan)
    counts = np.bincount(labels, minlength=k)
    big = np.flatnonzero(counts >= min_size)
    centroids = {c: points[labels == c].mean(0) for c in big}
    for i, a in enumerate(big):
        for b in big[i + 1:]:
            direction = centroids[b] - centroids[a]
            norm = np.linalg.norm(direction)
            if norm == 0:
                out[a, b] = out[b, a] = 0.0
                continue
            xa = points[labels == a] @ direction / norm
            xb = points[labels == b] @ direction / norm
            if balanced:
                between = (xa.mean() - xb.mean()) ** 2 / 4
                total = between + (xa.var() + xb.var()) / 2
                out[a, b] = out[b, a] = between / total if total > 0 else 0.0
                continue
            x = np.concatenate([xa, xb])
            total = float(((x - x.mean()) ** 2).sum())
            between = xa.size * xb.size / x.size * (xa.mean() - xb.mean()) ** 2
            out[a, b] = out[b, a] = between / total if total > 0 else 0.0
    return out


# Why the null keeps the data's radii (issue 28, session 49, RESULTS.md): drawn Gaussian, it
# has lighter tails than a class made of a tight group beside a wide one, whose outer cells
# then reproduce as clusters of their own beyond every null pair (24 of 124 seeds of such a
# class, by up to 0.087; mostly pieces of the wide cloud). Drawn in random directions at the
# observed distances from the centre (whitened), the null holds a tight core inside a wide
# halo too (0 of 124; the tight group found in 119), and is a Gaussian where the data are one:
# the cached TRAK suite's 219 class counts were unchanged. A tight group at the very centre of
# a wide one is such a core and halo, one unimodal cloud: kept whole.
def null_factors(half1: np.ndarray, half2: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What null halves without clusters but with the observed halves' signal, noise and
    spread are drawn from (:func:`null_halves`): ``(shared, noise, radii)``.

    ``half2`` is rotated onto ``half1`` (orthogonal Procrustes: each half's SVD has its own
    axes); the halves' mean carries the shared signal (and half the noise), their
    half-difference the noise alone. ``shared`` and ``noise`` factor the two covariances
    (``shared`` over the mean's directions of non-zero variance); ``radii`` are the observed
    mean's whitened radii (Mahalanobis norms), whose spread the null keeps: drawn
    elliptically with these radii, a null is Gaussian where the data are, and where the data
    hold a tight group inside a wide one, it holds a tight core inside a wide halo.
    """
    h1 = half1 - half1.mean(0)
    h2 = half2 - half2.mean(0)
    rotation, _ = orthogonal_procrustes(h2, h1)
    h2 = h2 @ rotation
    shared, diff = (h1 + h2) / 2, (h1 - h2) / 2

    def eig(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cov = np.atleast_2d(np.cov(points, rowvar=False))
        values, vectors = np.linalg.eigh((cov + cov.T) / 2)
        return np.clip(values, 0.0, None), vectors

    values, vectors = eig(shared)
    # the directions the mean varies in (a rank-deficient embedding has others at ~0; values
    # are clipped at 0, so an embedding without variance keeps none)
    keep = values > values.max() * 1e-10
    shared_factor = vectors[:, keep] * np.sqrt(values[keep])
    radii = np.linalg.norm(shared @ vectors[:, keep] / np.sqrt(values[keep]), axis=1)
    noise_values, noise_vectors = eig(diff)
    return shared_factor, noise_vectors * np.sqrt(noise_values), radii


def null_halves(factors: tuple[np.ndarray, np.ndarray, np.ndarray], n: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One pair of null halves of ``n`` points from :func:`null_factors`: a shared
    part in uniformly random directions at radii drawn from the observed ones, plus and minus
    Gaussian noise of the observed halves' half-difference."""
    shared_factor, noise_factor, radii = factors
    z = rng.standard_normal((n, shared_factor.shape[1]))
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    directions = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
    shared = (directions * rng.choice(radii, size=n)[:, None]) @ shared_factor.T
    noise = rng.standard_normal((n, noise_factor.shape[1])) @ noise_factor.T
    return shared + noise, shared - noise


@dataclass
class ResolutionChoice:
    """The resolution chosen for one class and the evidence behind it.

    ``resolution`` is ``None`` when no resolution passed (the class stays one subgroup).
    ``table`` has one row per resolution: the number of clusters (of at least ``min_size``)
    in each half, ``reproducibility`` (ARI between the halves' partitions) and the null's
    maximum of it, ``separation`` (see :func:`cross_separation`) with the null's mean and
    maximum, the ``margin`` of the separation over that maximum, the empirical ``p_value`` of
    the separation, whether it was ``accepted`` and whether it is ``undecided`` (the same
    clusters in both halves beyond the null by the margin, agreeing under the threshold but
    at least ``min_undecided``). The null columns are NaN at resolutions that could be
    neither (halves disagreeing on the number of clusters, or reproducing below the floor),
    except the most reproducible one.
    """

    resolution: float | None
    table: pd.DataFrame
    # the two halves' partitions at the chosen resolution (None without one): what the check
    # accepted, against which the full embedding's partition is matched (agreed_partition)
    partitions: tuple[np.ndarray, np.ndarray] | None = None
    # where the full embedding was clustered at another resolution (agreed_partition)
    full_resolution: float | None = None
    # the Jaccard index at which the accepted clusters reproduced on their own, the rest one
    # group (reproducing_clusters; the partitions hold them as 1..m, the rest as 0); None
    # where the whole partition reproduced
    reproducing: float | None = None

    def summary(self) -> dict:
        """The chosen row as a flat dict, or without a split the most reproducible row."""
        if self.resolution is None:
            row = self._most_reproducible(self.table)
            return {"split": False, "best_resolution": float(row["resolution"]),
                    "best_reproducibility": float(row["reproducibility"]),
                    "separation": float(row["separation"]),
                    "null_separation_max": float(row["null_separation_max"]),
                    "p_value": float(row["p_value"]), **self._optional(row),
                    **self._cut_refused()}
        row = self.table.set_index("resolution").loc[self.resolution]
        moved = ({"full_resolution": float(self.full_resolution)}
                 if self.full_resolution not in (None, self.resolution) else {})
        if self.reproducing is not None:
            return {"split": True, "resolution": float(self.resolution),
                    "reproducibility": float(row["reproducing_agreement"]),
                    "separation": float(row["reproducing_separation"]),
                    "null_separation_max": float(row["reproducing_null_max"]),
                    "p_value": float(row["reproducing_p_value"]), "n_null": int(row["n_null"]),
                    "margin": float(row["reproducing_separation"]
                                    - row["reproducing_null_max"]),
                    "reproducing_clusters": int(row["reproducing_clusters"]),
                    "min_jaccard": float(self.reproducing),
                    "whole_reproducibility": float(row["reproducibility"]), **moved}
        return {"split": True, "resolution": float(self.resolution),
                "reproducibility": float(row["reproducibility"]),
                "separation": float(row["separation"]),
                "null_separation_max": float(row["null_separation_max"]),
                "p_value": float(row["p_value"]), **self._optional(row), **moved}

    def undecided(self) -> dict | None:
        """The most reproducible row the check left undecided (the same clusters in both
        halves, separated beyond the null by the margin, agreeing under the bar but at least
        :data:`UNDECIDED_FLOOR`), as a flat dict; ``None`` if there is none. A caller whose
        class stays whole reports it (an accepted partition can leave one cluster of
        ``min_size`` cells on the full embedding)."""
        if "undecided" not in self.table:
            return None
        rows = self.table[self.table["undecided"].astype(bool)]
        if rows.empty:
            return None
        row = self._most_reproducible(rows)
        return {"resolution": float(row["resolution"]),
                "n_clusters": int(row["n_clusters_half1"]),
                "reproducibility": float(row["reproducibility"]),
                "separation": float(row["separation"]),
                "null_separation_max": float(row["null_separation_max"]),
                "margin": float(row["margin"]), "p_value": float(row["p_value"])}

    def _cut_refused(self) -> dict:
        """The most reproducible split refused only for being less separated than the null
        cut into as many clusters (``cut_slack``), as ``{"cut_refused": {...}}``; else {}."""
        if "cut_refused" not in self.table:
            return {}
        rows = self.table[self.table["cut_refused"].astype(bool)]
        if rows.empty:
            return {}
        row = self._most_reproducible(rows)
        return {"cut_refused": {
            "resolution": float(row["resolution"]), "n_clusters": int(row["n_clusters_half1"]),
            "reproducibility": float(row["reproducibility"]),
            "separation": float(row["separation"]),
            "null_separation_max": float(row["null_separation_max"]),
            "null_separation_same_k": float(row["null_separation_same_k"])}}

    @staticmethod
    def _most_reproducible(rows: pd.DataFrame) -> pd.Series:
        """The row whose halves agree most (ties: the lowest resolution)."""
        return rows.sort_values(["reproducibility", "resolution"],
                                ascending=[False, True]).iloc[0]

    @staticmethod
    def _optional(row) -> dict:
        """Columns that tables written by earlier versions lack."""
        out: dict[str, float] = {"n_null": int(row["n_null"])} if "n_null" in row else {}
        if "margin" in row:
            out["margin"] = float(row["margin"])
        if "null_separation_same_k" in row and np.isfinite(row["null_separation_same_k"]):
            out["null_separation_same_k"] = float(row["null_separation_same_k"])
        return out


def fewest_points(n_neighbors: int, halves: bool) -> int:
    """Fewest points a class needs to be clustered with ``n_neighbors``: a kNN graph needs
    more points than neighbours, and a check on two halves needs one graph in each half."""
    return 2 * n_neighbors if halves else n_neighbors + 1


def most_neighbors(n_points: int, halves: bool) -> int:
    """The largest ``n_neighbors`` that :func:`fewest_points` allows for ``n_points``."""
    return n_points // 2 if halves else n_points - 1


def check_resolutions(resolutions: Sequence[float] | None) -> tuple[float, ...]:
    """A non-empty, increasing grid of positive resolutions (default ``DEFAULT_RESOLUTIONS``)."""
    if resolutions is None:
        return DEFAULT_RESOLUTIONS
    grid = np.asarray(resolutions, dtype=np.float64).ravel()
    if grid.size == 0 or not np.all(np.isfinite(grid)) or (grid <= 0).any():
        raise ValueError(f"resolutions must be a non-empty list of positive numbers, got "
                         f"{resolutions!r}.")
    return tuple(float(r) for r in np.unique(grid))


# The separation a split must add to the null's largest: with 20 draws and a grid of
# resolutions, beating every draw by a hair happens by chance. 0.03 (separation runs 0-1;
# 2/π for a Gaussian cut at its mean) is the smallest margin that kept the cached suite's
# graded-continuum null whole (its split: 0.028 above the null) and the 300,000-cell
# over-split out (0.013). Over the suite's 273 null and 171 planted class runs it changed 3:
# that null, a 6-for-5 split (now 5) and a 3-for-3 split (now 2; 0.024). RESULTS.md.
MIN_MARGIN = 0.03

# The agreement (ARI) the two halves' partitions must reach. The halves each hold half the
# models, so they agree less than the full fit would; what keeps structureless classes whole is
# the null (separation beyond every Gaussian pair, by MIN_MARGIN) and the shared check. 0.8,
# the former bar, stopped true splits at 0.75-0.80 (five equal subtypes at 0.755, mutually
# exclusive programmes at 0.79). 0.75 kept all 285 null class runs of TRAK (raw and X_pca) and
# datamodels (X_pca) whole and found the right count in 9 more of 171 planted class runs;
# 0.70 split a graded-continuum null (P-graded-null) and cut more true subtypes in two.
# RESULTS.md, session 24.
MIN_REPRODUCIBILITY = 0.75

# Inside an accepted subgroup the scan runs again, once per subgroup: more chances for a
# half-agreeing cut. There the halves must agree at this bar at least (RESULTS.md, session 42).
INNER_REPRODUCIBILITY = 0.8

# Below the bar but not far: a class whose halves find the same clusters, separated beyond
# the null by the margin, yet agree only at UNDECIDED_FLOOR <= ARI < min_reproducibility is
# undecided, not structureless: each half's models are too few to agree on where its
# clusters part. 0.5 is the only floor measured (issue 28, session 26: the suite's undecided
# classes agreed at 0.54-0.74); reported, never accepted (tl.second_round decides them).
UNDECIDED_FLOOR = 0.5

# The null at a split's own resolution says nothing where its halves do not split there at
# all (separation 0): a continuum that Leiden cuts at a low resolution then passes on its
# agreement alone. So a split's weakest boundary is also compared with the null halves cut
# into as many clusters, at whatever resolution that takes (`null_separation_same_k`), and
# may fall at most CUT_SLACK below their best. Unequal true subtypes need the slack: a piece
# cut off one side is less separated than a balanced cut (a Gaussian cut at its 15 % quantile
# puts 0.43 between the pieces, at its middle 0.64). Measured on the whole cached TRAK suite
# (issue 28, session 30): true splits reach down to 0.07 below the null's cuts (G-rare, two
# subtypes of 45 cells beside 255), the graded-continuum null after a second round 0.26 below
# (4 clusters at 0.42 where the null's 4-way cuts reach 0.68); 0.1 changed that class alone.
CUT_SLACK = 0.1

# What a flat continuum cut in two puts between its pieces: a uniform stretch cut at its middle
# holds 3/4 of its variance along the line between the pieces (with both sides weighed alike
# too), cut off-centre less, and single-peaked shapes less (triangular 0.67-0.72, beta 0.70,
# exponential 0.65, normal 0.64; the halves' noise lowers them further). A boundary that
# separates no more may be a cut through a progression or a path of states, not a gap between
# types. Not a bar alone: a bent path piles up along that line and passes it, and as a bar it
# lost 3 true splits of the suite's 81 for one more of 6 path classes kept whole (RESULTS.md,
# issue 28, session 50). With a boundary no emptier than the centres (merge_continua) it
# merges; on its own, tl.subgroups says it of a split it keeps (9–12 of 72 true splits).
CONTINUUM_SEPARATION = 0.75

# A boundary no emptier than the subgroups' centres: on the line through two subgroups'
# centres, the cells within GAP_WINDOW (in half the distance between the centres) of where the
# two meet are counted in each half's own embedding, as are the cells as near each centre;
# where the boundary holds at least CONTINUUM_CROWDING times the emptier centre's count (both
# halves pooled), nothing thins out between the two, as along a continuum (a flat one sits at
# 1 on average). Measured on the cached TRAK suite (issue 28, session 51; RESULTS.md).
GAP_WINDOW = 0.25
CONTINUUM_CROWDING = 1.0
# Fewer cells than this near the emptier centre (both halves) cannot tell a dip from noise: a
# rare type's own window holds a handful, and the large type's tail as many at the boundary
CROWDING_MIN_CELLS = 20

MAX_CHECK_POINTS = 10_000  # the check's cost is bounded by classes of this size

# An agreement this close above the bar is close to it, as a separation under twice the
# margin over the null is, or one under the null's cuts into as many clusters (within the
# slack): wrong counts gather there (session 30: 6 of 12 such splits against 3 of 53 others),
# and one Leiden seed can pass where the next does not (RESULTS.md, session 47).
NEAR_AGREEMENT = 0.05

# An accepted split close to its bars is checked at this many seeds in all (its own and the
# ones after it); the count most of them give is reported (RESULTS.md, session 47).
CLOSE_SEEDS = 3


def near_bars(e: Mapping[str, Any], *, min_margin: float = MIN_MARGIN,
              min_reproducibility: float = MIN_REPRODUCIBILITY) -> dict[str, float]:
    """Where an accepted split (its evidence ``e``: ``separation``, ``null_separation_max``,
    ``reproducibility`` and, where measured, ``null_separation_same_k``) clears a bar by
    little: ``margin`` (under twice ``min_margin`` over the null), ``agreement`` (within
    :data:`NEAR_AGREEMENT` of ``min_reproducibility``) and ``same_k`` (under the null's cuts
    into as many clusters, within the slack), each with its figure; empty where none."""
    close: dict[str, float] = {}
    margin = float(e["separation"]) - float(e["null_separation_max"])
    if margin < 2 * min_margin:
        close["margin"] = margin
    if float(e["reproducibility"]) < min_reproducibility + NEAR_AGREEMENT:
        close["agreement"] = float(e["reproducibility"])
    same_k = e.get("null_separation_same_k")
    if same_k is not None and np.isfinite(same_k) and float(e["separation"]) < float(same_k):
        close["same_k"] = float(same_k)
    return close


# Where no resolution's partition reproduces as a whole, the clusters that reproduce on their
# own: Leiden cuts a large subtype into pieces before it isolates a rare one beside it, and the
# two halves cut the large one differently, so the whole partition agrees poorly while the rare
# cluster is found in both. A cluster counts where its best match in the other half is mutual
# and covers this share of their points together (Jaccard index); the rest is one group. Such
# a partition is checked like any other (agreement of the halves, separation beyond the null
# halves treated alike) but with each side of a boundary weighed alike, as a small cluster
# beside a large one shows little variance between them even with a gap. Measured on the
# cached TRAK suite (issue 28, session 39, RESULTS.md).
REPRODUCING_JACCARD = 0.8


def reproducing_clusters(labels1: np.ndarray, labels2: np.ndarray,
                         min_jaccard: float = REPRODUCING_JACCARD, min_size: int = 5
                         ) -> tuple[np.ndarray, np.ndarray, int]:
    """The clusters of two partitions of the same points (one per half) that reproduce on
    their own: each cluster of one whose best match in the other is mutual, shares at least
    ``min_jaccard`` of their points (Jaccard index) and has ``min_size`` points in both.

    Returns both partitions with those clusters numbered 1..m (a cluster and its match alike)
    and every other point 0, and m. m is 0 (and both partitions all 0) where they hold fewer
    than two groups of ``min_size`` points: one reproducing cluster needs ``min_size`` points
    left over in both halves.
    """
    jaccard = _jaccard(labels1, labels2)
    size1, size2 = np.bincount(labels1), np.bincount(labels2)
    out1, out2 = np.zeros_like(labels1), np.zeros_like(labels2)
    m = 0
    for c in range(jaccard.shape[0]):
        d = int(jaccard[c].argmax())
        if (jaccard[c, d] >= min_jaccard - 1e-12 and int(jaccard[:, d].argmax()) == c
                and min(size1[c], size2[d]) >= min_size):
            m += 1
            out1[labels1 == c], out2[labels2 == d] = m, m
    if min(n_substantial(out1, min_size), n_substantial(out2, min_size)) < 2:
        return np.zeros_like(labels1), np.zeros_like(labels2), 0
    return out1, out2, m


def _jaccard(labels1: np.ndarray, labels2: np.ndarray, k1: int | None = None,
             k2: int | None = None) -> np.ndarray:
    """The Jaccard index of every cluster of ``labels1`` with every cluster of ``labels2``
    (``k1 × k2``, by default as many as each has): shared points over their union."""
    k1 = int(labels1.max()) + 1 if k1 is None else k1
    k2 = int(labels2.max()) + 1 if k2 is None else k2
    shared = np.zeros((k1, k2))
    np.add.at(shared, (labels1, labels2), 1)
    union = (np.bincount(labels1, minlength=k1)[:, None]
             + np.bincount(labels2, minlength=k2)[None, :] - shared)
    return np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)


def check_subsample(n_points: int, max_points: int | None, random_state: int = 0,
                    stream: int = 0) -> np.ndarray | None:
    """Sorted indices of the ``max_points`` points a reproducibility check of a larger class
    runs on (``None``: the class is small enough to check whole).

    Leiden on the halves and on every null pair grows faster than the class (iterated to
    convergence, with more iterations on larger graphs): a 25,000-cell class took ~6 minutes,
    against ~1.5 for 10,000. A uniform subsample keeps every subgroup's share, so a split that
    is found holds the same evidence; only subgroups too rare to leave ``min_size`` points in
    the subsample are out of reach. ``stream`` (e.g. the class's index) gives each class its
    own draw from the same ``random_state``.
    """
    if max_points is None or n_points <= max_points:
        return None
    rng = np.random.default_rng([int(random_state), int(stream)])
    return np.sort(rng.choice(n_points, size=int(max_points), replace=False))


CARRY_COMPONENTS = 50  # most components of the models' input a partition is carried in
# Below this share of the input's variance on its components above noise, distances in the
# input are mostly noise and partitions are carried on those components instead. Measured
# (RESULTS.md, session 22): module_subtypes' 1,000 sparse genes 0.08-0.09 (nearest cells share
# a batch 39-58 % of the time with 3 batches; 88-93 % on the components); the other generators'
# raw features 0.30-0.41 (100 % either way); the real datasets 0.19 (pbmc68k), 0.23 (CBMC),
# 0.29 (Zeisel), 0.67 (Khan). Not lower everywhere: on the components a program that the
# other class carries in other combinations (exclusive_programs, 3 programs) divides it as
# a nuisance would, and was taken out in 3 of 3 runs.
NOISE_DOMINATED = 0.15


def above_noise(inputs: np.ndarray, max_components: int = CARRY_COMPONENTS,
                random_state: int = 0) -> tuple[np.ndarray | None, float]:
    """The points' coordinates on the principal components of ``inputs`` that stand above
    noise (``None`` where none does) and the share of the input's variance those hold.

    A component stands above noise where its variance exceeds the largest that ``n × p``
    independent features of the same total variance reach by chance, the Marchenko-Pastur
    edge ``σ² (1 + √(p / n))²`` (``σ²``: the mean variance per feature, an overestimate of
    the noise where there is signal, so fewer components pass). Inputs whose components are
    all alike (standardised PCs: every variance 1) have none. Deterministic for a
    ``random_state``.
    """
    from sklearn.utils.extmath import randomized_svd

    points = np.asarray(inputs, dtype=np.float64)
    n, p = points.shape
    k = min(int(max_components), n - 1, p - 1)
    if k < 1:
        return None, 0.0
    X = points - points.mean(0)
    total = float((X * X).sum()) / (n - 1)
    U, s, _ = randomized_svd(X, k, n_iter=7, random_state=random_state)
    variance = s * s / (n - 1)
    above = variance > total / p * (1 + np.sqrt(p / n)) ** 2
    if not above.any():
        return None, 0.0
    return U[:, above] * s[above], float(variance[above].sum() / total)


# Inputs this narrow whose values sit at each feature's floor this often (the zeros of sparse
# counts) give splits of null classes: of the planted generator's classes without subtypes,
# on its first ten genes (a disease programme's) TRAK with the check split 4 of 12 (11-56 %
# of the values zero), on twelve and fifteen genes 1 of 6 each, on twenty none of 12, on
# forty none of 6; ten or twenty Gaussian features, rounded to integers or not, none of 18
# (workflows/benchmarks/narrow_inputs.py, RESULTS.md).
FEW_FEATURES = 20
ZERO_SHARE = 0.05


def zero_share(inputs: np.ndarray) -> float:
    """The share of the points' values that sit at their feature's floor (its smallest
    value), averaged over the features: the zeros of counts wherever scaling moved them."""
    points = np.asarray(inputs)
    if points.size == 0:
        return 0.0
    return float((points == points.min(axis=0)).mean())


def detected_depth(inputs, block: int = 65536) -> np.ndarray | None:
    """Each point's log number of features above their floor (the smallest value each takes):
    how many genes a cell's counts detected, which follows its sequencing depth. ``None``
    where the features have no floor to speak of (under :data:`ZERO_SHARE` of the values
    there: components, latent spaces) or every point detects as many. ``inputs``: dense, a
    scipy sparse matrix, or a backed one (read in blocks of ``block`` rows)."""
    from scipy import sparse

    def rows(start: int):
        part = inputs[start:start + block]
        return part.tocsr() if sparse.issparse(part) else np.asarray(part)

    def floor_of(part) -> np.ndarray:
        return (part.min(axis=0).toarray().ravel() if sparse.issparse(part)
                else part.min(axis=0))

    def above(part, floor: np.ndarray) -> np.ndarray:
        if not sparse.issparse(part):
            return (part > floor).sum(axis=1)
        # stored values above their column's floor, and the implicit zeros of columns
        # whose floor is below zero
        stored = sparse.csr_matrix((part.data > floor[part.indices], part.indices,
                                    part.indptr), shape=part.shape)
        below_zero = floor < 0
        stored_there = sparse.csr_matrix((below_zero[part.indices], part.indices,
                                          part.indptr), shape=part.shape)
        return (np.asarray(stored.sum(axis=1)).ravel() + below_zero.sum()
                - np.asarray(stored_there.sum(axis=1)).ravel())

    n = inputs.shape[0]
    floor = floor_of(rows(0))
    for start in range(block, n, block):
        floor = np.minimum(floor, floor_of(rows(start)))
    counts = np.concatenate([above(rows(start), floor) for start in range(0, n, block)])
    if counts.size == 0 or 1 - counts.mean() / max(len(floor), 1) < ZERO_SHARE:
        return None
    depth = np.log1p(counts.astype(np.float64))
    return depth if depth.std() > 0 else None


# A split is checked again with sequencing depth taken out where the number of features its
# cells detect alone tells two of its subgroups apart at this AUC or more. Measured on the
# cached TRAK `auto` runs (RESULTS.md, session 38): cuts along depth inside a subtype (P-3-depth
# seed 1) and across real classes (CBMC monocytes: low- and high-depth CD14 cells; Zeisel's
# astrocytes-ependymal: its high-depth cells of all four types) stood at 0.97-1.00; subgroups
# of real types at most 0.94 (pbmc68k myeloid; CBMC's CD14 against CD16 monocytes 0.91, which
# depth taken out linearly leaves under the null's margin: a type whose depth differs that much
# is checked only where depth tells it apart almost perfectly).
DEPTH_AUC = 0.95


def depth_association(labels: np.ndarray, depth: np.ndarray, min_size: int = 5) -> float:
    """How well ``depth`` alone tells apart the two most different clusters of ``labels``
    (of ``min_size`` points or more): the largest area under the ROC curve over their pairs,
    0.5 (none) to 1 (a clean cut along depth)."""
    from .composition import numeric_test

    kept = [c for c in np.unique(labels) if (labels == c).sum() >= min_size]
    best = 0.5
    for i, a in enumerate(kept):
        for b in kept[i + 1:]:
            pair = np.isin(labels, (a, b))
            auc = numeric_test(depth[pair], labels[pair] == a)["auc"]  # NaN: depth constant
            if np.isfinite(auc):
                best = max(best, auc, 1 - auc)
    return float(best)


def take_out_linear(points: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    """``points`` less what a straight line in ``covariate`` (with an intercept) predicts of
    each coordinate, their mean kept: what is left once a continuous nuisance (sequencing
    depth) is taken out. Along with the nuisance goes any difference between groups of points
    that the covariate alone predicts (two types whose cells sit at two depths)."""
    out = np.array(points, dtype=np.float64, copy=True)
    centred = np.asarray(covariate, dtype=np.float64) - np.mean(covariate)
    scale = float(centred @ centred)
    if scale == 0:
        return out
    out -= np.outer(centred, centred @ (out - out.mean(0)) / scale)
    return out


def few_zero_inflated(n_features: int, share: float) -> bool:
    """Whether an input of ``n_features`` features with ``share`` of its values at their floor
    (:func:`zero_share`) is one whose attributions group cells by which features are zero:
    fewer than :data:`FEW_FEATURES` features and at least :data:`ZERO_SHARE` at the floor."""
    return n_features < FEW_FEATURES and share >= ZERO_SHARE


def noise_dominated(share: float, coordinates: np.ndarray | None) -> bool:
    """Whether an input with these components above noise (:func:`above_noise`) is mostly
    noise: some stand above it, holding less than :data:`NOISE_DOMINATED` of the variance."""
    return coordinates is not None and share < NOISE_DOMINATED


def carrying_space(inputs: np.ndarray, max_components: int = CARRY_COMPONENTS,
                   random_state: int = 0, *, return_share: bool = False
                   ) -> np.ndarray | tuple[np.ndarray, float, bool]:
    """Where distances in ``inputs`` are mostly noise, the points' coordinates on the principal
    components that stand above it (:func:`above_noise`); otherwise ``inputs`` as they are.

    Where those components hold less than :data:`NOISE_DOMINATED` of the variance, as in
    thousands of sparse, standardised genes, a nuisance spread thinly over all of them (a
    batch shifting every gene a little) leaves almost no trace in a point's nearest
    neighbours, and a few outlying cells become everyone's nearest neighbour; on the
    components it is plain. Inputs with no component above the edge (standardised PCs) are
    used as they are. ``return_share``: also the share of the variance above noise and
    whether the input is mostly noise (:func:`noise_dominated`).
    """
    coordinates, share = above_noise(inputs, max_components, random_state)
    dominated = noise_dominated(share, coordinates)
    space = (coordinates if dominated and coordinates is not None
             else np.asarray(inputs, dtype=np.float64))
    return (space, share, dominated) if return_share else space


def nearest_vote(reference: np.ndarray, labels: np.ndarray, query: np.ndarray,
                 n_neighbors: int) -> np.ndarray:
    """The most common label of each query point's ``n_neighbors`` nearest ``reference``
    points (ties to the smaller label, which :func:`leiden_labels` gives the larger cluster)."""
    from sklearn.neighbors import NearestNeighbors

    if query.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n_neighbors, reference.shape[0])
    _, neighbors = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query)
    return _most_common(labels[neighbors])


def _most_common(votes: np.ndarray) -> np.ndarray:
    """Per row of ``votes`` (labels, one row per point), its most common label (ties to the
    smaller)."""
    counts = np.zeros((votes.shape[0], int(votes.max(initial=0)) + 1), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(votes.shape[0]), votes.shape[1]), votes.ravel()), 1)
    return counts.argmax(1)


CARRY_BLOCK = 2048  # query points whose distances to the reference are held at once


def carry_vote(reference: np.ndarray, labels: np.ndarray, query: np.ndarray,
               n_neighbors: int, block: int = CARRY_BLOCK) -> np.ndarray:
    """:func:`nearest_vote` from one set of points to another, with hubs discounted.

    Between two classes, a few points of the reference can be the nearest of most query
    points (hubs). Measured on ``module_subtypes`` with long-tailed modules (``X_pca``): 18
    controls of a tight state near the centre were each, on average, among the 15 nearest
    controls of 110 disease cells, against 9 for the other controls, and a plain vote carried their
    cluster to 81 disease cells, where its boundary was diluted below the shared check's bar
    (0.27 against 0.30); with the discount, to 14 (0.34).

    So each reference point's distance to a query point is lowered by half its mean distance
    to its own ``n_neighbors`` nearest query points, as the cross-domain similarity local
    scaling of Conneau et al. (2018) does with similarities, but by no more than half the
    median of those reaches: a hub, near many query points, gains less than the others, and a
    point far from all of them (a subtype the query's class lacks) gains no more than a
    typical one, so it takes no query points it would not take anyway. Every query point's
    ranking is otherwise that of the distances. ``block`` query points are ranked at a time
    (memory ``block × len(reference)`` distances).
    """
    from sklearn.neighbors import NearestNeighbors

    if query.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n_neighbors, reference.shape[0])
    reach = NearestNeighbors(n_neighbors=min(n_neighbors, query.shape[0])).fit(
        query).kneighbors(reference)[0].mean(1)
    ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float64))
    discount = torch.from_numpy(np.minimum(reach, np.median(reach)) / 2)
    ref_sq = (ref * ref).sum(1)
    nearest = np.empty((query.shape[0], k), dtype=np.int64)
    for start in range(0, query.shape[0], block):
        q = torch.from_numpy(np.ascontiguousarray(query[start:start + block], dtype=np.float64))
        distance = _sq_distances(q, ref, ref_sq).clamp_min(0).sqrt() - discount
        nearest[start:start + q.shape[0]] = distance.topk(k, dim=1, largest=False).indices.numpy()
    return _most_common(labels[nearest])


def carry_linear(reference: np.ndarray, labels: np.ndarray, query: np.ndarray,
                 max_components: int = CARRY_COMPONENTS) -> np.ndarray:
    """Each query point's cluster by a linear discriminant of the reference's clusters
    (shrinkage LDA on the two sets' first ``max_components`` principal components together).

    Nearest points carry what is local: a batch shifts its cells together, and a cell of
    another class lies among the reference's cells of its batch. A nuisance that changes how
    far a cell is from all others does not: with sequencing depth spread as in droplet data,
    a low-depth cell has more zeros, in genes that differ from cell to cell, so low-depth
    cells are near no one and every cell of another class is nearest the high-depth cells
    (the planted generator's counts with depth spread 11-fold, log SD 0.7: all 300 cells of
    the other class took one side of a depth boundary; workflows/benchmarks/depth.py).
    Along the direction that separates the clusters the depth is plain, and a discriminant
    carries it. Deterministic."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.utils.extmath import randomized_svd

    labels = np.asarray(labels)
    if query.shape[0] == 0 or np.unique(labels).size < 2:
        return np.full(query.shape[0], labels[0] if labels.size else 0, dtype=np.int64)
    both = np.vstack([reference, query]).astype(np.float64)
    both -= both.mean(0)
    k = min(int(max_components), both.shape[0] - 1, both.shape[1])
    if k < both.shape[1]:
        U, S, _ = randomized_svd(both, k, n_iter=7, random_state=0)
        both = U * S
    model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    with warnings.catch_warnings():
        # a cluster of one point (a stray in a fine partition) has no covariance of its own
        # to shrink; its weight in the pooled one is its share, one point's, so scikit-learn's
        # "Only one sample available" says nothing the user can act on
        warnings.filterwarnings("ignore", message="Only one sample available",
                                category=UserWarning)
        model.fit(both[: reference.shape[0]], labels)
    return model.predict(both[reference.shape[0]:]).astype(np.int64)


# How a partition is carried to another class: by nearest points in the models' input
# (carry_vote) and, for the boundaries that leave too few of the other class's points on a
# side that way, by a linear discriminant (carry_linear). Not both everywhere: on the
# interaction generator (X-3), where controls carry the disease subtypes' programmes in other
# combinations, the discriminant divided the controls along the subtypes' boundaries at
# 0.35-0.60 against 0.81-0.85 at home and took all 3 seeds' subtypes out as shared.
CARRIES = ("neighbours", "linear")
# A side of a boundary the nearest points give under this share of its cells at home (in
# proportion) counts as not reached that way. On depth spread 11-fold the nearest points gave
# one side of a control class's depth split 23 of 300 disease cells (it holds 56 % of the
# controls), measured 0.29 against 0.69 at home and missed it (1 of 12 null classes split);
# with the discriminant there, none of 20 (nearest cells alone: 6 of 20;
# workflows/benchmarks/depth.py), and the scenario suite is unchanged.
CARRY_REACH = 0.25
# A boundary carried by the discriminant is shared only where it divides the other class at
# least this share of its own separation (nearest cells: SHARED_RATIO). A discriminant cuts
# any class along its direction, also one with structure of its own there: pbmc68k's B cells
# against T/NK, carried to the myeloid class, divided it at 0.43 against 0.83 at home (0.52),
# and the interaction generator's subtypes divided its controls at 0.43-0.74 of their own;
# depth splits divided the other class at 0.75-0.97 of theirs (workflows/benchmarks/depth.py).
LINEAR_RATIO = 0.7


def carry(method: str, reference: np.ndarray, labels: np.ndarray, query: np.ndarray,
          n_neighbors: int) -> np.ndarray:
    """:func:`carry_vote` (``"neighbours"``) or :func:`carry_linear` (``"linear"``)."""
    if method == "linear":
        return carry_linear(reference, labels, query)
    return carry_vote(reference, labels, query, n_neighbors)


# Boundaries of an accepted partition, moved by a discriminant of the models' input where the
# attribution agrees (refined_boundaries). Leiden draws a boundary where the attribution's kNN
# graph thins, which within a few hundred cells is noisy; the count and the subgroups stay the
# check's. On the TRAK auto suite (58 split classes with subtypes, seeds 0-2) it moved 16 to a
# higher ARI by more than 0.02 (X-3's four control subtypes 0.84-0.87 -> 0.90-0.95, P-graded
# 0.81 -> 0.89, P-rare 0.79 -> 0.96) and 1 lower (0.94 -> 0.90); without the attribution's
# say, the module generator's subtypes (trained on standardised PCs) fell from 0.77 to 0.38 on
# average. Through tl.subgroups on the whole suite (108 runs): ARI >= R - 0.05 in 50 of the 69
# classes with R >= 0.9 against 42, every count and null class as before (RESULTS.md,
# session 46).
REFINE_COMPONENTS = 20  # leading components of the input the discriminant sees; 0: off
REFINE_ROUNDS = 5
REFINE_MIN_CELLS = 10  # a move that leaves a subgroup smaller than this is not taken


def refined_boundaries(inputs: np.ndarray, labels: np.ndarray, half1: np.ndarray,
                       half2: np.ndarray, *, random_state: int = 0,
                       n_components: int = REFINE_COMPONENTS
                       ) -> tuple[np.ndarray, dict | None]:
    """An accepted partition's boundaries moved by the models' input, where the attribution
    agrees.

    Each cell is predicted out of fold (5 stratified folds) by a shrinkage linear
    discriminant of the partition, fitted on the first ``n_components`` principal components
    of the cells' input (each feature standardised over these cells), and relabelled; this
    repeats until nothing moves (at most :data:`REFINE_ROUNDS` times). A round that would
    lose a subgroup or leave one under :data:`REFINE_MIN_CELLS` cells is not taken. The moved
    partition is kept only where the two attribution halves separate it at least as well as
    the partition the check accepted (:func:`cross_separation`, each half's own embedding),
    so the input can sharpen a boundary the attribution drew but not draw another.

    Returns the labels (``labels`` itself where nothing was kept) and the evidence:
    ``None`` where it did not apply (fewer than two subgroups, a subgroup too small to
    fold, ``n_components`` 0), else ``moved`` (cells whose subgroup changed), the
    separation ``before`` and ``after`` and whether the move was ``taken``. Deterministic for
    a ``random_state``.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.utils.extmath import randomized_svd

    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.bincount(labels)
    if n_components < 1 or (sizes > 0).sum() < 2 or sizes[sizes > 0].min() < REFINE_MIN_CELLS:
        return labels, None
    X = np.asarray(inputs, dtype=np.float64)
    X = X - X.mean(0)
    scale = X.std(0)
    X = X / np.where(scale > 0, scale, 1.0)
    k = min(int(n_components), X.shape[0] - 1, X.shape[1])
    if k < X.shape[1]:
        U, S, _ = randomized_svd(X, k, n_iter=7, random_state=random_state)
        X = U * S
    current = labels
    for _ in range(REFINE_ROUNDS):
        folds = StratifiedKFold(5, shuffle=True, random_state=random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # collinear components: nothing a user can act on
            predicted = cross_val_predict(
                LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"), X, current,
                cv=folds).astype(np.int64)
        counts = np.bincount(predicted, minlength=sizes.size)
        if (predicted == current).all() or counts[sizes > 0].min() < REFINE_MIN_CELLS:
            break
        current = predicted
    moved = int((current != labels).sum())
    if moved == 0:
        return labels, {"moved": 0, "taken": False}
    before = cross_separation(half1, half2, labels, labels)
    after = cross_separation(half1, half2, current, current)
    taken = after >= before
    evidence = {"moved": moved, "before": float(before), "after": float(after),
                "taken": bool(taken)}
    return (current if taken else labels), evidence


def extend_labels(rep: np.ndarray, labelled: np.ndarray, labels: np.ndarray,
                  n_neighbors: int) -> np.ndarray:
    """Labels for every point of ``rep`` from a partition of the points ``labelled``: the
    others take the most common label of their ``n_neighbors`` nearest labelled points
    (:func:`nearest_vote`), and the result is numbered by size again."""
    out = np.empty(rep.shape[0], dtype=np.int64)
    out[labelled] = labels
    rest = np.setdiff1d(np.arange(rep.shape[0]), labelled)
    out[rest] = nearest_vote(rep[labelled], labels, rep[rest], n_neighbors)
    return by_size(out)


# A boundary carried to another class counts as a boundary there when it divides that class at
# least half as sharply as it divides its own. Measured (workflows/benchmarks/subgroups.py,
# RESULTS.md): a batch boundary divides the other class as sharply (0.88-0.95 against
# 0.88-0.94 at home), a shared continuous nuisance (a uniform gradient cut in two) 0.45-0.54
# against 0.71; a subtype boundary lands at random in the other class (0.02-0.07 against
# 0.79-0.81).
SHARED_RATIO = 0.5
# ... and when it leaves at most SHARED_UNEXPLAINED times the share of the other class's
# variance within its two sides that it leaves in its own (floored at SHARED_FLOOR). Measured
# (workflows/benchmarks/trak_benchmark.py --scale 20000 --rep raw, RESULTS.md): with 10,000
# cells a class, a subtype boundary carried to the controls cuts their cloud along the
# program's genes at 0.29-0.60 against 0.92-0.97 at home (so half as sharply), while batch
# boundaries divide them at 0.91-0.94 (0.91-0.97 at home) and a gradient cut 0.45-0.54
# against 0.71: a cut of a continuum elsewhere is not the clean boundary a batch draws.
SHARED_UNEXPLAINED = 4.0
SHARED_FLOOR = 0.05


@dataclass
class SharedBoundaries:
    """Which boundaries of one class's partition divide other classes the same way.

    ``separation[i, j]`` is the largest separation (see :func:`pair_separations`, averaged
    over the two halves) that the boundary between clusters ``i`` and ``j`` has in any other
    class, after that class's points took the cluster of their nearest points of this class in
    the models' input (NaN where fewer than ``min_size`` of them took either cluster, as for a
    subtype whose program the other classes lack); ``where[i, j]`` names that class; ``own``
    is the boundary's separation in this class's halves. ``shared`` marks the boundaries that
    divide another class at least ``ratio`` times as sharply as their own. ``levels`` gives
    each point of this class a level of the shared nuisance (see :func:`shared_boundaries`);
    ``None`` when no boundary is shared.
    """

    separation: np.ndarray
    where: np.ndarray
    own: np.ndarray
    shared: np.ndarray
    levels: np.ndarray | None = None
    carried_by: str = CARRIES[0]

    def summary(self) -> dict:
        """The shared boundaries as plain values: how many of how many, the classes they
        divide, the largest separation found there and the nuisance's number of levels."""
        k = len(self.shared)
        upper = np.triu_indices(k, 1)
        seen = self.separation[upper]
        home = self.own[self.shared]
        return {"n_shared": int(self.shared[upper].sum()), "n_boundaries": int(upper[0].size),
                "shared_with": sorted({str(c) for c in self.where[self.shared]}),
                "max_separation_elsewhere": float(np.nanmax(seen)) if np.isfinite(
                    seen).any() else float("nan"),
                "separation_here": float(np.nanmax(home)) if home.size else float("nan"),
                "n_levels": 0 if self.levels is None else int(np.unique(self.levels).size),
                "carried_by": self.carried_by}


def _nuisance_levels(carried: np.ndarray, shared: np.ndarray, reached: np.ndarray
                     ) -> np.ndarray:
    """Levels of a shared nuisance in another class: the clusters that class's points took,
    joined where the boundary between them does not divide it (connected components); the
    shared boundaries run between levels. Points of clusters too few of them took get -1."""
    from scipy.sparse.csgraph import connected_components

    kept = np.flatnonzero(reached)
    private = ~shared[np.ix_(kept, kept)] & ~np.eye(kept.size, dtype=bool)
    component = np.full(len(reached), -1)
    component[kept] = connected_components(sparse.csr_matrix(private), directed=False)[1]
    return component[carried]


def shared_boundaries(labels: np.ndarray, inputs: np.ndarray,
                      halves: tuple[np.ndarray, np.ndarray],
                      others: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                      n_neighbors: int, min_size: int = 5,
                      ratio: float = SHARED_RATIO,
                      unexplained: float = SHARED_UNEXPLAINED,
                      within: Mapping[str, np.ndarray] | None = None,
                      balanced: bool = False) -> SharedBoundaries:
    """Carry a partition of one class to the other classes and ask which of its boundaries
    divide them too.

    A nuisance the classes share (batch, donor, cell cycle) shifts the models' input of every
    class alike, and attribution follows the input locally, so it splits every class the same
    way; a subtype of one class does not divide the others. Each point of another class takes
    the cluster most of its ``n_neighbors`` nearest points of this class have in the models'
    input (``inputs`` for this class's points, the first array of ``others[name]`` for the
    other class's; points near most of the other class discounted, :func:`carry_vote`); where
    that leaves a side of a boundary fewer than ``min_size`` of its points, or under
    :data:`CARRY_REACH` of the side's share at home, the cluster a linear discriminant of
    this class's clusters gives it (:func:`carry_linear`: a nuisance such as sequencing depth
    moves a cell away from all others rather than towards some, so nearly every cell of
    another class is nearest one side). Each boundary's separation is measured in that
    class's two half embeddings (the other two arrays), whose noise the partition never saw,
    against its separation in this class's ``halves``; where that class has subgroups of its
    own (``within``), also with each subgroup's mean taken out of its halves, and the lower
    of the two counts. A nuisance the classes share holds cells of every subtype, so it
    divides the other class across its subgroups as well; a subtype boundary of this class
    that the other class's cells take along their own subtypes' boundaries (programmes both
    classes carry, in other combinations: the interaction generator's controls, X-3) divides
    it only through them. A
    boundary is shared where another class is divided at least ``ratio`` times as sharply as
    this one, and with at most ``unexplained`` times the share of its variance
    left within the two sides (1 − separation; this class's share floored at
    ``SHARED_FLOOR``): a batch boundary divides every class cleanly, a subtype boundary
    carried to a class that lacks the program only cuts its cloud.

    Where boundaries are shared, the class they divide most gives the nuisance's levels: its
    points' clusters joined across the boundaries that do not divide it, and every point of
    this class takes the level of its nearest points of that class in the models' input (or
    its discriminant's level, where the linear carry divided that class most). So
    a cluster that no point of the other class took (a subtype whose program it lacks) still
    gets the level of its batch.

    Parameters
    ----------
    labels
        The partition of this class's points (integer labels).
    inputs
        The models' input of this class's points (``tl.subgroups`` passes its components
        above noise where distances are mostly noise, :func:`carrying_space`).
    halves
        This class's two half embeddings.
    others
        Class name → (models' input, half-1 embedding, half-2 embedding) of its points.
    n_neighbors
        Nearest points that vote for a point's cluster, or level.
    min_size
        A boundary is measured only where both of its clusters received this many points.
    ratio
        Share of its own separation at which a boundary counts as shared.
    unexplained
        Most share of the variance left within the sides elsewhere, relative to here.
    within
        Class name → the subgroups of its points (integer labels) that its own check
        accepted; a class not named, or with a single subgroup, is measured as is.
    balanced
        Measure every separation, here and elsewhere, with both sides of a boundary weighed
        alike (:func:`pair_separations`), as a partition accepted on the clusters that
        reproduce on their own is judged at home: weighted by size, a group of far-out cells
        that every class holds, in smaller shares elsewhere, divides the others weakly.
    """
    def in_halves(half1: np.ndarray, half2: np.ndarray, parts: np.ndarray) -> np.ndarray:
        return (pair_separations(half1, parts, min_size, balanced)
                + pair_separations(half2, parts, min_size, balanced)) / 2

    # each other class's halves with its own subgroups' means taken out, where it has some
    centred = {name: (centre_within(half1, groups), centre_within(half2, groups))
               for name, (_, half1, half2) in others.items()
               if (groups := (within or {}).get(name)) is not None
               and np.unique(groups).size > 1}

    k = int(labels.max()) + 1
    own = in_halves(*halves, labels)
    # as sharply (ratio) and about as cleanly (unexplained share) as at home
    bar = np.maximum(ratio * own, 1 - unexplained * np.maximum(1 - own, SHARED_FLOOR))
    bar = np.nan_to_num(bar, nan=np.inf)
    separation = np.full((k, k), np.nan)
    where = np.full((k, k), "", dtype=object)
    # (shared boundaries, separation, class, carry)
    best: tuple[int, float, str, str] | None = None
    carried_of = {}
    for name, (other_inputs, half1, half2) in others.items():
        unmeasured = np.zeros((k, k), dtype=bool)  # set by the first carry, nearest points
        for method in CARRIES:
            if method != CARRIES[0] and not unmeasured.any():
                continue
            carried = carry(method, inputs, labels, other_inputs, n_neighbors)
            sep = in_halves(half1, half2, carried)
            if name in centred:
                sep = np.fmin(sep, in_halves(*centred[name], carried))
            sep = np.pad(sep, (0, k - len(sep)), constant_values=np.nan)
            if method == CARRIES[0]:
                # a side they gave under CARRY_REACH of its share at home reached too few
                expected = np.bincount(labels, minlength=k) / labels.size * carried.size
                few = np.bincount(carried, minlength=k) < np.maximum(
                    min_size, CARRY_REACH * expected)
                unmeasured = ((np.isnan(sep) | few[:, None] | few[None, :])
                              & ~np.eye(k, dtype=bool))
            else:
                # the discriminant measures only what the nearest points left unmeasured, and
                # as it cuts a class along its direction wherever that class has structure,
                # only a boundary nearly as sharp there as here counts
                sep[~unmeasured | (sep < LINEAR_RATIO * own)] = np.nan
            better = np.isfinite(sep) & ~(separation >= sep)
            separation[better], where[better] = sep[better], name
            divided = np.nan_to_num(sep, nan=-np.inf) >= bar
            n_shared = int(np.triu(divided, 1).sum())
            score = (n_shared, float(np.nanmax(sep)) if np.isfinite(sep).any() else 0.0, name,
                     method)
            if n_shared and (best is None or score[:2] > best[:2]):
                best = score
            carried_of[name, method] = (carried, divided)
    shared = np.nan_to_num(separation, nan=-np.inf) >= bar
    if best is None:
        return SharedBoundaries(separation, where, own, shared)
    name, method = best[2], best[3]
    carried, divided = carried_of[name, method]
    reached = np.bincount(carried, minlength=k) >= min_size
    other_levels = _nuisance_levels(carried, divided, reached)
    known = other_levels >= 0
    # the levels come back the way the partition went
    levels = carry(method, others[name][0][known], other_levels[known], inputs, n_neighbors)
    return SharedBoundaries(separation, where, own, shared, levels, method)


# A subgroup is a region the label favours, not a subtype of it, where the models call the
# other classes' cells found there this class too: its own cells' held-out accuracy minus
# that of the other classes' cells carried to it stands at least SKEW_BAR above the same
# difference over the whole class (measured where at least SKEW_MIN_CELLS were carried).
# On real cells dealt to two classes with odds set by their type (workflows/benchmarks/
# subgroups.py, R-null-*-composition), the subgroups that followed the favoured types stood
# 0.27-0.61 above; the planted and interaction generators' subtypes and those of the real
# datasets at most 0.15 (RESULTS.md, session 36). A subtype whose programme the other class
# lacks takes none of its cells, or only nearest ones the models tell apart.
SKEW_BAR = 0.25
SKEW_MIN_CELLS = 10


def label_skew(labels: np.ndarray, inputs: np.ndarray, accuracy: np.ndarray,
               other_inputs: np.ndarray, other_accuracy: np.ndarray, *, n_neighbors: int,
               min_cells: int = SKEW_MIN_CELLS
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """How far the models call the other classes' cells near each cluster this class.

    Each cell of the other classes takes the cluster of its nearest cells of this class in the
    models' input (:func:`carry_vote`, as the shared check carries a partition). Per cluster:
    the mean held-out accuracy of its own cells minus that of the other classes' cells it
    took, less the same difference over the whole class (models that favour one class
    everywhere shift both alike). High where the models predict the place rather than the
    label: cells of another class found there are called this class.

    Cells no model was held out of (NaN accuracy) take no part. Returns per cluster the skew
    (NaN where fewer than ``min_cells`` cells were carried to it), the mean accuracy of its
    own cells and of the carried ones, and how many were carried.
    """
    k = int(labels.max()) + 1
    carried = carry_vote(inputs, labels, other_inputs, n_neighbors)

    def sums(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        known = np.isfinite(values)
        return (np.bincount(codes[known], weights=values[known], minlength=k),
                np.bincount(codes[known], minlength=k))

    own_total, own_count = sums(labels, accuracy)
    their_total, reached = sums(carried, other_accuracy)
    # 0 / 0 where no cell was held out of any model: nothing to compare, no skew
    with np.errstate(invalid="ignore", divide="ignore"):
        own, theirs = own_total / own_count, their_total / reached
        overall = own_total.sum() / own_count.sum() - their_total.sum() / reached.sum()
    skew = np.where(reached >= min_cells, own - theirs - overall, np.nan)
    return skew, own, theirs, reached


def merge_shared(labels: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """``labels`` with the clusters on either side of every shared boundary merged
    (connected components of the shared boundaries), numbered by size. For a partition whose
    shared boundaries do not outline levels of a nuisance (a private cluster links the two
    sides of a shared boundary), so that there is nothing to take out."""
    from scipy.sparse.csgraph import connected_components

    merged = connected_components(sparse.csr_matrix(shared), directed=False)[1]
    return by_size(merged[labels])


LEVEL_PURITY = 0.8  # share of a cluster's points in one level for it to belong to that level


def match_across_levels(labels: np.ndarray, points: np.ndarray, levels: np.ndarray,
                        purity: float = LEVEL_PURITY) -> np.ndarray:
    """``labels`` with the clusters that are copies of one another in different levels of a
    nuisance joined, numbered by size.

    Centring within levels takes out a nuisance's mean shift, not its interaction with the
    biology: attribution is a gradient, and a batch that shifts the input also turns every
    subtype's direction, so at scale a class can still fall into subtype × batch clusters
    (measured: 9 clusters for 3 subtypes × 3 batches at 10,000 cells a class). A cluster with
    at least ``purity`` of its points in one level belongs to it; between every two levels,
    clusters that are each other's nearest (mutual nearest centroids in ``points``) are the
    same group seen through two levels and are joined (connected components). Clusters that
    span levels are left as they are; a cluster of one level with no counterpart in another
    stays on its own only if it is not that level's mutual nearest match.
    """
    from itertools import combinations

    k = int(labels.max()) + 1
    level_of = np.full(k, -1)
    centroids = np.zeros((k, points.shape[1]))
    for c in range(k):
        inside = labels == c
        counts = np.bincount(levels[inside])
        if counts.sum() and counts.max() >= purity * counts.sum():
            level_of[c] = counts.argmax()
        centroids[c] = points[inside].mean(0)
    joined = np.zeros((k, k), dtype=bool)
    for a, b in combinations(np.unique(level_of[level_of >= 0]), 2):
        left, right = np.flatnonzero(level_of == a), np.flatnonzero(level_of == b)
        distance = ((centroids[left, None] - centroids[None, right]) ** 2).sum(-1)
        for i, j in enumerate(distance.argmin(1)):
            if distance[:, j].argmin() == i:
                joined[left[i], right[j]] = True
    return merge_shared(labels, joined)


def carry_levels(levels: np.ndarray, inputs: np.ndarray,
                 others: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 n_neighbors: int, method: str = CARRIES[0]
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``others`` with a shared nuisance taken out of their halves too: each of their points
    takes the level of this class's points (``levels`` at ``inputs``), carried by ``method``
    (:func:`carry`: the way the shared partition was carried), and the halves are centred
    within those levels. A partition found once the nuisance is out of this class is then
    measured in the other classes without it as well."""
    out = {}
    for name, (other_inputs, half1, half2) in others.items():
        theirs = carry(method, inputs, levels, other_inputs, n_neighbors)
        out[name] = (other_inputs, centre_within(half1, theirs), centre_within(half2, theirs))
    return out


def centre_within(points: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``points`` less the mean of their group: what is left once a partition (a nuisance's
    levels) is taken out."""
    out = np.array(points, dtype=np.float64, copy=True)
    for g in np.unique(groups):
        out[groups == g] -= out[groups == g].mean(0)
    return out


PARALLEL_MIN_POINTS = 5000  # below this a null pair clusters in well under a second


def null_jobs(n_points: int) -> int:
    """Processes for the null pairs of a class of ``n_points``: ``scdm.settings.n_jobs`` for
    large classes (independent Leiden runs of seconds each), else 1 (starting processes
    would cost more than they save)."""
    from ._settings import settings

    if n_points < PARALLEL_MIN_POINTS:
        return 1
    jobs = settings.n_jobs if settings.n_jobs is not None else os.cpu_count() or 1
    return max(1, int(jobs))


def _null_pair(n1: np.ndarray, n2: np.ndarray, kw: dict, min_size: int,
               min_jaccard: float | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reproducibility, separation, number of clusters (of ``min_size``; ``-1`` where the two
    halves differ) of one null pair at ``kw``'s resolutions, and the balanced separation of
    its clusters that reproduce on their own (:func:`reproducing_clusters`; NaN where none
    does, or ``min_jaccard`` is ``None``)."""
    rep, sep, k, own = [], [], [], []
    for a, b in zip(leiden_labels(n1, **kw), leiden_labels(n2, **kw), strict=True):
        rep.append(split_reproducibility(a, b))
        sep.append(cross_separation(n1, n2, a, b, min_size))
        ka, kb = n_substantial(a, min_size), n_substantial(b, min_size)
        k.append(ka if ka == kb else -1)
        own.append(_reproducing_separation(n1, n2, a, b, min_jaccard, min_size)[1])
    return np.asarray(rep), np.asarray(sep), np.asarray(k), np.asarray(own)


def _reproducing_separation(half1: np.ndarray, half2: np.ndarray, a: np.ndarray, b: np.ndarray,
                            min_jaccard: float | None, min_size: int
                            ) -> tuple[tuple[np.ndarray, np.ndarray, int], float, float]:
    """The clusters of ``a`` and ``b`` that reproduce on their own (:func:`reproducing_clusters`:
    both partitions relabelled, and their number), their balanced cross-separation and their
    agreement (ARI); NaN for both figures where none does or ``min_jaccard`` is ``None``."""
    if min_jaccard is None or (a.max() == 0 and b.max() == 0):
        return (np.zeros_like(a), np.zeros_like(b), 0), np.nan, np.nan
    r1, r2, m = reproducing_clusters(a, b, min_jaccard, min_size)
    if m == 0:
        return (r1, r2, 0), np.nan, np.nan
    return ((r1, r2, m), cross_separation(half1, half2, r1, r2, min_size, balanced=True),
            split_reproducibility(r1, r2))


def same_k_null(null_sep: np.ndarray, null_k: np.ndarray, k: int) -> float:
    """The best separation of the null pairs cut into ``k`` clusters: per pair, its largest at
    the resolutions where both its halves have ``k``, or where they never do, its first with
    more (a finer cut is no cleaner); the largest over the pairs. NaN if none reaches ``k``."""
    best = np.nan
    for sep, kk in zip(null_sep, null_k, strict=True):
        same = np.flatnonzero(kk == k)
        more = np.flatnonzero(kk > k)
        value = sep[same].max() if same.size else sep[more[0]] if more.size else np.nan
        best = np.fmax(best, value)
    return float(best)


def choose_resolution(half1: np.ndarray, half2: np.ndarray, *, n_neighbors: int,
                      resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
                      min_reproducibility: float = MIN_REPRODUCIBILITY, n_null: int = 20,
                      alpha: float = 0.05,
                      min_margin: float = MIN_MARGIN, min_size: int = 5, random_state: int = 0,
                      min_undecided: float | None = UNDECIDED_FLOOR,
                      cut_slack: float | None = CUT_SLACK,
                      min_jaccard: float | None = REPRODUCING_JACCARD) -> ResolutionChoice:
    """Choose the Leiden resolution whose split reproduces across halves beyond the null.

    Parameters
    ----------
    half1, half2
        Embeddings of the same points from two disjoint halves of the models.
    n_neighbors
        Neighbours of the kNN graphs.
    resolutions
        Leiden resolutions to scan.
    min_reproducibility
        Smallest ARI between the halves' partitions that counts as a reproducible split.
    n_null
        Null pairs (see :func:`null_factors`); the smallest attainable
        p-value is ``1 / (n_null + 1)``.
    alpha
        A resolution's p-value must not exceed this.
    min_margin
        A resolution's separation must also exceed the null pairs' largest by this much (an
        effect size: the p-value alone passes splits a hair beyond the null, and scanning a
        grid of resolutions gives many chances for one).
    min_size
        Clusters smaller than this do not count as subgroups (Leiden splits off a few
        outlying points at high resolution; the ARI barely notices them).
    random_state
        Seed of Leiden and of the null draws.
    min_undecided
        Resolutions whose halves agree at least this much but under ``min_reproducibility``
        are measured against the null too and, where they pass it and the margin, marked
        ``undecided`` in the table (never accepted): clusters more models may decide.
        ``None``: not measured.
    cut_slack
        A split's separation must also reach that of the null pairs cut into as many
        clusters, at any resolution (``null_separation_same_k``), less this slack
        (:data:`CUT_SLACK`); ``None``: not required. It costs the null pairs' clustering at
        every resolution, where any could be accepted or undecided.
    min_jaccard
        Where no resolution is accepted, the clusters that reproduce on their own
        (:func:`reproducing_clusters` at this Jaccard index; the rest one group) are checked
        at each resolution: the halves' agreement on them must reach ``min_reproducibility``,
        and their balanced separation (:func:`cross_separation`) must beat, by
        ``min_margin`` and at ``alpha``, that of the null pairs' own reproducing clusters at
        every resolution (where none has any, their ordinary separation's best). The
        resolution accepted so is marked ``reproducing_accepted``, and the choice
        ``reproducing``. ``None``: not done (:data:`REPRODUCING_JACCARD`).
    """
    check_fraction("min_reproducibility", min_reproducibility, "(0, 1]")
    if min_undecided is not None:
        check_fraction("min_undecided", min_undecided, "(0, 1]")
    check_fraction("alpha", alpha)
    check_fraction("min_margin", min_margin, "[0, 1)")
    if (n_null + 1) * alpha < 1:
        raise ValueError(f"with n_null={n_null} null draws the smallest p-value is "
                         f"{1 / (n_null + 1):.3f} > alpha={alpha}; raise n_null.")
    if half1.shape != half2.shape:
        raise ValueError(f"the halves must embed the same points alike, got shapes "
                         f"{half1.shape} and {half2.shape}.")
    resolutions = check_resolutions(resolutions)
    # n_runs read here and carried: the null pairs may run in other processes, where a value
    # the user set on the module would not be seen
    kw: dict[str, Any] = {"n_neighbors": n_neighbors, "resolutions": resolutions,
                          "random_state": random_state, "n_runs": LEIDEN_RUNS}
    parts1, parts2 = leiden_labels(half1, **kw), leiden_labels(half2, **kw)
    observed = np.array([split_reproducibility(a, b) for a, b in zip(parts1, parts2,
                                                                      strict=True)])
    separation = np.array([cross_separation(half1, half2, a, b, min_size) for a, b in zip(
        parts1, parts2, strict=True)])
    k1 = np.array([n_substantial(p, min_size) for p in parts1])
    k2 = np.array([n_substantial(p, min_size) for p in parts2])
    candidate = (observed >= min_reproducibility) & (k1 == k2) & (k1 > 1)
    near = ((observed >= min_undecided) & (k1 == k2) & (k1 > 1) & ~candidate
            if min_undecided is not None else np.zeros_like(candidate))
    own = [_reproducing_separation(half1, half2, a, b, min_jaccard, min_size)
           for a, b in zip(parts1, parts2, strict=True)]
    own_m = np.array([o[0][2] for o in own])
    own_sep, own_agreement = np.array([o[1] for o in own]), np.array([o[2] for o in own])
    own_candidate = (own_m > 0) & (np.nan_to_num(own_agreement, nan=-1.0)
                                   >= min_reproducibility)
    # The null is needed only where a resolution could be accepted, and at the most
    # reproducible one that a class without a split reports. Leiden is seeded per call and the
    # null draws do not depend on the resolutions, so this changes no value that is computed;
    # it skips most of the work on classes without structure (the others' rows are NaN).
    best = np.lexsort((np.asarray(resolutions), -observed))[0]
    needed = np.flatnonzero(candidate | near | (np.arange(len(resolutions)) == best))
    if cut_slack is not None and (candidate | near).any():  # the null's cuts at every one
        needed = np.arange(len(resolutions))
    if own_candidate.any():  # the null's own reproducing clusters, at every resolution
        needed = np.arange(len(resolutions))
    null_jaccard = min_jaccard if own_candidate.any() else None
    null_kw = {**kw, "resolutions": [resolutions[j] for j in needed]}
    rng = np.random.default_rng(random_state)
    factors = null_factors(half1, half2)  # the same for every draw
    # drawn in order first, then clustered (Leiden is seeded per call): the same values
    # whether the pairs run here or in parallel processes
    draws = [null_halves(factors, half1.shape[0], rng) for _ in range(n_null)]
    jobs = null_jobs(half1.shape[0])
    if jobs > 1:
        from joblib import Parallel, delayed

        pairs = Parallel(n_jobs=jobs)(delayed(_null_pair)(n1, n2, null_kw, min_size,
                                                          null_jaccard)
                                      for n1, n2 in draws)
    else:
        pairs = [_null_pair(n1, n2, null_kw, min_size, null_jaccard) for n1, n2 in draws]
    null_rep = np.full((n_null, len(resolutions)), np.nan)
    null_sep = np.full((n_null, len(resolutions)), np.nan)
    null_own = np.full((n_null, len(resolutions)), np.nan)
    null_k = np.full((n_null, len(resolutions)), -1)
    for i, (rep, sep, kk, own_null) in enumerate(pairs):
        null_rep[i, needed], null_sep[i, needed], null_k[i, needed] = rep, sep, kk
        null_own[i, needed] = own_null
    p_value = (1 + (null_sep >= separation[None, :] - 1e-12).sum(0)) / (1 + n_null)
    p_value[np.isnan(null_sep).all(0)] = np.nan
    margin = separation - null_sep.max(0)
    beyond = (p_value <= alpha) & (margin >= min_margin - 1e-12)
    same_k = np.full(len(resolutions), np.nan)
    cut_refused = np.zeros(len(resolutions), dtype=bool)
    if cut_slack is not None and needed.size == len(resolutions):
        for j in np.flatnonzero((k1 == k2) & (k1 > 1)):
            same_k[j] = same_k_null(null_sep, null_k, int(k1[j]))
        below = separation < same_k - cut_slack - 1e-12  # NaN (none reached k): no bar
        cut_refused = candidate & beyond & below
        beyond &= ~below
    accepted = candidate & beyond
    own_accepted = np.zeros(len(resolutions), dtype=bool)
    own_bar, own_p = np.nan, np.full(len(resolutions), np.nan)
    if own_candidate.any():
        # each null pair's best at any resolution: the scan over the grid gets as many tries;
        # where no null pair reproduces a cluster on its own, their ordinary cuts' best
        scored = null_own if np.isfinite(null_own).any() else null_sep
        per_pair = np.nan_to_num(np.nanmax(np.where(np.isnan(scored), -np.inf, scored), 1),
                                 neginf=0.0)
        own_bar = float(per_pair.max())
        own_p = (1 + (per_pair[:, None] >= own_sep[None, :] - 1e-12).sum(0)) / (1 + n_null)
        # not where the whole partition is undecided: more models decide that one
        # (tl.second_round), and a cluster accepted on its own would pre-empt them
        own_accepted = (own_candidate & ~accepted.any() & ~(near & beyond).any()
                        & (np.nan_to_num(own_sep) >= own_bar + min_margin - 1e-12)
                        & (own_p <= alpha))
    table = pd.DataFrame({"resolution": resolutions, "n_clusters_half1": k1,
                          "n_clusters_half2": k2, "reproducibility": observed,
                          "null_reproducibility_max": null_rep.max(0),
                          "separation": separation, "null_separation_mean": null_sep.mean(0),
                          "null_separation_max": null_sep.max(0),
                          "null_separation_same_k": same_k, "margin": margin,
                          "p_value": p_value, "n_null": n_null,
                          "accepted": accepted, "undecided": near & beyond,
                          "cut_refused": cut_refused})
    if min_jaccard is not None:
        table = table.assign(reproducing_clusters=own_m, reproducing_agreement=own_agreement,
                             reproducing_separation=own_sep, reproducing_null_max=own_bar,
                             reproducing_p_value=own_p, reproducing_accepted=own_accepted)
    if own_accepted.any():
        chosen = _most_refined(own_accepted, np.nan_to_num(own_agreement, nan=-1.0), own_m)
        parts = own[chosen][0]
        return ResolutionChoice(resolutions[chosen], table, (parts[0], parts[1]),
                                reproducing=min_jaccard)
    if not accepted.any():
        return ResolutionChoice(None, table)
    chosen = _most_refined(accepted, observed, np.maximum(k1, k2))
    return ResolutionChoice(resolutions[chosen], table, (parts1[chosen], parts2[chosen]))


def _switch_point(za: np.ndarray, zb: np.ndarray) -> float:
    """Where along a line two groups meet: the threshold that puts fewest of ``za`` above it
    and of ``zb`` below it (the middle one of equally good thresholds)."""
    z = np.concatenate([za, zb])
    order = np.argsort(z, kind="stable")
    zs, is_b = z[order], np.concatenate([np.zeros(za.size), np.ones(zb.size)])[order]
    # errors of a threshold just above zs[i]: b at or below it, a above it
    errors = np.cumsum(is_b) + (za.size - np.cumsum(1 - is_b))
    best = np.flatnonzero(errors == errors.min())
    i = best[(best.size - 1) // 2]
    return float((zs[i] + zs[i + 1]) / 2) if i + 1 < zs.size else float(zs[i])


def boundary_crowding(half1: np.ndarray, half2: np.ndarray, labels: np.ndarray, a: int,
                      b: int, window: float = GAP_WINDOW) -> tuple[float, int, int]:
    """How crowded the boundary between clusters ``a`` and ``b`` of ``labels`` is: the cells
    within ``window`` (in half the distance between the two centres) of where the two meet on
    the line through their centres (:func:`_switch_point`, kept ``window`` inside the
    centres), against as many around the emptier centre, counted in each half's own
    embedding (its own centres: the halves' axes differ) and pooled. Returns ``(ratio,
    at_boundary, at_centre)``; the ratio is ``inf`` where no cell is near the emptier centre
    but some are at the boundary, NaN where neither has any.

    A unimodal density's window counts never dip between two points (an average over a window
    is unimodal too), so a boundary at least as crowded as the emptier centre shows no gap
    between the clusters; a gap between types gives a ratio well under 1. Where the two meet
    rather than the midpoint: beside a rare type, the large one's tail reaches the midpoint."""
    mid = centre = 0
    for points in (half1, half2):
        xa, xb = points[labels == a], points[labels == b]
        ca, cb = xa.mean(0), xb.mean(0)
        direction = cb - ca
        length = float(direction @ direction)
        if length == 0:
            continue
        # the line through the centres, scaled so that they sit at -1 and +1
        middle = (ca + cb) @ direction / 2
        za, zb = (xa @ direction - middle) / (length / 2), (xb @ direction - middle) / (length / 2)
        z = np.concatenate([za, zb])
        meet = float(np.clip(_switch_point(za, zb), -1 + window, 1 - window))
        mid += int((np.abs(z - meet) <= window).sum())
        centre += int(min((np.abs(z + 1) <= window).sum(), (np.abs(z - 1) <= window).sum()))
    if centre == 0:
        return (np.inf if mid else np.nan), mid, centre
    return mid / centre, mid, centre


def merge_continua(labels: np.ndarray, half1: np.ndarray, half2: np.ndarray, *,
                   min_size: int = 5, crowding: float = CONTINUUM_CROWDING,
                   min_cells: int = CROWDING_MIN_CELLS,
                   max_separation: float = CONTINUUM_SEPARATION, window: float = GAP_WINDOW
                   ) -> tuple[np.ndarray, list[dict]]:
    """Merge the pairs of clusters of ``labels`` between which nothing thins out.

    A pair (both of at least ``min_size`` points) is one continuum where its boundary is at
    least ``crowding`` times as crowded as the emptier centre (:func:`boundary_crowding`, with
    at least ``min_cells`` near that centre, both halves counted: fewer tell nothing) and
    the halves put no more of the variance along the line between the two than a flat
    continuum cut in two (``max_separation``, :data:`CONTINUUM_SEPARATION`; mean of the
    halves' :func:`pair_separations`): both say there is no gap (``window``: the
    :func:`boundary_crowding` window). The most crowded such pair
    is merged and the pairs measured again, until none is left. Returns the labels (numbered
    by size) and one record per merge: ``{"sizes", "crowding", "at_boundary", "at_centre",
    "separation"}``.
    """
    labels = _numbered(np.asarray(labels))
    merges: list[dict] = []
    while True:
        counts = np.bincount(labels)
        big = [int(c) for c in np.flatnonzero(counts >= min_size)]
        if len(big) < 2:
            break
        seps = (pair_separations(half1, labels, min_size)
                + pair_separations(half2, labels, min_size)) / 2
        best = None
        for i, a in enumerate(big):
            for b in big[i + 1:]:
                ratio, mid, centre = boundary_crowding(half1, half2, labels, a, b, window)
                if not (ratio >= crowding and centre >= min_cells
                        and seps[a, b] < max_separation):
                    continue
                if best is None or ratio > best[0]:
                    best = (ratio, a, b, mid, centre, float(seps[a, b]))
        if best is None:
            break
        ratio, a, b, mid, centre, sep = best
        merges.append({"sizes": [int(counts[a]), int(counts[b])], "crowding": float(ratio),
                       "at_boundary": mid, "at_centre": centre, "separation": sep})
        labels = _numbered(np.where(labels == b, a, labels))
    return labels, merges


# Resolutions around the chosen one (as factors) at which the full embedding is clustered when
# the chosen one gives it another number of clusters than the halves agreed on; nearest first.
AGREED_FACTORS = (0.84, 1.19, 0.71, 1.41, 0.59, 1.68, 0.5, 2.0)


def agreed_partition(points: np.ndarray, choice: ResolutionChoice, *, n_neighbors: int,
                     min_size: int = 5, random_state: int = 0) -> tuple[np.ndarray, float]:
    """The partition of ``points`` (the full embedding of the checked points) that reports
    what the check accepted, and the resolution it was found at.

    The check accepts a number of clusters from the two halves' partitions at its chosen
    resolution; the full embedding, less noisy, is clustered at that resolution too. Where it
    gives another number of clusters of ``min_size`` (a split the halves did not check, or
    none of the one they did), the full embedding's partitions at the resolutions around it
    (:data:`AGREED_FACTORS`) with the agreed number are compared with the halves' and the one
    that agrees best with both (mean ARI) is taken; if none has that number, the partition at
    the chosen resolution stays.
    """
    if choice.resolution is None or choice.partitions is None:
        raise ValueError("no resolution was accepted: there is no partition to report.")
    kw = {"n_neighbors": n_neighbors, "random_state": random_state}
    resolution = float(choice.resolution)
    half1, half2 = choice.partitions
    if choice.reproducing is not None:
        return _reproducing_partition(points, choice, kw, min_size)
    labels = leiden_labels(points, resolutions=[resolution], **kw)[0]
    agreed = n_substantial(half1, min_size)
    if n_substantial(labels, min_size) == agreed:
        return labels, resolution
    near = [resolution * f for f in AGREED_FACTORS]
    best = -np.inf
    for r, candidate in zip(near, leiden_labels(points, resolutions=near, **kw), strict=True):
        if n_substantial(candidate, min_size) != agreed:
            continue
        score = (split_reproducibility(candidate, half1)
                 + split_reproducibility(candidate, half2)) / 2
        if score > best + 1e-12:  # ties: the nearer resolution, listed first
            labels, resolution, best = candidate, r, score
    return labels, resolution


def _reproducing_partition(points: np.ndarray, choice: ResolutionChoice, kw: dict,
                           min_size: int) -> tuple[np.ndarray, float]:
    """:func:`agreed_partition` of a choice accepted on the clusters that reproduce on their
    own: the full embedding's partition at the chosen resolution (else the nearest of those
    around it, :data:`AGREED_FACTORS`) in which each of them has a mutual match (mean Jaccard
    index with the halves' cluster at least the choice's), those clusters kept and the rest
    one group (0); where none has, the points both halves place in the same cluster."""
    assert choice.resolution is not None and choice.partitions is not None
    assert choice.reproducing is not None
    half1, half2 = choice.partitions
    m, bar = int(half1.max()), choice.reproducing

    def matched(labels: np.ndarray) -> np.ndarray | None:
        k = int(labels.max()) + 1
        score = (_jaccard(half1, labels, m + 1, k) + _jaccard(half2, labels, m + 1, k))[1:] / 2
        best = score.argmax(1)
        if not ((score.argmax(0)[best] == np.arange(m)).all()
                and (score.max(1) >= bar - 1e-12).all()):
            return None
        out = np.zeros_like(labels)
        for j, f in enumerate(best, start=1):
            out[labels == f] = j
        return _numbered(out) if n_substantial(out, min_size) >= 2 else None

    # the chosen resolution first, the ones around it only where it does not match, as in
    # agreed_partition (Leiden is seeded per resolution: the same partitions either way)
    resolution = float(choice.resolution)
    found = matched(leiden_labels(points, resolutions=[resolution], **kw)[0])
    if found is not None:
        return found, resolution
    near = [resolution * f for f in AGREED_FACTORS]
    for r, labels in zip(near, leiden_labels(points, resolutions=near, **kw), strict=True):
        if (found := matched(labels)) is not None:
            return found, r
    return _numbered(np.where(half1 == half2, half1, 0)), resolution


def _numbered(labels: np.ndarray) -> np.ndarray:
    """Labels numbered 0.. by size, as every partition here (empty numbers dropped)."""
    return by_size(np.unique(labels, return_inverse=True)[1].reshape(labels.shape))


def _most_refined(accepted: np.ndarray, observed: np.ndarray, n_clusters: np.ndarray,
                  tolerance: float = 0.02) -> int:
    """Among accepted resolutions reproducing within ``tolerance`` of the best, the partition
    with the most clusters, at the middle of the resolutions that give it.

    Coarser partitions that merge true groups reproduce just as well (both halves merge the
    same groups), so ties go to the finer one; finer partitions that cut a group in two
    reproduce worse and fall outside the tolerance.
    """
    best = observed[accepted].max()
    candidates = np.flatnonzero(accepted & (observed >= best - tolerance))
    finest = candidates[n_clusters[candidates] == n_clusters[candidates].max()]
    return int(finest[(finest.size - 1) // 2])
