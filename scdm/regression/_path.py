"""The functional core of the solver: :func:`lasso_path` fits every target's path and returns
the result; :func:`fit_block` is one block of targets (fast_l1's loop, per target)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._memmap import column_moments, read_rows
from ._fista import intercepts, solve
from ._gram import Moments
from ._plan import MemoryPlan
from ._rows import Rows


@dataclass(frozen=True)
class PathSettings:
    """How each target's path is walked and solved (``LassoPath``'s settings of that)."""

    n_lambdas: int
    eps: float
    tol: float
    path_tol: float
    max_iter: int
    fit_intercept: bool
    min_rows: int
    early_stopping: bool
    patience: int


@dataclass
class PathResult:
    """Per target (columns): raw-unit weights, intercept, chosen λ, its validation MSE and
    correlation, iterations and convergence; the path per λ; the features' standardisation."""

    coef: np.ndarray
    intercept: np.ndarray
    lambda_: np.ndarray
    val_mse: np.ndarray
    val_corr: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    path: dict[str, np.ndarray]
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def empty(cls, p: int, n_targets: int, k: int, mean: np.ndarray, scale: np.ndarray
              ) -> PathResult:
        def nan() -> np.ndarray:
            return np.full(n_targets, np.nan)

        return cls(coef=np.zeros((p, n_targets), dtype=np.float32), intercept=nan(),
                   lambda_=nan(), val_mse=nan(), val_corr=nan(),
                   n_iter=np.zeros(n_targets, dtype=np.int64),
                   converged=np.zeros(n_targets, dtype=bool),
                   path={key: np.full((k, n_targets), np.nan)
                         for key in ("lambda", "train_mse", "val_mse", "nnz")},
                   mean=mean, scale=scale)


