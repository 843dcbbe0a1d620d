"""``scdm.trak.TRAKer``: TRAK for any PyTorch classifier, with MadryLab ``traker``'s workflow.

The save directory holds one folder per checkpoint (``model_<id>``: projected gradients,
out-to-loss terms and which examples are done, as ``.npy`` memmaps, and the checkpoint's
fingerprint) and one per experiment (target gradients per checkpoint, the final scores), so
featurizing resumes where it stopped and several processes can each featurize their own
checkpoints into one directory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from .._checks import check_int
from .._device import resolve_device
from .._settings import settings
from ..store import hash_arrays
from ._core import inverse_gram
from ._gradients import GradientComputer
from ._projection import RandomProjector

logger = logging.getLogger("scdm")
TASKS = ("classification", "image_classification")
# what a save_dir written before these settings were recorded was made with
LEGACY_METADATA = {"lambda_reg": 0.0, "damping": None, "projector_generator": "cpu"}


def checkpoint_fingerprint(checkpoint: dict) -> str:
    """Content hash of a state dict's tensors (names, shapes, values)."""
    names = sorted(checkpoint)
    arrays = [np.frombuffer(name.encode(), dtype=np.uint8) for name in names]
    arrays += [checkpoint[k].detach().float().cpu().numpy() for k in names
               if torch.is_tensor(checkpoint[k])]
    return hash_arrays(*arrays)


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file


