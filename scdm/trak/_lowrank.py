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


class ClassFactors:
    """``A = [F_1[rows], …, F_K[rows]] / sqrt(K)`` as an operator, without forming it.

    Parameters
    ----------
    factors
        Per checkpoint ``n × k`` features (tensors on one device).
    rows
        The class's rows.
    """

    def __init__(self, factors: Sequence[torch.Tensor], rows: np.ndarray | torch.Tensor):
        self.factors = list(factors)
        self.rows = torch.as_tensor(np.asarray(rows), device=self.factors[0].device)
        self.k = int(self.factors[0].shape[1])
        self.scale = 1.0 / np.sqrt(len(self.factors))
        self.shape = (int(self.rows.numel()), self.k * len(self.factors))

    def dense(self) -> np.ndarray:
        return (torch.cat([f[self.rows] for f in self.factors], dim=1) * self.scale
                ).cpu().numpy()

    def matmul(self, M: torch.Tensor) -> torch.Tensor:
        """``A @ M`` (``M``: ``K·k × r``)."""
        out = torch.zeros(self.shape[0], M.shape[1], dtype=M.dtype, device=M.device)
        for c, f in enumerate(self.factors):
            out += f[self.rows].to(M.dtype) @ M[c * self.k:(c + 1) * self.k]
        return out * self.scale

    def rmatmul(self, Y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ @ Y`` (``Y``: ``|C| × r``)."""
        return torch.cat([f[self.rows].to(Y.dtype).T @ Y for f in self.factors]) * self.scale


def _orthonormal(Y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(Y.double())[0].to(Y.dtype)


def randomized_left(A: ClassFactors, rank: int, *, n_iter: int = 4, oversample: int = 10,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Leading ``rank`` left singular vectors and values of ``A`` by a randomized range finder
    with ``n_iter`` power iterations (Halko, Martinsson & Tropp 2011), using only ``A @ M``
    and ``Aᵀ @ Y``."""
    width = min(rank + oversample, min(A.shape))
    generator = torch.Generator().manual_seed(int(seed))
    omega = torch.randn(A.shape[1], width, generator=generator).to(A.factors[0].device)
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
    U, S = U.astype(np.float64), S.astype(np.float64)
    keep = S > S.max() * 1e-10 if S.size and S.max() > 0 else np.zeros(S.size, bool)
    U, S2 = U[:, keep], S[keep] ** 2
    left = U * S2  # W = left @ (U * q[:, None]).T
    mean = (left.mean(axis=0) @ U.T) * q  # column means of W
    if standardize:
        # ||W e_i||² = q_i² ||S² u_i||², as U has orthonormal columns
        sq = q**2 * ((U * S2) ** 2).sum(axis=1) / n
        std = np.sqrt(np.clip(sq - mean**2, 0, None))
        scale = np.where(std > 1e-12 * max(std.max(initial=0.0), 1e-300), 1.0 / np.where(
            std > 0, std, 1.0), 0.0)
    else:
        scale = np.ones(n)
    # M = (W - 1 meanᵀ) diag(scale) = L Rᵀ with L = [left, 1], R = [diag(q·scale) U, -mean·scale]
    L = np.hstack([left, np.ones((n, 1))])
    R = np.hstack([U * (q * scale)[:, None], -(mean * scale)[:, None]])
    QL, RL = np.linalg.qr(L)
    _, RR = np.linalg.qr(R)  # only the triangle: the right vectors are not needed
    Uc, Sc, _ = np.linalg.svd(RL @ RR.T)
    comps = min(n_comps, Sc.size, n - 1)
    scores = (QL @ Uc[:, :comps]) * Sc[:comps]
    U_left = QL @ Uc[:, :comps]
    signs = np.sign(U_left[np.argmax(np.abs(U_left), axis=0), np.arange(comps)])
    signs[signs == 0] = 1
    out = np.zeros((n, n_comps))
    out[:, :comps] = scores * signs
    return out
