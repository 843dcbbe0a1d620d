"""TRAK for image stores: the store keeps the checkpoints TRAK uses, and ResNet-9 scores.

The checkpoints are the store's own models (the same masks and seeds): a model trained for
TRAK is also one of the datamodels' models, and a model the store already holds is retrained
from its seed and checked against its stored margins before its parameters are used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._settings import settings
from ..store import ModelStore
from ..trak import TRAKer
from ._recipe import ImageRecipe
from ._resnet import ResNet9Classifier, ResNetEnsembleTrainer

logger = logging.getLogger("scdm")
MARGIN_TOLERANCE = 1e-4  # retrained vs stored margins; CPU training is bitwise reproducible


def store_checkpoints(store: ModelStore, recipe: ImageRecipe, models: Sequence[int], *,
                      device: str = "auto", progress: bool | None = None
                      ) -> list[dict[str, torch.Tensor]]:
    """The parameters of the store's models ``models`` (plain ResNet-9 state dicts).

    Kept in ``STORE/checkpoints/model_<m>.pt`` (:meth:`ModelStore.save_checkpoint`, tied to
    the model's mask). A missing one is trained from the model's
    own mask and seed: when the store has not completed that model yet, its mask, margins and
    accuracy are written too; when it has, the retrained margins must match the stored ones
    (bitwise on CPU; on a GPU, whose kernels are not deterministic, a difference above
    :data:`MARGIN_TOLERANCE` is a warning that names it).
    """
    models = [int(m) for m in models]
    if not models or min(models) < 0 or max(models) >= store.n_models:
        raise ValueError(f"checkpoint models must lie in [0, {store.n_models}) of the store; "
                         f"got {models[:5]}{'…' if len(models) > 5 else ''}.")
    loaded = {m: store.load_checkpoint(m) for m in models}
    kept = {m: state for m, state in loaded.items() if state is not None}
    missing = [m for m in models if m not in kept]
    if missing:
        if not store.writable:
            store = ModelStore.open(store.path, writable=True)
        trainer = recipe.trainer(device)
        sampler = recipe.sampler()
        completed = store.completed
        chunk = trainer.auto_chunk_size()
        with tqdm(total=len(missing), desc="TRAK checkpoints", unit="model",
                  disable=not settings.progress(progress)) as bar:
            for start in range(0, len(missing), chunk):
                group = np.asarray(missing[start : start + chunk], dtype=np.int64)
                masks = sampler.sample(group)
                result = trainer.train(masks, group, keep_params=True)
                done = completed[group]
                if done.any():
                    stored = store.field("margins")[group[done]]
                    # compared in the store's precision (float16 stores round margins)
                    retrained = result.margins[done].astype(stored.dtype)
                    gap = float(np.abs(retrained.astype(np.float64) - stored).max())
                    if gap > MARGIN_TOLERANCE:
                        logger.warning(
                            "retrained checkpoints %s differ from the store's margins by up to "
                            "%.3g (nondeterministic GPU kernels); TRAK uses the retrained "
                            "parameters", group[done].tolist(), gap)
                if (~done).any():
                    store.write(group[~done], masks=masks[~done],
                                margins=result.margins[~done],
                                heldout_accuracy=result.heldout_accuracy[~done])
                for m, mask, state in zip(group, masks, result.extras["state_dicts"],
                                          strict=True):
                    store.save_checkpoint(int(m), state, mask)
                    kept[int(m)] = {k: v.cpu() for k, v in state.items()}
                bar.update(group.size)
    return [kept[m] for m in models]


def featurized_traker(checkpoints: Sequence[dict], recipe: ImageRecipe, save_dir: str | Path,
                      *, proj_dim: int = 2048, damping: float | None = None,
                      projector_seed: int = 0, projector_generator: str | None = None,
                      batch_size: int = 100, device: str = "auto", verbose: bool | None = None
                      ) -> tuple[TRAKer, ResNetEnsembleTrainer]:
    """A :class:`TRAKer` over the recipe's ResNet-9s with every training image featurized by
    every checkpoint and the features finalized (resumable in ``save_dir``), and the trainer
    whose normalisation the images go through. The projection is drawn on the GPU when there
    is one (``projector_generator=None``: a full ResNet-9's matrix is too large to keep and is
    drawn anew for every batch), else by the CPU generator."""
    trainer = recipe.trainer(device)
    if projector_generator is None:
        projector_generator = "device" if trainer.device.type == "cuda" else "cpu"
    model = ResNet9Classifier(recipe.n_classes, recipe.config.width)
    traker = TRAKer(model, task="image_classification",
                    train_set_size=len(recipe.train_labels), save_dir=save_dir,
                    proj_dim=proj_dim, projector_seed=projector_seed,
                    projector_generator=projector_generator, damping=damping,
                    device=str(trainer.device), verbose=verbose)
    labels = torch.as_tensor(np.asarray(recipe.train_labels))
    n = len(labels)
    for model_id, state in enumerate(tqdm(checkpoints, desc="TRAK featurize", unit="checkpoint",
                                          disable=not settings.progress(verbose))):
        traker.load_checkpoint(state, model_id=model_id)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            traker.featurize(batch=(trainer.normalise(recipe.train_images[start:stop]),
                                    labels[start:stop]), inds=np.arange(start, stop))
    traker.finalize_features()
    return traker, trainer


def trak_scores(checkpoints: Sequence[dict], recipe: ImageRecipe, save_dir: str | Path, *,
                targets: np.ndarray | None = None, target_labels: np.ndarray | None = None,
                exp_name: str = "targets", batch_size: int = 100, verbose: bool | None = None,
                **options) -> np.ndarray:
    """TRAK scores (``n_train × n_targets``) of the recipe's ResNet-9s, with :class:`TRAKer`.

    The training images are featurized (:func:`featurized_traker`, which takes ``options``:
    ``proj_dim``, ``damping``, ``projector_seed``, ``projector_generator``, ``device``), then
    the targets (default: the recipe's target images; or ``targets`` with ``target_labels``)
    are scored under ``exp_name``.
    """
    if targets is None:
        targets, target_labels = recipe.target_images, recipe.target_labels
    elif target_labels is None or len(target_labels) != len(targets):
        raise ValueError("targets need target_labels, one class code per image.")
    traker, trainer = featurized_traker(checkpoints, recipe, save_dir, batch_size=batch_size,
                                        verbose=verbose, **options)
    target_y = torch.as_tensor(np.asarray(target_labels, dtype=np.int64))
    n_targets = len(target_y)
    for model_id, state in enumerate(tqdm(checkpoints, desc="TRAK score", unit="checkpoint",
                                          disable=not settings.progress(verbose))):
        traker.start_scoring_checkpoint(exp_name, state, model_id, n_targets)
        for start in range(0, n_targets, batch_size):
            stop = min(start + batch_size, n_targets)
            traker.score(batch=(trainer.normalise(targets[start:stop]),
                                target_y[start:stop]), inds=np.arange(start, stop))
    return traker.finalize_scores(exp_name, model_ids=range(len(checkpoints)))


def trak_self_influence(checkpoints: Sequence[dict], recipe: ImageRecipe, save_dir: str | Path,
                        **options) -> np.ndarray:
    """Every training image's TRAK score on itself (:meth:`TRAKer.self_influence`): large for
    images the models must memorise, such as mislabeled ones. Takes the options of
    :func:`featurized_traker`; reuses the features already in ``save_dir``."""
    traker, _ = featurized_traker(checkpoints, recipe, save_dir, **options)
    return traker.self_influence(model_ids=range(len(checkpoints)))
