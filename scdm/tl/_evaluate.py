"""``scdm.tl.lds`` and ``scdm.tl.model_count_curve``: do the datamodels predict new models?"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from .._anndata import uns_safe
from .._memmap import read_rows
from .._seeding import LDS_PURPOSE, check_random_state, derived_seed
from .._settings import settings
from ..evaluation import linear_datamodeling_score, spearman_columns
from ..get import datamodel_weights, evaluation_models, lds_models
from ..store import ModelStore, store_schema
from ..workers import Backend, as_backend, fill_store
from ._fit import models_needed, solve_datamodels
from ._recorded import check_n_models, default_store_path, one_view, recorded_training

logger = logging.getLogger("scdm")



@one_view
def lds(
    adata: AnnData,
    *,
    key: str = "datamodels",
    n_models: int = 200,
    n_seeds: int = 1,
    store: str | Path | None = None,
    device: str = "auto",
    backend: str | Backend = "local",
    random_state: int = 0,
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Linear datamodeling score: do the datamodels predict models they have never seen?

    Draws ``n_models`` fresh training subsets from a seed stream independent of the training
    models, trains models on them exactly as recorded in ``adata.uns[key]["params"]`` (same
    features, labels, alpha, strata and hyper-parameters), and correlates (Spearman, across the
    evaluation models) each target's actual margin with the margin its datamodel predicts from
    the subset alone. Only evaluation models that did not train on a target count for it,
    whatever the fit mode: a model that trained on the target raises its margin by the
    self-influence, which is trivially predictable and would inflate the score. Evaluation
    models go into their own store, which a rerun resumes and a larger ``n_models`` extends.

    Parameters
    ----------
    adata
        The AnnData :func:`scdm.tl.datamodels` ran on.
    key
        Key of the datamodels in ``adata.uns`` / ``adata.obsp``.
    n_models
        Evaluation subsets (the datamodels papers use a few hundred to 1,000).
    n_seeds
        Models per subset, with different initialisations and data orders; their margins are
        averaged, which removes seed noise from the target (as in the datamodels and TRAK
        papers). Raises the LDS towards what the datamodels can explain at best.
    store
        Directory of the evaluation store. Default: next to the other stores, named after the
        configuration.
    device, backend
        Where and how the evaluation models train, as in :func:`scdm.tl.train_models`
        (``LocalBackend(chunk_size=…)``, ``"ray"`` or ``RayBackend(…)``).
    random_state
        Seed of the evaluation stream (combined with the training seed; never the same
        subsets as the training models).
    verbose
        Progress bar (default: ``scdm.settings.verbosity >= 1``).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy. Sets ``adata.obs[f"{key}_lds"]`` (per target; NaN for an all-zero
    datamodel) and ``adata.uns[key]["lds"]`` with ``"mean"``, ``"median"``, ``"n_excluded"``
    (targets without a score), ``"store"``,
    ``"params"`` and ``"mean_heldout_accuracy"`` of the evaluation models.
    """
    n_masks = check_n_models(n_models)
    n_seeds = check_n_models(n_seeds)
    random_state = check_random_state(random_state)
    backend = as_backend(backend)
    trak = adata.uns.get(key, {}).get("method") == "trak"
    if not trak:
        weights, intercept, _ = datamodel_weights(adata, key)
    training = recorded_training(adata, key)
    adata = adata.copy() if copy else adata

    seed = derived_seed(int(training.params["random_state"]), LDS_PURPOSE, random_state)
    fingerprint = {**training.store.fingerprint, "purpose": "lds",
                   "evaluation_random_state": random_state, "n_seeds": n_seeds}
    path = Path(store) if store is not None else default_store_path(f"{key}_lds", fingerprint)
    eval_store = ModelStore.create(path, n_models=n_masks * n_seeds,
                                   schema=store_schema(adata.n_obs,
                                                       margins_dtype=settings.margins_dtype),
                                   fingerprint=fingerprint)
    fill_store(eval_store, training.recipe(seed, seeds_per_mask=n_seeds),
               models=(0, n_masks * n_seeds), backend=backend, device=device,
               progress=settings.progress(verbose), desc="evaluation models")

    masks, margins = evaluation_models(eval_store, n_masks, n_seeds)
    if trak:  # predictions from the low-rank factors: no n × n matrix needed
        scores = _trak_lds(adata, key, masks, margins, None, device)
    else:
        scores = linear_datamodeling_score(weights, masks, margins, rows="targets",
                                           intercept=intercept, heldout=True)
    adata.obs[f"{key}_lds"] = scores.astype(np.float32)
    accuracy = eval_store.field("heldout_accuracy")[: n_masks * n_seeds]
    info = dict(adata.uns[key])
    info["lds"] = {
        "mean": float(np.nanmean(scores)),
        "median": float(np.nanmedian(scores)),
        # all-zero datamodels (and targets too few models left out) score NaN, not 0
        "n_excluded": int(np.isnan(scores).sum()),
        "store": str(eval_store.path.resolve()),
        "params": {"n_models": n_masks, "n_seeds": n_seeds, "random_state": random_state,
                   "heldout": True},
        "mean_heldout_accuracy": float(np.nanmean(accuracy)),
    }
    adata.uns[key] = uns_safe(info)
    logger.info("LDS over %d evaluation models: mean %.3f (%d targets without a score: all-zero "
                "datamodels)", n_masks, info["lds"]["mean"], info["lds"]["n_excluded"])
    return adata if copy else None


