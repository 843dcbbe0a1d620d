"""Regularisation-path LASSO for many targets at once (fast_l1 semantics, in plain PyTorch).

For each target ``t`` (a column of ``Y``) and each ``λ`` on its path, solve

    min_{w, b}  1/(2 n_t) Σ_i s_it (x̃_i·w + b − y_it)²  +  λ ||w||₁

on standardised features ``x̃ = (x − mean_) / scale_`` — scikit-learn's ``Lasso(alpha=λ)`` on
standardised ``X`` with an intercept, restricted to the rows a target keeps (``s_it > 0``).
All targets are columns of one weight matrix and advance together; rows are streamed from
arrays or memmaps in chunks and never standardised in memory.

The solver is FISTA with per-target adaptive restart. The intercept is solved in closed form at
every step, so the gradient is exact also when targets keep different rows. The step size comes
from a rigorous bound (top eigenvalue of the standardised Gram matrix over the rows, divided by
each target's row count), so it needs no tuning and cannot diverge. Convergence is a duality gap
below ``tol`` times the target's variance; a target that converges is frozen and leaves the
computation. Compared with fast_l1: λ_max is computed on the standardised, centred problem;
per-target state is kept by target index, never by position in a shrinking matrix; tolerance
is relative to each target's scale; and weights are returned in raw units with the
standardisation kept in ``mean_``/``scale_``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ._memmap import column_moments, read_rows
from ._settings import settings
from .ensemble import resolve_device

HELDOUT = "heldout"
# a validation correlation over fewer rows than this says little about a target's datamodel
MIN_VAL_ROWS = 10


class ConvergenceWarning(UserWarning):
    """Some targets did not reach the duality-gap tolerance within ``max_iter``."""


def _as_2d(name: str, array: Any) -> Any:
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        array = np.asarray(array)
    if len(array.shape) != 2:
        raise ValueError(f"{name} must be 2-d, got shape {tuple(array.shape)}.")
    return array


class _Rows:
    """Chunks of (X, Y, S) over a subset of rows and a block of target columns, on a device.

    ``S`` is ``None`` (every row counts), an array of per-(row, target) weights, or
    ``"heldout"`` (target ``t`` keeps the rows where feature ``t`` is 0). Chunks are cached on
    the device when they fit ``cache_bytes``; otherwise every pass re-reads the arrays.
    """

    def __init__(self, X, Y, S, rows: np.ndarray, block: tuple[int, int], *,
                 mean: torch.Tensor, scale: torch.Tensor, device: torch.device,
                 dtype: torch.dtype, chunk_rows: int, cache_bytes: int, offset: int = 0):
        self.X, self.Y, self.S, self.rows, self.block = X, Y, S, rows, block
        self.offset = offset  # "heldout": target t keeps the rows where feature offset + t is 0
        self.mean, self.scale = mean, scale
        self.device, self.dtype, self.chunk_rows = device, dtype, max(1, int(chunk_rows))
        width = X.shape[1] + 2 * (block[1] - block[0])
        self._cache: list | None = [] if rows.size * width * 4 <= cache_bytes else None
        self._filled = False

    def _read(self, array, idx: np.ndarray, cols: slice | None = None) -> torch.Tensor:
        part = read_rows(array, idx, np.float32, cols)
        return torch.from_numpy(part).to(self.device, self.dtype)

    def _load(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        t0, t1 = self.block
        for start in range(0, self.rows.size, self.chunk_rows):
            idx = self.rows[start : start + self.chunk_rows]
            Xc = self._read(self.X, idx)
            Yc = self._read(self.Y, idx, slice(t0, t1))
            if self.S is None:
                Sc = None
            elif isinstance(self.S, str):
                Sc = 1.0 - Xc[:, self.offset + t0 : self.offset + t1]
            else:
                Sc = self._read(self.S, idx, slice(t0, t1))
            yield Xc, Yc, Sc

    def chunks(self, cols: torch.Tensor | None = None):
        """Yield ``(X_chunk, Y_chunk[:, cols], S_chunk[:, cols] or None)``."""
        source = self._cache if self._filled and self._cache is not None else self._load()
        for item in source:
            if self._cache is not None and not self._filled:
                self._cache.append(item)
            Xc, Yc, Sc = item
            if cols is not None:
                Yc = Yc.index_select(1, cols)
                Sc = Sc.index_select(1, cols) if Sc is not None else None
            yield Xc, Yc, Sc
        if self._cache is not None:
            self._filled = True

    def stats(self, fit_intercept: bool):
        """Per target: kept-row count, mean and variance of y, and mean standardised x."""
        mean, scale = self.mean, self.scale
        dev, dt = mean.device, mean.dtype
        n_cols = self.block[1] - self.block[0]
        n_t = torch.zeros(n_cols, device=dev, dtype=torch.float64)
        sy = torch.zeros(n_cols, device=dev, dtype=torch.float64)
        syy = torch.zeros(n_cols, device=dev, dtype=torch.float64)
        sx = torch.zeros(mean.numel(), n_cols, device=dev, dtype=dt)
        for Xc, Yc, Sc in self.chunks():
            Sc = torch.ones_like(Yc) if Sc is None else Sc
            n_t += Sc.sum(0, dtype=torch.float64)
            sy += (Sc * Yc).sum(0, dtype=torch.float64)
            syy += (Sc * Yc * Yc).sum(0, dtype=torch.float64)
            sx += Xc.T @ Sc
        safe = n_t.clamp_min(1.0)
        y_mean = sy / safe
        y_var = (syy / safe - y_mean**2).clamp_min(0.0)
        x_mean = (sx - mean[:, None] * n_t.to(dt)) / scale[:, None] / safe.to(dt)
        if not fit_intercept:
            y_mean = torch.zeros_like(y_mean)
            y_var = syy / safe
            x_mean = torch.zeros_like(x_mean)
        return n_t.to(dt), y_mean.to(dt), y_var.to(dt), x_mean

    def evaluate(self, cols, V, intercept, grad: bool = True):
        """One pass at weights ``V`` (standardised units) for target columns ``cols``.

        Returns ``X̃ᵀ S r`` (if ``grad``) and the sums ``Σ s r``, ``Σ s r²``, ``Σ s r y``,
        ``Σ s``, ``Σ s ŷ``, ``Σ s ŷ²``, ``Σ s y``, ``Σ s y²`` with ``r = ŷ − y`` (the last
        five only when not ``grad``; they serve validation correlations).
        """
        mean, scale = self.mean, self.scale
        raw = V / scale[:, None]
        offset = intercept - (mean / scale) @ V
        G = torch.zeros_like(V)  # the gradient, when ``grad``
        sums = torch.zeros(8, V.shape[1], device=V.device, dtype=V.dtype)
        for Xc, Yc, Sc in self.chunks(cols):
            pred = torch.addmm(offset, Xc, raw)
            r = pred - Yc
            rs = r if Sc is None else r * Sc
            if grad:
                G.addmm_(Xc.T, rs)
                sums[0] += rs.sum(0)
            sums[1] += (rs * r).sum(0)
            sums[2] += (rs * Yc).sum(0)
            if not grad:
                s = torch.ones_like(Yc) if Sc is None else Sc
                sums[3] += s.sum(0)
                sums[4] += (s * pred).sum(0)
                sums[5] += (s * pred * pred).sum(0)
                sums[6] += (s * Yc).sum(0)
                sums[7] += (s * Yc * Yc).sum(0)
        if not grad:
            return None, sums
        return (G - mean[:, None] * sums[0]) / scale[:, None], sums

    def gram_top_eigenvalue(self) -> float:
        """Largest eigenvalue of X̃ᵀX̃ over the rows: the step-size bound."""
        mean, scale = self.mean, self.scale
        p = mean.numel()
        if p <= 4096:
            gram = torch.zeros(p, p, device=mean.device, dtype=torch.float64)
            total = torch.zeros(p, device=mean.device, dtype=torch.float64)
            for Xc, _, _ in self.chunks():
                Xd = Xc.double()
                gram += Xd.T @ Xd
                total += Xd.sum(0)
            m, s, n = mean.double(), scale.double(), self.rows.size
            gram = gram - torch.outer(total, m) - torch.outer(m, total) + n * torch.outer(m, m)
            return _top_eigenvalue(gram / torch.outer(s, s))
        v = torch.randn(p, 1, device=mean.device, dtype=mean.dtype,
                        generator=torch.Generator(device=mean.device).manual_seed(0))
        estimate = 0.0
        for _ in range(100):
            v = v / v.norm()
            w = torch.zeros_like(v)
            for Xc, _, _ in self.chunks():
                xv = Xc @ (v / scale[:, None]) - (mean / scale) @ v
                w += (Xc.T @ xv - mean[:, None] * xv.sum(0)) / scale[:, None]
            new = float((v * w).sum())
            if abs(new - estimate) <= 1e-6 * new:
                break
            estimate = new
            v = w
        return new * 1.05



def _moment_bytes(p: int, n_targets: int) -> int:
    """Float64 moments of the training, validation and all rows (see ``_Moments``)."""
    return 3 * 8 * p * (p + n_targets)


def _top_eigenvalue(gram: torch.Tensor) -> float:
    """Largest eigenvalue of a symmetric matrix, with a margin for rounding."""
    return float(torch.linalg.eigvalsh(gram.double())[-1]) * 1.001


class _Moments:
    """Sufficient statistics of a row set when every row counts for every target.

    With no per-target row weights, the least-squares part of the objective depends on the rows
    only through ``n``, ``Σ x̃``, ``X̃ᵀX̃``, ``Σ y``, ``Σ y²`` and ``X̃ᵀY``. Collected in one
    streamed pass, they turn every solver iteration from ``n·p·T`` into ``p²·T`` FLOPs
    (scikit-learn's ``precompute``). Sums are accumulated in float64 over chunks computed in the
    solver's dtype; ``x`` is standardised and ``y`` shifted by ``y_shift`` first, so that the
    centring at the end does not cancel digits away.
    """

    def __init__(self, rows: _Rows, y_shift: torch.Tensor, bar: tqdm) -> None:
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

    def __add__(self, other: _Moments) -> _Moments:
        total = object.__new__(_Moments)
        total.y_shift = self.y_shift
        for name in ("n", "sx", "gxx", "sy", "syy", "cxy"):
            setattr(total, name, getattr(self, name) + getattr(other, name))
        return total

    def top_eigenvalue(self) -> float:
        return _top_eigenvalue(self.gxx)

    def block(self, t0: int, t1: int, dtype: torch.dtype) -> _GramBlock:
        return _GramBlock(self, t0, t1, dtype)


class _GramBlock:
    """Target columns ``t0:t1`` of ``_Moments``, centred, with ``_Rows``' solver interface."""

    def __init__(self, moments: _Moments, t0: int, t1: int, dtype: torch.dtype) -> None:
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
        """``_Rows.evaluate`` from the moments: with ``x_c = x̃ − x̄``, ``y_c = y − ȳ`` and
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
        sums = torch.stack([sum_r, sum_r2, sum_ry, torch.full_like(sum_r, n),
                            sum_r + n * y_bar, sum_r2 + 2 * sum_ry + syy_total, n * y_bar,
                            syy_total])
        G = GV - cross + self.x_bar[:, None] * sum_r if grad else None
        return G, sums


class LassoPath:
    """LASSO regularisation path for many targets at once, with validation-based selection.

    Parameters
    ----------
    n_lambdas
        Number of λ values on each target's path (geometric from ``λ_max`` to ``eps·λ_max``).
    eps
        ``λ_min / λ_max``, in (0, 1).
    lambdas
        Explicit path instead: shape ``(k,)`` shared by all targets or ``(k, n_targets)``.
    val_fraction
        Fraction of rows held out to choose λ (0: no validation; the last λ is used).
    val_rows
        Explicit validation rows (indices or boolean mask) instead of a random fraction.
    early_stopping
        Stop a target's path once its validation MSE has not improved for ``patience`` λs.
    patience
        See ``early_stopping``.
    tol
        Duality-gap tolerance of the returned weights, relative to each target's variance
        (scikit-learn's ``Lasso`` scales its ``tol`` the same way). At 1e-5 the weights agree
        with ``Lasso`` at the chosen λ to ~1e-5 relative (``workflows/benchmarks/regression.py``).
    path_tol
        Looser tolerance for the points of the path that only serve to choose λ (never below
        ``tol``); the chosen λ is then solved again to ``tol``. Loose path points pick the same
        λ at a fraction of the iterations.
    max_iter
        FISTA iterations per λ.
    fit_intercept
        Fit an intercept per target.
    min_rows
        Refuse targets that keep fewer training rows than this.
    device, dtype
        Where and in which precision to compute (``"auto"``: CUDA when available).
    row_chunk_size
        Rows per streamed chunk (default from ``memory_budget``).
    target_block_size
        Targets solved together (default from ``memory_budget``).
    memory_budget
        Bytes of device memory for cached rows, chunks and per-target state.
    precompute
        Solve from the Gram matrix ``X̃ᵀX̃`` and ``X̃ᵀY``, collected in one streamed pass, so
        that an iteration costs ``p²·T`` instead of ``2·n·p·T`` FLOPs (scikit-learn's
        ``precompute``). Needs every row to count for every target (no ``sample_weight``).
        ``"auto"``: when that holds, the moments fit ``memory_budget`` and ``p ≤ 2·n``.
    random_state
        Seed of the random validation split.
    verbose
        Progress bar over λ (default: ``scdm.settings.verbosity >= 1``).

    Attributes
    ----------
    coef_ : ndarray (n_features, n_targets)
        Weights in raw feature units.
    intercept_ : ndarray (n_targets,)
    lambda_ : ndarray (n_targets,)
        Chosen λ per target.
    val_mse_, val_corr_ : ndarray (n_targets,)
        Validation MSE and Pearson correlation at the chosen λ (fit on training rows only),
        over the validation rows that count for each target (see ``val_sample_weight``).
    n_val_rows_ : ndarray (n_targets,)
        Validation rows (total weight) that scored each target.
    converged_ : ndarray of bool (n_targets,)
        Whether the returned weights reached ``tol`` within ``max_iter``.
    mean_, scale_ : ndarray (n_features,)
        Standardisation of the features (over all rows).
    path_ : dict of ndarray (n_lambdas, n_targets)
        ``"lambda"``, ``"train_mse"``, ``"val_mse"``, ``"nnz"`` per λ (NaN after early stop).
    n_iter_ : ndarray (n_targets,)
        FISTA iterations per target, over the whole path and refit.
    precompute_ : bool
        Whether the fit used the Gram form.
    """

    # set by fit_datamodels_path: the diagonal moved out of ``coef_`` (None: not absorbed)
    self_influence_: np.ndarray | None

    def __init__(self, *, n_lambdas: int = 20, eps: float = 1e-3,
                 lambdas: np.ndarray | None = None, val_fraction: float = 0.1,
                 val_rows: np.ndarray | None = None, early_stopping: bool = True,
                 patience: int = 2, tol: float = 1e-5, path_tol: float = 1e-3,
                 max_iter: int = 1000,
                 fit_intercept: bool = True, min_rows: int = 10, device: str = "auto",
                 dtype: torch.dtype = torch.float32, row_chunk_size: int | None = None,
                 target_block_size: int | None = None, memory_budget: int = 2 << 30,
                 precompute: bool | str = "auto", random_state: int = 0,
                 verbose: bool | None = None) -> None:
        self.n_lambdas = n_lambdas
        self.eps = eps
        self.lambdas = lambdas
        self.val_fraction = val_fraction
        self.val_rows = val_rows
        self.early_stopping = early_stopping
        self.patience = patience
        self.tol = tol
        self.path_tol = path_tol
        self.max_iter = max_iter
        self.fit_intercept = fit_intercept
        self.min_rows = min_rows
        self.device = device
        self.dtype = dtype
        self.row_chunk_size = row_chunk_size
        self.target_block_size = target_block_size
        self.memory_budget = memory_budget
        self.precompute = precompute
        self.random_state = random_state
        self.verbose = verbose

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in (
            "n_lambdas", "eps", "lambdas", "val_fraction", "val_rows", "early_stopping",
            "patience", "tol", "path_tol", "max_iter", "fit_intercept", "min_rows", "device",
            "dtype", "row_chunk_size", "target_block_size", "memory_budget", "precompute",
            "random_state", "verbose")}

    def set_params(self, **params) -> LassoPath:
        for key, value in params.items():
            if key not in self.get_params():
                raise ValueError(f"unknown parameter {key!r} for LassoPath.")
            setattr(self, key, value)
        return self

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_weight(name: str, weight, X, Y, offset: int | None = None):
        if isinstance(weight, str):
            if weight != HELDOUT:
                raise ValueError(f"{name} must be an array, None or {HELDOUT!r}.")
            if offset is None and X.shape[1] != Y.shape[1]:
                raise ValueError(f"{name}='heldout' pairs target t with feature t, so X and Y "
                                 f"need as many columns; got {X.shape[1]} and {Y.shape[1]}.")
            if offset is not None and not 0 <= offset <= X.shape[1] - Y.shape[1]:
                raise ValueError(f"{name}='heldout' pairs target t with feature target_offset "
                                 f"+ t; target_offset={offset} with {Y.shape[1]} targets needs "
                                 f"0 <= target_offset <= {X.shape[1] - Y.shape[1]}.")
        elif weight is not None:
            weight = _as_2d(name, weight)
            if tuple(weight.shape) != tuple(Y.shape):
                raise ValueError(f"{name} must have Y's shape {tuple(Y.shape)}, got "
                                 f"{tuple(weight.shape)}.")
        return weight

    def _check(self, X, Y, sample_weight, val_sample_weight, offset: int | None = None):
        X, Y = _as_2d("X", X), _as_2d("Y", Y)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; both need one "
                             "row per model.")
        sample_weight = self._check_weight("sample_weight", sample_weight, X, Y, offset)
        val_sample_weight = self._check_weight("val_sample_weight", val_sample_weight, X, Y,
                                               offset)
        if not 0.0 < float(self.eps) < 1.0:
            raise ValueError(f"eps (λ_min/λ_max) must lie in (0, 1), got {self.eps}.")
        if self.val_rows is None and not 0.0 <= float(self.val_fraction) < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}.")
        if self.precompute not in (True, False, "auto"):
            raise ValueError(f"precompute must be True, False or 'auto', got {self.precompute!r}.")
        if self.precompute is True and sample_weight is not None:
            raise ValueError("precompute=True needs every row to count for every target; "
                             "with sample_weight (or 'heldout') use precompute=False or 'auto'.")
        if int(self.n_lambdas) < 1 or int(self.max_iter) < 1 or not self.tol > 0 \
                or not self.path_tol > 0:
            raise ValueError("n_lambdas and max_iter must be >= 1, tol and path_tol > 0.")
        step = max(1, (16 << 20) // (4 * max(1, Y.shape[1])))  # NaN check, in 16 MB chunks
        for start in range(0, Y.shape[0], step):
            if not np.isfinite(read_rows(Y, slice(start, min(start + step, Y.shape[0])))).all():
                raise ValueError("Y contains NaN or inf; drop those models (rows) first.")
        return X, Y, sample_weight, val_sample_weight

    def _validation_counts(self, X, S, val: np.ndarray, n_targets: int, offset: int = 0
                           ) -> np.ndarray:
        """Validation rows (total weight) per target, in one pass over the validation rows."""
        counts = np.zeros(n_targets)
        for start in range(0, val.size, 8192):
            idx = val[start : start + 8192]
            if S is None:
                counts += idx.size
            elif isinstance(S, str):
                counts += (read_rows(X, idx, np.float32, slice(offset, offset + n_targets))
                           == 0).sum(0)
            else:
                counts += read_rows(S, idx, np.float64).sum(0)
        return counts

    def _split(self, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        if self.val_rows is not None:
            val = np.asarray(self.val_rows)
            if val.dtype == bool:
                if val.shape != (n_rows,):
                    raise ValueError(f"a boolean val_rows needs length {n_rows}.")
                val = np.flatnonzero(val)
            val = np.unique(val.astype(np.int64))
            if val.size and (val[0] < 0 or val[-1] >= n_rows):
                raise ValueError("val_rows holds indices outside the rows of X.")
        else:
            n_val = round(float(self.val_fraction) * n_rows)
            rng = np.random.default_rng(self.random_state)
            val = np.sort(rng.choice(n_rows, size=n_val, replace=False))
        train = np.setdiff1d(np.arange(n_rows), val)
        if train.size == 0:
            raise ValueError("no training rows are left after the validation split.")
        return train, val

    # ------------------------------------------------------------------ fit
    def fit(self, X, Y, sample_weight=None, val_sample_weight=None, *,
            target_offset: int | None = None) -> LassoPath:
        """Fit the path for every column of ``Y``.

        Parameters
        ----------
        X
            ``n_rows × n_features`` (bool, uint8 or float; ndarray or memmap).
        Y
            ``n_rows × n_targets`` float.
        sample_weight
            ``n_rows × n_targets`` non-negative weights (0 drops a row for a target), or
            ``"heldout"``: target ``t`` keeps the rows where ``X[:, t] == 0`` (datamodels:
            each sample's model uses only the models that did not train on it).
        val_sample_weight
            Weights of the validation rows when scoring λ, in the same forms; default
            ``sample_weight``. Datamodels fitted on every model (``sample_weight=None``) are
            scored with ``"heldout"``: on the validation models that did not train on the
            target, where its own mask column cannot explain the margin.
        target_offset
            With ``"heldout"`` weights, target ``t`` is feature ``target_offset + t``: the
            targets are a range of the training samples (``scdm fit --targets A:B``). Default:
            target ``t`` is feature ``t`` (as many features as targets).
        """
        X, Y, S, S_val = self._check(X, Y, sample_weight, val_sample_weight, target_offset)
        offset = int(target_offset or 0)
        S_val = S if S_val is None else S_val
        device = resolve_device(self.device)
        n_rows, p = X.shape
        n_targets = Y.shape[1]
        train, val = self._split(n_rows)
        self.n_val_rows_ = self._validation_counts(X, S_val, val, n_targets, offset)
        if val.size and self.n_val_rows_.min() < MIN_VAL_ROWS:
            worst = int(np.argmin(self.n_val_rows_))
            text = (f"target {worst} is scored on only {self.n_val_rows_[worst]:g} of the "
                    f"{val.size} validation rows")
            fix = "add rows (train more models) or raise val_fraction."
            if self.n_val_rows_[worst] < 3:  # no correlation, no meaningful choice of λ
                raise ValueError(f"{text}; at least 3 are needed to choose its λ: {fix}")
            warnings.warn(f"{text} (fewer than {MIN_VAL_ROWS}), so its λ is chosen on noise; "
                          f"{fix}", UserWarning, stacklevel=2)
        dtype = self.dtype
        itemsize = torch.tensor([], dtype=dtype).element_size()
        budget = int(self.memory_budget)
        self.precompute_ = self._use_gram(S, train.size, p, n_targets)
        # the solver keeps ~24 weight-shaped tensors per block (iterates, gradient, best
        # weights, temporaries); the Gram form also holds its float64 moments
        state_budget = budget - (_moment_bytes(p, n_targets) + 3 * p * p * itemsize
                                 if self.precompute_ else 0)
        block = int(self.target_block_size or max(1, min(n_targets, state_budget // (
            24 * p * itemsize + 1))))
        chunk_rows = int(self.row_chunk_size or max(256, budget // (8 * (p + 2 * block) *
                                                                    itemsize)))
        self.mean_, self.scale_ = self._standardisation(X, device, chunk_rows)
        mean = torch.as_tensor(self.mean_, device=device, dtype=dtype)
        scale = torch.as_tensor(np.where(self.scale_ > 0, self.scale_, 1.0), device=device,
                                dtype=dtype)
        lam_path = self._user_lambdas(n_targets)

        out = {key: np.full(n_targets, np.nan) for key in ("lambda", "val_mse", "val_corr",
                                                            "intercept")}
        self.coef_ = np.zeros((p, n_targets), dtype=np.float32)
        self.n_iter_ = np.zeros(n_targets, dtype=np.int64)
        self.converged_ = np.zeros(n_targets, dtype=bool)
        k = int(self.n_lambdas) if lam_path is None else lam_path.shape[0]
        self.path_ = {key: np.full((k, n_targets), np.nan) for key in
                      ("lambda", "train_mse", "val_mse", "nnz")}
        common: dict[str, Any] = dict(mean=mean, scale=scale, device=device, dtype=dtype,
                                      chunk_rows=chunk_rows, offset=offset)
        # cache budget: the training rows get most of it, validation/all rows the rest
        cache = {"train": budget // 2, "val": budget // 8, "all": budget // 4}
        progress = settings.progress(self.verbose)
        if self.precompute_:
            moments = self._moments(X, Y, train, val, progress,
                                    {**common, "chunk_rows": max(256, budget // (
                                        32 * (p + n_targets) * itemsize))})
            gram_top = moments["train"].top_eigenvalue()
            gram_all = moments["all"].top_eigenvalue() if val.size else gram_top
        else:
            gram_top = _Rows(X, Y, None, train, (0, 1), cache_bytes=0,
                             **common).gram_top_eigenvalue()
            gram_all = (_Rows(X, Y, None, np.arange(n_rows), (0, 1), cache_bytes=0,
                              **common).gram_top_eigenvalue() if val.size else gram_top)

        blocks = [(t0, min(t0 + block, n_targets)) for t0 in range(0, n_targets, block)]
        with tqdm(total=len(blocks) * k, desc="LASSO path", unit="λ", disable=not progress
                  ) as bar:
            for t0, t1 in blocks:
                rows: dict[str, Any]
                if self.precompute_:
                    rows = {name: moments[name].block(t0, t1, dtype) if name in moments else None
                            for name in ("train", "val", "all")}
                    if S_val is not None and val.size:  # per-target validation rows: streamed
                        rows["val"] = _Rows(X, Y, S_val, val, (t0, t1), cache_bytes=cache["val"],
                                            **common)
                else:
                    rows = {
                        "train": _Rows(X, Y, S, train, (t0, t1), cache_bytes=cache["train"],
                                       **common),
                        "val": _Rows(X, Y, S_val, val, (t0, t1), cache_bytes=cache["val"],
                                     **common) if val.size else None,
                        "all": _Rows(X, Y, S, np.arange(n_rows), (t0, t1),
                                     cache_bytes=cache["all"], **common) if val.size else None,
                    }
                self._fit_block(rows, (t0, t1), mean, scale, gram_top, gram_all, lam_path, out,
                                bar)
        self.lambda_ = out["lambda"]
        self.val_mse_ = out["val_mse"]
        self.val_corr_ = out["val_corr"]
        self.intercept_ = out["intercept"].astype(np.float32)
        return self

    def _use_gram(self, S, n_train: int, p: int, n_targets: int) -> bool:
        """Whether to solve from precomputed moments (see ``precompute``)."""
        if S is not None:
            return False
        if self.precompute != "auto":
            return bool(self.precompute)
        # the float64 moments may take half the budget; per iteration the Gram form costs
        # p²·T against 2·n·p·T when streaming
        return 2 * _moment_bytes(p, n_targets) <= int(self.memory_budget) and p <= 2 * n_train

    def _moments(self, X, Y, train, val, progress, common) -> dict[str, _Moments]:
        rows = {"train": train, "val": val} if val.size else {"train": train}
        first = read_rows(Y, slice(0, min(1024, Y.shape[0])), np.float64)
        shift = torch.as_tensor(first.mean(0), device=common["device"], dtype=common["dtype"])
        moments = {}
        with tqdm(total=int(np.ceil(train.size / common["chunk_rows"]))
                  + int(np.ceil(val.size / common["chunk_rows"])), desc="Gram matrix",
                  unit="chunk", disable=not progress) as bar:
            for name, idx in rows.items():
                source = _Rows(X, Y, None, idx, (0, Y.shape[1]), cache_bytes=0, **common)
                moments[name] = _Moments(source, shift, bar)
        if val.size:
            moments["all"] = moments["train"] + moments["val"]
        return moments

    def _user_lambdas(self, n_targets: int) -> np.ndarray | None:
        if self.lambdas is None:
            return None
        lam = np.asarray(self.lambdas, dtype=np.float64)
        if lam.ndim == 1:
            lam = np.repeat(lam[:, None], n_targets, axis=1)
        if lam.ndim != 2 or lam.shape[1] != n_targets or (lam <= 0).any():
            raise ValueError("lambdas must be positive, shaped (k,) or (k, n_targets).")
        return lam

    @staticmethod
    def _standardisation(X, device, chunk_rows) -> tuple[np.ndarray, np.ndarray]:
        mean, scale = column_moments(X, chunk_rows)
        scale[scale < 1e-12 * np.maximum(1.0, np.abs(mean))] = 0.0
        return mean, scale

    # ------------------------------------------------------------------ per block
    def _solve(self, rows: _Rows | _GramBlock, cols, stats, W, lam, gram_top, tol: float
               ) -> tuple:
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
        for _ in range(int(self.max_iter)):
            act = torch.nonzero(~done).squeeze(1)
            if act.numel() == 0:
                break
            za = z.index_select(1, act)
            b = (y_mean.index_select(0, act) - (x_mean.index_select(1, act) * za).sum(0)
                 if self.fit_intercept else torch.zeros_like(y_mean.index_select(0, act)))
            G, sums = rows.evaluate(cols.index_select(0, act), za, b)
            na = n_t.index_select(0, act).clamp_min(1.0)
            g = G / na
            la = lam.index_select(0, act)
            kappa = torch.clamp(la / g.abs().amax(0).clamp_min(1e-30), max=1.0)
            mse = sums[1] / na
            gap = 0.5 * mse * (1 + kappa**2) + la * za.abs().sum(0) + kappa * sums[2] / na
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
                          f"{self.max_iter} at this λ; raise max_iter or tol.",
                          ConvergenceWarning, stacklevel=3)
        return x, sse, iters, done

    def _intercepts(self, stats, W) -> torch.Tensor:
        _, y_mean, _, x_mean = stats
        if not self.fit_intercept:
            return torch.zeros_like(y_mean)
        return y_mean - (x_mean * W).sum(0)

    def _fit_block(self, rows, block, mean, scale, gram_top, gram_all, lam_path, out, bar):
        t0, t1 = block
        n_cols = t1 - t0
        dev, dt = mean.device, mean.dtype
        stats = rows["train"].stats(self.fit_intercept)
        n_t = stats[0]
        worst = int(torch.argmin(n_t))
        if float(n_t[worst]) < self.min_rows:
            raise ValueError(
                f"target {t0 + worst} keeps only {int(n_t[worst])} training rows (models), "
                f"fewer than min_rows={self.min_rows}; train more models or lower min_rows.")
        if lam_path is None:
            zero = torch.zeros(mean.numel(), n_cols, device=dev, dtype=dt)
            G, _ = rows["train"].evaluate(None, zero, self._intercepts(stats, zero))
            lam_max = (G.abs().amax(0) / n_t.clamp_min(1.0)).clamp_min(1e-12)
            exponents = torch.linspace(0, 1, int(self.n_lambdas), device=dev, dtype=torch.float64)
            lams = (lam_max.double()[None, :] * float(self.eps) ** exponents[:, None]).to(dt)
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
        path_tol = max(float(self.path_tol), float(self.tol))
        for step in range(k):
            cols = torch.nonzero(alive).squeeze(1)
            sub_stats = tuple(s.index_select(-1, cols) for s in stats)
            Wa, sse, iters, _ = self._solve(rows["train"], cols, sub_stats,
                                            W.index_select(1, cols),
                                            lams[step].index_select(0, cols), gram_top, path_tol)
            W.index_copy_(1, cols, Wa)
            iters_total.index_add_(0, cols, iters)
            c = cols.cpu().numpy() + t0
            self.path_["lambda"][step, c] = lams[step, cols].cpu().numpy()
            self.path_["train_mse"][step, c] = sse.cpu().numpy()
            self.path_["nnz"][step, c] = (Wa != 0).sum(0).cpu().numpy()
            bar.update(1)
            if val is None:
                continue
            _, sums = val.evaluate(cols, Wa, self._intercepts(sub_stats, Wa), grad=False)
            n_v = sums[3].clamp_min(1.0)
            mse = sums[1] / n_v
            mean_pred, mean_y = sums[4] / n_v, sums[6] / n_v
            var_pred = (sums[5] / n_v - mean_pred**2).clamp_min(0.0)
            var_y = (sums[7] / n_v - mean_y**2).clamp_min(0.0)
            # Σ s ŷ y = (Σ s ŷ² + Σ s y² − Σ s r²) / 2
            cov = (sums[5] + sums[7] - sums[1]) / 2 / n_v - mean_pred * mean_y
            # a constant prediction (all weights 0) has no correlation with anything
            constant = var_pred <= 1e-10 * var_y.clamp_min(1e-30)
            corr = torch.where(constant, torch.zeros_like(cov),
                               cov / torch.sqrt(var_pred * var_y).clamp_min(1e-30))
            self.path_["val_mse"][step, c] = mse.cpu().numpy()
            improved = mse < best_mse.index_select(0, cols)
            better = cols[improved]
            best_mse.index_copy_(0, better, mse[improved])
            best_k.index_fill_(0, better, step)
            best_corr.index_copy_(0, better, corr[improved])
            best_W.index_copy_(1, better, Wa[:, improved])
            stalls.index_copy_(0, cols, torch.where(improved, 0, stalls.index_select(0, cols) + 1))
            if self.early_stopping:
                alive &= stalls < int(self.patience)
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
                                                   rows["all"].stats(self.fit_intercept),
                                                   best_W, gram_all)
        final, _, iters, converged = self._solve(final_rows, cols_all, final_stats, start,
                                                 chosen, top, float(self.tol))
        iters_total += iters
        self.converged_[t0:t1] = converged.cpu().numpy()
        intercept = self._intercepts(final_stats, final)
        raw = final / scale[:, None]  # constant features have X̃ = 0, hence weight 0
        self.coef_[:, t0:t1] = raw.cpu().float().numpy()
        out["intercept"][t0:t1] = (intercept - (mean / scale) @ final).cpu().numpy()
        out["lambda"][t0:t1] = chosen.cpu().numpy()
        if val is not None:
            out["val_mse"][t0:t1] = best_mse.cpu().numpy()
            out["val_corr"][t0:t1] = best_corr.cpu().numpy()
        self.n_iter_[t0:t1] = iters_total.cpu().numpy()

    # ------------------------------------------------------------------ predict
    def predict(self, X) -> np.ndarray:
        """Predictions ``n_rows × n_targets`` for raw (unstandardised) features ``X``."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("LassoPath is not fitted yet; call fit(X, Y) first.")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[0]:
            raise ValueError(f"X must have {self.coef_.shape[0]} columns.")
        return X @ self.coef_ + self.intercept_


def fit_datamodels_path(model: LassoPath, X, Y, *, targets_are_training: bool = True,
                        heldout: bool = False, target_offset: int | None = None) -> LassoPath:
    """Fit ``model`` the datamodels way and return it; rows are models, ``X`` their masks.

    - Targets that are not training samples (test images): every row counts for every target.
    - Targets that are training samples, ``heldout=False`` (the default): every target is fitted
      on every model with its own mask column as a feature, which absorbs the self-influence
      (the margin jump when a sample trains on itself), in the Gram form; λ is chosen on the
      validation models that did *not* train on the target. The self-influence is then moved
      out of the weights: ``model.self_influence_`` keeps the diagonal and ``coef_``'s diagonal
      is set to 0, which leaves every prediction for a model that did not train on the target
      unchanged. On planted data this is faster than ``heldout=True`` (the gap grows with the
      samples) at a higher LDS (``workflows/benchmarks/fit_modes.py``; RESULTS.md).
    - ``heldout=True``: target ``t`` is fitted only on the models that did not train on it.

    ``target_offset``: the columns of ``Y`` are training samples ``target_offset …
    target_offset + n_targets − 1`` (a range of the targets, fitted on its own); ``None``:
    they are all the training samples, in order.
    """
    if not targets_are_training:
        if heldout:
            raise ValueError("heldout=True pairs target t with training sample t; the targets "
                             "here are not training samples.")
        model.fit(X, Y)
        model.self_influence_ = None
        return model
    if target_offset is None and X.shape[1] != Y.shape[1]:
        raise ValueError(f"targets that are the training samples need as many mask columns as "
                         f"margin columns; got {X.shape[1]} and {Y.shape[1]}.")
    if heldout:
        model.fit(X, Y, sample_weight=HELDOUT, target_offset=target_offset)
        model.self_influence_ = None
        return model
    model.fit(X, Y, val_sample_weight=HELDOUT, target_offset=target_offset)
    targets = np.arange(Y.shape[1])
    features = (target_offset or 0) + targets
    model.self_influence_ = model.coef_[features, targets].copy()
    model.coef_[features, targets] = 0.0
    return model