class TRAKer:
    """TRAK attribution scores for a classifier, checkpoint by checkpoint.

    The workflow and semantics of MadryLab's ``traker``: register a checkpoint
    (:meth:`load_checkpoint`), featurize the training set (:meth:`featurize`: per-example
    gradients of the margin, correct logit minus the log-sum-exp of the others, projected to
    ``proj_dim`` and divided by ``sqrt(grad_dim)``, and the out-to-loss terms ``1 - p``),
    :meth:`finalize_features` (``G (GᵀG + λI)⁻¹`` per checkpoint), then for a set of targets
    :meth:`start_scoring_checkpoint` / :meth:`score` per checkpoint and :meth:`finalize_scores`
    (the checkpoint average of ``features · target gradientsᵀ`` times the average out-to-loss
    term): an ``n_train × n_targets`` array.

    Parameters
    ----------
    model
        A ``torch.nn.Module`` returning ``[batch, classes]`` logits.
    task
        ``"classification"`` (or ``"image_classification"``, the same).
    train_set_size
        Number of training examples.
    save_dir
        Directory for features, target gradients and scores (created; resumable).
    proj_dim
        Dimension of the random projection.
    projector_seed
        Seed of the projection matrices (one per checkpoint).
    projection
        ``"rademacher"`` or ``"normal"`` entries.
    projector_generator
        ``"cpu"``: the projection is drawn by a CPU generator, the same on every device;
        ``"device"``: drawn on ``device`` (for large models on a GPU, whose projection cannot
        be cached and is regenerated for every batch). Recorded in ``save_dir``.
    lambda_reg
        Absolute ridge added to ``GᵀG`` (``traker``'s; 0 reproduces it).
    damping
        Ridge relative to the mean diagonal of ``GᵀG`` (added to ``lambda_reg``).
    grad_wrt
        Parameter names to differentiate (default all).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    verbose
        Progress bars (default ``scdm.settings.verbosity >= 1``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        task: str = "classification",
        train_set_size: int | None = None,
        *,
        save_dir: str | Path = "./trak_results",
        proj_dim: int = 2048,
        projector_seed: int = 0,
        projection: str = "rademacher",
        projector_generator: str = "cpu",
        lambda_reg: float = 0.0,
        damping: float | None = None,
        grad_wrt: Sequence[str] | None = None,
        device: str = "auto",
        verbose: bool | None = None,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        self.train_set_size = check_int("train_set_size", train_set_size, 1)
        if lambda_reg < 0 or (damping is not None and damping < 0):
            raise ValueError("lambda_reg and damping must be non-negative.")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.task = task
        self.gradients = GradientComputer(self.model, grad_wrt)
        self.projector = RandomProjector(self.gradients.grad_dim, proj_dim, seed=projector_seed,
                                         kind=projection, device=self.device,
                                         generator=projector_generator)
        self.lambda_reg, self.damping = float(lambda_reg), damping
        self.normalize_factor = float(np.sqrt(self.gradients.grad_dim))
        self.verbose = verbose
        self.save_dir = Path(save_dir)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        # everything the stored features depend on; the ridge too, as finalized features
        # are reused on resume
        self.metadata = {"train_set_size": self.train_set_size, "proj_dim": int(proj_dim),
                         "grad_dim": self.gradients.grad_dim, "projector_seed": projector_seed,
                         "projection": projection, "grad_wrt": self.gradients.names,
                         "task": "classification", "lambda_reg": self.lambda_reg,
                         "damping": None if damping is None else float(damping),
                         # device-drawn matrices differ between device types
                         "projector_generator": projector_generator if projector_generator ==
                         "cpu" else f"{projector_generator}:{self.device.type}"}
        meta = self.save_dir / "metadata.json"
        if meta.exists():
            saved = {**LEGACY_METADATA, **json.loads(meta.read_text())}
            different = {k: (saved.get(k), self.metadata.get(k))
                         for k in sorted(set(saved) | set(self.metadata))
                         if saved.get(k) != self.metadata.get(k)}
            if different:
                raise ValueError(f"{self.save_dir} holds TRAK results of another setting "
                                 f"(saved, now): {different}; use another save_dir.")
        else:
            _write_json(meta, self.metadata)
        self.model_id: int | None = None
        self._next = 0
        self._experiment: tuple[str, int] | None = None
        self._next_target = 0

    # ----------------------------------------------------------------- storage
    def _model_dir(self, model_id: int) -> Path:
        return self.save_dir / f"model_{int(model_id)}"

    def _model_meta(self, model_id: int) -> dict | None:
        path = self._model_dir(model_id) / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _array(self, path: Path, shape: tuple, dtype) -> np.memmap:
        if path.exists():
            return np.load(path, mmap_mode="r+")
        return open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    @property
    def model_ids(self) -> list[int]:
        """Checkpoints registered in ``save_dir``."""
        return sorted(int(p.name.split("_")[1]) for p in self.save_dir.glob("model_*")
                      if (p / "meta.json").exists())

    # ----------------------------------------------------------------- features
    def load_checkpoint(self, checkpoint: dict, model_id: int) -> None:
        """Load ``checkpoint`` (a state dict) into the model and make ``model_id`` current.

        A ``model_id`` already in ``save_dir`` must come with the same checkpoint (its
        features are resumed); another one is refused.
        """
        fingerprint = checkpoint_fingerprint(checkpoint)
        saved = self._model_meta(model_id)
        if saved is not None and saved["checkpoint"] != fingerprint:
            raise ValueError(f"model_id {model_id} in {self.save_dir} was featurized with "
                             "another checkpoint; use a new model_id or save_dir.")
        self.model.load_state_dict(checkpoint)
        self.model.eval()
        folder = self._model_dir(model_id)
        folder.mkdir(exist_ok=True)
        if saved is None:
            _write_json(folder / "meta.json", {"checkpoint": fingerprint, "finalized": False})
        self.model_id = int(model_id)
        self._next = 0

    def _indices(self, inds, num_samples, counter: int, size: int) -> np.ndarray:
        if (inds is None) == (num_samples is None):
            raise ValueError("pass exactly one of inds= and num_samples=.")
        inds = (np.arange(counter, counter + int(num_samples)) if inds is None
                else np.asarray(inds, dtype=np.int64).reshape(-1))
        if inds.size and (inds.min() < 0 or inds.max() >= size):
            raise IndexError(f"example indices must lie in [0, {size}); got "
                             f"[{inds.min()}, {inds.max()}].")
        return inds

    def _projected(self, batch) -> tuple[np.ndarray, np.ndarray]:
        x, y = (t.to(self.device) for t in batch)
        grads, out_to_loss = self.gradients(x, y.long())
        if not bool(torch.isfinite(grads).all()):
            raise FloatingPointError(
                f"non-finite per-example gradients for model_id {self.model_id}; check the "
                "checkpoint and the inputs (nothing was written).")
        if self.model_id is None:
            raise RuntimeError("load_checkpoint(state_dict, model_id) first.")
        projected = self.projector.project(grads, self.model_id) / self.normalize_factor
        return projected.cpu().numpy(), out_to_loss.cpu().numpy()

    def featurize(self, batch: Sequence[torch.Tensor], inds: Iterable[int] | None = None,
                  num_samples: int | None = None) -> int:
        """Projected gradients and out-to-loss terms of a batch ``(x, y)`` of training examples
        (at ``inds``, or the next ``num_samples``); examples already done are skipped.
        Returns how many were computed."""
        if self.model_id is None:
            raise RuntimeError("load a checkpoint with load_checkpoint(state_dict, model_id) "
                               "before featurizing.")
        inds = self._indices(inds, num_samples, self._next, self.train_set_size)
        if num_samples is not None:
            self._next += int(num_samples)
        if len(batch[0]) != inds.size:
            raise ValueError(f"the batch has {len(batch[0])} examples for {inds.size} indices.")
        folder = self._model_dir(self.model_id)
        done = self._array(folder / "is_featurized.npy", (self.train_set_size,), np.bool_)
        todo = ~done[inds]
        if not todo.any():
            return 0
        grads, out_to_loss = self._projected([t[torch.as_tensor(todo)] for t in batch])
        store = self._array(folder / "grads.npy", (self.train_set_size, self.projector.proj_dim),
                            np.float32)
        losses = self._array(folder / "out_to_loss.npy", (self.train_set_size,), np.float32)
        store[inds[todo]] = grads
        losses[inds[todo]] = out_to_loss
        store.flush()
        losses.flush()
        done[inds[todo]] = True  # last: an interrupted write is redone on resume
        done.flush()
        return int(todo.sum())

    def finalize_features(self, model_ids: Iterable[int] | None = None) -> None:
        """``G (GᵀG + λI)⁻¹`` for each checkpoint, once every training example is featurized."""
        ids = self.model_ids if model_ids is None else [int(m) for m in model_ids]
        for model_id in tqdm(ids, desc="finalizing features", unit="checkpoint",
                             disable=not settings.progress(self.verbose)):
            folder = self._model_dir(model_id)
            meta = self._model_meta(model_id)
            if meta is None:
                raise KeyError(f"model_id {model_id} is not registered in {self.save_dir}.")
            done = (np.load(folder / "is_featurized.npy") if (folder / "is_featurized.npy")
                    .exists() else np.zeros(self.train_set_size, bool))
            if not done.all():
                raise ValueError(f"model_id {model_id}: {int((~done).sum())} of "
                                 f"{self.train_set_size} training examples are not featurized "
                                 "yet.")
            if meta["finalized"]:
                continue
            grads = torch.from_numpy(np.load(folder / "grads.npy")).to(self.device)
            inverse = inverse_gram(grads, lambda_reg=self.lambda_reg, damping=self.damping)
            features = self._array(folder / "features.npy", tuple(grads.shape), np.float32)
            features[:] = (grads @ inverse).cpu().numpy()
            features.flush()
            _write_json(folder / "meta.json", {**meta, "finalized": True})

    def self_influence(self, model_ids: Iterable[int] | None = None) -> np.ndarray:
        """Every training example's score on itself: the diagonal of :meth:`finalize_scores`
        with the training set as targets, from the stored gradients and features (a training
        example's target gradient is the gradient featurize stored), without scoring the
        training set again or forming ``n × n``."""
        ids = self.model_ids if model_ids is None else [int(m) for m in model_ids]
        if not ids:
            raise ValueError(f"no checkpoint is registered in {self.save_dir}.")
        total = np.zeros(self.train_set_size, dtype=np.float64)
        out_to_loss = np.zeros(self.train_set_size, dtype=np.float64)
        for model_id in ids:
            meta = self._model_meta(model_id)
            if meta is None or not meta["finalized"]:
                raise ValueError(f"model_id {model_id} has no finalized features; featurize "
                                 "and finalize_features first.")
            folder = self._model_dir(model_id)
            features = np.load(folder / "features.npy", mmap_mode="r")
            grads = np.load(folder / "grads.npy", mmap_mode="r")
            total += np.einsum("ij,ij->i", np.asarray(features, np.float64),
                               np.asarray(grads, np.float64))
            out_to_loss += np.load(folder / "out_to_loss.npy")
        return ((total / len(ids)) * (out_to_loss / len(ids))).astype(np.float32)

    # ----------------------------------------------------------------- scores
    def _experiment_dir(self, exp_name: str) -> Path:
        return self.save_dir / "experiments" / exp_name

    def start_scoring_checkpoint(self, exp_name: str, checkpoint: dict, model_id: int,
                                 num_targets: int) -> None:
        """Load ``checkpoint`` to score ``num_targets`` targets of experiment ``exp_name``;
        it must be the checkpoint whose features ``model_id`` holds."""
        meta = self._model_meta(model_id)
        if meta is None or not meta["finalized"]:
            raise ValueError(f"model_id {model_id} has no finalized features; featurize and "
                             "finalize_features first.")
        if checkpoint_fingerprint(checkpoint) != meta["checkpoint"]:
            raise ValueError(f"the checkpoint given for model_id {model_id} is not the one its "
                             "training features were computed with: targets and training "
                             "features must come from the same checkpoint.")
        folder = self._experiment_dir(exp_name)
        folder.mkdir(parents=True, exist_ok=True)
        meta_path = folder / "meta.json"
        if meta_path.exists():
            saved = json.loads(meta_path.read_text())["num_targets"]
            if saved != num_targets:
                raise ValueError(f"experiment {exp_name!r} has {saved} targets, not "
                                 f"{num_targets}; use another exp_name.")
        else:
            _write_json(meta_path, {"num_targets": int(num_targets)})
        self.model.load_state_dict(checkpoint)
        self.model.eval()
        self.model_id = int(model_id)
        self._experiment = (exp_name, int(num_targets))
        self._next_target = 0

    def score(self, batch: Sequence[torch.Tensor], inds: Iterable[int] | None = None,
              num_samples: int | None = None) -> None:
        """Projected gradients of a batch of targets for the current checkpoint."""
        if self._experiment is None:
            raise RuntimeError("call start_scoring_checkpoint(exp_name, checkpoint, model_id, "
                               "num_targets) before score.")
        exp_name, num_targets = self._experiment
        inds = self._indices(inds, num_samples, self._next_target, num_targets)
        if num_samples is not None:
            self._next_target += int(num_samples)
        grads, _ = self._projected(batch)
        store = self._array(self._experiment_dir(exp_name) / f"model_{self.model_id}_grads.npy",
                            (num_targets, self.projector.proj_dim), np.float32)
        store[inds] = grads
        store.flush()

    def finalize_scores(self, exp_name: str, model_ids: Iterable[int] | None = None,
                        allow_skip: bool = False) -> np.ndarray:
        """The ``n_train × n_targets`` TRAK scores of ``exp_name``, averaged over checkpoints
        (also saved as ``experiments/<exp_name>/scores.npy``)."""
        folder = self._experiment_dir(exp_name)
        if not (folder / "meta.json").exists():
            raise KeyError(f"experiment {exp_name!r} does not exist in {self.save_dir}; score "
                           "targets first.")
        num_targets = json.loads((folder / "meta.json").read_text())["num_targets"]
        ids = self.model_ids if model_ids is None else [int(m) for m in model_ids]
        total = np.zeros((self.train_set_size, num_targets), dtype=np.float64)
        out_to_loss = np.zeros(self.train_set_size, dtype=np.float64)
        used = 0
        for model_id in ids:
            target_path = folder / f"model_{model_id}_grads.npy"
            if not target_path.exists():
                if allow_skip:
                    logger.warning("no target gradients of model_id %d; skipped", model_id)
                    continue
                raise FileNotFoundError(f"experiment {exp_name!r} has no target gradients of "
                                        f"model_id {model_id}; score them or pass "
                                        "allow_skip=True.")
            features = np.load(self._model_dir(model_id) / "features.npy", mmap_mode="r")
            targets = np.load(target_path)
            total += np.asarray(features, dtype=np.float64) @ targets.T.astype(np.float64)
            out_to_loss += np.load(self._model_dir(model_id) / "out_to_loss.npy")
            used += 1
        if used == 0:
            raise ValueError(f"no checkpoint of experiment {exp_name!r} could be scored.")
        scores = (total / used) * (out_to_loss / used)[:, None]
        saved = open_memmap(folder / "scores.npy", mode="w+", dtype=np.float32,
                            shape=scores.shape)
        saved[:] = scores
        saved.flush()
        return scores.astype(np.float32)