def standardisation(X, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations of ``X`` (streamed); a constant column gets
    scale 0 (and weight 0)."""
    mean, scale = column_moments(X, chunk_rows)
    scale[scale < 1e-12 * np.maximum(1.0, np.abs(mean))] = 0.0
    return mean, scale


def collect_moments(X, Y, train: np.ndarray, val: np.ndarray, progress: bool,
                    common: dict[str, Any]) -> dict[str, Moments]:
    """The Gram form's moments of the training and validation rows (and all rows), in one
    streamed pass."""
    rows = {"train": train, "val": val} if val.size else {"train": train}
    first = read_rows(Y, slice(0, min(1024, Y.shape[0])), np.float64)
    shift = torch.as_tensor(first.mean(0), device=common["device"], dtype=common["dtype"])
    moments = {}
    with tqdm(total=int(np.ceil(train.size / common["chunk_rows"]))
              + int(np.ceil(val.size / common["chunk_rows"])), desc="Gram matrix",
              unit="chunk", disable=not progress) as bar:
        for name, idx in rows.items():
            source = Rows(X, Y, None, idx, (0, Y.shape[1]), cache_bytes=0, **common)
            moments[name] = Moments(source, shift, bar)
    if val.size:
        moments["all"] = moments["train"] + moments["val"]
    return moments


def lasso_path(X, Y, *, train: np.ndarray, val: np.ndarray, settings: PathSettings,
               plan: MemoryPlan, device: torch.device, dtype: torch.dtype,
               sample_weight=None, val_sample_weight=None, target_offset: int = 0,
               lambdas: np.ndarray | None = None, progress: bool = False) -> PathResult:
    """Every target's LASSO path on the ``train`` rows, λ chosen on the ``val`` rows, the
    chosen λ solved on all rows (see :class:`~scdm.regression.LassoPath` for the problem);
    inputs already checked. Rows are streamed from ``X`` / ``Y`` (arrays or memmaps) in the
    chunks and blocks of ``plan``."""
    n_rows, p = X.shape
    n_targets = Y.shape[1]
    mean_np, scale_np = standardisation(X, plan.chunk_rows)
    mean = torch.as_tensor(mean_np, device=device, dtype=dtype)
    scale = torch.as_tensor(np.where(scale_np > 0, scale_np, 1.0), device=device, dtype=dtype)
    k = int(settings.n_lambdas) if lambdas is None else lambdas.shape[0]
    result = PathResult.empty(p, n_targets, k, mean_np, scale_np)
    common: dict[str, Any] = dict(mean=mean, scale=scale, device=device, dtype=dtype,
                                  chunk_rows=plan.chunk_rows, offset=target_offset)
    S, S_val, cache = sample_weight, val_sample_weight, plan.cache
    if plan.gram:
        moments = collect_moments(X, Y, train, val, progress,
                                  {**common, "chunk_rows": plan.moment_chunk_rows})
        gram_top = moments["train"].top_eigenvalue()
        gram_all = moments["all"].top_eigenvalue() if val.size else gram_top
    else:
        gram_top = Rows(X, Y, None, train, (0, 1), cache_bytes=0,
                        **common).gram_top_eigenvalue()
        gram_all = (Rows(X, Y, None, np.arange(n_rows), (0, 1), cache_bytes=0,
                         **common).gram_top_eigenvalue() if val.size else gram_top)
    blocks = [(t0, min(t0 + plan.block, n_targets)) for t0 in range(0, n_targets, plan.block)]
    with tqdm(total=len(blocks) * k, desc="LASSO path", unit="λ", disable=not progress
              ) as bar:
        for t0, t1 in blocks:
            rows: dict[str, Any]
            if plan.gram:
                rows = {name: moments[name].block(t0, t1, dtype) if name in moments else None
                        for name in ("train", "val", "all")}
                if S_val is not None and val.size:  # per-target validation rows: streamed
                    rows["val"] = Rows(X, Y, S_val, val, (t0, t1), cache_bytes=cache["val"],
                                       **common)
            else:
                rows = {
                    "train": Rows(X, Y, S, train, (t0, t1), cache_bytes=cache["train"],
                                  **common),
                    "val": Rows(X, Y, S_val, val, (t0, t1), cache_bytes=cache["val"],
                                **common) if val.size else None,
                    "all": Rows(X, Y, S, np.arange(n_rows), (t0, t1),
                                cache_bytes=cache["all"], **common) if val.size else None,
                }
            fit_block(settings, rows, (t0, t1), mean, scale, gram_top, gram_all, lambdas,
                      result, bar)
    return result


def fit_block(settings: PathSettings, rows: dict[str, Any], block: tuple[int, int], mean,
              scale, gram_top, gram_all, lam_path, result: PathResult, bar) -> None:
    """The path of one block of targets: λ from λ_max down, warm starts, validation and
    early stopping, then the chosen λ solved to ``tol``; written into the block's columns of
    ``result``."""
    t0, t1 = block
    n_cols = t1 - t0
    dev, dt = mean.device, mean.dtype
    stats = rows["train"].stats(settings.fit_intercept)
    n_t = stats[0]
    worst = int(torch.argmin(n_t))
    if float(n_t[worst]) < settings.min_rows:
        raise ValueError(
            f"target {t0 + worst} keeps only {int(n_t[worst])} training rows (models), "
            f"fewer than min_rows={settings.min_rows}; train more models or lower min_rows.")
    if lam_path is None:
        zero = torch.zeros(mean.numel(), n_cols, device=dev, dtype=dt)
        G, _ = rows["train"].evaluate(None, zero, intercepts(stats, zero, settings.fit_intercept))
        lam_max = (G.abs().amax(0) / n_t.clamp_min(1.0)).clamp_min(1e-12)
        exponents = torch.linspace(0, 1, int(settings.n_lambdas), device=dev, dtype=torch.float64)
        lams = (lam_max.double()[None, :] * float(settings.eps) ** exponents[:, None]).to(dt)
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
    path_tol = max(float(settings.path_tol), float(settings.tol))
    for step in range(k):
        cols = torch.nonzero(alive).squeeze(1)
        sub_stats = tuple(s.index_select(-1, cols) for s in stats)
        Wa, sse, iters, _ = solve(rows["train"], cols, sub_stats, W.index_select(1, cols),
                                  lams[step].index_select(0, cols), gram_top, path_tol,
                                  max_iter=settings.max_iter, fit_intercept=settings.fit_intercept)
        W.index_copy_(1, cols, Wa)
        iters_total.index_add_(0, cols, iters)
        c = cols.cpu().numpy() + t0
        result.path["lambda"][step, c] = lams[step, cols].cpu().numpy()
        result.path["train_mse"][step, c] = sse.cpu().numpy()
        result.path["nnz"][step, c] = (Wa != 0).sum(0).cpu().numpy()
        bar.update(1)
        if val is None:
            continue
        _, sums = val.evaluate(cols, Wa, intercepts(sub_stats, Wa, settings.fit_intercept),
                               grad=False)
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
        result.path["val_mse"][step, c] = mse.cpu().numpy()
        improved = mse < best_mse.index_select(0, cols)
        better = cols[improved]
        best_mse.index_copy_(0, better, mse[improved])
        best_k.index_fill_(0, better, step)
        best_corr.index_copy_(0, better, corr[improved])
        best_W.index_copy_(1, better, Wa[:, improved])
        stalls.index_copy_(0, cols, torch.where(improved, 0, stalls.index_select(0, cols) + 1))
        if settings.early_stopping:
            alive &= stalls < int(settings.patience)
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
                                               rows["all"].stats(settings.fit_intercept),
                                               best_W, gram_all)
    final, _, iters, converged = solve(final_rows, cols_all, final_stats, start, chosen, top,
                                       float(settings.tol), max_iter=settings.max_iter,
                                       fit_intercept=settings.fit_intercept)
    iters_total += iters
    result.converged[t0:t1] = converged.cpu().numpy()
    intercept = intercepts(final_stats, final, settings.fit_intercept)
    raw = final / scale[:, None]  # constant features have X̃ = 0, hence weight 0
    result.coef[:, t0:t1] = raw.cpu().float().numpy()
    result.intercept[t0:t1] = (intercept - (mean / scale) @ final).cpu().numpy()
    result.lambda_[t0:t1] = chosen.cpu().numpy()
    if val is not None:
        result.val_mse[t0:t1] = best_mse.cpu().numpy()
        result.val_corr[t0:t1] = best_corr.cpu().numpy()
    result.n_iter[t0:t1] = iters_total.cpu().numpy()
