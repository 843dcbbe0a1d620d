"""Interoperability with the published datamodels data and code (MadryLab).

- ``datamodels.pt`` both ways (:func:`write_datamodels_pt`, :func:`read_datamodels`), and
  target ranges fitted apart joined (:func:`merge_datamodels_pt`).
- The published ``train_masks_*.npy`` / ``*_margins_*.npy`` as memmaps (:func:`load_published`).
- MadryLab's training contract: a store made from their ``spec.json``
  (:meth:`scdm.store.ModelStore.from_spec`) filled by any user function
  ``main(index=i, logdir=DIR) -> {field: array}`` (:func:`train_with_main`, ``scdm worker``).
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._memmap import RowSubset, column_moments, read_rows
from .regression import LassoPath
from .store import ModelStore

if TYPE_CHECKING:
    from .workers import Backend

UNITS = ("standardized", "raw")


def write_datamodels_pt(model: LassoPath, path: str | os.PathLike, *,
                        units: str = "standardized", extra: dict | None = None) -> Path:
    """Save a fitted :class:`~scdm.regression.LassoPath` as MadryLab's ``datamodels.pt``.

    With ``units="standardized"`` (the default) the file follows fast_l1's convention, which
    MadryLab's code and the published datamodels use: ``weight`` (n_train × n_targets) applies
    to *standardised* masks and ``bias`` is the prediction at the mean mask, so

        margin ≈ ((mask − mean) / scale) @ weight + bias

    with ``mean``/``scale`` the masks' column means and (population) standard deviations over
    the fitted models, saved in the file as ``"mean"`` and ``"scale"`` (a constant column has
    scale 0 and weight 0; use scale 1 there). ``units="raw"`` saves raw-unit weights instead:
    ``margin ≈ mask @ weight + bias``. Either way ``"units"`` names the convention, ``"lam"``
    holds the chosen λ, and, when the targets are the training samples and the fit absorbed
    each one's own mask column, ``"self_influence"`` (raw margin units: add
    ``self_influence[t]`` when the model trained on target ``t``; ``weight`` has a zero
    diagonal). :func:`read_datamodels` reads both conventions back.
    """
    if not hasattr(model, "coef_"):
        raise RuntimeError("the LassoPath is not fitted yet; call fit first.")
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}.")
    coef = np.asarray(model.coef_, dtype=np.float64)
    mean = np.asarray(model.mean_, dtype=np.float64)
    scale = np.asarray(model.scale_, dtype=np.float64)
    if units == "standardized":
        weight = coef * scale[:, None]
        bias = np.asarray(model.intercept_, dtype=np.float64) + mean @ coef
    else:
        weight, bias = coef, np.asarray(model.intercept_, dtype=np.float64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"weight": _tensor(weight), "bias": _tensor(bias), "lam": _tensor(model.lambda_),
            "mean": _tensor(mean), "scale": _tensor(scale), "units": units}
    if getattr(model, "self_influence_", None) is not None:
        data["self_influence"] = _tensor(model.self_influence_)
    data.update(extra or {})
    torch.save(data, path)
    return path


def _tensor(values) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def merge_datamodels_pt(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Join ``datamodels.pt`` files of target ranges of one store (``scdm fit --targets A:B``,
    fast_l1's ``target_start_ind`` / ``target_end_ind``) into one file of all targets.

    The ranges must tile ``[0, n_targets)`` without gaps or overlaps, and the files must come
    from the same models (units, training samples and mask statistics equal); otherwise
    nothing is written and the error says which. Returns ``out``.
    """
    if not paths:
        raise ValueError("no files to merge; give the outputs of scdm fit --targets A:B.")
    parts = [read_datamodels_pt(f) for f in paths]
    for f, d in zip(paths, parts, strict=True):
        if "target_start" not in d:
            raise ValueError(f"{f} has no target range; merge files written by scdm fit "
                             "--targets A:B.")
    parts.sort(key=lambda d: int(d["target_start"]))
    first = parts[0]
    total = int(first["n_targets_total"])
    ranges = [(int(d["target_start"]), int(d["target_stop"])) for d in parts]
    if ranges[0][0] != 0 or ranges[-1][1] != total or any(
            a[1] != b[0] for a, b in itertools.pairwise(ranges)):
        raise ValueError(f"the files cover target ranges {ranges}; they must tile [0, {total}) "
                         "without gaps or overlaps.")
    for d in parts[1:]:
        if d.get("units") != first.get("units") or d["weight"].shape[0] != first[
                "weight"].shape[0] or int(d["n_targets_total"]) != total:
            raise ValueError("the files come from different stores or conventions (units, "
                             "training samples or target count differ).")
        if "mean" in first and not np.allclose(d["mean"], first["mean"]):
            raise ValueError("the files were fitted on different models (mask statistics "
                             "differ); fit every range on the same store and models.")
    data: dict[str, Any] = {
        key: torch.from_numpy(np.concatenate([d[key] for d in parts], axis=-1))
        for key in ("weight", "bias", "lam", "self_influence") if key in first}
    data.update({key: torch.from_numpy(first[key]) for key in ("mean", "scale") if key in first})
    data.update({"units": first.get("units"), "target_start": 0, "target_stop": total,
                 "n_targets_total": total})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in data.items() if v is not None}, out)
    return out


