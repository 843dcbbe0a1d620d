"""Fill a store with trained models: the loop shared by tl.train_models, CLI workers and Ray."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .ensemble import EnsembleTrainer
from .masks import MaskSampler
from .store import ModelStore


def store_schema(n_obs: int, n_targets: int | None = None) -> dict:
    """Fields of a training store: masks over samples, margins on targets, held-out accuracy."""
    return {
        "masks": (np.bool_, (n_obs,)),
        "margins": (np.float32, (n_obs if n_targets is None else n_targets,)),
        "heldout_accuracy": (np.float32, ()),
    }


def train_into_store(
    store: ModelStore,
    trainer: EnsembleTrainer,
    sampler: MaskSampler | Any,
    model_indices: Sequence[int] | np.ndarray | None = None,
    *,
    chunk_size: int | None = None,
    progress: bool = True,
    desc: str = "training models",
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Train every incomplete model among ``model_indices`` (default: all) and write it.

    Models are trained ``chunk_size`` at a time; each chunk is written (and flagged complete)
    before the next starts, so an interrupted run loses at most one chunk and a rerun resumes.
    ``on_chunk(trained_so_far)`` is called after each chunk. Returns the number of models
    trained.
    """
    completed = store.completed
    if model_indices is None:
        todo = np.flatnonzero(~completed)
    else:
        model_indices = np.asarray(model_indices, dtype=np.int64)
        todo = model_indices[~completed[model_indices]]
    if todo.size == 0:
        return 0
    chunk_size = int(chunk_size or trainer.auto_chunk_size())
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
    with tqdm(total=todo.size, desc=desc, unit="model", disable=not progress) as bar:
        for start in range(0, todo.size, chunk_size):
            chunk = todo[start : start + chunk_size]
            masks = sampler.sample(chunk)
            result = trainer.train(masks, chunk)
            store.write(chunk, masks=masks, margins=result.margins,
                        heldout_accuracy=result.heldout_accuracy)
            bar.update(chunk.size)
            if on_chunk is not None:
                on_chunk(start + chunk.size)
    return int(todo.size)
