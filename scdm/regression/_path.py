"""The regularisation path of one block of targets (fast_l1's loop, per target)."""

from __future__ import annotations

from typing import Any

import torch

from ._fista import intercepts, solve


def fit_block(model: Any, rows: dict[str, Any], block: tuple[int, int], mean, scale, gram_top,
              gram_all, lam_path, out: dict, bar) -> None:
    """The path of one block of targets: λ from λ_max down, warm starts, validation and
    early stopping, then the chosen λ solved to ``tol``; results go into ``model``'s
    attributes and ``out``."""
    t0, t1 = block
    n_cols = t1 - t0
    dev, dt = mean.device, mean.dtype
    stats = rows["train"].stats(model.fit_intercept)
    n_t = stats[0]
    worst = int(torch.argmin(n_t))
    if float(n_t[worst]) < model.min_rows:
        raise ValueError(
            f"target {t0 + worst} keeps only {int(n_t[worst])} training rows (models), "
            f"fewer than min_rows={model.min_rows}; train more models or lower min_rows.")
    if lam_path is None:
        zero = torch.zeros(mean.numel(), n_cols, device=dev, dtype=dt)
        G, _ = rows["train"].evaluate(None, zero, intercepts(stats, zero, model.fit_intercept))
        lam_max = (G.abs().amax(0) / n_t.clamp_min(1.0)).clamp_min(1e-12)
        exponents = torch.linspace(0, 1, int(model.n_lambdas), device=dev, dtype=torch.float64)
        lams = (lam_max.double()[None, :] * float(model.eps) ** exponents[:, None]).to(dt)
    else:
        lams = torch.as_tensor(lam_path[:, t0:t1], device=dev, dtype=dt)
    k = lams.shape[0]
    W = torch.zeros(mean.numel(), n_cols, device=dev, dtype=dt)
    best_W = W.clone()
    best_mse = torch.full((n_cols,), float("inf"), device=dev, dtype=dt)
    best_k = torch.full((n_cols,), k - 1, device=dev, dtype=torch.int64)
    best_corr = torch.full((n_cols,), float("nan"), device=dev, dtype=dt)
    stalls = torch.zeros(n_cols, dtype=torch.int64, device=dev)
    alive = torch.ones(n_cols, dtype=torch.bool, device=dev)
    iters_total = torch.zeros(n_cols, dtype=torch.int64, device=dev)
    val = rows["val"]
    path_tol = max(float(model.path_tol), float(model.tol))
    for step in range(k):
        cols = torch.nonzero(alive).squeeze(1)
        sub_stats = tuple(s.index_select(-1, cols) for s in stats)
        Wa, sse, iters, _ = solve(rows["train"], cols, sub_stats, W.index_select(1, cols),
                                  lams[step].index_select(0, cols), gram_top, path_tol,
                                  max_iter=model.max_iter, fit_intercept=model.fit_intercept)
        W.index_copy_(1, cols, Wa)
        iters_total.index_add_(0, cols, iters)
        c = cols.cpu().numpy() + t0
        model.path_["lambda"][step, c] = lams[step, cols].cpu().numpy()
        model.path_["train_mse"][step, c] = sse.cpu().numpy()
        model.path_["nnz"][step, c] = (Wa != 0).sum(0).cpu().numpy()
        bar.update(1)
        if val is None:
            continue
        _, sums = val.evaluate(cols, Wa, intercepts(sub_stats, Wa, model.fit_intercept), grad=False)
        n_v = sums.s.clamp_min(1.0)
        mse = sums.rr / n_v
        mean_pred, mean_y = sums.pred / n_v, sums.y / n_v
        var_pred = (sums.pred2 / n_v - mean_pred**2).clamp_min(0.0)
        var_y = (sums.yy / n_v - mean_y**2).clamp_min(0.0)
        # Σ s ŷ y = (Σ s ŷ² + Σ s y² − Σ s r²) / 2
        cov = (sums.pred2 + sums.yy - sums.rr) / 2 / n_v - mean_pred * mean_y
        # a constant prediction (all weights 0) has no correlation with anything
        constant = var_pred <= 1e-10 * var_y.clamp_min(1e-30)
        corr = torch.where(constant, torch.zeros_like(cov),
                           cov / torch.sqrt(var_pred * var_y).clamp_min(1e-30))
        model.path_["val_mse"][step, c] = mse.cpu().numpy()
        improved = mse < best_mse.index_select(0, cols)
        better = cols[improved]
        best_mse.index_copy_(0, better, mse[improved])
        best_k.index_fill_(0, better, step)
        best_corr.index_copy_(0, better, corr[improved])
        best_W.index_copy_(1, better, Wa[:, improved])
        stalls.index_copy_(0, cols, torch.where(improved, 0, stalls.index_select(0, cols) + 1))
        if model.early_stopping:
            alive &= stalls < int(model.patience)
        if not alive.any():
            bar.update(k - step - 1)
            break
    cols_all = torch.arange(n_cols, device=dev)
    chosen = lams[best_k, cols_all]
    # the chosen λ, solved to ``tol``: on all rows after validation, else again on the
    # training rows (the path point may have stopped at the looser ``path_tol``)
    if val is None:
        final_rows, final_stats, start, top = rows["train"], stats, W, gram_top
    else:
        final_rows, final_stats, start, top = (rows["all"],
                                               rows["all"].stats(model.fit_intercept),
                                               best_W, gram_all)
    final, _, iters, converged = solve(final_rows, cols_all, final_stats, start, chosen, top,
                                       float(model.tol), max_iter=model.max_iter,
                                       fit_intercept=model.fit_intercept)
    iters_total += iters
    model.converged_[t0:t1] = converged.cpu().numpy()
    intercept = intercepts(final_stats, final, model.fit_intercept)
    raw = final / scale[:, None]  # constant features have X̃ = 0, hence weight 0
    model.coef_[:, t0:t1] = raw.cpu().float().numpy()
    out["intercept"][t0:t1] = (intercept - (mean / scale) @ final).cpu().numpy()
    out["lambda"][t0:t1] = chosen.cpu().numpy()
    if val is not None:
        out["val_mse"][t0:t1] = best_mse.cpu().numpy()
        out["val_corr"][t0:t1] = best_corr.cpu().numpy()
    model.n_iter_[t0:t1] = iters_total.cpu().numpy()
