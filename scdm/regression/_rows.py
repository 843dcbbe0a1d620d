"""Rows of (X, Y, weights) streamed in chunks onto a device, and the per-target sums of a
pass over them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._memmap import read_rows

HELDOUT = "heldout"
# a validation correlation over fewer rows than this says little about a target's datamodel
MIN_VAL_ROWS = 10
# fewest training rows (models) a target may be fitted on: the solver's and tl.fit_datamodels'
MIN_ROWS = 20


def top_eigenvalue(gram: torch.Tensor) -> float:
    """Largest eigenvalue of a symmetric matrix, with a margin for rounding."""
    return float(torch.linalg.eigvalsh(gram.double())[-1]) * 1.001


@dataclass
class Sums:
    """Per-target sums over the rows a target keeps (weights ``s``), ``r = ŷ − y``: ``r`` = Σ s r,
    ``rr`` = Σ s r², ``ry`` = Σ s r y, ``s`` = Σ s, ``pred`` = Σ s ŷ, ``pred2`` = Σ s ŷ², ``y`` =
    Σ s y, ``yy`` = Σ s y²."""

    r: torch.Tensor
    rr: torch.Tensor
    ry: torch.Tensor
    s: torch.Tensor
    pred: torch.Tensor
    pred2: torch.Tensor
    y: torch.Tensor
    yy: torch.Tensor

    @classmethod
    def zeros(cls, n: int, like: torch.Tensor) -> Sums:
        return cls(*(torch.zeros(n, device=like.device, dtype=like.dtype) for _ in range(8)))


def as_2d(name: str, array: Any) -> Any:
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        array = np.asarray(array)
    if len(array.shape) != 2:
        raise ValueError(f"{name} must be 2-d, got shape {tuple(array.shape)}.")
    return array


class Rows:
    """Chunks of (X, Y, S) over a subset of rows and a block of target columns, on a device.

    ``S`` is ``None`` (every row counts), an array of per-(row, target) weights, or
    ``"heldout"`` (target ``t`` keeps the rows where feature ``t`` is 0). Chunks are cached on
    the device when they fit ``cache_bytes``; otherwise every pass re-reads the arrays.
    """

    def __init__(self, X, Y, S, rows: np.ndarray, block: tuple[int, int], *,
                 mean: torch.Tensor, scale: torch.Tensor, device: torch.device,
                 dtype: torch.dtype, chunk_rows: int, cache_bytes: int, offset: int = 0):
        self.X, self.Y, self.S, self.rows, self.block = X, Y, S, rows, block
        self.offset = offset  # "heldout": target t keeps the rows where feature offset + t is 0
        self.mean, self.scale = mean, scale
        self.device, self.dtype, self.chunk_rows = device, dtype, max(1, int(chunk_rows))
        width = X.shape[1] + 2 * (block[1] - block[0])
        self._cache: list | None = [] if rows.size * width * 4 <= cache_bytes else None
        self._filled = False

    def _read(self, array, idx: np.ndarray, cols: slice | None = None) -> torch.Tensor:
        part = read_rows(array, idx, np.float32, cols)
        return torch.from_numpy(part).to(self.device, self.dtype)

    def _load(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        t0, t1 = self.block
        for start in range(0, self.rows.size, self.chunk_rows):
            idx = self.rows[start : start + self.chunk_rows]
            Xc = self._read(self.X, idx)
            Yc = self._read(self.Y, idx, slice(t0, t1))
            if self.S is None:
                Sc = None
            elif isinstance(self.S, str):
                Sc = 1.0 - Xc[:, self.offset + t0 : self.offset + t1]
            else:
                Sc = self._read(self.S, idx, slice(t0, t1))
            yield Xc, Yc, Sc

    def chunks(self, cols: torch.Tensor | None = None):
        """Yield ``(X_chunk, Y_chunk[:, cols], S_chunk[:, cols] or None)``."""
        source = self._cache if self._filled and self._cache is not None else self._load()
        for item in source:
            if self._cache is not None and not self._filled:
                self._cache.append(item)
            Xc, Yc, Sc = item
            if cols is not None:
                Yc = Yc.index_select(1, cols)
                Sc = Sc.index_select(1, cols) if Sc is not None else None
            yield Xc, Yc, Sc
        if self._cache is not None:
            self._filled = True

    def stats(self, fit_intercept: bool):
        """Per target: kept-row count, mean and variance of y, and mean standardised x."""
        mean, scale = self.mean, self.scale
        dev, dt = mean.device, mean.dtype
        n_cols = self.block[1] - self.block[0]
        n_t = torch.zeros(n_cols, device=dev, dtype=torch.float64)
        sy = torch.zeros(n_cols, device=dev, dtype=torch.float64)
        syy = torch.zeros(n_cols, device=dev, dtype=torch.float64)
        sx = torch.zeros(mean.numel(), n_cols, device=dev, dtype=dt)
        for Xc, Yc, Sc in self.chunks():
            Sc = torch.ones_like(Yc) if Sc is None else Sc
            n_t += Sc.sum(0, dtype=torch.float64)
            sy += (Sc * Yc).sum(0, dtype=torch.float64)
            syy += (Sc * Yc * Yc).sum(0, dtype=torch.float64)
            sx += Xc.T @ Sc
        safe = n_t.clamp_min(1.0)
        y_mean = sy / safe
        y_var = (syy / safe - y_mean**2).clamp_min(0.0)
        x_mean = (sx - mean[:, None] * n_t.to(dt)) / scale[:, None] / safe.to(dt)
        if not fit_intercept:
            y_mean = torch.zeros_like(y_mean)
            y_var = syy / safe
            x_mean = torch.zeros_like(x_mean)
        return n_t.to(dt), y_mean.to(dt), y_var.to(dt), x_mean

    def evaluate(self, cols, V, intercept, grad: bool = True):
        """One pass at weights ``V`` (standardised units) for target columns ``cols``.

        Returns ``X̃ᵀ S r`` (if ``grad``) and the :class:`Sums` with ``r = ŷ − y`` (``s``,
        ``pred``, ``pred2``, ``y``, ``yy`` only when not ``grad``: they serve validation
        correlations).
        """
        mean, scale = self.mean, self.scale
        raw = V / scale[:, None]
        offset = intercept - (mean / scale) @ V
        G = torch.zeros_like(V)  # the gradient, when ``grad``
        sums = Sums.zeros(V.shape[1], V)
        for Xc, Yc, Sc in self.chunks(cols):
            pred = torch.addmm(offset, Xc, raw)
            r = pred - Yc
            rs = r if Sc is None else r * Sc
            if grad:
                G.addmm_(Xc.T, rs)
                sums.r += rs.sum(0)
            sums.rr += (rs * r).sum(0)
            sums.ry += (rs * Yc).sum(0)
            if not grad:
                s = torch.ones_like(Yc) if Sc is None else Sc
                sums.s += s.sum(0)
                sums.pred += (s * pred).sum(0)
                sums.pred2 += (s * pred * pred).sum(0)
                sums.y += (s * Yc).sum(0)
                sums.yy += (s * Yc * Yc).sum(0)
        if not grad:
            return None, sums
        return (G - mean[:, None] * sums.r) / scale[:, None], sums

    def gram_top_eigenvalue(self) -> float:
        """Largest eigenvalue of X̃ᵀX̃ over the rows: the step-size bound."""
        mean, scale = self.mean, self.scale
        p = mean.numel()
        if p <= 4096:
            gram = torch.zeros(p, p, device=mean.device, dtype=torch.float64)
            total = torch.zeros(p, device=mean.device, dtype=torch.float64)
            for Xc, _, _ in self.chunks():
                Xd = Xc.double()
                gram += Xd.T @ Xd
                total += Xd.sum(0)
            m, s, n = mean.double(), scale.double(), self.rows.size
            gram = gram - torch.outer(total, m) - torch.outer(m, total) + n * torch.outer(m, m)
            return top_eigenvalue(gram / torch.outer(s, s))
        v = torch.randn(p, 1, device=mean.device, dtype=mean.dtype,
                        generator=torch.Generator(device=mean.device).manual_seed(0))
        estimate = 0.0
        for _ in range(100):
            v = v / v.norm()
            w = torch.zeros_like(v)
            for Xc, _, _ in self.chunks():
                xv = Xc @ (v / scale[:, None]) - (mean / scale) @ v
                w += (Xc.T @ xv - mean[:, None] * xv.sum(0)) / scale[:, None]
            new = float((v * w).sum())
            if abs(new - estimate) <= 1e-6 * new:
                break
            estimate = new
            v = w
        return new * 1.05
