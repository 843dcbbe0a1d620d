"""The estimator: ``LassoPath`` (scikit-learn's conventions): validates, plans and calls the
functional core (:func:`~scdm.regression._path.lasso_path`), then assigns its results."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator

from .._checks import check_fraction
from .._device import resolve_device
from .._memmap import read_rows
from .._settings import settings
from ._path import PathSettings, lasso_path
from ._plan import plan_memory
from ._rows import HELDOUT, MIN_ROWS, MIN_VAL_ROWS, as_2d


class LassoPath(BaseEstimator):
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
                 fit_intercept: bool = True, min_rows: int = MIN_ROWS, device: str = "auto",
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
            weight = as_2d(name, weight)
            if tuple(weight.shape) != tuple(Y.shape):
                raise ValueError(f"{name} must have Y's shape {tuple(Y.shape)}, got "
                                 f"{tuple(weight.shape)}.")
        return weight

    def _check(self, X, Y, sample_weight, val_sample_weight, offset: int | None = None):
        X, Y = as_2d("X", X), as_2d("Y", Y)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; both need one "
                             "row per model.")
        sample_weight = self._check_weight("sample_weight", sample_weight, X, Y, offset)
        val_sample_weight = self._check_weight("val_sample_weight", val_sample_weight, X, Y,
                                               offset)
        check_fraction("eps", self.eps, why=" (λ_min / λ_max)")
        if self.val_rows is None:
            check_fraction("val_fraction", self.val_fraction, "[0, 1)")
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
        n_rows, p = X.shape
        n_targets = Y.shape[1]
        lambdas = self._user_lambdas(n_targets)
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
        plan = plan_memory(n_train=train.size, p=p, n_targets=n_targets,
                           itemsize=torch.tensor([], dtype=self.dtype).element_size(),
                           budget=int(self.memory_budget), precompute=self.precompute,
                           weighted=S is not None, block=self.target_block_size,
                           chunk_rows=self.row_chunk_size)
        result = lasso_path(
            X, Y, train=train, val=val, settings=PathSettings(
                n_lambdas=int(self.n_lambdas), eps=float(self.eps), tol=float(self.tol),
                path_tol=float(self.path_tol), max_iter=int(self.max_iter),
                fit_intercept=bool(self.fit_intercept), min_rows=int(self.min_rows),
                early_stopping=bool(self.early_stopping), patience=int(self.patience)),
            plan=plan, device=resolve_device(self.device), dtype=self.dtype, sample_weight=S,
            val_sample_weight=S_val, target_offset=offset, lambdas=lambdas,
            progress=settings.progress(self.verbose))
        self.precompute_ = plan.gram
        self.coef_, self.mean_, self.scale_ = result.coef, result.mean, result.scale
        self.intercept_ = result.intercept.astype(np.float32)
        self.lambda_, self.val_mse_, self.val_corr_ = (result.lambda_, result.val_mse,
                                                       result.val_corr)
        self.n_iter_, self.converged_, self.path_ = (result.n_iter, result.converged,
                                                     result.path)
        return self

    def _user_lambdas(self, n_targets: int) -> np.ndarray | None:
        if self.lambdas is None:
            return None
        lam = np.asarray(self.lambdas, dtype=np.float64)
        if lam.ndim == 1:
            lam = np.repeat(lam[:, None], n_targets, axis=1)
        if lam.ndim != 2 or lam.shape[1] != n_targets or (lam <= 0).any():
            raise ValueError("lambdas must be positive, shaped (k,) or (k, n_targets).")
        return lam

    # ------------------------------------------------------------------ predict
    def predict(self, X) -> np.ndarray:
        """Predictions ``n_rows × n_targets`` for raw (unstandardised) features ``X``."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("LassoPath is not fitted yet; call fit(X, Y) first.")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.coef_.shape[0]:
            raise ValueError(f"X must have {self.coef_.shape[0]} columns.")
        return X @ self.coef_ + self.intercept_
