"""``scdm.tl.train_models``: train the ensemble into a store."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from anndata import AnnData

from .._anndata import ModelInputs, model_inputs, uns_safe
from .._ray import check_backend, fill_store
from .._seeding import check_random_state
from .._settings import settings
from .._training import store_schema
from .._workers import Recipe, write_recipe
from ..ensemble import EnsembleTrainer, TrainConfig, resolve_device
from ..masks import MaskMode, MaskSampler, check_alpha
from ..store import ModelStore

logger = logging.getLogger("scdm")

ALGORITHM = "scdm-mlp-1"


def default_n_models(n_units: int) -> int:
    """Models for ``n_units`` samples (or groups): ~25 per sample, measured on planted subtypes
    at a few hundred samples (2,000 models for 400 samples were not enough, 10,000 were)."""
    return int(np.ceil(min(max(25 * n_units, 1000), 200_000) / 100) * 100)


def default_batch_size(n_train: int) -> int:
    """A quarter of a training set, within [16, 128]: at least ~4 optimiser steps per epoch."""
    return int(min(128, max(16, -(-n_train // 4))))


def check_n_models(n_models) -> int:
    if isinstance(n_models, bool) or not isinstance(n_models, (int, np.integer)):
        raise TypeError(f"n_models must be an integer, got {n_models!r}.")
    if n_models < 1:
        raise ValueError(f"n_models must be at least 1, got {n_models}.")
    return int(n_models)


def training_fingerprint(inputs: ModelInputs, *, n_obs: int, label_key: str,
                         group_key: str | None, stratify_key: str | None, alpha: float,
                         mask_mode: str,
                         config: TrainConfig, scale: bool, random_state: int) -> dict:
    """What makes two training runs interchangeable (everything but the number of models)."""
    return {
        "algorithm": ALGORITHM,
        "n_obs": n_obs,
        "n_features": int(inputs.X.shape[1]),
        "data_hash": inputs.data_hash,
        "label_key": label_key,
        "classes": inputs.classes,
        "group_key": group_key,
        **({"stratify_key": stratify_key} if stratify_key is not None else {}),
        "alpha": alpha,
        "mask_mode": mask_mode,
        "scale": scale,
        "train": config.to_dict(),
        "random_state": random_state,
    }


def default_store_path(key_added: str, fingerprint: dict) -> Path:
    """A directory per configuration, so one call resumes itself and never meets another."""
    text = json.dumps(fingerprint, sort_keys=True).encode()
    digest = hashlib.blake2b(text, digest_size=6).hexdigest()
    return Path(settings.store_dir) / f"{key_added}-{digest}"


def training_parts(adata: AnnData, label_key: str, *, use_rep: str | None,
                   layer: str | None, group_key: str | None, stratify_key: str | None,
                   alpha: float, mask_mode: MaskMode, hidden: Sequence[int], epochs: int,
                   batch_size: int | None, lr: float, weight_decay: float, l1: float,
                   scale: bool, random_state: int
                   ) -> tuple[ModelInputs, MaskSampler, TrainConfig]:
    """Validated inputs, mask sampler and model settings from ``train_models``' arguments."""
    alpha = check_alpha(alpha)
    random_state = check_random_state(random_state)
    if batch_size is None:
        batch_size = default_batch_size(round(alpha * adata.n_obs))
    config = TrainConfig(hidden=tuple(hidden), epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, l1=l1)
    inputs = model_inputs(adata, label_key, use_rep=use_rep, layer=layer, group_key=group_key,
                          stratify_key=stratify_key, scale=scale)
    sampler = MaskSampler(inputs.y, alpha, groups=inputs.groups, mode=mask_mode,
                          strata=inputs.strata, random_state=random_state)
    return inputs, sampler, config


def create_training_store(adata: AnnData, inputs: ModelInputs, sampler: MaskSampler,
                          config: TrainConfig, *, label_key: str, group_key: str | None,
                          stratify_key: str | None, mask_mode: str, scale: bool, n_models: int,
                          min_heldout: int, store: str | Path | None, key_added: str,
                          recipe: Recipe | None = None) -> ModelStore:
    """Create (or resume) the store of a training configuration; with ``recipe``, also save
    what workers elsewhere need to train its models (``scdm train --store``)."""
    sampler.check_heldout(n_models, min_heldout, obs_names=list(adata.obs_names))
    fingerprint = training_fingerprint(
        inputs, n_obs=adata.n_obs, label_key=label_key, group_key=group_key,
        stratify_key=stratify_key, alpha=sampler.alpha, mask_mode=mask_mode, config=config,
        scale=scale, random_state=sampler.random_state)
    path = Path(store) if store is not None else default_store_path(key_added, fingerprint)
    model_store = ModelStore.create(path, n_models=n_models, schema=store_schema(adata.n_obs),
                                    fingerprint=fingerprint)
    if recipe is not None:
        write_recipe(model_store.path, recipe)
    return model_store


