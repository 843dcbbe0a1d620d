"""Workers that fill a store from what the store itself holds: CLI workers and Ray tasks.

A store that other processes or machines will fill carries its *recipe*: the training inputs
(``inputs.npz``: standardised features, labels, groups, strata) and the settings
(``recipe.json``: mask sampler, model, seeds). Any worker that can read the store directory can
then train any range of its models, and because every model's mask, initialisation and data
order depend only on ``(random_state, model index)``, the store ends up the same however the
ranges are split, repeated, retried or resumed.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ._seeding import check_random_state
from ._training import train_into_store
from .ensemble import EnsembleTrainer, TrainConfig, resolve_device
from .masks import MaskSampler
from .store import ModelStore

RECIPE_FILE = "recipe.json"
INPUTS_FILE = "inputs.npz"
WORKERS_DIR = "workers"


class TrainingRecipe(Protocol):
    """What a worker needs of a recipe kind (:class:`Recipe`, ``scdm.vision.ImageRecipe``)."""

    kind: ClassVar[str]
    targets_are_training: ClassVar[bool]

    def to_files(self) -> tuple[dict, dict]: ...

    def trainer(self, device: str = "auto") -> Any: ...

    def mask_source(self) -> Any: ...


@dataclass
class Recipe:
    """Everything needed to train model ``m`` of a store anywhere."""

    X: np.ndarray
    y: np.ndarray
    n_classes: int
    alpha: float
    config: TrainConfig
    random_state: int
    mask_mode: str = "balanced"
    groups: np.ndarray | None = None
    strata: np.ndarray | None = None
    seeds_per_mask: int = 1

    @classmethod
    def from_inputs(cls, inputs, config: TrainConfig, *, alpha: float, mask_mode: str,
                    random_state: int, seeds_per_mask: int = 1) -> Recipe:
        """From ``ModelInputs`` (features, labels, groups, strata) and the model settings."""
        return cls(X=inputs.X, y=inputs.y, n_classes=len(inputs.classes), alpha=float(alpha),
                   config=config, random_state=random_state, mask_mode=mask_mode,
                   groups=inputs.groups, strata=inputs.strata, seeds_per_mask=seeds_per_mask)

    kind: ClassVar[str] = "mlp"
    targets_are_training: ClassVar[bool] = True  # margins are recorded on the samples

    def to_files(self) -> tuple[dict, dict]:
        """``(arrays for inputs.npz, settings for recipe.json)``."""
        arrays = {"X": self.X, "y": self.y, "groups": self.groups, "strata": self.strata}
        settings = {"n_classes": self.n_classes, "alpha": self.alpha,
                    "config": self.config.to_dict(), "random_state": self.random_state,
                    "mask_mode": self.mask_mode, "seeds_per_mask": self.seeds_per_mask}
        return arrays, settings

    @classmethod
    def from_files(cls, arrays: dict, settings: dict) -> Recipe:
        return cls(X=arrays["X"], y=arrays["y"], groups=arrays.get("groups"),
                   strata=arrays.get("strata"), n_classes=int(settings["n_classes"]),
                   alpha=float(settings["alpha"]), config=TrainConfig(**settings["config"]),
                   random_state=check_random_state(settings["random_state"]),
                   mask_mode=settings["mask_mode"],
                   seeds_per_mask=int(settings.get("seeds_per_mask", 1)))

    def sampler(self) -> MaskSampler:
        return MaskSampler(self.y, self.alpha, groups=self.groups, mode=self.mask_mode,
                           strata=self.strata, random_state=self.random_state)

    def trainer(self, device: str = "auto") -> EnsembleTrainer:
        return EnsembleTrainer(self.X, self.y, self.config, n_classes=self.n_classes,
                               device=resolve_device(device), random_state=self.random_state)

    def mask_source(self):
        """What ``train_into_store`` draws masks from (repeated when several seeds per mask)."""
        sampler = self.sampler()
        if self.seeds_per_mask == 1:
            return sampler
        return _RepeatedMasks(sampler, self.seeds_per_mask)


class _RepeatedMasks:
    """Model ``m·n_seeds + s`` trains on mask ``m``: ``n_seeds`` initialisations per subset."""

    def __init__(self, sampler: MaskSampler, n_seeds: int) -> None:
        self.sampler, self.n_seeds = sampler, n_seeds

    def sample(self, model_indices) -> np.ndarray:
        return self.sampler.sample(np.asarray(model_indices) // self.n_seeds)


# Recipe kinds: ``recipe.json``'s "kind" → the class that reads it (imported when needed).
RECIPE_KINDS = {"mlp": "scdm._workers:Recipe", "resnet9": "scdm.vision._recipe:ImageRecipe"}


def _recipe_class(kind: str):
    if kind not in RECIPE_KINDS:
        raise ValueError(f"unknown recipe kind {kind!r} (known: {sorted(RECIPE_KINDS)}); the "
                         "store was written by a newer scdm.")
    module, name = RECIPE_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def write_recipe(store_path: str | Path, recipe: TrainingRecipe) -> None:
    """Save ``recipe`` into the store directory (atomically; an identical one is kept).

    ``recipe`` is any recipe kind (:data:`RECIPE_KINDS`): it gives its arrays and settings
    through ``to_files()``, and the ``kind`` is saved with the settings.
    """
    path = Path(store_path)
    arrays, settings = recipe.to_files()
    arrays = {k: v for k, v in arrays.items() if v is not None}
    settings = {"kind": recipe.kind, **settings}
    if (path / RECIPE_FILE).exists() and (path / INPUTS_FILE).exists():
        stored = json.loads((path / RECIPE_FILE).read_text())
        stored.setdefault("kind", "mlp")
        with np.load(path / INPUTS_FILE) as old:
            same = (stored == json.loads(json.dumps(settings)) and set(old.files) == set(arrays)
                    and all(np.array_equal(old[k], v) for k, v in arrays.items()))
        if not same:
            raise ValueError(f"the store {path} already holds a different training recipe; "
                             "use a new store path for these settings.")
        return
    for name, write in ((INPUTS_FILE, lambda f: np.savez(f, **arrays)),
                        (RECIPE_FILE, lambda f: f.write(json.dumps(settings, indent=2).encode()))):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=path)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path / name)


def targets_are_training_samples(store_path: str | Path, masks_width: int,
                                 margins_width: int) -> bool:
    """Whether target ``j`` of a store is training sample ``j`` (datamodels are then fitted on
    the models that did not train on it): as its recipe says, else when the widths agree."""
    recipe_file = Path(store_path) / RECIPE_FILE
    if recipe_file.exists():
        kind = json.loads(recipe_file.read_text()).get("kind", "mlp")
        return bool(_recipe_class(kind).targets_are_training)
    return masks_width == margins_width


def read_recipe(store_path: str | Path) -> TrainingRecipe:
    """The recipe saved in a store (its class follows the saved ``kind``)."""
    path = Path(store_path)
    if not (path / RECIPE_FILE).exists():
        raise FileNotFoundError(
            f"{path} holds no training recipe ({RECIPE_FILE}); create the store with "
            "`scdm store init` or scdm.tl.train_models(..., backend='ray'), which save it.")
    settings = json.loads((path / RECIPE_FILE).read_text())
    with np.load(path / INPUTS_FILE) as arrays:
        data = {k: arrays[k] for k in arrays.files}
    return _recipe_class(settings.pop("kind", "mlp")).from_files(data, settings)


def parse_range(text: str, n_models: int) -> tuple[int, int]:
    """``"START:STOP"`` (either side may be empty) → a checked ``(start, stop)``."""
    try:
        start_text, stop_text = text.split(":")
        start = int(start_text) if start_text else 0
        stop = int(stop_text) if stop_text else n_models
    except ValueError:
        raise ValueError(f"--models must look like START:STOP (e.g. 0:1000), got {text!r}."
                         ) from None
    if not 0 <= start < stop <= n_models:
        raise ValueError(f"--models {text} must satisfy 0 <= START < STOP <= {n_models} (the "
                         "store's number of models).")
    return start, stop


class _Heartbeat:
    """``workers/<host>-<pid>.json``: what this worker does, for ``scdm status`` (and tests)."""

    def __init__(self, store_path: Path, start: int, stop: int, total: int) -> None:
        folder = store_path / WORKERS_DIR
        folder.mkdir(exist_ok=True)
        self.path = folder / f"{socket.gethostname()}-{os.getpid()}.json"
        self.state = {"host": socket.gethostname(), "pid": os.getpid(), "models": [start, stop],
                      "to_train": total, "trained": 0, "started": time.time(), "state": "running"}
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.state, "updated": time.time()}))
        os.replace(tmp, self.path)

    def update(self, trained: int) -> None:
        self.state["trained"] = trained
        self.write()

    def finish(self, state: str) -> None:
        self.state["state"] = state
        self.write()


def run_worker(store_path: str | Path, start: int, stop: int, *, device: str = "auto",
               chunk_size: int | None = None, num_threads: int | None = None,
               progress: bool = False) -> int:
    """Train the incomplete models in ``[start, stop)`` of the store; return how many.

    Idempotent: completed models are skipped, so reruns, overlapping ranges and retried tasks
    are safe; every chunk is written before the next starts.
    """
    import torch

    if num_threads:
        torch.set_num_threads(int(num_threads))
    path = Path(store_path)
    recipe = read_recipe(path)
    store = ModelStore.open(path, writable=True)
    todo = np.arange(start, stop)
    todo = todo[~store.completed[start:stop]]
    beat = _Heartbeat(path, start, stop, int(todo.size))
    try:
        trained = train_into_store(store, recipe.trainer(device), recipe.mask_source(), todo,
                                   chunk_size=chunk_size, progress=progress,
                                   on_chunk=beat.update)
    except BaseException:
        beat.finish("failed")
        raise
    beat.finish("done")
    return trained
