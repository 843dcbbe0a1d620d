"""The algebra of TRAK on projected gradients (arrays only).

For one checkpoint with projected training gradients ``G`` (``n × k``) and out-to-loss
weights ``q`` (``n``; ``1 - p`` of the correct class), the attribution of training example
``i`` to target ``z`` is ``g(z)ᵀ (GᵀG + λI)⁻¹ g_i``; TRAK averages it over checkpoints and
multiplies by the checkpoint-averaged ``q_i`` (Park et al. 2023, eq. 8-9).

``λ``: ``lambda_reg`` is an absolute ridge (MadryLab ``traker``'s, 0 by default) and
``damping`` one relative to the mean diagonal of ``GᵀG``, so that it means the same whatever
the scale of the gradients: ``λ = lambda_reg + damping · mean(diag(GᵀG))``. Undamped, the
inverse whitens the gradient space, which sharpens counterfactual predictions but can erase
the shared directions that make groups of examples similar; damping interpolates towards plain
gradient similarity (see :func:`scdm.tl.trak`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def single_threaded():
    """torch on one thread inside the block: for small factorizations whose last bits
    otherwise depend on how many threads the process has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ridge(gram: torch.Tensor, *, lambda_reg: float = 0.0, damping: float | None = None
          ) -> float:
    """The ``λ`` added to the diagonal of ``gram`` (see the module docstring)."""
    value = float(lambda_reg)
    if damping:
        value += float(damping) * float(torch.diagonal(gram).mean())
    return value


def inverse_gram(grads: torch.Tensor, *, lambda_reg: float = 0.0, damping: float | None = None,
                 normalize: bool = True) -> torch.Tensor:
    """``(GᵀG + λI)⁻¹`` in float64 (then float32).

    With ``normalize``, the inverse is divided by the mean of its absolute entries, as
    ``traker`` does before storing features (this rescales each checkpoint's contribution).
    Raises when the system is singular (fewer training examples than ``proj_dim`` and no
    ridge).
    """
    g = grads.to(torch.float64)
    gram = g.T @ g
    lam = ridge(gram, lambda_reg=lambda_reg, damping=damping)
    system = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    try:
        factor = torch.linalg.cholesky(system)
    except RuntimeError as err:  # torch raises LinAlgError, a RuntimeError subclass
        raise ValueError(
            f"the projected gradients' Gram matrix ({gram.shape[0]} × {gram.shape[0]}) is "
            f"singular at λ = {lam:.3g}: {grads.shape[0]} training examples for proj_dim = "
            f"{grads.shape[1]}. Lower proj_dim, or add damping (e.g. damping=0.1)."
        ) from err
    inverse = torch.cholesky_inverse(factor)
    if normalize:
        inverse = inverse / inverse.abs().mean()
    return inverse.to(torch.float32)


def inverse_sqrt_gram(grads: torch.Tensor, *, lambda_reg: float = 0.0,
                      damping: float | None = None, normalize: bool = True) -> torch.Tensor:
    """A symmetric ``M`` with ``M @ M = inverse_gram(grads, ...)``: features ``G M`` then
    have inner products equal to the attribution (before the out-to-loss weight)."""
    g = grads.to(torch.float64)
    return inverse_sqrt_of_gram(g.T @ g, n_rows=grads.shape[0], lambda_reg=lambda_reg,
                                damping=damping, normalize=normalize)


def inverse_sqrt_of_gram(gram: torch.Tensor, *, n_rows: int, lambda_reg: float = 0.0,
                         damping: float | None = None, normalize: bool = True
                         ) -> torch.Tensor:
    """:func:`inverse_sqrt_gram` from ``GᵀG`` itself (float64, ``n_rows`` rows of ``G``), for
    gradients streamed from disk in blocks."""
    gram = gram.to(torch.float64)
    lam = ridge(gram, lambda_reg=lambda_reg, damping=damping)
    with single_threaded():  # LAPACK's eigh differs with the thread count (a Ray worker's is 1)
        values, vectors = torch.linalg.eigh(gram)
    values = values.clamp_min(0) + lam
    if not bool((values > values.max() * 1e-12).all()):
        raise ValueError(
            f"the projected gradients' Gram matrix is singular at λ = {lam:.3g} "
            f"({n_rows} training examples, proj_dim = {gram.shape[0]}); lower "
            "proj_dim or add damping.")
    inv_values = 1.0 / values
    if normalize:  # the same scale as inverse_gram(normalize=True)
        inverse = (vectors * inv_values) @ vectors.T
        inv_values = inv_values / inverse.abs().mean()
    return ((vectors * inv_values.sqrt()) @ vectors.T).to(torch.float32)