def store_of(adata: AnnData, store: str | Path | None, key: str) -> ModelStore:
    """The training store of ``adata.uns[key]`` (or ``store``), with errors that say what to do."""
    if store is None:
        info = adata.uns.get(key)
        if not isinstance(info, dict) or "store" not in info:
            raise KeyError(
                f"adata.uns[{key!r}] has no store path; run scdm.tl.train_models(adata, ...) "
                "first, or pass store= (a directory written by train_models)."
            )
        store = info["store"]
    if not Path(store).exists():
        raise FileNotFoundError(f"the store {store} does not exist (moved or deleted?); pass "
                                "store= with its current location.")
    return ModelStore.open(store)


@dataclass
class RecordedTraining:
    """How the models of ``adata.uns[key]`` were trained, rebuilt to train more like them."""

    inputs: ModelInputs
    config: TrainConfig
    params: dict
    store: ModelStore

    def sampler(self, random_state: int, keep: np.ndarray | None = None) -> MaskSampler:
        """A mask sampler with the recorded settings (over the observations in ``keep``)."""
        sel = slice(None) if keep is None else keep
        groups, strata = self.inputs.groups, self.inputs.strata
        return MaskSampler(self.inputs.y[sel], float(self.params["alpha"]),
                           groups=None if groups is None else groups[sel],
                           mode=self.params.get("mask_mode", "balanced"),
                           strata=None if strata is None else strata[sel],
                           random_state=random_state)

    def recipe(self, random_state: int, seeds_per_mask: int = 1) -> Recipe:
        """The recorded settings with another seed, as workers and Ray tasks read them."""
        return Recipe.from_inputs(self.inputs, self.config, alpha=self.params["alpha"],
                                  mask_mode=self.params.get("mask_mode", "balanced"),
                                  random_state=random_state, seeds_per_mask=seeds_per_mask)

    def trainer(self, random_state: int, device: str = "auto") -> EnsembleTrainer:
        return self.recipe(random_state).trainer(device)


def recorded_training(adata: AnnData, key: str = "datamodels") -> RecordedTraining:
    """Rebuild the inputs, model settings and store recorded by ``train_models``.

    Raises if ``adata`` is not the data the store was trained on, so that evaluation models
    are never trained on something else than the models they evaluate.
    """
    info = adata.uns.get(key)
    if not isinstance(info, dict) or "params" not in info:
        raise KeyError(f"adata.uns[{key!r}] holds no training parameters; run "
                       "scdm.tl.datamodels (or tl.train_models) on this AnnData first.")
    params = dict(info["params"])
    store = store_of(adata, None, key)
    inputs = model_inputs(adata, params["label_key"], use_rep=params.get("use_rep"),
                          layer=params.get("layer"), group_key=params.get("group_key"),
                          stratify_key=params.get("stratify_key"),
                          scale=bool(params.get("scale", True)))
    if store.fingerprint.get("data_hash", inputs.data_hash) != inputs.data_hash:
        raise ValueError(
            f"adata's features or labels differ from those the models in {store.path} were "
            "trained on (a subset, re-normalised, or another object?); use the AnnData that "
            "scdm.tl.datamodels ran on.")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in params.items() if k in fields})
    return RecordedTraining(inputs=inputs, config=config, params=params, store=store)


