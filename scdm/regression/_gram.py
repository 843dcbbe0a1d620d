"""The Gram form: the moments of all rows collected in one streamed pass, so that a solver
iteration costs ``p²·T`` instead of ``2·n·p·T`` FLOPs (scikit-learn's ``precompute``)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ._rows import Rows, Sums, top_eigenvalue


def moment_bytes(p: int, n_targets: int) -> int:
    """Float64 moments of the training, validation and all rows (see ``Moments``)."""
    return 3 * 8 * p * (p + n_targets)


class Moments:
    """Sufficient statistics of a row set when every row counts for every target.

    With no per-target row weights, the least-squares part of the objective depends on the rows
    only through ``n``, ``Σ x̃``, ``X̃ᵀX̃``, ``Σ y``, ``Σ y²`` and ``X̃ᵀY``. Collected in one
    streamed pass, they turn every solver iteration from ``n·p·T`` into ``p²·T`` FLOPs
    (scikit-learn's ``precompute``). Sums are accumulated in float64 over chunks computed in the
    solver's dtype; ``x`` is standardised and ``y`` shifted by ``y_shift`` first, so that the
    centring at the end does not cancel digits away.
    """

    def __init__(self, rows: Rows, y_shift: torch.Tensor, bar: tqdm) -> None:
        mean, scale = rows.mean, rows.scale
        dev, f64 = mean.device, torch.float64
        p, n_targets = mean.numel(), y_shift.numel()
        self.n = 0
        self.sx = torch.zeros(p, device=dev, dtype=f64)
        self.gxx = torch.zeros(p, p, device=dev, dtype=f64)
        self.sy = torch.zeros(n_targets, device=dev, dtype=f64)
        self.syy = torch.zeros(n_targets, device=dev, dtype=f64)
        self.cxy = torch.zeros(p, n_targets, device=dev, dtype=f64)
        self.y_shift = y_shift
        for Xc, Yc, _ in rows.chunks():
            Xs = (Xc - mean) / scale
            Ys = Yc - y_shift
            self.n += Xc.shape[0]
            self.sx += Xs.sum(0, dtype=f64)
            self.gxx += (Xs.T @ Xs).double()
            self.sy += Ys.sum(0, dtype=f64)
            self.syy += (Ys * Ys).sum(0, dtype=f64)
            self.cxy += (Xs.T @ Ys).double()
            bar.update(1)

    def __add__(self, other: Moments) -> Moments:
        total = object.__new__(Moments)
        total.y_shift = self.y_shift
        for name in ("n", "sx", "gxx", "sy", "syy", "cxy"):
            setattr(total, name, getattr(self, name) + getattr(other, name))
        return total

    def top_eigenvalue(self) -> float:
        return top_eigenvalue(self.gxx)

    def block(self, t0: int, t1: int, dtype: torch.dtype) -> GramBlock:
        return GramBlock(self, t0, t1, dtype)


class GramBlock:
    """Target columns ``t0:t1`` of ``Moments``, centred, with ``Rows``' solver interface."""

    def __init__(self, moments: Moments, t0: int, t1: int, dtype: torch.dtype) -> None:
        n = float(max(moments.n, 1))
        x_bar = moments.sx / n
        y_bar_shifted = moments.sy[t0:t1] / n
        self.n = n
        self.x_bar = x_bar.to(dtype)
        self.gram = (moments.gxx - n * torch.outer(x_bar, x_bar)).to(dtype)
        self.cross = (moments.cxy[:, t0:t1] - n * torch.outer(x_bar, y_bar_shifted)).to(dtype)
        self.y_bar = (y_bar_shifted + moments.y_shift[t0:t1].double()).to(dtype)
        self.syy = (moments.syy[t0:t1] - n * y_bar_shifted**2).clamp_min(0.0).to(dtype)

    def stats(self, fit_intercept: bool):
        n_cols = self.y_bar.numel()
        n_t = torch.full((n_cols,), self.n, device=self.y_bar.device, dtype=self.y_bar.dtype)
        if not fit_intercept:
            zero = torch.zeros_like(self.y_bar)
            x_mean = torch.zeros(self.x_bar.numel(), n_cols, device=zero.device, dtype=zero.dtype)
            return n_t, zero, (self.syy + self.n * self.y_bar**2) / self.n, x_mean
        return n_t, self.y_bar, self.syy / self.n, self.x_bar[:, None].expand(-1, n_cols)

    def evaluate(self, cols, V, intercept, grad: bool = True):
        """``Rows.evaluate`` from the moments: with ``x_c = x̃ − x̄``, ``y_c = y − ȳ`` and
        ``δ = b + x̄·v − ȳ``, the residual is ``r = x_c·v − y_c + δ``."""
        cross, y_bar, syy = ((self.cross, self.y_bar, self.syy) if cols is None else
                             (self.cross.index_select(1, cols), self.y_bar.index_select(0, cols),
                              self.syy.index_select(0, cols)))
        n = self.n
        delta = intercept + self.x_bar @ V - y_bar
        GV = self.gram @ V
        vGv = (V * GV).sum(0)
        vC = (V * cross).sum(0)
        sum_r = n * delta
        sum_r2 = (vGv - 2 * vC + syy + n * delta**2).clamp_min(0.0)
        sum_ry = vC - syy + y_bar * sum_r
        syy_total = syy + n * y_bar**2
        sums = Sums(r=sum_r, rr=sum_r2, ry=sum_ry, s=torch.full_like(sum_r, n),
                    pred=sum_r + n * y_bar, pred2=sum_r2 + 2 * sum_ry + syy_total, y=n * y_bar,
                    yy=syy_total)
        G = GV - cross + self.x_bar[:, None] * sum_r if grad else None
        return G, sums
