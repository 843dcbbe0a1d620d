"""Held-out performance of stored models, and counterfactual retraining: models trained with
the recorded settings on masks drawn from everything but a removed set (or stored models
retrained from their seeds), scored on the cells each model did not train on."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .._memmap import read_rows
from ..ensemble import EnsembleTrainer, TrainResult, model_state, stacked_params
from ..store import ModelStore
from ._recorded import RecordedTraining


def heldout_performance(store: ModelStore, chunk_rows: int = 4096
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per observation: accuracy and mean margin over the stored models that did not train on
    it (the baseline a held-out subgroup is compared with), and how many those are (accuracy
    and margin are 0 where none is)."""
    completed = store.completed_indices()
    n_obs = store.masks.shape[1]
    held = np.zeros(n_obs)
    correct = np.zeros(n_obs)
    margin = np.zeros(n_obs)
    for start in range(0, completed.size, chunk_rows):
        rows = completed[start : start + chunk_rows]
        out = ~read_rows(store.masks, rows)
        margins = read_rows(store.margins, rows, np.float64)
        held += out.sum(0)
        correct += (out & (margins > 0)).sum(0)
        margin += np.where(out, margins, 0.0).sum(0)
    denominator = np.maximum(held, 1)
    return correct / denominator, margin / denominator, held


@dataclass
class HeldOut:
    """Per removal set (row) and cell (column): how many of the set's models did not train on
    the cell, how many of those predicted its label, and the sum of their margins."""

    count: np.ndarray
    correct: np.ndarray
    margin_sum: np.ndarray

    def accuracy(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.correct / self.count, np.nan)

    def margin(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.margin_sum / self.count, np.nan)


def retrain_without(training: RecordedTraining, removed: Sequence[np.ndarray], n_models: int,
                    seed: int, mask_seeds: Sequence[int] | np.ndarray, *, paired: bool, device: str,
                    chunk_size: int | None, progress: bool, desc: str) -> HeldOut:
    """Train ``n_models`` models per removed set (an array of cell indices, possibly empty) on
    masks over the remaining cells, drawn with ``mask_seeds[s]``; removed cells are never
    trained on, so every model scores them.

    ``paired``: model ``r`` of every set has the same initialisation and data order (model
    index ``r``), so differences between sets are not seed noise. Otherwise model ``r`` of set
    ``s`` has index ``s·n_models + r``. Models of all sets train together in chunks, and each
    model depends only on its seeds, so results do not depend on ``chunk_size``.
    """
    n_obs = training.inputs.y.size
    trainer: EnsembleTrainer = training.trainer(seed, device)
    chunk = int(chunk_size or trainer.auto_chunk_size())
    samplers = []
    for s, cells in enumerate(removed):
        keep = np.ones(n_obs, dtype=bool)
        keep[np.asarray(cells, dtype=np.int64)] = False
        samplers.append((keep, training.sampler(int(mask_seeds[s]), keep=keep)))
    total = len(removed) * n_models
    shape = (len(removed), n_obs)
    held = HeldOut(np.zeros(shape), np.zeros(shape), np.zeros(shape))
    with tqdm(total=total, desc=desc, unit="model", disable=not progress) as bar:
        for start in range(0, total, chunk):
            models = np.arange(start, min(start + chunk, total))
            sets, reps = models // n_models, models % n_models
            masks = np.zeros((models.size, n_obs), dtype=bool)
            for i, (which, rep) in enumerate(zip(sets, reps, strict=True)):
                keep, sampler = samplers[int(which)]
                masks[i, keep] = sampler.sample([int(rep)])[0]
            margins = trainer.train(masks, reps if paired else models).margins
            out = ~masks
            for s in np.unique(sets):
                rows = sets == s
                held.count[s] += out[rows].sum(0)
                held.correct[s] += (out[rows] & (margins[rows] > 0)).sum(0)
                held.margin_sum[s] += np.where(out[rows], margins[rows], 0.0).sum(0)
            bar.update(models.size)
    return held


def retrain_stored(training: RecordedTraining, trainer: EnsembleTrainer, models: np.ndarray,
                   masks: np.ndarray) -> TrainResult:
    """Stored models ``models`` (their stored ``masks``) retrained from their seeds with their
    parameters kept. Bitwise the same as the stored models on CPU (tested); a mismatch
    (another device or torch version) is warned about, and the retrained models are what the
    caller uses."""
    result = trainer.train(masks, models, keep_params=True)
    stored = read_rows(training.store.margins, models)
    if not np.allclose(result.margins, stored, atol=1e-3, rtol=1e-3):
        warnings.warn("the retrained models' margins differ from the stored ones (another "
                      "device or torch version?); the retrained models are used.",
                      RuntimeWarning, stacklevel=3)
    return result


def stored_params(training: RecordedTraining, trainer: EnsembleTrainer, models: np.ndarray
                  ) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Masks and parameters (stacked, ``[k, ...]`` per tensor, as
    :meth:`EnsembleTrainer.train` keeps them) of the stored models ``models``.

    The store keeps the parameters of models that were used this way before
    (:meth:`ModelStore.save_checkpoint`); the others are retrained from their seeds
    (:func:`retrain_stored`, checked against the stored margins) and kept for the next call, so
    TRAK's checkpoints and the label-issue models are trained once per store, and a result
    rebuilt later (another damping, after an h5ad round trip) uses the same parameters even
    where training is not reproducible (GPU kernels). A store whose folder cannot be written
    to is retrained from each time.
    """
    models = np.asarray(models, dtype=np.int64)
    store = training.store
    masks = read_rows(store.masks, models)
    loaded = [store.load_checkpoint(int(m)) for m in models]
    states: dict[int, dict] = {i: state for i, state in enumerate(loaded) if state is not None}
    missing = [i for i in range(models.size) if i not in states]
    if missing:
        result = retrain_stored(training, trainer, models[missing], masks[missing])
        for j, i in enumerate(missing):
            states[i] = model_state(result.extras["params"], j)
        try:
            for i in missing:
                store.save_checkpoint(int(models[i]), states[i], masks[i])
        except OSError as error:  # a read-only store: correct, only slower next time
            warnings.warn(f"could not keep model parameters in the store ({error}); they are "
                          "retrained on the next call.", RuntimeWarning, stacklevel=2)
    params = stacked_params([states[i] for i in range(models.size)], trainer.device)
    return masks, params
