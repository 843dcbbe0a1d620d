"""Per-model random streams.

Everything random about model ``m`` (its mask, its initial weights, its data order) is drawn from
a generator that depends on ``(random_state, stream, m)`` alone, so results never depend on how
models are split into chunks, workers or resumed runs.
"""

from __future__ import annotations

import numpy as np

MASK_STREAM = 0
INIT_STREAM = 1
ORDER_STREAM = 2
SPLIT_STREAM = 3


def model_rng(random_state: int, stream: int, model_index: int) -> np.random.Generator:
    """Generator for one model's stream; independent across streams and model indices."""
    seq = np.random.SeedSequence(entropy=int(random_state),
                                 spawn_key=(int(stream), int(model_index)))
    return np.random.Generator(np.random.PCG64(seq))


def check_random_state(random_state: int | None) -> int:
    """Validate a ``random_state`` argument: a non-negative integer (``None`` means 0)."""
    if random_state is None:
        return 0
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(
        random_state, (int, np.integer)
    ):
        raise TypeError(
            f"random_state must be a non-negative integer, got {random_state!r}; "
            "scdm derives one independent stream per model from it."
        )
    if random_state < 0:
        raise ValueError(f"random_state must be non-negative, got {random_state}.")
    return int(random_state)


# purposes of derived seeds: evaluation models must never share a stream with training models
LDS_PURPOSE = 1
VALIDATION_PURPOSE = 2
SNR_PURPOSE = 3
COMPOSITION_PURPOSE = 4  # permutation draws of the composition check
CLEANING_PURPOSE = 5  # removal sets and retrained models of influence_removal and debias


def derived_seed(random_state: int, purpose: int, *keys: int) -> int:
    """A seed for a new family of models, independent of ``random_state``'s own streams.

    ``SeedSequence([random_state, purpose, *keys])`` has its own entropy pool, so the models it
    seeds share no stream with the training models seeded by ``random_state``.
    """
    seq = np.random.SeedSequence([int(random_state), int(purpose), *map(int, keys)])
    return int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1))
