"""Know the cost before paying it: disk, memory and time of a datamodels or TRAK run.

Estimates come from the formulas of what is stored and held, and from CPU timings measured on
2 cores (``workflows/benchmarks/RESULTS.md``, end to end): 17,500 models of 700 cells trained
in 47 s (training time per model grows ~n^0.8), their fit 2.9 s (with ~25 models per cell the
fit grows ~n^2.8, i.e. ~n^1.8 per model), TRAK ~32 s for 5,000 cells (~n^0.6).

Those reference times are then calibrated on the machine that runs: :func:`probe_speed` trains
one chunk of models of the run's shape (cells, input width, classes, architecture) for one and
for three epochs, on random numbers (the time does not depend on the values), twice, and
compares the time per model with the reference formula. A busy or slower machine shows up as
a factor above 1, and the spread of the probes as the estimate's range.

On a GPU the probe trains on the GPU, so a datamodels run's time is calibrated there too. Its
training and fit are both scaled by the probe's factor; on an H200 the main job's training ran
5–9 times and its fit 3–4 times faster than on 2 cores, so the fit's share comes out a little
low there. TRAK's time on a GPU is the 2-core reference, not calibrated: only its training was
measured faster there (20,000 cells took over 145 s on an H200, 199 s on 2 cores), so the
reference is what ``scdm.settings.max_hours`` is checked against.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._settings import settings

logger = logging.getLogger("scdm")
GIB = 2**30


# tl.trak's defaults, here so that its estimate (and scdm run's) cannot drift from them
TRAK_CHECKPOINTS, TRAK_PROJ_DIM, TRAK_MAX_OBSP = 40, 512, 5000
REFERENCE_MODELS_PER_SECOND = 375.0  # 700 cells, 20 epochs, 2 cores: 17,500 models in 47 s


@dataclass(frozen=True)
class Speed:
    """This machine's time per model relative to the reference timings (1: as measured for
    RESULTS.md; 2: twice as slow): ``factor`` from the mean of the probes, ``low`` / ``high``
    from the fastest and the slowest."""

    factor: float
    low: float
    high: float


@dataclass(frozen=True)
class CostEstimate:
    """What a run will need (estimates)."""

    method: str
    n_obs: int
    n_models: int
    disk_bytes: float
    memory_bytes: float
    seconds: float
    seconds_range: tuple[float, float] | None = None  # with a speed probe: its spread
    worker_memory_bytes: float | None = None  # each Ray worker's share, when run on Ray
    device: str = "cpu"  # where it runs: the probe's device, or the reference's caveat

    def describe(self) -> str:
        if self.seconds_range is None:
            when = f"~{_duration(self.seconds)} on 2 CPU cores (reference timings)"
            if self.device != "cpu":
                when = when[:-1] + f"; not calibrated on {self.device})"
        else:
            low, high = (_duration(t) for t in self.seconds_range)
            spread = f"{low} to {high}, " if low != high else ""
            where = "" if self.device == "cpu" else f" ({self.device})"
            when = f"~{_duration(self.seconds)} ({spread}calibrated on this machine{where})"
        workers = ("" if self.worker_memory_bytes is None else
                   f" here and ~{self.worker_memory_bytes / GIB:.2f} GiB per Ray worker")
        return (f"{self.method} on {self.n_obs:,} cells with {self.n_models:,} models: disk "
                f"~{self.disk_bytes / GIB:.2f} GiB, memory ~{self.memory_bytes / GIB:.2f} GiB"
                f"{workers}, time {when}")


def _duration(seconds: float) -> str:
    if seconds < 600:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _bytes_per_entry() -> float:
    """A mask (1 byte) and a margin (``settings.margins_dtype``) per model and cell."""
    return 1.0 + np.dtype(settings.margins_dtype).itemsize


def reference_seconds_per_model(n_obs: int, epochs: int) -> float:
    """Training time of one model in the reference timings (2 CPU cores)."""
    return (n_obs / 700) ** 0.8 * epochs / 20 / REFERENCE_MODELS_PER_SECOND


def _scaled(seconds: float, speed: Speed | None) -> dict:
    if speed is None:
        return {"seconds": seconds}
    return {"seconds": seconds * speed.factor,
            "seconds_range": (seconds * speed.low, seconds * speed.high)}


def estimate_datamodels(n_obs: int, n_models: int, *, epochs: int = 20, device: str = "cpu",
                        speed: Speed | None = None) -> CostEstimate:
    """Disk (masks 1 byte + margins 4 bytes, or 2 as float16, per model and cell), memory
    (the dense n × n weights, their float64 standardised copy and the SVD: ~24 n² bytes, at
    least 1 GiB) and time (training + fit) of :func:`scdm.tl.datamodels`; ``speed``
    (:func:`probe_speed` on ``device``) calibrates the time to this machine."""
    disk = _bytes_per_entry() * n_models * n_obs
    memory = max(24.0 * n_obs**2, float(GIB))
    train = n_models * reference_seconds_per_model(n_obs, epochs)
    fit = 2.9 * (n_obs / 700) ** 1.8 * n_models / 17_500
    return CostEstimate("datamodels", n_obs, n_models, disk, memory,
                        **_scaled(train + fit, speed), device=device)


RAY_WORKER_BASE = 0.5 * GIB  # a Ray worker with torch and scdm imported (measured: 0.53 GiB
# at 3,000 cells, 0.68 GiB at 20,000, one checkpoint featurized; RESULTS.md)


def estimate_trak(n_obs: int, n_models: int, *, proj_dim: int = TRAK_PROJ_DIM,
                  max_obsp: int = TRAK_MAX_OBSP, largest_class: int | None = None,
                  rank: int = 256, device: str = "cpu", speed: Speed | None = None,
                  n_features: int | None = None, ray: bool = False) -> CostEstimate:
    """Disk (the checkpoints' masks and margins, and their projected features, float32, kept
    in the store), memory (one block of a checkpoint's rows at a time; the randomized SVDs of
    all classes at once, width ``rank + 10``, with the orthonormalisation of the largest;
    per-cell terms of every checkpoint; and the ``n × n`` matrix with the features it is made
    of when stored) and time of
    :func:`scdm.tl.trak` (``speed``: calibrated to this machine). With ``ray``, also the
    memory of each Ray worker, which featurizes one checkpoint at a time — the models' input
    (``n_features`` wide, rebuilt from the store's recipe, and its float32 copy), one block
    of rows with its projection, and the Gram matrix — and computes one checkpoint's share
    of an embedding pass (the range, its product and the copy returned). On a GPU
    (``device``) the time is the 2-core reference, named as not calibrated there."""
    from ..trak._lowrank import BLOCK_ROWS as EMBED_ROWS
    from ..trak._ondisk import BLOCK_ROWS, bytes_on_disk

    disk = _bytes_per_entry() * n_models * n_obs + bytes_on_disk(n_obs, n_models, proj_dim)
    c = float(n_obs if largest_class is None else largest_class)
    width = rank + 10
    # the range and its product for every class (float32), and the largest class's QR in
    # float64: all classes' SVDs share one set of reads (scdm.trak._lowrank)
    memory = (0.5 * GIB + 8.0 * EMBED_ROWS * proj_dim + 8.0 * n_obs * width
              + 16.0 * c * width + 16.0 * n_models * n_obs)
    if n_obs <= max_obsp:
        memory += 8.0 * n_obs**2 + 4.0 * n_models * n_obs * proj_dim
    # measured on 2 cores (RESULTS.md): ∝ n^0.6 up to 20,000 cells (fixed costs), then ∝ n^1.05
    # (proj_dim 512: 77 s, 430 s and 1,230 s at 20,000, 100,000 and 300,000 cells; 256: 280 s
    # and 3,427 s at 100,000 and 1,000,000). Training does not depend on proj_dim: 256 takes
    # 0.65 of 512's time at 100,000 cells, not half.
    seconds = (31.6 * (min(n_obs, 20_000) / 5000) ** 0.6 * (max(n_obs, 20_000) / 20_000) ** 1.05
               * (n_models / 40) * (0.3 + 0.7 * proj_dim / 512))
    worker = None
    if ray:
        memory += 4.0 * n_obs * width  # each pass's range, put in the object store for tasks
        featurize = (8.0 * n_obs * (n_features or 1) + BLOCK_ROWS * proj_dim * 12.0
                     + 8.0 * proj_dim**2)
        # one checkpoint's share of an embedding pass: the range (read from the object
        # store), its product, the copy returned and the blocks' products; the checkpoint's
        # features, memory-mapped (resident while read); one block of rows (measured at
        # 300,000 cells, proj_dim 256: 2.24 GiB, this says 2.1; RESULTS.md)
        embed = 16.0 * n_obs * width + 4.0 * n_obs * proj_dim + 8.0 * EMBED_ROWS * proj_dim
        worker = RAY_WORKER_BASE + max(featurize, embed)
    return CostEstimate("trak", n_obs, n_models, disk, memory, **_scaled(seconds, speed),
                        worker_memory_bytes=worker, device=device)


def probe_speed(n_obs: int, n_features: int, n_classes: int, config, *, n_models: int,
                alpha: float = 0.5, repeats: int = 2, random_state: int = 0,
                device: str = "cpu") -> Speed:
    """Time this machine's training on ``device`` against the reference (the module notes).

    Trains, ``repeats`` times, one chunk of the models a run of ``n_models`` would train at
    once (on CPU at most 256, on a GPU what its memory holds up to 8,192; fewer for a small
    run) on ``n_obs`` random cells of ``n_features`` inputs, for one epoch and for three: the
    difference is the time of two epochs, the rest the fixed cost (initialisation, margins on
    every cell). The time per model of the full run (``config.epochs``) over the reference
    formula's is the factor. The probe costs about eight epochs of one chunk: on CPU about a
    second for 700 cells, a few for 20,000. On a GPU one untimed epoch comes first: the
    first call pays for starting the device."""
    from dataclasses import replace

    from ..ensemble import CPU_MODEL_ALIGN, EnsembleTrainer

    rng = np.random.default_rng(random_state)
    X = rng.standard_normal((n_obs, max(1, n_features)), dtype=np.float32)
    y = np.arange(n_obs) % max(2, n_classes)
    trainer = EnsembleTrainer(X, y, config, device=device, random_state=random_state)
    chunk = int(min(trainer.auto_chunk_size(), max(CPU_MODEL_ALIGN, n_models)))
    masks = rng.random((chunk, n_obs)) < alpha
    masks[:, :2] = True  # no empty training set
    ids = np.arange(chunk)
    if trainer.device.type != "cpu":
        # a GPU's first run pays for starting it (kernels, allocator), so it is not timed; the
        # timed runs end when their margins are back on the host, i.e. when the work is done
        trainer.config = replace(config, epochs=1)
        trainer.train(masks, ids)
    per_model = []
    for _ in range(repeats):
        times = {}
        for epochs in (1, 3):
            trainer.config = replace(config, epochs=epochs)
            start = time.perf_counter()
            trainer.train(masks, ids)
            times[epochs] = time.perf_counter() - start
        per_epoch = max(times[3] - times[1], 0.0) / 2
        fixed = max(times[1] - per_epoch, 0.0)
        per_model.append((fixed + per_epoch * config.epochs) / chunk)
    reference = reference_seconds_per_model(n_obs, config.epochs)
    ratios = np.array(per_model) / reference
    return Speed(float(ratios.mean()), float(ratios.min()), float(ratios.max()))


def _physical_memory() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def check_cost(estimate: CostEstimate, *, store: str | Path | None = None,
               alternatives: str = "") -> CostEstimate:
    """Log ``estimate`` and refuse (``MemoryError``) a run that exceeds
    ``scdm.settings.max_memory`` (default 80 % of physical memory), the free disk where the
    store goes, or ``scdm.settings.max_hours``."""
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
    if hours is not None and estimate.seconds > 3600 * hours:
        problems.append(f"time ~{_duration(estimate.seconds)} > scdm.settings.max_hours = "
                        f"{hours:g} h")
    if problems:
        raise MemoryError(
            f"this {estimate.method} run would need more than this machine allows: "
            + "; ".join(problems) + f" ({estimate.describe()}). " + alternatives
            + " To run it anyway, raise scdm.settings.max_memory / max_hours.")
    return estimate


PROBE_ABOVE_SECONDS = 10.0  # shorter runs keep the reference estimate: a probe is not free


def calibrated(make, adata, *, label_key: str | None, n_features: int, config,
               n_models: int, alpha: float, device: str) -> CostEstimate:
    """``make(speed)`` with the speed of this machine probed (:func:`probe_speed`) on
    ``device`` when the reference estimate is above ``PROBE_ABOVE_SECONDS``, for models of
    ``n_features`` inputs (:meth:`scdm._anndata.InputChoice.width`) and the classes ``adata``
    has."""
    estimate = make(None)
    if estimate.seconds <= PROBE_ABOVE_SECONDS:
        return estimate
    n_classes = (max(2, int(adata.obs[label_key].nunique()))
                 if label_key is not None and label_key in adata.obs else 2)
    return make(probe_speed(adata.n_obs, n_features, n_classes, config, n_models=n_models,
                            alpha=alpha, device=device))


def check_datamodels_cost(adata, *, label_key: str | None, n_features: int,
                          group_key: str | None, n_models: int | None, alpha: float, config,
                          device: str, store) -> CostEstimate:
    """:func:`check_cost` of a :func:`scdm.tl.datamodels` run on ``adata`` (time calibrated on
    this machine), with what to do instead when it is refused (TRAK's estimate for the same
    cells among them)."""
    from ..ensemble import resolve_device
    from ._recorded import default_n_models

    units = (adata.obs[group_key].nunique() if group_key is not None and group_key in adata.obs
             else adata.n_obs)
    n_models = n_models or default_n_models(int(units))
    dev = str(resolve_device(device))
    estimate = calibrated(
        lambda speed: estimate_datamodels(adata.n_obs, n_models, epochs=config.epochs,
                                          device=dev, speed=speed),
        adata, label_key=label_key, n_features=n_features, config=config, n_models=n_models,
        alpha=alpha, device=dev)
    trak = estimate_trak(adata.n_obs, TRAK_CHECKPOINTS, device=dev)
    alternatives = (f"Instead: scdm.tl.trak ({trak.describe()}); datamodels of fewer cells "
                    "(a subsample, or one class at a time); donors as pseudobulk "
                    "(scdm.pp.pseudobulk); or a GPU (device='cuda').")
    return check_cost(estimate, store=store, alternatives=alternatives)


def trak_cost(adata, *, label_key: str | None, n_features: int, alpha: float, config,
              device: str, n_models: int = TRAK_CHECKPOINTS,
              proj_dim: int = TRAK_PROJ_DIM, max_obsp: int = TRAK_MAX_OBSP,
              rank: int = 256, ray: bool = False) -> CostEstimate:
    """The estimate of a :func:`scdm.tl.trak` run on ``adata``, calibrated on this machine's
    CPU; on a GPU the 2-core reference, as :func:`estimate_trak` says (``ray``: featurized
    by Ray workers, whose memory it states too)."""
    from ..ensemble import resolve_device

    dev = str(resolve_device(device))
    largest = (int(adata.obs[label_key].value_counts().max())
               if label_key is not None and label_key in adata.obs and adata.n_obs else None)

    def make(speed: Speed | None) -> CostEstimate:
        return estimate_trak(adata.n_obs, n_models, proj_dim=proj_dim, max_obsp=max_obsp,
                             largest_class=largest, rank=rank, device=dev, speed=speed,
                             n_features=n_features, ray=ray)

    if dev != "cpu":
        return make(None)
    return calibrated(make, adata, label_key=label_key, n_features=n_features, config=config,
                      n_models=n_models, alpha=alpha, device=dev)