def _trak_lds(adata: AnnData, key: str, masks: np.ndarray, margins: np.ndarray,
              sizes: Sequence[int] | None, device: str):
    """LDS of TRAK scores from the first ``m`` checkpoints, for each ``m`` in ``sizes`` (all
    when ``None``: one array), on evaluation models that did not train on the target."""
    from ._trak import (
        checkpoint_factors,
        checkpoint_features,
        trak_factor_settings,
        trak_predictions,
    )

    params = trak_factor_settings(adata, key)
    A: list[torch.Tensor] | list[np.ndarray]
    if key in adata.obsp:  # small data (tl.trak kept the n × n matrix): in memory
        A, Q = checkpoint_factors(adata, key, proj_dim=int(params["proj_dim"]),
                                  damping=float(params["damping"]), device=device)
    else:  # large data: the store's memory maps, read in row blocks
        features = checkpoint_features(adata, key, proj_dim=int(params["proj_dim"]),
                                       damping=float(params["damping"]), device=device)
        A, Q = features.feature_maps(), torch.from_numpy(features.out_to_loss())
    out = []
    for m in ([len(A)] if sizes is None else sizes):
        q = Q[:m].mean(0).cpu().numpy().astype(np.float64)
        out.append(spearman_columns(trak_predictions(A[:m], q, masks), margins, ~masks))
    return out[0] if sizes is None else out


