"""How models were (or will be) trained: validated inputs, model settings, fingerprints, the
store of a configuration, and the recorded training that evaluation, validation, cleaning and
the CLI rebuild to train more models like them."""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from .._anndata import ModelInputs, dense_features, get_features, model_inputs
from .._seeding import check_random_state
from .._settings import settings
from ..ensemble import EnsembleTrainer, TrainConfig
from ..masks import MaskMode, MaskSampler, check_alpha
from ..store import ModelStore, store_schema
from ..workers import MLPRecipe, write_recipe

ALGORITHM = "scdm-mlp-1"

# the recorded trainings built during the current public call, by (AnnData, key): each is
# rebuilt from the AnnData and checked against its store once per call (None: no call open)
_VIEWS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("scdm_views",
                                                                     default=None)


def one_view(func: Callable) -> Callable:
    """Make ``func`` (a public tool) build each recorded training it reads once: the first
    :func:`recorded_training` of an (AnnData, key) in the call builds the models' input and
    checks it against the store; later ones in the same call, nested tools included, reuse it.
    Nothing outlives the call, so an AnnData changed between calls is checked again."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if _VIEWS.get() is not None:
            return func(*args, **kwargs)
        token = _VIEWS.set({})
        try:
            return func(*args, **kwargs)
        finally:
            _VIEWS.reset(token)

    return wrapper


def _remember(adata: AnnData, key: str, training: RecordedTraining) -> None:
    views = _VIEWS.get()
    if views is not None:  # the AnnData is held too, so its id cannot be reused meanwhile
        views[(id(adata), key)] = (adata, _record(adata.uns[key]), training)


def _record(info: Mapping) -> str:
    """What identifies a training in ``adata.uns[key]``: its parameters and store."""
    return json.dumps({"params": info["params"], "store": str(info["store"])}, sort_keys=True,
                      default=repr)


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


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
# what tl.datamodels' / tl.trak's ``train_kwds`` may hold besides TrainConfig's fields
TRAIN_KWDS = ("config", "mask_mode", "scale", "backend", "min_heldout")


def train_config(config: TrainConfig | Mapping[str, Any] | None, *, n_train: int
                 ) -> TrainConfig:
    """The models' settings: a :class:`~scdm.ensemble.TrainConfig` as it is, or a mapping of
    some of its fields (the rest take their defaults; ``batch_size`` absent or None: a quarter
    of a training set of ``n_train``, within [16, 128])."""
    if isinstance(config, TrainConfig):
        return config
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a TrainConfig or a mapping of its fields, got "
                        f"{type(config).__name__}.")
    settings_ = dict(config or {})
    unknown = sorted(set(settings_) - set(CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"config keys {unknown} are not model settings (TrainConfig fields: "
                        f"{', '.join(CONFIG_FIELDS)}).")
    if settings_.get("batch_size") is None:
        settings_["batch_size"] = default_batch_size(n_train)
    return TrainConfig(**settings_)


def fold_train_kwds(train_kwds: Mapping[str, Any] | None) -> dict:
    """``train_kwds`` of tl.datamodels / tl.trak as ``train_models`` keywords: TrainConfig's
    fields given directly (``{"epochs": 60}``) are folded into ``config``."""
    kwds = dict(train_kwds or {})
    unknown = sorted(set(kwds) - set(TRAIN_KWDS) - set(CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"train_kwds {unknown} are not train_models settings (allowed: "
                        f"{', '.join((*TRAIN_KWDS, *CONFIG_FIELDS))}).")
    direct = {k: kwds.pop(k) for k in CONFIG_FIELDS if k in kwds}
    if direct:
        base = kwds.get("config")
        if isinstance(base, TrainConfig):
            raise TypeError("train_kwds has a TrainConfig and model settings beside it; put "
                            "them all in one.")
        kwds["config"] = {**dict(base or {}), **direct}
    return kwds


def training_parts(adata: AnnData, label_key: str, *, use_rep: str | None,
                   layer: str | None, group_key: str | None, stratify_key: str | None,
                   alpha: float, mask_mode: MaskMode,
                   config: TrainConfig | Mapping[str, Any] | None, scale: bool,
                   random_state: int) -> tuple[ModelInputs, MaskSampler, TrainConfig]:
    """Validated inputs, mask sampler and model settings from ``train_models``' arguments."""
    alpha = check_alpha(alpha)
    random_state = check_random_state(random_state)
    config = train_config(config, n_train=round(alpha * adata.n_obs))
    inputs = model_inputs(adata, label_key, use_rep=use_rep, layer=layer, group_key=group_key,
                          stratify_key=stratify_key, scale=scale)
    sampler = MaskSampler(inputs.y, alpha, groups=inputs.groups, mode=mask_mode,
                          strata=inputs.strata, random_state=random_state)
    return inputs, sampler, config


