"""The training loop: chunks of models trained and written, each before the next starts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..store import ModelStore
from ._recipes import MaskSource, Trainer


def train_into_store(
    store: ModelStore,
    trainer: Trainer,
    sampler: MaskSource,
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
