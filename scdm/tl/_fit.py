"""``scdm.tl.fit_datamodels``: one LASSO per observation, from masks to margins."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from .._anndata import uns_safe
from .._memmap import RowSubset, read_rows
from .._settings import settings
from ..regression import MIN_ROWS, MIN_VAL_ROWS, LassoPath, fit_datamodels_path
from ._recorded import store_of


class DegenerateDatamodelsWarning(UserWarning):
    """Some datamodels are unusable (all zero, no held-out skill, not converged, not finite)
    and were flagged."""


def lasso_for(fit_params: Mapping[str, Any], *, device: str = "auto",
              verbose: bool | None = None) -> LassoPath:
    """The solver ``fit_datamodels`` uses for the recorded ``fit_params`` (refits use it too).

    Parameters recorded before a setting existed take the value that reproduces those fits.
    """
    tol = float(fit_params["tol"])
    return LassoPath(n_lambdas=int(fit_params["n_lambdas"]), eps=float(fit_params["eps"]),
                     val_fraction=float(fit_params["val_fraction"]), tol=tol,
                     path_tol=float(fit_params.get("path_tol", tol)),
                     min_rows=int(fit_params["min_rows"]),
                     precompute=fit_params.get("precompute", "auto"),
                     memory_budget=int(fit_params.get("memory_budget", 2 << 30)), device=device,
                     random_state=int(fit_params["random_state"]),
                     verbose=settings.progress(verbose))


def solve_datamodels(X, Y, fit_params: Mapping[str, Any], *, device: str = "auto",
                     verbose: bool | None = None) -> LassoPath:
    """Fit the datamodels of store rows ``X`` (masks), ``Y`` (margins) as ``fit_params`` say
    (targets are the training samples); see :func:`scdm.regression.fit_datamodels_path`."""
    model = lasso_for(fit_params, device=device, verbose=verbose)
    return fit_datamodels_path(model, X, Y, heldout=bool(fit_params.get("heldout", True)))


def heldout_rows_needed(*, heldout: bool, val_fraction: float, min_rows: int) -> float:
    """Models a target must be held out of: its λ is chosen on the validation models among
    them (at least ``MIN_VAL_ROWS``) and, with ``heldout``, it is fitted on the rest."""
    needed = MIN_VAL_ROWS / val_fraction if val_fraction > 0 else 0.0
    if heldout:
        needed = max(needed, min_rows / (1 - val_fraction))
    return needed


def models_needed(fit_params: Mapping[str, Any], alpha: float) -> float:
    """Models a refit with the recorded ``fit_params`` needs on average: a target is held out
    of about ``1 - alpha`` of them (see :func:`heldout_rows_needed`). Callers add a margin for
    the targets held out of the fewest."""
    return heldout_rows_needed(heldout=bool(fit_params.get("heldout", True)),
                               val_fraction=float(fit_params["val_fraction"]),
                               min_rows=int(fit_params["min_rows"])) / (1 - float(alpha))


def check_heldout_rows(X, obs_names, *, heldout: bool, val_fraction: float, min_rows: int
                       ) -> None:
    """Refuse, before any fitting, targets held out of too few models (see
    :func:`heldout_rows_needed`)."""
    kept = np.zeros(X.shape[1], dtype=np.int64)
    for start in range(0, X.shape[0], 8192):
        kept += (~read_rows(X, slice(start, min(start + 8192, X.shape[0])))).sum(0)
    worst = int(np.argmin(kept))
    needed = heldout_rows_needed(heldout=heldout, val_fraction=val_fraction, min_rows=min_rows)
    if kept[worst] < needed:
        why = (f"fitted on the models that did not train on it (min_rows={min_rows}) and its "
               f"λ chosen on the {val_fraction:g} of them held out for validation"
               if heldout else f"its λ is chosen on the validation models ({val_fraction:g} of "
               f"all) that did not train on it, and at least {MIN_VAL_ROWS} are needed")
        raise ValueError(
            f"observation {obs_names[worst]!r} is held out of only {kept[worst]} of "
            f"{X.shape[0]} models, but about {int(np.ceil(needed))} are needed: {why}. Train "
            "more models (n_models), lower alpha or raise val_fraction.")


def degenerate_targets(model: LassoPath) -> np.ndarray:
    """Targets whose datamodel cannot be used: all weights zero (besides the self-influence),
    not converged, not finite, or without skill on the held-out validation models
    (correlation ≤ 0, as a margin of pure noise gets). A fit without validation rows has no
    correlation, which is no fault."""
    corr = model.val_corr_
    corr_ok = (corr > 0) | np.isnan(corr).all()
    usable = (model.converged_ & corr_ok & np.isfinite(model.coef_).all(axis=0)
              & (model.coef_ != 0).any(axis=0))
    return ~usable



def fit_datamodels(
    adata: AnnData,
    *,
    store: str | Path | None = None,
    key: str = "datamodels",
    key_added: str | None = None,
    heldout: bool = False,
    allow_incomplete: bool = False,
    n_lambdas: int = 20,
    eps: float = 1e-3,
    val_fraction: float = 0.1,
    tol: float = 1e-5,
    path_tol: float = 1e-3,
    min_rows: int = MIN_ROWS,
    precompute: bool | str = "auto",
    memory_budget: int = 2 << 30,
    sparse_threshold: float = 0.3,
    device: str = "auto",
    random_state: int = 0,
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Fit each observation's datamodel: a LASSO from training masks to its margins.

    For target ``j`` the rows are the models in the store and the features are the masks; the
    weight vector says how including each training sample moves ``j``'s margin.

    By default (``heldout=False``) every target is fitted on *all* models with its own mask
    column kept as a feature: that column absorbs the self-influence (how much training on
    ``j`` raises ``j``'s own margin), and all targets share one Gram matrix, so the fit is
    much faster than fitting each target on its own rows (more so with more samples; figures
    in ``workflows/benchmarks/RESULTS.md``, "Fit modes"). The self-influence is then taken
    out of ``W`` (its diagonal is 0) and kept in ``adata.uns[key_added]["self_influence"]``.
    Predictions for models that did not train on ``j`` are unaffected, and λ is chosen on
    exactly those validation models. With ``heldout=True`` target ``j`` is fitted only on the
    models that did not train on it (the original datamodels recipe). Measured on planted data
    (``workflows/benchmarks/fit_modes.py``) the default has the higher LDS.

    Parameters
    ----------
    adata
        The AnnData that :func:`scdm.tl.train_models` was run on.
    store
        The store directory; default ``adata.uns[key]["store"]``.
    key
        Key of ``adata.uns`` written by ``train_models``.
    key_added
        Where results go (default ``key``): ``adata.obsp[key_added]``,
        ``adata.obs[f"{key_added}_corr"]``, ``adata.obs[f"{key_added}_ok"]``,
        ``adata.uns[key_added]``.
    heldout
        Fit target ``j`` on the models that did not train on ``j`` only (slower).
    allow_incomplete
        Fit on the completed models of an unfinished store instead of refusing.
    n_lambdas, eps, val_fraction, tol, path_tol, precompute, memory_budget
        The regularisation path and solver (see :class:`~scdm.regression.LassoPath`): ``tol``
        is the duality-gap tolerance of the returned weights (1e-5 matches scikit-learn's
        ``Lasso``), ``path_tol`` that of the path points that only choose λ.
    min_rows
        With ``heldout``: refuse if some target keeps fewer models than this.
    sparse_threshold
        Store ``W`` as CSR when at most this fraction of its entries is non-zero.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    random_state
        Seed of the validation split.
    verbose
        Progress bar (default: ``scdm.settings.verbosity >= 1``).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy. Sets ``adata.obsp[key_added]`` (``W``, n_obs × n_obs, row = target,
    column = training sample, raw units, zero diagonal; CSR float32 when sparse enough),
    ``adata.obs[f"{key_added}_corr"]`` (Pearson correlation of predicted and actual margins on
    the validation models that did not train on the target, before the refit),
    ``adata.obs[f"{key_added}_ok"]`` (False for a degenerate datamodel: all zero, no skill on
    held-out validation models, not converged or not finite; such targets are left out of the
    embedding and subgroups, and a warning names them) and in
    ``adata.uns[key_added]``: ``"lambda"``, ``"intercept"``, ``"self_influence"`` (unless
    ``heldout``), ``"val_mse"``, ``"path"``, ``"fit_params"`` and ``"summary"``.
    """
    key_added = key_added or key
    model_store = store_of(adata, store, key)
    if "masks" not in model_store.fields or "margins" not in model_store.fields:
        raise ValueError(f"store {model_store.path} has no masks/margins fields.")
    n_models, n_samples = model_store.masks.shape
    if n_samples != adata.n_obs or model_store.margins.shape[1] != adata.n_obs:
        raise ValueError(
            f"the store's masks cover {n_samples} samples and its margins "
            f"{model_store.margins.shape[1]} targets, but adata has {adata.n_obs} observations; "
            "pass the AnnData the store was trained on."
        )
    completed = model_store.completed_indices()
    if completed.size == 0:
        raise ValueError(f"the store {model_store.path} has 0 of {n_models} models complete; "
                         "run scdm.tl.train_models first.")
    if completed.size < n_models and not allow_incomplete:
        raise ValueError(
            f"the store {model_store.path} has {completed.size} of {n_models} models complete; "
            "rerun scdm.tl.train_models to finish it, or pass allow_incomplete=True to fit on "
            "the completed models."
        )
    X: Any
    Y: Any
    if completed.size == n_models:  # memmaps straight through, streamed by the solver
        X, Y = model_store.masks, model_store.margins
    else:  # read from the files in chunks, never copied whole
        X, Y = RowSubset(model_store.masks, completed), RowSubset(model_store.margins, completed)
    check_heldout_rows(X, adata.obs_names, heldout=heldout, val_fraction=val_fraction,
                       min_rows=min_rows)
    adata = adata.copy() if copy else adata

    fit_params = {"heldout": heldout, "n_lambdas": n_lambdas, "eps": eps,
                  "val_fraction": val_fraction, "tol": tol, "path_tol": path_tol,
                  "min_rows": min_rows, "precompute": precompute,
                  "memory_budget": int(memory_budget), "random_state": random_state,
                  "n_models_used": int(X.shape[0])}
    model = solve_datamodels(X, Y, fit_params, device=device, verbose=verbose)
    bad = degenerate_targets(model)
    if bad.any():
        names = ", ".join(map(repr, adata.obs_names[bad][:5])) + (" …" if bad.sum() > 5 else "")
        warnings.warn(
            f"{int(bad.sum())} of {adata.n_obs} datamodels are degenerate (all weights zero, no "
            f"held-out skill, not converged or not finite: {names}); they are flagged False in "
            f"adata.obs[{f'{key_added}_ok'!r}] and left out of the embedding and subgroups. "
            "Train more models (n_models) or check those observations' margins.",
            DegenerateDatamodelsWarning, stacklevel=2)

    W = np.ascontiguousarray(model.coef_.T, dtype=np.float32)  # row = target
    density = float(np.count_nonzero(W)) / W.size
    adata.obsp[key_added] = sparse.csr_matrix(W) if density <= sparse_threshold else W
    adata.obs[f"{key_added}_corr"] = model.val_corr_.astype(np.float32)
    adata.obs[f"{key_added}_ok"] = ~bad
    info = dict(adata.uns.get(key, {})) if key_added == key else {}
    info.update({
        "store": str(model_store.path.resolve()),
        "lambda": model.lambda_.astype(np.float32),
        "intercept": model.intercept_.astype(np.float32),
        "val_mse": model.val_mse_.astype(np.float32),
        "path": {name: values.astype(np.float32) for name, values in model.path_.items()},
        "fit_params": fit_params,
        "summary": {
            "n_models_used": int(X.shape[0]),
            "mean_corr": float(np.nanmean(model.val_corr_)),
            "median_corr": float(np.nanmedian(model.val_corr_)),
            "mean_nonzero_weights": float(np.count_nonzero(W) / W.shape[0]),
            "density": density,
            "n_degenerate": int(bad.sum()),
        },
    })
    info.pop("self_influence", None)  # from an earlier fit: never leave a stale one
    if model.self_influence_ is not None:
        info["self_influence"] = model.self_influence_.astype(np.float32)
    adata.uns[key_added] = uns_safe(info)
    return adata if copy else None
