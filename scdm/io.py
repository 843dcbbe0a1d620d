"""Interoperability with the published datamodels data and code (MadryLab)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .regression import LassoPath


def write_datamodels_pt(model: LassoPath, path: str | os.PathLike) -> Path:
    """Save a fitted :class:`~scdm.regression.LassoPath` as MadryLab's ``datamodels.pt``.

    The file holds ``{"weight": n_train × n_targets, "bias": n_targets, "lam": n_targets}``
    in raw mask units, as ``torch.load`` users of the published datamodels expect, and
    ``"self_influence"`` (n_targets) when the targets are the training samples and the fit
    absorbed each one's own mask column (``weight`` then has a zero diagonal).
    """
    if not hasattr(model, "coef_"):
        raise RuntimeError("the LassoPath is not fitted yet; call fit first.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"weight": torch.from_numpy(np.ascontiguousarray(model.coef_)),
            "bias": torch.from_numpy(np.asarray(model.intercept_, dtype=np.float32)),
            "lam": torch.from_numpy(np.asarray(model.lambda_, dtype=np.float32))}
    if getattr(model, "self_influence_", None) is not None:
        data["self_influence"] = torch.from_numpy(np.asarray(model.self_influence_,
                                                             dtype=np.float32))
    torch.save(data, path)
    return path


def read_datamodels_pt(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``datamodels.pt`` (ours or MadryLab's) into numpy arrays."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {key: value.numpy() for key, value in data.items()}


def load_published(masks: str | os.PathLike, margins: str | os.PathLike
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map published ``train_masks_*.npy`` and ``*_margins_*.npy`` (models × …).

    Nothing is read into memory: pass the result straight to ``LassoPath.fit``, which streams
    rows in chunks.
    """
    X = np.load(Path(masks), mmap_mode="r")
    Y = np.load(Path(margins), mmap_mode="r")
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"masks {X.shape} and margins {Y.shape} must be 2-d with one row per "
                         "model each.")
    return X, Y
