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

from collections.abc import Sequence

import numpy as np
import torch

from .._memmap import read_rows

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


def randomized_left(A: ClassFactors, rank: int, *, n_iter: int = 4, oversample: int = 10,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Leading ``rank`` left singular vectors and values of ``A`` by a randomized range finder
    with ``n_iter`` power iterations (Halko, Martinsson & Tropp 2011), using only ``A @ M``
    and ``Aᵀ @ Y``."""
    width = min(rank + oversample, min(A.shape))
    generator = torch.Generator().manual_seed(int(seed))
    omega = torch.randn(A.shape[1], width, generator=generator).to(A.device)
    Q = _orthonormal(A.matmul(omega))
    for _ in range(n_iter):
        Q = _orthonormal(A.matmul(_orthonormal(A.rmatmul(Q))))
    B = A.rmatmul(Q).T.double()  # width × K·k
    Ub, S, _ = torch.linalg.svd(B, full_matrices=False)
    U = Q.double() @ Ub[:, :rank]
    return U.cpu().numpy(), S[:rank].cpu().numpy()


def _thin_svd(A: np.ndarray | ClassFactors, rank: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and values of ``A`` (all when ``rank`` covers them)."""
    full = min(A.shape)
    if rank >= full or full <= 2 * rank:
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
    q = np.asarray(q, dtype=np.float64)
    n = A.shape[0]
    U, S = _thin_svd(A, rank, seed)
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
