"""Stores of image models: the recipe that lets any worker (CLI, Ray) train ResNet-9s into one."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from .._seeding import check_random_state
from .._settings import settings
from ..masks import MaskSampler, check_alpha
from ..store import ModelStore, hash_arrays, store_schema
from ..workers import register_recipe, write_recipe
from ._resnet import ResNetConfig, ResNetEnsembleTrainer, check_images


@register_recipe
@dataclass
class ImageRecipe:
    """Everything needed to train image model ``m`` of a store anywhere.

    Model ``m`` trains a ResNet-9 (``config``) on the training images its balanced mask
    (``alpha``, ``random_state``) selects, and records its margins on the target images.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    target_images: np.ndarray
    target_labels: np.ndarray
    alpha: float
    config: ResNetConfig
    random_state: int = 0

    kind: ClassVar[str] = "resnet9"
    targets_are_training: ClassVar[bool] = False  # targets are separate (test) images

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)
        self.random_state = check_random_state(self.random_state)
        self.train_labels, self.target_labels = check_images(
            self.train_images, self.train_labels, self.target_images, self.target_labels)
        self.sampler()  # every class can be split with this alpha (else a clear error now)

    @property
    def n_classes(self) -> int:
        return int(max(self.train_labels.max(), self.target_labels.max()) + 1)

    def to_files(self) -> tuple[dict, dict]:
        arrays = {"train_images": self.train_images, "train_labels": self.train_labels,
                  "target_images": self.target_images, "target_labels": self.target_labels}
        settings = {"alpha": self.alpha, "config": self.config.to_dict(),
                    "random_state": self.random_state}
        return arrays, settings

    @classmethod
    def from_files(cls, arrays: dict, settings: dict) -> ImageRecipe:
        return cls(**{k: arrays[k] for k in ("train_images", "train_labels", "target_images",
                                             "target_labels")},
                   alpha=float(settings["alpha"]), config=ResNetConfig(**settings["config"]),
                   random_state=int(settings["random_state"]))

    def with_random_state(self, random_state: int) -> ImageRecipe:
        """The same models on other subsets and initialisations (e.g. for LDS)."""
        return replace(self, random_state=random_state)

    def sampler(self) -> MaskSampler:
        return MaskSampler(self.train_labels, self.alpha, random_state=self.random_state)

    def mask_source(self) -> MaskSampler:
        return self.sampler()

    def trainer(self, device: str = "auto") -> ResNetEnsembleTrainer:
        return ResNetEnsembleTrainer(self.train_images, self.train_labels, self.target_images,
                                     self.target_labels, self.config, n_classes=self.n_classes,
                                     device=device, random_state=self.random_state)

    def fingerprint(self) -> dict:
        arrays, settings = self.to_files()
        return {"kind": self.kind, "data_hash": hash_arrays(*arrays.values()), **settings}


def create_image_store(path: str | os.PathLike, recipe: ImageRecipe, n_models: int
                       ) -> ModelStore:
    """Create (or resume) the store of ``recipe``'s models and save the recipe into it.

    Fields: ``masks`` (models × training images), ``margins`` (models × target images) and
    ``heldout_accuracy`` (accuracy on the targets) — the layout of every scdm store, so
    :class:`~scdm.regression.LassoPath`, :mod:`scdm.io` and ``scdm train/status/fit --store``
    read it as they read any other. A store written with another recipe is refused untouched.
    """
    store = ModelStore.create(Path(path), n_models=int(n_models),
                              schema=store_schema(len(recipe.train_labels),
                                                  len(recipe.target_labels),
                                                  margins_dtype=settings.margins_dtype),
                              fingerprint=recipe.fingerprint())
    write_recipe(store.path, recipe)
    return store
