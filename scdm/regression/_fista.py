"""FISTA with per-target adaptive restart, stopped by each target's duality gap."""

from __future__ import annotations

import warnings

import torch

from ._gram import GramBlock
from ._rows import Rows


class ConvergenceWarning(UserWarning):
    """Some targets did not reach the duality-gap tolerance within ``max_iter``."""


def intercepts(stats, W, fit_intercept: bool) -> torch.Tensor:
    _, y_mean, _, x_mean = stats
    if not fit_intercept:
        return torch.zeros_like(y_mean)
    return y_mean - (x_mean * W).sum(0)


def solve(rows: Rows | GramBlock, cols, stats, W, lam, gram_top, tol: float, *, max_iter: int,
          fit_intercept: bool) -> tuple:
    """FISTA for the block's target columns ``cols`` (warm start ``W``) at ``lam``, to a
    duality gap of ``tol`` times each target's variance.

    All per-target state is indexed by position in ``cols``; ``cols[act]`` maps the
    still-active positions back to the block's columns when reading rows.
    """
    n_t, y_mean, y_var, x_mean = stats
    n_cols = W.shape[1]
    step = n_t.clamp_min(1.0) / gram_top  # 1 / L_t
    tol_t = float(tol) * y_var  # per target, relative to its variance
    x = W.clone()
    z = W.clone()
    t = torch.ones(n_cols, device=W.device, dtype=W.dtype)
    done = y_var <= 0
    iters = torch.zeros(n_cols, dtype=torch.int64, device=W.device)
    sse = torch.zeros(n_cols, device=W.device, dtype=W.dtype)
    for _ in range(int(max_iter)):
        act = torch.nonzero(~done).squeeze(1)
        if act.numel() == 0:
            break
        za = z.index_select(1, act)
        b = (y_mean.index_select(0, act) - (x_mean.index_select(1, act) * za).sum(0)
             if fit_intercept else torch.zeros_like(y_mean.index_select(0, act)))
        G, sums = rows.evaluate(cols.index_select(0, act), za, b)
        na = n_t.index_select(0, act).clamp_min(1.0)
        g = G / na
        la = lam.index_select(0, act)
        kappa = torch.clamp(la / g.abs().amax(0).clamp_min(1e-30), max=1.0)
        mse = sums.rr / na
        gap = 0.5 * mse * (1 + kappa**2) + la * za.abs().sum(0) + kappa * sums.ry / na
        sse.index_copy_(0, act, mse)
        iters.index_add_(0, act, torch.ones_like(act))
        converged = gap <= tol_t.index_select(0, act)
        if converged.any():  # certified by its gap: keep this point and freeze the target
            x.index_copy_(1, act[converged], za[:, converged])
            done.index_fill_(0, act[converged], True)
        keep = ~converged
        if not keep.any():
            break
        act, za, g, la = act[keep], za[:, keep], g[:, keep], la[keep]
        sa = step.index_select(0, act)
        xa_old = x.index_select(1, act)
        u = za - g * sa
        xa = torch.sign(u) * torch.clamp(u.abs() - la * sa, min=0.0)
        ta = t.index_select(0, act)
        restart = ((za - xa) * (xa - xa_old)).sum(0) > 0
        ta = torch.where(restart, torch.ones_like(ta), ta)
        t_next = (1 + torch.sqrt(1 + 4 * ta * ta)) / 2
        z_new = xa + ((ta - 1) / t_next) * (xa - xa_old)
        x.index_copy_(1, act, xa)
        z.index_copy_(1, act, z_new)
        t.index_copy_(0, act, t_next)
    not_converged = int((~done).sum())
    if not_converged:
        warnings.warn(f"{not_converged} target(s) did not converge within max_iter="
                      f"{max_iter} at this λ; raise max_iter or tol.",
                      ConvergenceWarning, stacklevel=3)
    return x, sse, iters, done
