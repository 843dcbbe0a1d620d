"""Helpers shared by the benchmarks: stable allocator settings and a matmul ceiling."""

from __future__ import annotations

import os
import sys
import time

import torch

# glibc returns freed multi-MB blocks to the OS and faults them back in on the next step, which
# made timings swing 2-10x between runs; keep them in the heap while benchmarking.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def stable_allocator() -> None:
    """Re-execute this script once with allocator settings that make timings repeatable."""
    if any(os.environ.get(k) != v for k, v in _MALLOC_ENV.items()):
        os.environ.update(_MALLOC_ENV)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def timed(fn, *args, repeat: int = 1, **kwargs):
    """Best wall time of ``repeat`` calls and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def matmul_ceiling(device: torch.device, size: int = 2048) -> float:
    """FLOP/s of one large float32 ``torch.mm`` on ``device``: the roofline we compare to."""
    a = torch.randn(size * 2, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(2):
        a @ b
    seconds, _ = timed(lambda: [a @ b for _ in range(5)], repeat=3)
    return 5 * 2 * a.shape[0] * size * size / seconds