def read_datamodels_pt(path: str | os.PathLike) -> dict:
    """A ``datamodels.pt`` (ours or MadryLab's) as it is stored: tensors as numpy arrays,
    other entries (``"units"``) as they are. :func:`read_datamodels` also undoes the units."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {key: value.numpy() if isinstance(value, torch.Tensor) else value
            for key, value in data.items()}


@dataclass
class Datamodels:
    """Datamodels read from a file, in raw mask units: ``margin ≈ masks @ weight + intercept``.

    ``weight`` is n_train × n_targets (the file's orientation; ``adata.obsp`` holds its
    transpose), ``units`` the convention the file used and ``inferred`` whether it had to be
    inferred (files without a ``"units"`` tag).
    """

    weight: np.ndarray
    intercept: np.ndarray
    lam: np.ndarray | None
    units: str
    inferred: bool
    self_influence: np.ndarray | None = None
    extra: dict | None = None

    def predict(self, masks) -> np.ndarray:
        """Predicted margins (n_models × n_targets) of models trained on ``masks``."""
        masks = np.asarray(masks, dtype=np.float32)
        if masks.ndim != 2 or masks.shape[1] != self.weight.shape[0]:
            raise ValueError(f"masks must be n_models × {self.weight.shape[0]} (training "
                             f"samples), got {masks.shape}.")
        return masks @ self.weight + self.intercept


def read_datamodels(path: str | os.PathLike, *, masks=None, margins=None,
                    units: str | None = None) -> Datamodels:
    """Read a ``datamodels.pt`` of either convention into raw mask units.

    The convention comes from ``units``, else the file's ``"units"`` tag (scdm writes one),
    else it is inferred and said in a warning: a file with ``"mean"``/``"scale"`` is
    standardised; otherwise ``masks`` and ``margins`` of some models (rows: models) decide —
    the convention that predicts those margins with the smaller error wins. A standardised file
    without ``"mean"``/``"scale"`` (fast_l1 saves none) needs ``masks``: the models it was
    fitted on, whose column statistics undo the standardisation.

    Parameters
    ----------
    masks, margins
        Masks (n_models × n_train) and margins (n_models × n_targets) of models the file
        describes; memmaps are streamed.
    units
        ``"standardized"`` (fast_l1, MadryLab, scdm's default) or ``"raw"`` (scdm before 0.2).
    """
    data = read_datamodels_pt(path)
    for key in ("weight", "bias"):
        if key not in data:
            raise ValueError(f"{path} has no {key!r}: not a datamodels.pt (keys: "
                             f"{sorted(data)}).")
    weight = np.asarray(data["weight"], dtype=np.float64)
    bias = np.asarray(data["bias"], dtype=np.float64).reshape(-1)
    if weight.ndim != 2 or weight.shape[1] != bias.size:
        raise ValueError(f"{path}: weight {weight.shape} must be n_train × n_targets with one "
                         f"bias per target ({bias.size}); is it transposed?")
    if masks is not None and masks.shape[1] != weight.shape[0]:
        raise ValueError(f"masks have {masks.shape[1]} columns but the file's weight is "
                         f"{weight.shape[0]} training samples × {weight.shape[1]} targets; "
                         "MadryLab's layout is n_train × n_targets (is it transposed?).")
    if units is not None and units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}.")
    tag = data.get("units")
    inferred = units is None and tag is None
    units = units or tag
    stats = (np.asarray(data["mean"], np.float64), np.asarray(data["scale"], np.float64)
             ) if "mean" in data and "scale" in data else None
    if units is None and stats is not None:
        units = "standardized"
    if units in (None, "standardized") and stats is None and masks is not None:
        stats = column_moments(masks)  # fast_l1's standardisation
    candidates = {"raw": (weight, bias)}
    if stats is not None:
        mean, scale = stats
        raw = weight / np.where(scale > 0, scale, 1.0)[:, None]
        candidates["standardized"] = (raw, bias - mean @ raw)
    if units is None:
        if masks is None or margins is None:
            raise ValueError(
                f"{path} does not say its units: pass units='standardized' (fast_l1, MadryLab "
                "and scdm's files) or units='raw' (scdm before 0.2), or masks= and margins= of "
                "some of its models to infer them.")
        errors = {name: _mse(w, b, masks, margins) for name, (w, b) in candidates.items()}
        units = min(errors, key=lambda name: errors[name])
        warnings.warn(f"{path} has no units tag; read as {units!r} (its prediction error on "
                      "the given models: " + ", ".join(f"{k} {v:.4g}" for k, v in
                                                       errors.items()) + ").", stacklevel=2)
    if units not in candidates:
        raise ValueError(f"{path} holds standardised weights but no 'mean'/'scale'; pass "
                         "masks= (the models it was fitted on) to undo the standardisation.")
    raw_weight, intercept = candidates[units]
    known = {"weight", "bias", "lam", "mean", "scale", "units", "self_influence"}
    return Datamodels(
        weight=raw_weight.astype(np.float32), intercept=intercept.astype(np.float32),
        lam=data.get("lam"), units=units, inferred=inferred,
        self_influence=data.get("self_influence"),
        extra={k: v for k, v in data.items() if k not in known} or None)


def _mse(weight, bias, masks, margins) -> float:
    total, count = 0.0, 0
    for start in range(0, min(masks.shape[0], 20000), 4096):
        rows = slice(start, min(start + 4096, masks.shape[0]))
        pred = read_rows(masks, rows, np.float64) @ weight + bias
        total += float(((pred - read_rows(margins, rows, np.float64)) ** 2).sum())
        count += pred.size
    return total / max(count, 1)


def load_published(masks: str | os.PathLike, margins: str | os.PathLike, *,
                   rows: slice | np.ndarray | None = None) -> tuple[Any, Any]:
    """Memory-map published ``train_masks_*.npy`` and ``*_margins_*.npy`` (models × …).

    Nothing is read into memory: pass the result straight to ``LassoPath.fit``, which streams
    rows in chunks. ``rows`` keeps some models only (a slice, sorted indices or a boolean
    mask), e.g. ``slice(0, -10_000)`` to leave out the evaluation models the published
    matrices end with; the result then reads those rows from the files on demand
    (:class:`scdm._memmap.RowSubset`), never copying them whole.
    """
    X = np.load(Path(masks), mmap_mode="r")
    Y = np.load(Path(margins), mmap_mode="r")
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"masks {X.shape} and margins {Y.shape} must be 2-d with one row per "
                         "model each.")
    if rows is None:
        return X, Y
    if isinstance(rows, slice):
        kept = np.arange(X.shape[0])[rows]
        if kept.size and (np.diff(kept) < 0).any():
            kept = np.sort(kept)
        if kept.size and rows.step in (None, 1):  # a contiguous range stays a memmap view
            return X[kept[0] : kept[-1] + 1], Y[kept[0] : kept[-1] + 1]
    else:
        kept = np.asarray(rows)
    if kept.size == 0 or (kept.dtype == bool and not kept.any()):
        raise ValueError("rows keeps no model.")
    if kept.dtype == bool and kept.shape != (X.shape[0],):
        raise ValueError(f"a boolean rows needs one entry per model ({X.shape[0]}).")
    return RowSubset(X, kept), RowSubset(Y, kept)


def train_with_main(store: str | os.PathLike | ModelStore, main: str | Callable, *,
                    models: tuple[int, int] | None = None, args: Sequence[str] = (),
                    backend: str | Backend = "local", redo: bool = False,
                    progress: bool | None = None) -> int:
    """Fill a store with a user's training function, as MadryLab's worker does.

    For each incomplete model ``i`` in ``models`` (``(start, stop)``, default all), call
    ``main(index=i, logdir=STORE/workers/i)``; it trains however it likes and returns
    ``{field: array}`` with exactly the store's schema fields (for datamodels, its ``masks``
    row and its ``margins``). Each returned row is checked (names, shapes, dtypes, NaN) before
    it is written, then the model is flagged complete; completed models are skipped (unless
    ``redo``), so reruns, overlapping ranges and concurrent workers are safe.

    Parameters
    ----------
    store
        A store directory (from :meth:`~scdm.store.ModelStore.from_spec`, ``scdm store init
        --spec``, or made by MadryLab's ``initialize_store``) or an open store.
    main
        The function, or ``"MODULE[:FUNC]"`` / ``"path/to/file.py[:FUNC]"`` (default ``main``).
    args
        Extra command-line arguments for ``main``: in ``sys.argv`` while it runs, and passed as
        keywords where ``main`` takes them (see :class:`scdm.workers.UserMain`).
    backend
        ``"local"`` (this process), or ``"ray"`` / :class:`scdm.workers.RayBackend`: ranges of
        models become Ray tasks (``num_gpus_per_task`` may be fractional); the store must be on
        a filesystem every node sees, and ``main`` importable there.

    Returns
    -------
    The number of models completed by this call.
    """
    from ._settings import settings
    from .workers import (
        RayBackend,
        UserMain,
        as_backend,
        check_models,
        fill_store,
        run_main_worker,
    )

    backend = as_backend(backend)
    path = store.path if isinstance(store, ModelStore) else Path(store)
    opened = ModelStore.open(path)
    start, stop = check_models(models, opened.n_models)
    user = (UserMain.resolve(main, tuple(args)) if isinstance(main, str) else
            UserMain(target=getattr(main, "__qualname__", "main"), args=tuple(args), func=main))
    before = int(opened.completed[start:stop].sum())
    show = settings.progress(progress)
    if redo:
        if isinstance(backend, RayBackend):
            raise ValueError("redo=True retrains completed models; run it locally, not as Ray "
                             "tasks (which skip completed ranges).")
        return run_main_worker(path, user, start, stop, redo=True, progress=show)
    fill_store(path, user, models=(start, stop), backend=backend, progress=show,
               desc="models (user main)")
    return int(ModelStore.open(path).completed[start:stop].sum()) - before
