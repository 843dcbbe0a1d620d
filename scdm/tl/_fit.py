"""``scdm.tl.fit_datamodels``: one LASSO per observation, from masks to margins."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from .._anndata import uns_safe
from .._memmap import read_rows
from .._settings import settings
from ..regression import HELDOUT, LassoPath
from ._train import store_of


def lasso_for(fit_params: Mapping[str, Any], *, device: str = "auto",
              verbose: bool | None = None) -> LassoPath:
    """The solver ``fit_datamodels`` uses for the recorded ``fit_params`` (refits use it too)."""
    return LassoPath(n_lambdas=int(fit_params["n_lambdas"]), eps=float(fit_params["eps"]),
                     val_fraction=float(fit_params["val_fraction"]), tol=float(fit_params["tol"]),
                     min_rows=int(fit_params["min_rows"]), device=device,
                     random_state=int(fit_params["random_state"]),
                     verbose=settings.progress(verbose))


def datamodel_weights(adata: AnnData, key: str = "datamodels") -> tuple[Any, np.ndarray, dict]:
    """``W`` (row = target), the intercepts and the fit parameters of fitted datamodels."""
    info = adata.uns.get(key)
    if key not in adata.obsp or not isinstance(info, dict) or "intercept" not in info:
        raise KeyError(f"no fitted datamodels under key {key!r}; run scdm.tl.datamodels or "
                       "scdm.tl.fit_datamodels first.")
    return adata.obsp[key], np.asarray(info["intercept"], dtype=np.float64), info["fit_params"]


def fit_datamodels(
    adata: AnnData,
    *,
    store: str | Path | None = None,
    key: str = "datamodels",
    key_added: str | None = None,
    heldout: bool = True,
    allow_incomplete: bool = False,
    n_lambdas: int = 20,
    eps: float = 1e-3,
    val_fraction: float = 0.1,
    tol: float = 1e-3,
    min_rows: int = 20,
    sparse_threshold: float = 0.3,
    device: str = "auto",
    random_state: int = 0,
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Fit each observation's datamodel: a LASSO from training masks to its margins.

    For target ``j`` the rows are the models in the store and the features are the masks; the
    weight vector says how including each training sample moves ``j``'s margin. By default
    (``heldout=True``) target ``j`` uses only the models that did *not* train on ``j``, so its
    margins are out-of-sample. λ is chosen per target on held-out models
    (``val_fraction``), then refit on all of them (see :class:`scdm.regression.LassoPath`).

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
        ``adata.obs[f"{key_added}_corr"]``, ``adata.uns[key_added]``.
    heldout
        Fit target ``j`` on the models that did not train on ``j`` only.
    allow_incomplete
        Fit on the completed models of an unfinished store instead of refusing.
    n_lambdas, eps, val_fraction, tol
        The regularisation path (see :class:`~scdm.regression.LassoPath`).
    min_rows
        Refuse if some target keeps fewer models than this.
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
    column = training sample, raw units; CSR float32 when sparse enough),
    ``adata.obs[f"{key_added}_corr"]`` (Pearson correlation of predicted and actual margins on
    validation models, before the refit) and in ``adata.uns[key_added]``: ``"lambda"``,
    ``"intercept"``, ``"val_mse"``, ``"path"``, ``"fit_params"`` and ``"summary"``.
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
    if completed.size == n_models:  # memmaps straight through, streamed by the solver
        X, Y = model_store.masks, model_store.margins
    else:
        X, Y = model_store.masks[completed], model_store.margins[completed]
    if heldout:
        kept = np.zeros(n_samples, dtype=np.int64)
        for start in range(0, X.shape[0], 8192):
            kept += (~read_rows(X, slice(start, min(start + 8192, X.shape[0])))).sum(0)
        worst = int(np.argmin(kept))
        expected_train = kept[worst] * (1 - val_fraction)
        if expected_train < min_rows:
            raise ValueError(
                f"observation {adata.obs_names[worst]!r} is held out of only {kept[worst]} of "
                f"{X.shape[0]} models, too few for its datamodel (min_rows={min_rows}); train "
                "more models (n_models) or lower alpha."
            )
    adata = adata.copy() if copy else adata

    fit_params = {"heldout": heldout, "n_lambdas": n_lambdas, "eps": eps,
                  "val_fraction": val_fraction, "tol": tol, "min_rows": min_rows,
                  "random_state": random_state, "n_models_used": int(X.shape[0])}
    model = lasso_for(fit_params, device=device, verbose=verbose)
    model.fit(X, Y, sample_weight=HELDOUT if heldout else None)

    W = np.ascontiguousarray(model.coef_.T, dtype=np.float32)  # row = target
    density = float(np.count_nonzero(W)) / W.size
    adata.obsp[key_added] = sparse.csr_matrix(W) if density <= sparse_threshold else W
    adata.obs[f"{key_added}_corr"] = model.val_corr_.astype(np.float32)
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
        },
    })
    adata.uns[key_added] = uns_safe(info)
    return adata if copy else None
