"""The training loop: chunks of models trained and written, each before the next starts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .._checks import check_int
from ..ensemble import model_state
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
    keep_checkpoints: bool = False,
) -> int:
    """Train every incomplete model among ``model_indices`` (default: all) and write it.

    Models are trained ``chunk_size`` at a time; each chunk is written (and flagged complete)
    before the next starts, so an interrupted run loses at most one chunk and a rerun resumes.
    ``on_chunk(trained_so_far)`` is called after each chunk. With ``keep_checkpoints`` each
    model's parameters are kept in the store as it is written (:meth:`ModelStore.save_checkpoint`,
    before its row is flagged complete), so TRAK needs no second training of its checkpoints.
    Returns the number of models trained.
    """
    completed = store.completed
    if model_indices is None:
        todo = np.flatnonzero(~completed)
    else:
        model_indices = np.asarray(model_indices, dtype=np.int64)
        todo = model_indices[~completed[model_indices]]
    if todo.size == 0:
        return 0
    chunk_size = check_int("chunk_size", chunk_size or trainer.auto_chunk_size(), 1)
    with tqdm(total=todo.size, desc=desc, unit="model", disable=not progress) as bar:
        for start in range(0, todo.size, chunk_size):
            chunk = todo[start : start + chunk_size]
            masks = sampler.sample(chunk)
            if keep_checkpoints:
                result = trainer.train(masks, chunk, keep_params=True)
                for j, model in enumerate(chunk):
                    store.save_checkpoint(int(model), _checkpoint(result.extras, j), masks[j])
            else:
                result = trainer.train(masks, chunk)
            store.write(chunk, masks=masks, margins=result.margins,
                        heldout_accuracy=result.heldout_accuracy)
            bar.update(chunk.size)
            if on_chunk is not None:
                on_chunk(start + chunk.size)
    return int(todo.size)


def _checkpoint(extras: dict, j: int) -> dict:
    """Model ``j``'s parameters as the store keeps them: the MLP trainer stacks its models'
    tensors (``params``), the image trainer gives one state dict per model."""
    if "state_dicts" in extras:
        return extras["state_dicts"][j]
    return model_state(extras["params"], j)