def create_training_store(adata: AnnData, inputs: ModelInputs, sampler: MaskSampler,
                          config: TrainConfig, *, label_key: str, group_key: str | None,
                          stratify_key: str | None, mask_mode: str, scale: bool, n_models: int,
                          min_heldout: int, store: str | Path | None, key_added: str,
                          recipe: MLPRecipe) -> ModelStore:
    """Create (or resume) the store of a training configuration with its ``recipe``: what
    workers elsewhere need to train its models (``scdm train --store``)."""
    sampler.check_heldout(n_models, min_heldout, obs_names=list(adata.obs_names))
    fingerprint = training_fingerprint(
        inputs, n_obs=adata.n_obs, label_key=label_key, group_key=group_key,
        stratify_key=stratify_key, alpha=sampler.alpha, mask_mode=mask_mode, config=config,
        scale=scale, random_state=sampler.random_state)
    path = Path(store) if store is not None else default_store_path(key_added, fingerprint)
    schema = store_schema(adata.n_obs, margins_dtype=settings.margins_dtype)
    model_store = ModelStore.create(path, n_models=n_models, schema=schema,
                                    fingerprint=fingerprint)
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
    _unscaled: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    def sampler(self, random_state: int, keep: np.ndarray | None = None) -> MaskSampler:
        """A mask sampler with the recorded settings (over the observations in ``keep``)."""
        sel = slice(None) if keep is None else keep
        groups, strata = self.inputs.groups, self.inputs.strata
        return MaskSampler(self.inputs.y[sel], float(self.params["alpha"]),
                           groups=None if groups is None else groups[sel],
                           mode=self.params.get("mask_mode", "balanced"),
                           strata=None if strata is None else strata[sel],
                           random_state=random_state)

    def recipe(self, random_state: int, seeds_per_mask: int = 1) -> MLPRecipe:
        """The recorded settings with another seed, as workers and Ray tasks read them."""
        return MLPRecipe.from_inputs(self.inputs, self.config, alpha=self.params["alpha"],
                                  mask_mode=self.params.get("mask_mode", "balanced"),
                                  random_state=random_state, seeds_per_mask=seeds_per_mask)

    def trainer(self, random_state: int, device: str = "auto") -> EnsembleTrainer:
        return self.recipe(random_state).trainer(device)

    def unscaled_features(self, adata: AnnData) -> np.ndarray:
        """The models' input representation as the user gave it (``use_rep``/``layer``), not
        standardised per feature as the models see it: neighbourhoods in it follow the
        representation's own geometry (e.g. PCA's top axes carry most of the variance)."""
        if self._unscaled is None:
            self._unscaled = dense_features(get_features(adata, self.params.get("use_rep"),
                                                         self.params.get("layer")), scale=False)
        return self._unscaled


def recorded_training(adata: AnnData, key: str = "datamodels") -> RecordedTraining:
    """Rebuild the inputs, model settings and store recorded by ``train_models``.

    Raises if ``adata`` is not the data the store was trained on, so that evaluation models
    are never trained on something else than the models they evaluate.
    """
    info = adata.uns.get(key)
    if not isinstance(info, dict) or "params" not in info:
        raise KeyError(f"adata.uns[{key!r}] holds no training parameters; run "
                       "scdm.tl.datamodels (or tl.train_models) on this AnnData first.")
    views = _VIEWS.get() or {}
    if (id(adata), key) in views:
        held, record, training = views[id(adata), key]
        if held is adata and record == _record(info):  # not trained again since
            return training
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
    training = recorded(inputs, params, store)
    _remember(adata, key, training)
    return training


def recorded(inputs: ModelInputs, params: Mapping[str, Any], store: ModelStore
             ) -> RecordedTraining:
    """The recorded training of ``params`` (``adata.uns[key]["params"]``) on ``inputs``."""
    return RecordedTraining(inputs=inputs, config=recorded_config(params), params=dict(params),
                            store=store)


def recorded_config(params: Mapping[str, Any]) -> TrainConfig:
    """The model settings recorded in ``params`` (``adata.uns[key]["params"]``)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in params.items() if k in fields})


def remember_training(adata: AnnData, key: str, inputs: ModelInputs) -> None:
    """What ``train_models`` just built and recorded in ``adata.uns[key]``, kept for the rest
    of the public call (tl.trak reads its checkpoints' inputs without building them again)."""
    if _VIEWS.get() is not None:
        info = adata.uns[key]
        _remember(adata, key, recorded(inputs, info["params"], ModelStore.open(info["store"])))


def check_trained_label(adata: AnnData, key: str, label_key: str) -> RecordedTraining:
    """The recorded training of ``key``, refused unless its models predict ``label_key``."""
    training = recorded_training(adata, key)
    trained = training.params["label_key"]
    if trained != label_key:
        raise ValueError(f"the models of adata.uns[{key!r}] predict {trained!r}, not "
                         f"{label_key!r}; pass label_key={trained!r}, or train on "
                         f"{label_key!r} first (scdm.tl.trak or scdm.tl.datamodels).")
    return training