def _trak_checkpoint_curve(adata: AnnData, key: str, n_models, flat_tol: float, device: str,
                           copy: bool) -> AnnData | None:
    """The model-count curve of a TRAK result: mean LDS of the scores from the first m
    checkpoints (default a quarter, half and all of them)."""
    lds_info = adata.uns[key].get("lds")
    if lds_info is None:
        raise ValueError(f"the TRAK checkpoint curve scores LDS on evaluation models; run "
                         f"scdm.tl.lds(adata, key={key!r}) first.")
    total = int(adata.uns[key]["trak_params"]["n_checkpoints"])
    sizes = (sorted({max(2, total // d) for d in (4, 2, 1)}) if n_models is None
             else sorted({check_n_models(int(m)) for m in n_models}))
    if len(sizes) < 2 or sizes[-1] > total:
        raise ValueError(f"n_models must list at least two checkpoint counts up to {total}, "
                         f"got {n_models}.")
    masks, margins = lds_models(adata, key)
    mean_lds = [float(np.nanmean(s)) for s in _trak_lds(adata, key, masks, margins, sizes,
                                                        device)]
    gain = mean_lds[-1] - mean_lds[-2]
    flat = bool(gain < flat_tol)
    text = (f"flattened: going from {sizes[-2]} to {sizes[-1]} checkpoints changed the mean "
            f"LDS by {gain:+.3f} (< {flat_tol}); more checkpoints will add little." if flat else
            f"still rising: going from {sizes[-2]} to {sizes[-1]} checkpoints raised the mean "
            f"LDS by {gain:+.3f}; rerun scdm.tl.trak with n_models={2 * sizes[-1]}.")
    adata = adata.copy() if copy else adata
    info = dict(adata.uns[key])
    info["model_curve"] = {"n_models": np.asarray(sizes),
                           "mean_corr": np.full(len(sizes), np.nan),
                           "mean_lds": np.asarray(mean_lds), "flat": flat,
                           "recommendation": text}
    adata.uns[key] = uns_safe(info)
    logger.info("checkpoint-count curve: %s", text)
    return adata if copy else None


def _default_curve_sizes(n_completed: int, min_models: float) -> list[int]:
    """1/8, 1/4, 1/2 and all of the models, from where a refit can choose λ (``min_models``)."""
    sizes = sorted({max(1, n_completed // d) for d in (8, 4, 2, 1)})
    return [s for s in sizes if s >= max(min_models, min(100, n_completed))]


@one_view
def model_count_curve(
    adata: AnnData,
    *,
    key: str = "datamodels",
    n_models: Sequence[int] | None = None,
    flat_tol: float = 0.02,
    device: str = "auto",
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Did I train enough models? Held-out correlation and LDS against the number of models.

    Refits the datamodels on nested subsets of the training models (the first ``m`` completed
    models, for each ``m`` in ``n_models``) with the recorded fit settings, and scores each
    refit by its mean held-out correlation and, when :func:`scdm.tl.lds` has run, its mean LDS
    on the same evaluation models. When the last doubling raised the score by less than
    ``flat_tol``, the curve has flattened and more models will add little.

    Parameters
    ----------
    adata
        After :func:`scdm.tl.datamodels` (and optionally :func:`scdm.tl.lds`).
    key
        Key of the datamodels.
    n_models
        Model counts to refit with (default: 1/8, 1/4, 1/2 and all of the completed models,
        from 100 up and from where every target is held out of enough validation models to
        choose its λ, with a margin).
    flat_tol
        Gain of the score over the last step below which the curve counts as flat.
    device, verbose, copy
        As elsewhere.

    Returns
    -------
    ``None`` or a copy. Sets ``adata.uns[key]["model_curve"]``: ``"n_models"``, ``"mean_corr"``,
    ``"mean_lds"`` (NaN without an LDS run), ``"flat"`` and a ``"recommendation"`` sentence.
    """
    if adata.uns.get(key, {}).get("method") == "trak":
        return _trak_checkpoint_curve(adata, key, n_models, flat_tol, device, copy)
    weights, intercept, fit_params = datamodel_weights(adata, key)
    training = recorded_training(adata, key)
    completed = training.store.completed_indices()
    # the margin covers the targets that, by chance, are held out of the fewest validation
    # models (1.5x still left some with fewer than 10 at 300 models for 700 cells)
    min_models = models_needed(fit_params, training.params["alpha"])
    sizes = (_default_curve_sizes(completed.size, 2.5 * min_models) if n_models is None
             else sorted({check_n_models(int(m)) for m in n_models}))
    if not sizes or sizes[-1] > completed.size:
        raise ValueError(f"n_models must be a non-empty list of counts up to the "
                         f"{completed.size} completed models of the store, got {n_models}.")
    if len(sizes) < 2:
        raise ValueError("a curve needs at least two model counts; train more models (the "
                         "default list starts at 100) or pass n_models=.")
    evaluation = lds_models(adata, key) if "lds" in adata.uns[key] else None
    adata = adata.copy() if copy else adata

    mean_corr, mean_lds = [], []
    masks, margins = training.store.masks, training.store.margins
    for m in tqdm(sizes, desc="refits", unit="fit", disable=not settings.progress(verbose)):
        rows = completed[:m]
        if m == completed.size and int(fit_params.get("n_models_used", -1)) == m:
            corr = adata.obs[f"{key}_corr"].to_numpy(dtype=np.float64)  # the fit we have
            W, b = weights, intercept
        else:
            try:
                model = solve_datamodels(read_rows(masks, rows), read_rows(margins, rows),
                                         fit_params, device=device, verbose=False)
            except ValueError as err:
                raise ValueError(f"cannot refit on {m} models: {err} Start the curve at more "
                                 "models (n_models=).") from err
            corr, W, b = model.val_corr_, model.coef_.T, model.intercept_
        mean_corr.append(float(np.nanmean(corr)))
        if evaluation is not None:
            scores = linear_datamodeling_score(W, *evaluation, rows="targets", intercept=b,
                                               heldout=True)
            mean_lds.append(float(np.nanmean(scores)))
        else:
            mean_lds.append(float("nan"))

    score_name, score = ("LDS", mean_lds) if evaluation is not None else (
        "held-out correlation", mean_corr)
    gain = score[-1] - score[-2]
    flat = bool(gain < flat_tol)
    if flat:
        text = (f"flattened: going from {sizes[-2]} to {sizes[-1]} models changed the mean "
                f"{score_name} by {gain:+.3f} (< {flat_tol}); more models will add little.")
    else:
        text = (f"still rising: going from {sizes[-2]} to {sizes[-1]} models raised the mean "
                f"{score_name} by {gain:+.3f}; train more models (e.g. n_models="
                f"{2 * sizes[-1]}) and refit.")
    info = dict(adata.uns[key])
    info["model_curve"] = {"n_models": np.asarray(sizes), "mean_corr": np.asarray(mean_corr),
                           "mean_lds": np.asarray(mean_lds), "flat": flat,
                           "recommendation": text}
    adata.uns[key] = uns_safe(info)
    logger.info("model-count curve: %s", text)
    return adata if copy else None
