"""Neighbours at atlas scale: the partitioned (inverted-file) kNN search against the exact one.

``scdm.clustering.knn_indices`` is exact (scikit-learn) up to ``EXACT_KNN_MAX`` points and a
seeded inverted-file search (``partitioned_knn``) above. Per size, on points whose neighbours
are hard to find (20 Gaussian clusters in 50 dimensions of isotropic noise, where everything in
a cluster is nearly equidistant) and on points along a curve (a manifold, as expression and
PCs are): the time of both searches, the share of the exact neighbours found (recall) and how
much farther the neighbours found lie (mean distance, found / exact). Above ``--exact-max``
points scikit-learn's exact search (what ``knn_indices`` runs below the threshold) is timed for
1,000 sampled points only and extrapolated to all of them (marked ``~``); recall and distances
there come from a float64 brute force over those 1,000.

    python workflows/benchmarks/knn.py --sizes 20000 100000 300000 [--exact-max 100000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from scdm.clustering import knn_indices, partitioned_knn


def clusters(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(20, 50)) * 3
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, 50))).astype(np.float32)


def curve(n: int, rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0, 6, n)
    X = np.column_stack([np.sin(k * t / 3 + k) for k in range(1, 51)]) * 3
    return (X + rng.normal(0, 0.1, X.shape)).astype(np.float32)


def exact_for(X: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact neighbours (and their distances) of ``queries``, brute force in float64."""
    Xt = torch.from_numpy(X).double()
    out, dist = [], []
    for i in range(0, queries.size, 256):
        q = torch.from_numpy(queries[i:i + 256])
        d = torch.cdist(Xt[q], Xt)
        d[torch.arange(q.numel()), q] = np.inf
        found = torch.topk(d, k, largest=False)
        out.append(found.indices.numpy())
        dist.append(found.values.numpy())
    return np.concatenate(out), np.concatenate(dist)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--exact-max", type=int, default=100_000)
    parser.add_argument("-k", type=int, default=15)
    args = parser.parse_args()
    print("| points | data | exact search | partitioned | speed-up | recall | distance found / "
          "exact |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for name, make in (("clusters", clusters), ("curve", curve)):
            X = make(n, np.random.default_rng(0))
            start = time.perf_counter()
            found = partitioned_knn(X, args.k, random_state=0)
            part_s = time.perf_counter() - start
            if n <= args.exact_max:
                start = time.perf_counter()
                exact = knn_indices(X, args.k, exact=True)
                exact_s, mark = time.perf_counter() - start, ""
                queries = np.random.default_rng(1).choice(n, min(n, 1000), replace=False)
            else:
                queries = np.random.default_rng(1).choice(n, 1000, replace=False)
                from sklearn.neighbors import NearestNeighbors

                start = time.perf_counter()  # the exact search knn_indices runs, on the sample
                NearestNeighbors(n_neighbors=args.k + 1).fit(X).kneighbors(X[queries])
                exact_s, mark = (time.perf_counter() - start) * n / queries.size, "~"
                exact = None
            truth, truth_d = exact_for(X, queries, args.k)
            if exact is not None:
                truth = exact[queries]
            recall = np.mean([np.intersect1d(a, b).size / args.k
                              for a, b in zip(found[queries], truth, strict=True)])
            got = np.linalg.norm(X[found[queries]] - X[queries][:, None], axis=2)
            ratio = float((got.mean(1) / truth_d.mean(1)).mean())
            print(f"| {n:,} | {name} | {mark}{exact_s:.1f} s | {part_s:.1f} s | "
                  f"{mark}{exact_s / part_s:.1f}× | {recall:.4f} | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
