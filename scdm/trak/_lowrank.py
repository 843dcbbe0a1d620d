"""The attribution embedding of one class from low-rank factors, without the n × n matrix.

Within a class, TRAK's attribution of training example ``i`` to target ``j`` is
``W[j, i] = a_jᵀ a_i · q_i`` with ``a`` the concatenated per-checkpoint features
``G_c (GᵀG + λI)^(-1/2) / sqrt(K)``. The datamodels embedding (:mod:`scdm.tl._embed`) centres
and scales every column of the class's block of ``W`` and takes its leading singular vectors;
here the same is done on ``W = U S² Uᵀ diag(q)`` from a thin SVD ``A = U S Vᵀ`` (exact, or
randomized to ``rank`` components for large classes), in ``O(n r²)`` memory and time after the
SVD.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.extmath import randomized_svd


def _thin_svd(A: np.ndarray, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and values of ``A`` (all when ``rank`` covers them)."""
    full = min(A.shape)
    if rank >= full or full <= 2 * rank:
        if A.shape[0] <= A.shape[1]:  # via the small Gram matrix: |C| × |C|
            values, vectors = np.linalg.eigh(A @ A.T)
            order = np.argsort(values)[::-1]
            values = np.sqrt(np.clip(values[order], 0, None))
            return vectors[:, order], values
        U, S, _ = np.linalg.svd(A, full_matrices=False)
        return U, S
    U, S, _ = randomized_svd(A, rank, n_iter=4, random_state=seed)
    return U, S


def lowrank_embedding(A: np.ndarray, q: np.ndarray, *, n_comps: int, rank: int = 256,
                      standardize: bool = True, seed: int = 0) -> np.ndarray:
    """Leading components of ``W = A Aᵀ diag(q)`` with centred (and scaled) columns.

    Parameters
    ----------
    A
        ``|C| × r`` factors of one class (rows: its examples, as targets and as training
        examples).
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
    A = np.asarray(A)  # float32 stays float32 for the randomized SVD of a large class
    q = np.asarray(q, dtype=np.float64)
    n = A.shape[0]
    exact = rank >= min(A.shape) or min(A.shape) <= 2 * rank
    U, S = _thin_svd(A.astype(np.float64) if exact else A, rank, seed)
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
