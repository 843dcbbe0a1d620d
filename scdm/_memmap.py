"""Reading rows of memory-mapped arrays without keeping them resident.

Rows read through a memmap stay mapped into the process after the copy is made, so a solver
that streams a 2 GB store over and over ends with a resident set the size of the file, although
it holds only one chunk at a time. After copying a chunk, :func:`read_rows` tells the kernel that
this process no longer needs those pages (``MADV_DONTNEED``); they stay in the page cache and
come back on the next read, and the data on disk are untouched.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

_CAN_RELEASE = hasattr(mmap.mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED")


def _shared_mapping(array: np.ndarray) -> tuple[Any, int] | None:
    """The shared file mapping under ``array`` and the address where it starts, if any."""
    root: Any = array
    while isinstance(root, np.ndarray) and not isinstance(root.base, mmap.mmap):
        root = root.base
    # copy-on-write mappings ("c") hold private changes that MADV_DONTNEED would discard
    if not isinstance(root, np.memmap) or getattr(root, "mode", None) not in ("r", "r+"):
        return None
    start = root.ctypes.data - int(root.offset) % mmap.ALLOCATIONGRANULARITY
    return root.base, start


def _release(array: np.ndarray, first: int, last: int) -> None:
    """Drop this process's mapping of rows ``first..last`` of a memmap-backed ``array``."""
    found = _shared_mapping(array)
    if found is None or array.strides[0] <= 0:
        return
    mapping, start = found
    lo = array.ctypes.data + first * array.strides[0] - start
    hi = min(array.ctypes.data + (last + 1) * array.strides[0] - start, len(mapping))
    lo -= lo % mmap.PAGESIZE
    if hi > lo >= 0:
        try:
            mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):  # only a memory optimisation; never fail a read over it
            pass


class RowSubset:
    """Rows ``rows`` (sorted indices) of a 2-d array or memmap, read only when asked for.

    ``store.masks[completed]`` copies every completed row into memory (15 GB for CIFAR-10 at
    α = 0.5); a ``RowSubset`` has the shape and dtype of that copy, and :func:`read_rows` (the
    solver's reader) reads its chunks straight from the file.
    """

    def __init__(self, array: Any, rows: Any) -> None:
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= len(array))):
            raise IndexError(f"rows must be indices into the {len(array)} rows of the array.")
        if rows.size > 1 and (np.diff(rows) <= 0).any():
            raise ValueError("rows must be sorted and distinct.")
        self.base, self.rows = array, rows
        self.shape = (rows.size, *array.shape[1:])
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, None)
        picked = self.rows[rows]
        if np.ndim(picked) == 0:
            row = np.asarray(self.base[int(picked)])
            return row if cols is None else row[cols]
        return read_rows(self.base, picked, cols=cols)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return read_rows(self.base, self.rows, dtype)

    def __repr__(self) -> str:
        return f"RowSubset({self.shape[0]} of {len(self.base)} rows, dtype={self.dtype})"


def read_rows(array: Any, idx: np.ndarray | slice, dtype: Any = None,
              cols: slice | None = None) -> np.ndarray:
    """Copy rows ``idx`` (sorted indices or a slice) of ``array``, columns ``cols``, to memory.

    For memmaps the pages read are released afterwards, so streaming a file in chunks keeps
    the resident set at one chunk. ``array`` may be a :class:`RowSubset`.
    """
    if isinstance(array, RowSubset):
        return read_rows(array.base, array.rows[idx], dtype, cols)
    if isinstance(idx, slice):
        first, last = idx.start or 0, (idx.stop or len(array)) - 1
        part = array[idx]
    elif idx.size and idx[-1] - idx[0] + 1 == idx.size:
        first, last = int(idx[0]), int(idx[-1])
        part = array[first : last + 1]
    else:
        first, last = (int(idx[0]), int(idx[-1])) if idx.size else (0, -1)
        part = array[idx]
    if cols is not None:
        part = part[:, cols]
    # a copy: memmap slices are read-only, and their pages are released below
    out = np.array(part, dtype=dtype, order="C")
    if _CAN_RELEASE and isinstance(array, np.ndarray) and last >= first:
        _release(array, first, min(last, len(array) - 1))
    return out


def column_moments(array: Any, chunk_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Column means and population standard deviations of a 2-d array, memmap or
    :class:`RowSubset`, over its rows read in chunks (float64 sums)."""
    total = np.zeros(array.shape[1])
    total_sq = np.zeros(array.shape[1])
    for start in range(0, array.shape[0], chunk_rows):
        part = read_rows(array, slice(start, min(start + chunk_rows, array.shape[0])), np.float64)
        total += part.sum(0)
        total_sq += (part * part).sum(0)
    mean = total / array.shape[0]
    return mean, np.sqrt(np.maximum(total_sq / array.shape[0] - mean * mean, 0.0))
