"""How much of a path fit is held at once: the memory plan, from ``memory_budget`` alone."""

from __future__ import annotations

from dataclasses import dataclass

from ._gram import moment_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """The sizes a fit works in: whether it solves from the Gram form, how many targets it
    solves together, how many rows it reads per chunk, and the bytes of rows it caches."""

    gram: bool
    block: int
    chunk_rows: int
    moment_chunk_rows: int
    cache: dict[str, int]


def use_gram(precompute: bool | str, *, weighted: bool, n_train: int, p: int, n_targets: int,
             budget: int) -> bool:
    """Whether to solve from precomputed moments: never with per-target row weights; else as
    ``precompute`` says, or (``"auto"``) when the float64 moments take at most half the budget
    and ``p ≤ 2·n`` (an iteration then costs ``p²·T`` against ``2·n·p·T`` streaming)."""
    if weighted:
        return False
    if precompute != "auto":
        return bool(precompute)
    return 2 * moment_bytes(p, n_targets) <= budget and p <= 2 * n_train


def plan_memory(*, n_train: int, p: int, n_targets: int, itemsize: int, budget: int,
                precompute: bool | str, weighted: bool, block: int | None = None,
                chunk_rows: int | None = None) -> MemoryPlan:
    """The plan of a fit of ``n_targets`` targets on ``p`` features within ``budget`` bytes
    (``block`` / ``chunk_rows`` as given, when given)."""
    gram = use_gram(precompute, weighted=weighted, n_train=n_train, p=p, n_targets=n_targets,
                    budget=budget)
    # the solver keeps ~24 weight-shaped tensors per block (iterates, gradient, best weights,
    # temporaries); the Gram form also holds its float64 moments
    state_budget = budget - (moment_bytes(p, n_targets) + 3 * p * p * itemsize if gram else 0)
    block = int(block or max(1, min(n_targets, state_budget // (24 * p * itemsize + 1))))
    chunk_rows = int(chunk_rows or max(256, budget // (8 * (p + 2 * block) * itemsize)))
    return MemoryPlan(
        gram=gram, block=block, chunk_rows=chunk_rows,
        moment_chunk_rows=max(256, budget // (32 * (p + n_targets) * itemsize)),
        # the training rows get most of the cache, validation and all rows the rest
        cache={"train": budget // 2, "val": budget // 8, "all": budget // 4})
