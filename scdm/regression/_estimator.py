"""The estimator: ``LassoPath`` (scikit-learn's conventions) and the datamodels way to fit it."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from tqdm.auto import tqdm

from .._device import resolve_device
from .._memmap import column_moments, read_rows
from .._settings import settings
from ._gram import Moments, moment_bytes
from ._path import fit_block
from ._rows import HELDOUT, MIN_VAL_ROWS, Rows, as_2d


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
        state_budget = budget - (moment_bytes(p, n_targets) + 3 * p * p * itemsize
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
            gram_top = Rows(X, Y, None, train, (0, 1), cache_bytes=0,
                             **common).gram_top_eigenvalue()
            gram_all = (Rows(X, Y, None, np.arange(n_rows), (0, 1), cache_bytes=0,
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
                fit_block(self, rows, (t0, t1), mean, scale, gram_top, gram_all, lam_path, out,
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
        return 2 * moment_bytes(p, n_targets) <= int(self.memory_budget) and p <= 2 * n_train

    def _moments(self, X, Y, train, val, progress, common) -> dict[str, Moments]:
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
