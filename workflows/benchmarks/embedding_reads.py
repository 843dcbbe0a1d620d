"""TRAK's class embeddings from features on disk: all classes per read against one at a time.

``scdm.trak._lowrank.class_embeddings`` runs the randomized SVDs of every class together: each
block of a checkpoint's rows is read once per pass for all classes, and a power iteration
applies ``A Aᵀ`` checkpoint by checkpoint (``n_iter + 2`` reads of the features). The naive
way, as scdm did it before, embeds one class at a time with ``ClassFactors`` (``A @ M`` and
``Aᵀ @ Y`` as separate passes: ``2 n_iter + 2`` reads per class, and a class's rows are spread
over the whole file). Both on the same memory-mapped features (float32, written here), the
same random draws: time, feature bytes read (counted at the reads, page cache or not), and
the largest difference of the embeddings.

    python workflows/benchmarks/embedding_reads.py --cells 200000 --checkpoints 8 --classes 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import scdm._memmap as memmap
import scdm.trak._lowrank as lowrank


class CountingReads:
    """Counts the feature bytes each ``read_rows`` call touches: the span of rows it reads
    (a class's rows interleave with the other classes', so reading them touches every page
    in between). A block read again while its checkpoint is still the one being read (the
    second half of ``F_c (F_cᵀ Q)``: its pages were just read) is counted apart."""

    def __init__(self) -> None:
        self.real = memmap.read_rows
        self.reset()

    def reset(self) -> None:
        self.bytes = self.again = 0
        self.current: int | None = None
        self.seen: set = set()

    def __call__(self, array, idx, dtype=None, cols=None):
        out = self.real(array, idx, dtype, cols)
        first, last = ((idx.start, idx.stop - 1) if isinstance(idx, slice)
                       else (int(idx[0]), int(idx[-1])))
        span = (last - first + 1) * array.strides[0]
        if id(array) != self.current:
            self.current, self.seen = id(array), set()
        if (first, last) in self.seen:
            self.again += span
        else:
            self.bytes += span
            self.seen.add((first, last))
        return out


def one_at_a_time(factors, groups, q, *, n_comps, rank, seed, n_iter=4, oversample=10):
    """The previous computation: per class, a randomized range finder over ``ClassFactors``
    with separate ``A @ M`` and ``Aᵀ @ Y`` passes."""
    out = []
    for rows in groups:
        A = lowrank.ClassFactors(factors, rows)
        width = min(rank + oversample, min(A.shape))
        omega = torch.randn(A.shape[1], width, generator=torch.Generator().manual_seed(seed))
        Q = lowrank._orthonormal(A.matmul(omega))
        for _ in range(n_iter):
            Q = lowrank._orthonormal(A.matmul(lowrank._orthonormal(A.rmatmul(Q))))
        Ub, S, _ = torch.linalg.svd(A.rmatmul(Q).T.double(), full_matrices=False)
        U = Q.double().numpy() @ Ub[:, :rank].numpy()
        out.append(lowrank.embedding_from_svd(U, S[:rank].numpy(), q[rows], n_comps=n_comps))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--proj-dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, k = args.cells, args.proj_dim
    label = rng.integers(0, args.classes, n)
    groups = [np.flatnonzero(label == g) for g in range(args.classes)]
    q = rng.uniform(0.05, 0.9, n)
    counter = CountingReads()
    lowrank.read_rows = counter  # both ways read through this name
    with tempfile.TemporaryDirectory() as tmp:
        factors = []
        for c in range(args.checkpoints):
            F = np.lib.format.open_memmap(Path(tmp, f"f{c}.npy"), mode="w+", dtype=np.float32,
                                          shape=(n, k))
            for i in range(0, n, 65536):
                part = rng.normal(size=(min(65536, n - i), k)).astype(np.float32) * 0.2
                part[:, :4] += np.eye(4, dtype=np.float32)[rng.integers(0, 4, part.shape[0])]
                F[i:i + part.shape[0]] = part
            F.flush()
            del F
            factors.append(np.load(Path(tmp, f"f{c}.npy"), mmap_mode="r"))
        size = n * k * 4 * args.checkpoints
        rows = []
        results = {}
        for name, run in (("one class at a time (before)", one_at_a_time),
                          ("all classes per read (now)", lowrank.class_embeddings)):
            counter.reset()
            start = time.perf_counter()
            results[name] = run(factors, groups, q, n_comps=10, rank=256, seed=0)
            rows.append((name, time.perf_counter() - start, counter.bytes / size,
                         counter.again / size))
    before, now = (results[name] for name in results)
    diff = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(before, now,
                                                                             strict=True))
    print(f"{n:,} cells, {args.classes} classes, {args.checkpoints} checkpoints × {k} "
          f"({size / 2**30:.2f} GiB of features), rank 256, n_iter 4")
    print("| way | time | feature pages touched (passes over the file) | of the block just read |")
    print("|---|---|---|---|")
    for name, seconds, passes, again in rows:
        print(f"| {name} | {seconds:.1f} s | {passes:.1f} | {again:.1f} |")
    print(f"time ratio {rows[0][1] / rows[1][1]:.2f}×, reads ratio {rows[0][2] / rows[1][2]:.2f}×; "
          f"largest difference of the embeddings, relative to the largest entry: {diff:.1e}")


if __name__ == "__main__":
    main()
