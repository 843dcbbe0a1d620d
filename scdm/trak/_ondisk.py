"""TRAK features of scdm's MLP checkpoints written to disk and read back in blocks.

At atlas scale the features (``n × proj_dim`` per checkpoint: 82 GB for 1,000,000 cells, 40
checkpoints and ``proj_dim`` 512) cannot be held in memory; here each checkpoint's are
computed in row blocks and written to a file of their own, then read back one class's rows
at a time (:class:`scdm.trak._lowrank.ClassFactors`).

Layout, one folder per checkpoint under a root that names everything the features depend on
(traker's saver keeps a folder per model id the same way)::

    ROOT/model_<id>/features.npy     n × proj_dim float32: G (GᵀG + λI)^(-1/2)
                    out_to_loss.npy  n float32: 1 - p of the correct class
                    sq_norm.npy      n float64: each row's squared norm (self-influence)
                    meta.json        written last: the checkpoint is complete

A checkpoint is computed whole or not at all: a run killed part-way redoes only the
checkpoints without ``meta.json``, and processes featurizing disjoint checkpoints can share one
root. Every checkpoint is computed in fixed blocks of :data:`BLOCK_ROWS` rows (its Gram matrix
summed block by block in float64), so its features do not depend on the memory available or
on how the checkpoints were shared out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from .._memmap import read_rows
from ._core import inverse_sqrt_of_gram, single_threaded
from ._mlp import MLPProjection

BLOCK_ROWS = 8192


def bytes_on_disk(n_obs: int, n_models: int, proj_dim: int) -> int:
    """Disk the features of ``n_models`` checkpoints of ``n_obs`` examples take."""
    return int(n_models) * int(n_obs) * (4 * int(proj_dim) + 4 + 8)


class FeatureStore:
    """The per-checkpoint features of one setting (``root``) for ``model_ids``.

    Parameters
    ----------
    root
        Folder of this setting's features (created when written).
    n_obs, proj_dim
        Shape of each checkpoint's features.
    model_ids
        The checkpoints, in the order :meth:`features` and the stacked arrays use.
    """

    def __init__(self, root: str | Path, *, n_obs: int, proj_dim: int,
                 model_ids: Sequence[int] | np.ndarray):
        self.root = Path(root)
        self.n_obs, self.proj_dim = int(n_obs), int(proj_dim)
        self.model_ids = [int(m) for m in model_ids]

    def __len__(self) -> int:
        return len(self.model_ids)

    def folder(self, model_id: int) -> Path:
        return self.root / f"model_{int(model_id)}"

    def is_done(self, model_id: int) -> bool:
        meta = self.folder(model_id) / "meta.json"
        if not meta.is_file():
            return False
        saved = json.loads(meta.read_text())
        return saved.get("n_obs") == self.n_obs and saved.get("proj_dim") == self.proj_dim

    def missing(self) -> list[int]:
        """Checkpoints whose features are not (completely) on disk."""
        return [m for m in self.model_ids if not self.is_done(m)]

    def _check_done(self) -> None:
        missing = self.missing()
        if missing:
            raise RuntimeError(f"the TRAK features of checkpoints {missing[:5]} are not in "
                               f"{self.root} yet; featurize them first.")

    def features(self, index: int) -> np.memmap:
        """Checkpoint ``model_ids[index]``'s features, memory-mapped read-only."""
        return np.load(self.folder(self.model_ids[index]) / "features.npy", mmap_mode="r")

    def feature_maps(self) -> list[np.ndarray]:
        """Every checkpoint's features, memory-mapped (nothing is read yet)."""
        self._check_done()
        return [self.features(i) for i in range(len(self))]

    def _stacked(self, name: str) -> np.ndarray:
        self._check_done()
        return np.stack([np.load(self.folder(m) / name) for m in self.model_ids])

    def out_to_loss(self) -> np.ndarray:
        """``[K, n]`` out-to-loss terms (float32)."""
        return self._stacked("out_to_loss.npy")

    def sq_norm(self) -> np.ndarray:
        """``[K, n]`` squared norms of the feature rows (float64; not finite where a row is
        not)."""
        return self._stacked("sq_norm.npy")

    def load(self, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Every checkpoint's features in memory (``n × proj_dim`` tensors): for tools that
        form ``n × n`` anyway."""
        return [torch.from_numpy(read_rows(f, slice(0, self.n_obs))).to(device)
                for f in self.feature_maps()]


def _blocks(n: int):
    for start in range(0, n, BLOCK_ROWS):
        yield slice(start, min(start + BLOCK_ROWS, n))


class _RowFile:
    """Rows of a ``.npy`` file written and read with plain file I/O: pages written through a
    memory map would stay in this process's resident set."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        created = open_memmap(path, mode="w+", dtype=dtype, shape=shape)  # header; sparse
        self.offset = int(created.offset)
        del created
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.handle = open(path, "r+b")  # closed by close()

    def write(self, rows: slice, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype)
        os.pwrite(self.handle.fileno(), data.tobytes(), self.offset + rows.start * self.row_bytes)

    def read(self, rows: slice) -> np.ndarray:
        count = rows.stop - rows.start
        raw = os.pread(self.handle.fileno(), count * self.row_bytes,
                       self.offset + rows.start * self.row_bytes)
        return np.frombuffer(raw, dtype=self.dtype).reshape(count, *self.shape[1:]).copy()

    def close(self) -> None:
        self.handle.close()


@torch.no_grad()
def featurize_checkpoint(store: FeatureStore, params: Sequence[torch.Tensor], X: torch.Tensor,
                         y: torch.Tensor, *, model_id: int, seed: int, damping: float,
                         cells: np.ndarray | None = None) -> None:
    """Write one checkpoint's features ``(G - cell means) (GᵀG + λI)^(-1/2)`` to ``store``.

    Parameters
    ----------
    params
        The checkpoint's stacked parameters (``[1, ...]`` each).
    X, y
        The models' inputs and class codes.
    model_id, seed
        Pick the projection (:class:`scdm.trak._mlp.MLPProjection`).
    damping
        Ridge relative to the mean diagonal of the (centred) ``GᵀG``.
    cells
        Optional codes (``n``) of groups whose mean gradient is removed before anything else
        (a known batch within each class).
    """
    n, k = store.n_obs, store.proj_dim
    projection = MLPProjection(params, proj_dim=k, seed=seed, model_ids=[model_id])
    folder = store.folder(model_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    files = {name: _RowFile(folder / name, shape, dtype) for name, shape, dtype in (
        ("features.npy", (n, k), np.float32), ("out_to_loss.npy", (n,), np.float32),
        ("sq_norm.npy", (n,), np.float64))}
    device = projection.device
    gram = torch.zeros(k, k, dtype=torch.float64, device=device)
    codes = None if cells is None else torch.as_tensor(np.asarray(cells, np.int64),
                                                       device=device)
    if codes is not None:
        sums = torch.zeros(int(codes.max()) + 1, k, dtype=torch.float64, device=device)
        counts = torch.bincount(codes, minlength=sums.shape[0]).clamp_min(1)
    try:
        for rows in _blocks(n):  # the gradients, their Gram matrix and cell sums
            g, q = projection.block(X[rows], y[rows])
            files["features.npy"].write(rows, g[0].cpu().numpy())
            files["out_to_loss.npy"].write(rows, q[0].cpu().numpy())
            g64 = g[0].double()
            # one thread: with Intel's MKL the sum's last bits follow the thread count, and a
            # Ray worker's (1) must give the local run's features bitwise; 0.46 s against
            # 0.23 s on two threads per 65,536 rows, small beside the gradients
            with single_threaded():
                gram += g64.T @ g64
            if codes is not None:
                sums.index_add_(0, codes[rows], g64)
        means = None
        if codes is not None:
            # Σ (g - μ)(g - μ)ᵀ over a cell is Σ g gᵀ - s sᵀ / count (s: the cell's sum)
            means = sums / counts[:, None]
            gram -= sums.T @ means
        M = inverse_sqrt_of_gram(gram, n_rows=n, damping=damping, normalize=False)
        for rows in _blocks(n):  # centred and whitened, in place
            g = torch.from_numpy(files["features.npy"].read(rows)).to(device)
            if means is not None and codes is not None:
                g -= means[codes[rows]].to(g.dtype)
            f = g @ M
            files["features.npy"].write(rows, f.cpu().numpy())
            files["sq_norm.npy"].write(rows, (f.double() ** 2).sum(1).cpu().numpy())
    finally:
        for handle in files.values():
            handle.close()
    tmp = folder / f".meta.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps({"n_obs": n, "proj_dim": k, "model_id": int(model_id),
                               "damping": float(damping), "centred": cells is not None}))
    os.replace(tmp, folder / "meta.json")  # last: the checkpoint is complete


def strata_cells(y: np.ndarray, strata: np.ndarray | None) -> np.ndarray | None:
    """Codes of the (class, batch) cells whose mean gradient is removed, or ``None`` without
    a known batch."""
    if strata is None:
        return None
    strata = np.asarray(strata, dtype=np.int64)
    return np.asarray(y, dtype=np.int64) * (int(strata.max()) + 1) + strata


def featurize(store: FeatureStore, params: Sequence[torch.Tensor], X: torch.Tensor,
              y: torch.Tensor, *, seed: int, damping: float, cells: np.ndarray | None = None,
              progress: bool = False) -> int:
    """Featurize every checkpoint of ``store`` not on disk yet (``params`` stacked in the
    order of ``store.model_ids``); returns how many were computed."""
    todo = [i for i, m in enumerate(store.model_ids) if not store.is_done(m)]
    for i in tqdm(todo, desc="TRAK features", unit="checkpoint", disable=not progress):
        featurize_checkpoint(store, [p[i:i + 1] for p in params], X, y,
                             model_id=store.model_ids[i], seed=seed, damping=damping,
                             cells=cells)
    return len(todo)
