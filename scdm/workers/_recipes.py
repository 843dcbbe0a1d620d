"""Training recipes: everything a worker needs to train model ``m`` of a store anywhere.

A store that other processes or machines fill carries its *recipe*: the training inputs
(``inputs.npz``) and the settings (``recipe.json``, with the recipe's ``kind``). Each kind is a
class satisfying :class:`TrainingRecipe`, registered under its ``kind`` with
:func:`register_recipe` (``"mlp"``: :class:`MLPRecipe`; ``"resnet9"``:
``scdm.vision.ImageRecipe``, registered when ``scdm.vision`` is imported, which ``import scdm``
does).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

import numpy as np

from .._seeding import check_random_state
from ..ensemble import EnsembleTrainer, TrainConfig, resolve_device
from ..masks import MaskMode, MaskSampler

R = TypeVar("R", bound="TrainingRecipe")
RECIPE_FILE = "recipe.json"
INPUTS_FILE = "inputs.npz"


class TrainResult(Protocol):
    """What a trainer returns for a chunk of models: one row per model."""

    margins: np.ndarray
    heldout_accuracy: np.ndarray
    extras: dict  # with keep_params: the models' parameters ("params" or "state_dicts")


class Trainer(Protocol):
    """Trains a chunk of models from their masks and indices (seeds derive from the index)."""

    def train(self, masks: np.ndarray, model_indices: np.ndarray, *,
              keep_params: bool = False) -> TrainResult: ...

    def auto_chunk_size(self) -> int: ...


class MaskSource(Protocol):
    """Gives model ``m``'s training mask, from ``(random_state, m)`` alone."""

    def sample(self, model_indices: Sequence[int] | np.ndarray) -> np.ndarray: ...


class TrainingRecipe(Protocol):
    """What a worker needs of a recipe kind (:class:`MLPRecipe`, ``scdm.vision.ImageRecipe``)."""

    kind: ClassVar[str]
    targets_are_training: ClassVar[bool]

    def to_files(self) -> tuple[dict, dict]: ...

    @classmethod
    def from_files(cls, arrays: dict, settings: dict) -> TrainingRecipe: ...

    def trainer(self, device: str = "auto") -> Trainer: ...

    def mask_source(self) -> MaskSource: ...


@dataclass
class MLPRecipe:
    """The MLP ensembles of ``scdm.tl.train_models``: standardised features, labels, groups,
    strata, the mask sampler and :class:`~scdm.ensemble.TrainConfig`."""

    X: np.ndarray
    y: np.ndarray
    n_classes: int
    alpha: float
    config: TrainConfig
    random_state: int
    mask_mode: MaskMode = "balanced"
    groups: np.ndarray | None = None
    strata: np.ndarray | None = None
    seeds_per_mask: int = 1

    @classmethod
    def from_inputs(cls, inputs, config: TrainConfig, *, alpha: float, mask_mode: MaskMode,
                    random_state: int, seeds_per_mask: int = 1) -> MLPRecipe:
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
    def from_files(cls, arrays: dict, settings: dict) -> MLPRecipe:
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

    def mask_source(self) -> MaskSource:
        """What ``train_into_store`` draws masks from (repeated when several seeds per mask)."""
        sampler = self.sampler()
        if self.seeds_per_mask == 1:
            return sampler
        return RepeatedMasks(sampler, self.seeds_per_mask)


class RepeatedMasks:
    """Model ``m·n_seeds + s`` trains on mask ``m``: ``n_seeds`` initialisations per subset."""

    def __init__(self, sampler: MaskSampler, n_seeds: int) -> None:
        self.sampler, self.n_seeds = sampler, n_seeds

    def sample(self, model_indices) -> np.ndarray:
        return self.sampler.sample(np.asarray(model_indices) // self.n_seeds)


RECIPES: dict[str, type[TrainingRecipe]] = {}


def register_recipe(cls: type[R]) -> type[R]:
    """Make a recipe class readable from stores whose ``recipe.json`` has its ``kind``."""
    RECIPES[cls.kind] = cls
    return cls


register_recipe(MLPRecipe)


def recipe_class(kind: str) -> type[TrainingRecipe]:
    if kind not in RECIPES:
        raise ValueError(f"unknown recipe kind {kind!r} (known: {sorted(RECIPES)}); the store "
                         "was written by a newer scdm, or by code that registers that kind "
                         "(import it first).")
    return RECIPES[kind]


def write_recipe(store_path: str | Path, recipe: TrainingRecipe) -> None:
    """Save ``recipe`` into the store directory (atomically; an identical one is kept).

    ``recipe`` is any recipe kind (:data:`RECIPES`): it gives its arrays and settings
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
                                 margins_width: int, stated: bool | None = None) -> bool:
    """Whether target ``j`` of a store is training sample ``j`` (its datamodel is then chosen
    on the models that did not train on it): as ``stated``, else as the store's recipe says.

    A store without a recipe (made from a spec, or by MadryLab's code) must say when the
    widths are equal: they do not tell margins on the training samples from margins on as
    many test samples. Unequal widths can only be test targets.
    """
    recipe_file = Path(store_path) / RECIPE_FILE
    if stated is None and masks_width != margins_width:
        stated = False  # targets as wide as no training set: they can only be test targets
    if stated is None and recipe_file.exists():
        kind = json.loads(recipe_file.read_text()).get("kind", "mlp")
        stated = bool(recipe_class(kind).targets_are_training)
    if stated is None:
        raise ValueError(
            f"the store {store_path} has no training recipe that says whether its targets are "
            "its training samples; pass --targets-are-training yes (margins recorded on the "
            "training samples themselves) or no (test targets).")
    if stated and masks_width != margins_width:
        raise ValueError(f"targets that are the training samples need as many margin columns "
                         f"as mask columns; the store has {margins_width} and {masks_width}.")
    return stated


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
    return recipe_class(settings.pop("kind", "mlp")).from_files(data, settings)
