"""Know the cost before paying it: disk, memory and time of a datamodels or TRAK run.

Estimates come from the formulas of what is stored and held, and from CPU timings measured on
2 cores (``workflows/benchmarks/RESULTS.md``, end to end): 17,500 models of 700 cells trained
in 47 s (training time per model grows ~n^0.8), their fit 2.9 s (with ~25 models per cell the
fit grows ~n^2.8, i.e. ~n^1.8 per model), TRAK ~32 s for 5,000 cells (~n^0.6). On a GPU the
times are unknown and not checked.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._settings import settings

logger = logging.getLogger("scdm")
GIB = 2**30


@dataclass(frozen=True)
class CostEstimate:
    """What a run will need (estimates)."""

    method: str
    n_obs: int
    n_models: int
    disk_bytes: float
    memory_bytes: float
    seconds: float | None  # None: no timing model for this device

    def describe(self) -> str:
        time = ("unknown on this device" if self.seconds is None else
                f"~{_duration(self.seconds)} on 2 CPU cores")
        return (f"{self.method} on {self.n_obs:,} cells with {self.n_models:,} models: disk "
                f"~{self.disk_bytes / GIB:.2f} GiB, memory ~{self.memory_bytes / GIB:.2f} GiB, "
                f"time {time}")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _bytes_per_entry() -> float:
    """A mask (1 byte) and a margin (``settings.margins_dtype``) per model and cell."""
    return 1.0 + np.dtype(settings.margins_dtype).itemsize


def estimate_datamodels(n_obs: int, n_models: int, *, epochs: int = 20, cpu: bool = True
                        ) -> CostEstimate:
    """Disk (masks 1 byte + margins 4 bytes, or 2 as float16, per model and cell), memory
    (the dense n × n weights, their float64 standardised copy and the SVD: ~24 n² bytes, at
    least 1 GiB) and time (training + fit) of :func:`scdm.tl.datamodels`."""
    disk = _bytes_per_entry() * n_models * n_obs
    memory = max(24.0 * n_obs**2, float(GIB))
    seconds = None
    if cpu:
        train = n_models / 375.0 * (n_obs / 700) ** 0.8 * epochs / 20
        fit = 2.9 * (n_obs / 700) ** 1.8 * n_models / 17_500
        seconds = train + fit
    return CostEstimate("datamodels", n_obs, n_models, disk, memory, seconds)


def estimate_trak(n_obs: int, n_models: int, *, proj_dim: int = 512, max_obsp: int = 5000,
                  cpu: bool = True) -> CostEstimate:
    """Disk (the checkpoints' masks and margins), memory (the projected features, float32,
    held once — classes are embedded from them checkpoint by checkpoint — plus per-checkpoint
    temporaries, and the n × n matrix when stored) and time of :func:`scdm.tl.trak`."""
    disk = _bytes_per_entry() * n_models * n_obs
    features = 4.0 * n_models * n_obs * proj_dim
    memory = 1.25 * features + (4.0 * n_obs**2 if n_obs <= max_obsp else 0.0) + 0.5 * GIB
    seconds = (31.6 * (n_obs / 5000) ** 0.6 * (n_models / 40) * (proj_dim / 512)
               if cpu else None)
    return CostEstimate("trak", n_obs, n_models, disk, memory, seconds)


def _physical_memory() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def check_cost(estimate: CostEstimate, *, store: str | Path | None = None,
               alternatives: str = "") -> CostEstimate:
    """Log ``estimate`` and refuse (``MemoryError``) a run that exceeds
    ``scdm.settings.max_memory`` (default 80 % of physical memory), the free disk where the
    store goes, or ``scdm.settings.max_hours`` (CPU estimates only)."""
    logger.info("estimated cost: %s", estimate.describe())
    limit = settings.max_memory
    if limit is None:
        physical = _physical_memory()
        limit = 0.8 * physical if physical else None
    problems = []
    if limit is not None and estimate.memory_bytes > limit:
        problems.append(f"memory ~{estimate.memory_bytes / GIB:.1f} GiB > the limit "
                        f"{limit / GIB:.1f} GiB (scdm.settings.max_memory)")
    folder = Path(store) if store is not None else Path(settings.store_dir)
    probe = next((p for p in (folder, *folder.resolve().parents) if p.exists()), None)
    if probe is not None:
        free = shutil.disk_usage(probe).free
        if estimate.disk_bytes > free:
            problems.append(f"disk ~{estimate.disk_bytes / GIB:.1f} GiB > {free / GIB:.1f} GiB "
                            f"free at {probe}")
    hours = settings.max_hours
    if hours is not None and estimate.seconds is not None and estimate.seconds > 3600 * hours:
        problems.append(f"time ~{_duration(estimate.seconds)} > scdm.settings.max_hours = "
                        f"{hours:g} h")
    if problems:
        raise MemoryError(
            f"this {estimate.method} run would need more than this machine allows: "
            + "; ".join(problems) + f" ({estimate.describe()}). " + alternatives
            + " To run it anyway, raise scdm.settings.max_memory / max_hours.")
    return estimate


def check_datamodels_cost(adata, *, group_key: str | None, n_models: int | None,
                          epochs: int, device: str, store) -> CostEstimate:
    """:func:`check_cost` of a :func:`scdm.tl.datamodels` run on ``adata``, with what to do
    instead when it is refused (TRAK's estimate for the same cells among them)."""
    from ..ensemble import resolve_device
    from ._recorded import default_n_models

    units = (adata.obs[group_key].nunique() if group_key is not None and group_key in adata.obs
             else adata.n_obs)
    n_models = n_models or default_n_models(int(units))
    cpu = resolve_device(device).type == "cpu"
    trak = estimate_trak(adata.n_obs, 40, cpu=cpu)
    alternatives = (f"Instead: scdm.tl.trak ({trak.describe()}); datamodels of fewer cells "
                    "(a subsample, or one class at a time); donors as pseudobulk "
                    "(scdm.pp.pseudobulk); or a GPU (device='cuda').")
    return check_cost(estimate_datamodels(adata.n_obs, n_models, epochs=epochs, cpu=cpu),
                      store=store, alternatives=alternatives)
