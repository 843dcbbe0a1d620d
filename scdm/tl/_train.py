"""``scdm.tl.train_models``: train the ensemble into a store."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from .._anndata import AUTO, choose_input, uns_safe
from .._docs import doc_params
from .._seeding import check_random_state
from .._settings import settings
from ..ensemble import TrainConfig, resolve_device
from ..masks import MaskMode
from ..workers import Backend, MLPRecipe, as_backend, fill_store
from ._recorded import (
    check_n_models,
    create_training_store,
    default_n_models,
    one_view,
    remember_training,
    training_parts,
)

logger = logging.getLogger("scdm")


@one_view
@doc_params
def train_models(
    adata: AnnData,
    label_key: str,
    *,
    use_rep: str | None = AUTO,
    layer: str | None = None,
    group_key: str | None = None,
    stratify_key: str | None = None,
    alpha: float = 0.5,
    n_models: int | None = None,
    store: str | Path | None = None,
    mask_mode: MaskMode = "balanced",
    config: TrainConfig | Mapping[str, Any] | None = None,
    scale: bool = True,
    device: str = "auto",
    model_range: tuple[int, int] | None = None,
    min_heldout: int = 20,
    backend: str | Backend = "local",
    random_state: int = 0,
    key_added: str = "datamodels",
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Train many classifiers on random subsets of the observations and store their margins.

    Each model ``m`` trains on a random subset (its mask) of the observations, drawn from
    ``(random_state, m)`` alone, and records its margin (correct-class logit minus the largest
    other) on every observation. Masks, margins and per-model held-out accuracy go to a
    memory-mapped store on disk; rerunning the same call resumes an interrupted run, and asking
    for more models extends the store.

    Parameters
    ----------
    {training_inputs}
    n_models
        Number of models. Default: ~25 per observation (or group), at least 1,000.
    store
        Directory of the store. Default: a sub-directory of ``scdm.settings.store_dir`` named
        after the configuration, so the same call resumes and another one never collides.
    mask_mode
        ``"balanced"`` (exactly ``alpha`` of every class per model) or ``"bernoulli"``.
    config
        The models: a mapping of some :class:`scdm.ensemble.TrainConfig` fields (``hidden``
        (64,), ``epochs`` 20, ``batch_size``, ``lr`` 1e-3, ``weight_decay`` 1e-2, ``l1`` 0;
        e.g. ``{"epochs": 60, "lr": 1e-2}``) or a ``TrainConfig``, taken as it is. Without a
        ``batch_size`` it is a quarter of a training set, clipped to [16, 128]: with a fixed
        128, a model of 80 training cells took one optimiser step per epoch and barely learned.
        ``hidden=()`` is logistic regression. L2 (``weight_decay``) on the first layer is on by
        default: it is what makes datamodels see subtypes.
    scale
        Standardise each feature (mean 0, variance 1) before training. On genes this is
        ``sc.pp.scale``. On an embedding such as ``use_rep="X_pca"`` it gives every component,
        noise components included, the weight of the first; ``scale=False`` keeps the
        components' variances, as scanpy's kNN does. Measured on the scenario suite
        (RESULTS.md, "The PCs without per-feature scaling"): on synthetic data, unscaled PCs
        gave TRAK and datamodels more planted subtypes (TRAK: right count 41 vs 28 of 63),
        but TRAK cut a graded programme (a continuum, no subtypes) in two in 2 of 3 seeds, and
        on the real datasets neither method gained. So the default stays ``True``.
    {device}
    model_range
        ``(start, stop)``: train only these models of the ``n_models`` (to split the work
        across processes or machines sharing the store). Default: all. ``(0, 0)`` creates the
        store and its recipe and trains nothing (workers fill it: ``scdm train --store``).
    min_heldout
        Refuse to train if some observation would be held out of fewer models than this.
    backend
        Where the models train: ``"local"`` or :class:`scdm.workers.LocalBackend`
        (``chunk_size``: models trained at once, default from the device's memory) in this
        process; ``"ray"`` or :class:`scdm.workers.RayBackend` (``address``,
        ``num_cpus_per_task``, ``num_gpus_per_task`` (fractional puts several tasks on one
        GPU), ``task_size``): ranges of models become Ray tasks (retried when a worker dies)
        that write disjoint rows of the store, which must then lie on a filesystem every Ray
        node sees. Every store receives its training recipe, so CLI workers (``scdm train
        --store``) can join. Results are identical on CPU. Either backend with
        ``keep_checkpoints=True`` also keeps every new model's parameters in the store
        (``STORE/checkpoints``, ~4 bytes per parameter and model), as :func:`scdm.tl.trak`
        does for its checkpoints; later tools read them instead of retraining the models
        (off by default: datamodels need only the margins of their thousands of models).
    random_state
        Seed of masks, initialisations and data orders.
    key_added
        ``adata.uns[key_added]`` receives the store path and parameters.
    {verbose_copy}

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy``. Sets ``adata.uns[key_added]`` with
    ``"store"`` (path), ``"params"``, ``"n_models"``, ``"n_completed"``, ``"classes"`` and
    ``"mean_heldout_accuracy"``.
    """
    if n_models is not None:
        n_models = check_n_models(n_models)
    seed = check_random_state(random_state)
    choice = choose_input(adata, label_key, use_rep, layer, scale=scale, random_state=seed)
    backend = as_backend(backend)
    resolve_device(device)  # an unusable device fails before any work
    adata = adata.copy() if copy else adata
    choice.apply(adata, seed)
    inputs, sampler, model_config = training_parts(
        adata, label_key, use_rep=choice.use_rep, layer=layer, group_key=group_key,
        stratify_key=stratify_key, alpha=alpha, mask_mode=mask_mode, config=config,
        scale=scale, random_state=random_state)
    alpha, random_state = sampler.alpha, sampler.random_state

    if n_models is None:
        n_models = default_n_models(sampler.n_units)
        logger.info("n_models=None: training %d models (~25 per sample)", n_models)
    start, stop = (0, n_models) if model_range is None else model_range
    if not 0 <= start <= stop <= n_models:
        raise ValueError(f"model_range must satisfy 0 <= start <= stop <= n_models={n_models}, "
                         f"got {model_range}.")
    # the store always carries its recipe: later tools, CLI workers and Ray tasks read how its
    # models were trained from it
    recipe = MLPRecipe.from_inputs(inputs, model_config, alpha=alpha, mask_mode=mask_mode,
                                   random_state=random_state)
    model_store = create_training_store(
        adata, inputs, sampler, model_config, label_key=label_key, group_key=group_key,
        stratify_key=stratify_key, mask_mode=mask_mode, scale=scale, n_models=n_models,
        min_heldout=min_heldout, store=store, key_added=key_added, recipe=recipe)
    if stop > start:
        fill_store(model_store, recipe, models=(start, stop), backend=backend, device=device,
                   progress=settings.progress(verbose))

    completed = model_store.completed_indices()
    accuracy = model_store.field("heldout_accuracy")[completed]
    params = {
        "label_key": label_key, "use_rep": choice.use_rep, "layer": layer,
        "group_key": group_key,
        "stratify_key": stratify_key,
        "alpha": alpha, "n_models": n_models, "mask_mode": mask_mode, "scale": scale,
        "random_state": random_state, "min_heldout": min_heldout, **model_config.to_dict(),
    }
    adata.uns[key_added] = uns_safe({
        "store": str(model_store.path.resolve()),
        "params": params,
        "classes": inputs.classes,
        "n_models": n_models,
        "n_completed": int(completed.size),
        "mean_heldout_accuracy": float(np.nanmean(accuracy)) if accuracy.size else np.nan,
    })
    choice.record(adata, key_added)
    remember_training(adata, key_added, inputs)  # the call's later steps read these inputs
    return adata if copy else None