def train_models(
    adata: AnnData,
    label_key: str,
    *,
    use_rep: str | None = None,
    layer: str | None = None,
    group_key: str | None = None,
    stratify_key: str | None = None,
    alpha: float = 0.5,
    n_models: int | None = None,
    store: str | Path | None = None,
    mask_mode: MaskMode = "balanced",
    hidden: Sequence[int] = (64,),
    epochs: int = 20,
    batch_size: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    l1: float = 0.0,
    scale: bool = True,
    device: str = "auto",
    chunk_size: int | None = None,
    model_range: tuple[int, int] | None = None,
    min_heldout: int = 20,
    backend: str = "local",
    ray_address: str | None = None,
    num_cpus_per_task: float = 1,
    num_gpus_per_task: float = 0,
    task_size: int = 256,
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
    adata
        Annotated data matrix (observations × features).
    label_key
        Column of ``adata.obs`` with the class to predict (e.g. disease vs control).
    use_rep
        Key of ``adata.obsm`` to train on (e.g. ``"X_pca"``); default ``.X``.
    layer
        Layer to train on instead of ``.X``.
    group_key
        Column of ``adata.obs`` with groups (e.g. donors) that are kept in or out of a training
        set together; needed whenever observations of a group are not independent.
    stratify_key
        Column of ``adata.obs`` with a nuisance (e.g. batch) to hold fixed across masks: every
        mask trains on ``alpha`` of each (class, batch) cell. Without it, a mask that happens
        to hold more diseased cells of one batch teaches its model that the batch predicts
        disease, and that chance correlation dominates the datamodels of every cell in the
        batch. Recommended whenever such a nuisance is known.
    alpha
        Fraction of observations (or groups) each model trains on, in (0, 1).
    n_models
        Number of models. Default: ~25 per observation (or group), at least 1,000.
    store
        Directory of the store. Default: a sub-directory of ``scdm.settings.store_dir`` named
        after the configuration, so the same call resumes and another one never collides.
    mask_mode
        ``"balanced"`` (exactly ``alpha`` of every class per model) or ``"bernoulli"``.
    hidden, epochs, batch_size, lr, weight_decay, l1
        The models (see :class:`scdm.ensemble.TrainConfig`). ``batch_size=None`` uses a
        quarter of a training set, clipped to [16, 128]: with a fixed 128, a model of 80
        training cells took one optimiser step per epoch and barely learned (held-out
        accuracy 0.65 vs 0.78 with 20; planted-subtype ARI 0.85 vs 0.95). ``hidden=()`` is logistic
        regression. L2 (``weight_decay``) on the first layer is on by default: it is what makes
        datamodels see subtypes.
    scale
        Standardise each feature (mean 0, variance 1) before training.
    device
        ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    chunk_size
        Models trained at once; default from the device's memory.
    model_range
        ``(start, stop)``: train only these models of the ``n_models`` (to split the work
        across processes or machines sharing the store). Default: all.
    min_heldout
        Refuse to train if some observation would be held out of fewer models than this.
    backend
        ``"local"`` (this process) or ``"ray"``: ranges of ``task_size`` models become Ray
        tasks (retried when a worker dies) that write disjoint rows of the store, which must
        then lie on a filesystem every Ray node sees. The store also receives its training
        recipe, so CLI workers (``scdm train --store``) can join. Results are identical to
        ``"local"`` on CPU.
    ray_address
        Ray cluster to connect to (default: ``RAY_ADDRESS``, else a local Ray is started).
    num_cpus_per_task, num_gpus_per_task
        Ray resources per task; fractional GPUs put several tasks on one GPU.
    task_size
        Models per Ray task (a task costs ~0.1-1 s of overhead; see
        ``workflows/benchmarks/scaling.py``).
    random_state
        Seed of masks, initialisations and data orders.
    key_added
        ``adata.uns[key_added]`` receives the store path and parameters.
    verbose
        Progress bar (default: ``scdm.settings.verbosity >= 1``).
    copy
        Return a copy of ``adata`` instead of writing into it.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy``. Sets ``adata.uns[key_added]`` with
    ``"store"`` (path), ``"params"``, ``"n_models"``, ``"n_completed"``, ``"classes"`` and
    ``"mean_heldout_accuracy"``.
    """
    if n_models is not None:
        n_models = check_n_models(n_models)
    inputs, sampler, config = training_parts(
        adata, label_key, use_rep=use_rep, layer=layer, group_key=group_key,
        stratify_key=stratify_key, alpha=alpha, mask_mode=mask_mode, hidden=hidden,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, l1=l1,
        scale=scale, random_state=random_state)
    alpha, random_state = sampler.alpha, sampler.random_state
    check_backend(backend)
    resolve_device(device)  # an unusable device fails before any work
    adata = adata.copy() if copy else adata

    if n_models is None:
        n_models = default_n_models(sampler.n_units)
        logger.info("n_models=None: training %d models (~25 per sample)", n_models)
    start, stop = (0, n_models) if model_range is None else model_range
    if not 0 <= start < stop <= n_models:
        raise ValueError(f"model_range must satisfy 0 <= start < stop <= n_models={n_models}, "
                         f"got {model_range}.")
    model_store = create_training_store(
        adata, inputs, sampler, config, label_key=label_key, group_key=group_key,
        stratify_key=stratify_key, mask_mode=mask_mode, scale=scale, n_models=n_models,
        min_heldout=min_heldout, store=store, key_added=key_added)
    recipe = Recipe.from_inputs(inputs, config, alpha=alpha, mask_mode=mask_mode,
                                random_state=random_state)
    fill_store(model_store, recipe, start, stop, backend=backend, device=device,
               chunk_size=chunk_size, progress=settings.progress(verbose), task_size=task_size,
               ray_address=ray_address, num_cpus_per_task=num_cpus_per_task,
               num_gpus_per_task=num_gpus_per_task)

    completed = model_store.completed_indices()
    params = {
        "label_key": label_key, "use_rep": use_rep, "layer": layer, "group_key": group_key,
        "stratify_key": stratify_key,
        "alpha": alpha, "n_models": n_models, "mask_mode": mask_mode, "scale": scale,
        "random_state": random_state, "min_heldout": min_heldout, **config.to_dict(),
    }
    adata.uns[key_added] = uns_safe({
        "store": str(model_store.path.resolve()),
        "params": params,
        "classes": inputs.classes,
        "n_models": n_models,
        "n_completed": int(completed.size),
        "mean_heldout_accuracy": float(np.nanmean(
            model_store.field("heldout_accuracy")[completed])),
    })
    return adata if copy else None
