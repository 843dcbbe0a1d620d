"""The attribution embedding of one class from low-rank factors, without the n × n matrix.

Within a class, TRAK's attribution of training example ``i`` to target ``j`` is
``W[j, i] = a_jᵀ a_i · q_i`` with ``a`` the concatenated per-checkpoint features
``G_c (GᵀG + λI)^(-1/2) / sqrt(K)``. The datamodels embedding (:mod:`scdm.tl._embed`) centres
and scales every column of the class's block of ``W`` and takes its leading singular vectors;
here the same is done on ``W = U S² Uᵀ diag(q)`` from a thin SVD ``A = U S Vᵀ`` (exact, or
randomized to ``rank`` components for large classes), in ``O(n r²)`` memory and time after the
SVD.

A large class is never copied out of the checkpoints' features: :class:`ClassFactors` applies
``A`` and ``Aᵀ`` checkpoint by checkpoint (one ``|C| × proj_dim`` slice at a time), which is
all the randomized SVD needs. At 100,000 cells and 40 checkpoints a class's ``A`` would be a
second 4 GB copy of the features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .._memmap import read_rows
from ._core import single_threaded

BLOCK_ROWS = 65536  # rows of a memory-mapped checkpoint read at once (fixed: same numbers)


class ClassFactors:
    """``A = [F_1[rows], …, F_K[rows]] / sqrt(K)`` as an operator, without forming it.

    Parameters
    ----------
    factors
        Per checkpoint ``n × k`` features: tensors on one device, or arrays (memory maps of
        :class:`scdm.trak._ondisk.FeatureStore`), whose rows are read for each product and
        released again, so that memory holds one checkpoint's rows of the class at a time.
    rows
        The class's rows (sorted).
    device
        Where the products are computed (default: the tensors' device, or the CPU).
    """

    def __init__(self, factors: Sequence[torch.Tensor | np.ndarray],
                 rows: np.ndarray | torch.Tensor, device: torch.device | str | None = None):
        self.factors = list(factors)
        first = self.factors[0]
        self.device = torch.device(device if device is not None else (
            first.device if isinstance(first, torch.Tensor) else "cpu"))
        self.index = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows)
        self.rows = torch.as_tensor(self.index, device=self.device)
        self.k = int(first.shape[1])
        self.scale = 1.0 / np.sqrt(len(self.factors))
        self.shape = (int(self.index.size), self.k * len(self.factors))

    def _slice(self, f: torch.Tensor | np.ndarray, part: slice = slice(None)) -> torch.Tensor:
        """Rows ``part`` (of the class's rows) of one checkpoint's features."""
        if isinstance(f, torch.Tensor):
            return f[self.rows[part].to(f.device)].to(self.device)
        return torch.from_numpy(read_rows(f, self.index[part])).to(self.device)

    def _parts(self, f: torch.Tensor | np.ndarray) -> list[slice]:
        """Row chunks read at once: all of a tensor's, :data:`BLOCK_ROWS` of a memory map's
        (a class of 500,000 cells would otherwise read 1 GB per checkpoint)."""
        n = self.shape[0]
        if isinstance(f, torch.Tensor):
            return [slice(0, n)]
        return [slice(i, min(i + BLOCK_ROWS, n)) for i in range(0, n, BLOCK_ROWS)]

    def dense(self) -> np.ndarray:
        return (torch.cat([self._slice(f) for f in self.factors], dim=1) * self.scale
                ).cpu().numpy()

    def matmul(self, M: torch.Tensor) -> torch.Tensor:
        """``A @ M`` (``M``: ``K·k × r``)."""
        out = torch.zeros(self.shape[0], M.shape[1], dtype=M.dtype, device=M.device)
        for c, f in enumerate(self.factors):
            block = M[c * self.k:(c + 1) * self.k]
            for part in self._parts(f):
                out[part] += self._slice(f, part).to(M.dtype) @ block
        return out * self.scale

    def rmatmul(self, Y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ @ Y`` (``Y``: ``|C| × r``)."""
        out = []
        for f in self.factors:
            parts = self._parts(f)
            total = self._slice(f, parts[0]).to(Y.dtype).T @ Y[parts[0]]
            for part in parts[1:]:
                total = total + self._slice(f, part).to(Y.dtype).T @ Y[part]
            out.append(total)
        return torch.cat(out) * self.scale


def _orthonormal(Y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(Y.double())[0].to(Y.dtype)


def _chunk(f: torch.Tensor | np.ndarray, first: int, last: int,
           device: torch.device) -> torch.Tensor:
    """Rows ``first:last`` of one checkpoint's features (a memory map's pages released)."""
    if isinstance(f, torch.Tensor):
        return f[first:last].to(device)
    return torch.from_numpy(read_rows(f, slice(first, last))).to(device)


@dataclass(frozen=True)
class PassPlan:
    """What every checkpoint's share of a pass of :func:`randomized_left_classes` needs besides
    its features and the current range: the classes' rows, each class's range width, the
    random start ``Ω`` and ``1 / sqrt(K)``. Plain arrays, so that a Ray task can be sent it."""

    groups: tuple[np.ndarray, ...]
    widths: tuple[int, ...]
    omega: tuple[np.ndarray, ...]
    scale: float
    n: int
    k: int

    def blocks(self, device: torch.device
               ) -> list[tuple[int, int, list[tuple[int, torch.Tensor, slice]]]]:
        """Per block of :data:`BLOCK_ROWS` file rows: ``(first, last, [(class, its rows in the
        block, their span in the class)])``. A class's rows are sorted, so those inside one
        block are consecutive rows of the class: its range and product are sliced, never
        gathered or scattered."""
        owner = np.full(self.n, -1, dtype=np.int64)
        position = np.zeros(self.n, dtype=np.int64)
        for g, rows in enumerate(self.groups):
            owner[rows] = g
            position[rows] = np.arange(len(rows))
        out = []
        for lo in range(0, self.n, BLOCK_ROWS):
            hi = min(lo + BLOCK_ROWS, self.n)
            inside = owner[lo:hi]
            parts = []
            for g in np.unique(inside[inside >= 0]):
                local = np.flatnonzero(inside == g)
                span = slice(int(position[lo + local[0]]), int(position[lo + local[-1]]) + 1)
                parts.append((int(g), torch.from_numpy(local).to(device), span))
            out.append((lo, hi, parts))
        return out


def checkpoint_products(plan: PassPlan, f: torch.Tensor | np.ndarray, c: int,
                        Q: Sequence[torch.Tensor] | None, *, apply: bool, backwards: bool,
                        device: torch.device,
                        blocks: list | None = None, into: list[torch.Tensor] | None = None
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Checkpoint ``c``'s share of a pass, for every class: ``Z_c = F_cᵀ Q / sqrt(K)`` (its
    rows of ``Aᵀ Q``; ``Ω``'s rows when ``Q`` is None) and, with ``apply``, ``F_c Z_c`` — added
    into ``into`` (the pass's running sum, here) or returned (a Ray task's share, summed by
    the caller in the same order: every row of ``F_c Z_c`` is one product of one block either
    way, so the sums are bitwise the same)."""
    blocks = plan.blocks(device) if blocks is None else blocks
    cols = slice(c * plan.k, (c + 1) * plan.k)
    if Q is None:
        Z = [torch.as_tensor(w[cols]).to(device) for w in plan.omega]
    else:
        Z = [torch.zeros(plan.k, w, device=device) for w in plan.widths]
        # one thread: a sum over thousands of rows, whose last bits follow the thread count
        # with Intel's MKL; a Ray task's (1 thread) must equal the local run's bitwise
        with single_threaded():
            for lo, hi, parts in blocks:
                block = _chunk(f, lo, hi, device)
                for g, local, span in parts:
                    Z[g] += block[local].T @ Q[g][span]
        for z in Z:
            z *= plan.scale
    if not apply:
        return Z, None
    out = into if into is not None else [torch.zeros(len(rows), w, device=device)
                                         for rows, w in zip(plan.groups, plan.widths,
                                                            strict=True)]
    for lo, hi, parts in (reversed(blocks) if backwards else blocks):
        block = _chunk(f, lo, hi, device)
        for g, local, span in parts:
            if into is not None:
                out[g][span] += block[local] @ Z[g]
            else:
                out[g][span] = block[local] @ Z[g]
    return Z, (None if into is not None else out)


# (order, Q, apply, backwards) → (c, Z_c, F_c Z_c or None) in ``order``: another executor of
# checkpoint_products (Ray tasks: scdm.workers.RayCheckpointProducts)
CheckpointMap = Callable[[PassPlan, Sequence[int], Sequence[torch.Tensor] | None, bool, bool],
                         Iterator[tuple[int, list[torch.Tensor], list[torch.Tensor] | None]]]


def randomized_left_classes(factors: Sequence[torch.Tensor | np.ndarray],
                            groups: Sequence[np.ndarray], rank: int, *, n_iter: int = 4,
                            oversample: int = 10, seed: int = 0,
                            device: torch.device | str | None = None, progress: bool = False,
                            desc: str = "TRAK embedding", executor: CheckpointMap | None = None
                            ) -> list[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
    """Leading ``rank`` left singular vectors and values of every class's
    ``A = [F_1[rows], …, F_K[rows]] / sqrt(K)``, by a randomized range finder with ``n_iter``
    power iterations (Halko, Martinsson & Tropp 2011), all classes at once.

    The features are read in file order, :data:`BLOCK_ROWS` rows of one checkpoint at a time,
    and each read serves every class: the classes' rows interleave in the file, so a class
    read on its own touches nearly every page, and reading class by class multiplies what is
    read from disk by the number of classes. A power iteration applies ``A Aᵀ`` checkpoint by
    checkpoint (``F_c (F_cᵀ Q)``, :func:`checkpoint_products`), reading each checkpoint's rows
    twice in a row — the second time from the page cache — so the whole randomized SVD reads
    the features ``n_iter + 2`` times, and every other pass runs backwards, so that what the
    page cache still holds from the last pass is used first. (The range is re-orthonormalised
    after each ``A Aᵀ``, not between ``Aᵀ`` and ``A``: the same subspace, with half the reads.)

    ``executor``: run the checkpoints' shares elsewhere (Ray tasks, one checkpoint each); they
    are summed here in the same order, so the result is bitwise the same on the same device.

    Returns, per class, ``(Q, Ub, S)``: the class's left singular vectors are
    ``Q.double() @ Ub`` (formed by the caller one class at a time; together they are as
    large as the features of one checkpoint in float64).
    """
    K = len(factors)
    n, k = int(factors[0].shape[0]), int(factors[0].shape[1])
    first = factors[0]
    dev = torch.device(device if device is not None else (
        first.device if isinstance(first, torch.Tensor) else "cpu"))
    for rows in groups:
        if len(rows) > 1 and (np.diff(rows) <= 0).any():
            raise ValueError("every class's rows must be sorted and distinct.")
    widths = [min(rank + oversample, len(rows), K * k) for rows in groups]
    omega = []
    for width in widths:  # every class from the same seed, as one class alone would draw
        generator = torch.Generator().manual_seed(int(seed))
        omega.append(torch.randn(K * k, width, generator=generator).numpy())
    plan = PassPlan(groups=tuple(np.asarray(rows, dtype=np.int64) for rows in groups),
                    widths=tuple(widths), omega=tuple(omega), scale=float(1.0 / np.sqrt(K)),
                    n=n, k=k)
    blocks = plan.blocks(dev) if executor is None else None

    bar = tqdm(total=(n_iter + 2) * K, desc=desc, unit="checkpoint", disable=not progress)

    def sweep(Q: list[torch.Tensor] | None, backwards: bool, apply: bool
              ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``Z = Aᵀ Q`` (or ``Ω`` when ``Q`` is None) and, with ``apply``, ``Y = A Z``."""
        Z = [torch.zeros(K * k, w, device=dev) for w in widths]
        # the products only where they are used (all classes' Y: 1 GB at 1,000,000 cells)
        Y = [torch.zeros(len(rows), w, device=dev) for rows, w in zip(groups, widths,
                                                                         strict=True)
             ] if apply else []
        order = list(range(K - 1, -1, -1) if backwards else range(K))
        shares: Iterator[tuple[int, list[torch.Tensor], list[torch.Tensor] | None]]
        if executor is None:
            shares = ((c, *checkpoint_products(plan, factors[c], c, Q, apply=apply,
                                               backwards=backwards, device=dev,
                                               blocks=blocks, into=Y if apply else None))
                      for c in order)
        else:
            shares = executor(plan, order, Q, apply, backwards)
        for c, Zc, P in shares:
            for g, z in enumerate(Zc):
                Z[g][c * k:(c + 1) * k] = z.to(dev)
            if apply and P is not None:
                for g, p in enumerate(P):
                    Y[g] += p.to(dev)
            bar.update()
        return Z, [y.mul_(plan.scale) for y in Y]

    _, Y = sweep(None, backwards=False, apply=True)
    Q = [_orthonormal(y) for y in Y]
    for i in range(n_iter):
        _, Y = sweep(Q, backwards=i % 2 == 0, apply=True)
        Q = [_orthonormal(y) for y in Y]
    Z, _ = sweep(Q, backwards=n_iter % 2 == 0, apply=False)
    bar.close()
    out = []
    for g in range(len(groups)):
        Ub, S, _ = torch.linalg.svd(Z[g].T.double(), full_matrices=False)
        out.append((Q[g], Ub[:, :rank].cpu().numpy(), S[:rank].cpu().numpy()))
    return out


def randomized_left(A: ClassFactors, rank: int, *, n_iter: int = 4, oversample: int = 10,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Leading ``rank`` left singular vectors and values of one class's ``A``
    (:func:`randomized_left_classes` with that class alone)."""
    order = np.argsort(A.index, kind="stable")  # the reads run in file order
    [(Q, Ub, S)] = randomized_left_classes(A.factors, [A.index[order]], rank, n_iter=n_iter,
                                           oversample=oversample, seed=seed, device=A.device)
    U = np.empty((A.shape[0], Ub.shape[1]))
    U[order] = Q.double().cpu().numpy() @ Ub
    return U, S


def _dense_path(rows: int, width: int, rank: int) -> bool:
    """Whether a class's thin SVD is computed exactly (``rank`` covers it, or nearly)."""
    full = min(rows, width)
    return rank >= full or full <= 2 * rank


def _thin_svd(A: np.ndarray | ClassFactors, rank: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and values of ``A`` (all when ``rank`` covers them)."""
    if _dense_path(A.shape[0], A.shape[1], rank):
        dense = (A.dense() if isinstance(A, ClassFactors) else np.asarray(A)).astype(np.float64)
        if dense.shape[0] <= dense.shape[1]:  # via the small Gram matrix: |C| × |C|
            values, vectors = np.linalg.eigh(dense @ dense.T)
            order = np.argsort(values)[::-1]
            values = np.sqrt(np.clip(values[order], 0, None))
            return vectors[:, order], values
        U, S, _ = np.linalg.svd(dense, full_matrices=False)
        return U, S
    if not isinstance(A, ClassFactors):
        A = ClassFactors([torch.as_tensor(np.asarray(A, dtype=np.float32))],
                         np.arange(A.shape[0]))
    return randomized_left(A, rank, seed=seed)


CHUNK_ROWS = 65536


def _chunked_rows(U: np.ndarray, f) -> np.ndarray:
    """``f`` of each row chunk of ``U``, concatenated (no temporary of ``U``'s size)."""
    return np.concatenate([f(U[i:i + CHUNK_ROWS]) for i in range(0, U.shape[0], CHUNK_ROWS)])


def _chunked_gram(U: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Uᵀ diag(w) U`` over row chunks."""
    out = np.zeros((U.shape[1], U.shape[1]))
    for i in range(0, U.shape[0], CHUNK_ROWS):
        u = U[i:i + CHUNK_ROWS]
        out += (u * w[i:i + CHUNK_ROWS, None]).T @ u
    return out


def lowrank_embedding(A: np.ndarray | ClassFactors, q: np.ndarray, *, n_comps: int,
                      rank: int = 256, standardize: bool = True, seed: int = 0) -> np.ndarray:
    """Leading components of ``W = A Aᵀ diag(q)`` with centred (and scaled) columns.

    Parameters
    ----------
    A
        ``|C| × r`` factors of one class (rows: its examples, as targets and as training
        examples), an array or a :class:`ClassFactors`.
    q
        ``|C|`` out-to-loss weights of the training examples.
    n_comps
        Components returned.
    rank
        Components of ``A`` kept (all when ``A`` has no more).
    standardize
        Scale every column to unit variance (constant columns become 0), as the datamodels
        embedding does.
    seed
        Seed of the randomized SVD.

    Returns
    -------
    ``|C| × n_comps`` scores ``U·S`` of the standardised matrix, each component's sign fixed
    so that its largest loading is positive (as :func:`scdm.tl.embed_datamodels`).
    """
    U, S = _thin_svd(A, rank, seed)
    return embedding_from_svd(U, S, q, n_comps=n_comps, standardize=standardize)


def class_embeddings(factors: Sequence[torch.Tensor | np.ndarray], groups: Sequence[np.ndarray],
                     q: np.ndarray, *, n_comps: int, rank: int = 256, seed: int = 0,
                     device: torch.device | str | None = None, progress: bool = False,
                     desc: str = "TRAK embedding", executor: CheckpointMap | None = None
                     ) -> list[np.ndarray]:
    """:func:`lowrank_embedding` of every class (``groups``: each class's sorted rows) of the
    same per-checkpoint features, the large classes' randomized SVDs in one set of reads
    (:func:`randomized_left_classes`). Equal to embedding the classes one by one, up to
    rounding (the same random draws; the order of the sums differs). ``executor``: where the
    large classes' checkpoint products run (:func:`randomized_left_classes`)."""
    width = len(factors) * int(factors[0].shape[1])
    q = np.asarray(q, dtype=np.float64)
    large = [g for g, rows in enumerate(groups) if not _dense_path(len(rows), width, rank)]
    out: list[np.ndarray] = [np.zeros((0, n_comps))] * len(groups)
    for g, rows in enumerate(groups):
        if g not in large:
            out[g] = lowrank_embedding(ClassFactors(factors, rows, device=device), q[rows],
                                       n_comps=n_comps, rank=rank, seed=seed)
    if large:
        found = randomized_left_classes(factors, [groups[g] for g in large], rank, seed=seed,
                                        device=device, progress=progress, desc=desc,
                                        executor=executor)
        for g, (Q, Ub, S) in zip(large, found, strict=True):
            U = Q.double().cpu().numpy() @ Ub
            out[g] = embedding_from_svd(U, S, q[groups[g]], n_comps=n_comps)
            del U
    return out


def embedding_from_svd(U: np.ndarray, S: np.ndarray, q: np.ndarray, *, n_comps: int,
                       standardize: bool = True) -> np.ndarray:
    """:func:`lowrank_embedding` from the thin SVD ``A = U S Vᵀ`` of the class's factors."""
    q = np.asarray(q, dtype=np.float64)
    n = U.shape[0]
    U, S = U.astype(np.float64, copy=False), S.astype(np.float64, copy=False)
    keep = S > S.max() * 1e-10 if S.size and S.max() > 0 else np.zeros(S.size, bool)
    if not keep.all():
        U, S = U[:, keep], S[keep]
    S2 = S**2
    # W = U S² Uᵀ diag(q). Nothing of U's size is formed besides U itself (a class of 500,000
    # cells has a 1 GB U): the products below run over row chunks.
    mean = (U @ (U.mean(axis=0) * S2)) * q  # column means of W
    if standardize:
        # ||W e_i||² = q_i² ||S² u_i||², as U has orthonormal columns
        sq = q**2 * _chunked_rows(U, lambda u: ((u * S2) ** 2).sum(axis=1)) / n
        std = np.sqrt(np.clip(sq - mean**2, 0, None))
        scale = np.where(std > 1e-12 * max(std.max(initial=0.0), 1e-300), 1.0 / np.where(
            std > 0, std, 1.0), 0.0)
    else:
        scale = np.ones(n)
    # M = (W - 1 meanᵀ) diag(scale) = L Rᵀ with L = [U S², 1] and R = [diag(q·scale) U,
    # -mean·scale]. L's QR is known from U's orthonormal columns: the ones vector's part
    # outside U's span completes it. Of R only a C with CᵀC = RᵀR is needed (the SVD of
    # RL Cᵀ has M's left vectors and values), from R's small Gram matrix.
    ones = U.sum(axis=0)  # Uᵀ1
    rest = 1.0 - U @ ones
    rest_norm = float(np.linalg.norm(rest))
    width = U.shape[1] + 1
    RL = np.zeros((width, width))
    RL[:-1, :-1] = np.diag(S2)
    RL[:-1, -1] = ones
    RL[-1, -1] = rest_norm
    weights = q * scale
    gram = np.zeros((width, width))
    gram[:-1, :-1] = _chunked_gram(U, weights**2)
    gram[:-1, -1] = gram[-1, :-1] = -(U.T @ (weights * mean * scale))
    gram[-1, -1] = float(((mean * scale) ** 2).sum())
    values, vectors = np.linalg.eigh(gram)
    C = np.sqrt(np.clip(values, 0, None))[:, None] * vectors.T
    Uc, Sc, _ = np.linalg.svd(RL @ C.T)
    comps = min(n_comps, Sc.size, n - 1)
    if rest_norm <= 1e-12 * np.sqrt(n):  # the ones vector lies in U's span already
        Uc[-1] = 0.0
    U_left = U @ Uc[:-1, :comps] + np.outer(rest / max(rest_norm, 1e-300), Uc[-1, :comps])
    scores = U_left * Sc[:comps]
    signs = np.sign(U_left[np.argmax(np.abs(U_left), axis=0), np.arange(comps)])
    signs[signs == 0] = 1
    out = np.zeros((n, n_comps))
    out[:, :comps] = scores * signs
    return out
