"""Subtypes made of an interaction: two programs that mark disease only when one is alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._seeding import check_random_state


def exclusive_programs(
    n_per_group: int = 100,
    *,
    n_features: int = 80,
    program_size: int = 5,
    program_effect: float = 1.5,
    n_batches: int = 3,
    batch_features: int = 50,
    batch_effect: float = 1.5,
    random_state: int = 0,
) -> AnnData:
    """Gaussian cells whose class is the exclusive-or of two programs, under a batch effect.

    Disease cells carry program A without B (subtype ``"disease-0"``) or B without A
    (``"disease-1"``); controls carry both (``"control-0"``) or neither (``"control-1"``).
    Every program feature has the same mean in both classes, so no feature passes a
    class-vs-rest test, yet both classes hold two subtypes that the classifier must tell
    apart to predict the class. It is also the case that looks like a shared nuisance and is
    not: each class's subtypes are programs the other class carries in another combination.
    A batch (balanced in every subtype) shifts ``batch_features`` features by a normal draw
    of scale ``batch_effect``, as in :func:`gaussian_subtypes`.

    Parameters
    ----------
    n_per_group
        Cells of each of the four (class, subtype) groups.
    n_features
        Features in total (two programs and the batch features are disjoint).
    program_size, program_effect
        Features of each program and their mean shift.
    n_batches, batch_features, batch_effect
        The nuisance.
    random_state
        Seed.

    Returns
    -------
    AnnData (``.X`` float32) with ``.obs["disease"]``, ``.obs["subtype"]`` (the truth),
    ``.obs["batch"]`` and ``.var["program"]`` (``"A"``, ``"B"`` or ``"none"``).
    """
    seed = check_random_state(random_state)
    if 2 * program_size + batch_features > n_features:
        raise ValueError(f"two programs of {program_size} features and {batch_features} batch "
                         f"features need {2 * program_size + batch_features} features but "
                         f"n_features={n_features}.")
    if n_per_group < 1 or n_batches < 1:
        raise ValueError("n_per_group and n_batches must be at least 1.")
    rng = np.random.default_rng(seed)
    # (class, subtype, carries A, carries B)
    groups = [("control", "control-0", 1, 1), ("control", "control-1", 0, 0),
              ("disease", "disease-0", 1, 0), ("disease", "disease-1", 0, 1)]
    n_obs = len(groups) * n_per_group
    which = np.repeat(np.arange(len(groups)), n_per_group)
    batch = np.concatenate([rng.permutation(np.arange(n_per_group) % n_batches)
                            for _ in groups])
    features = rng.permutation(n_features)
    cols_a, cols_b = features[:program_size], features[program_size:2 * program_size]
    batch_cols = features[2 * program_size:2 * program_size + batch_features]
    X = rng.standard_normal((n_obs, n_features))
    carries = np.array([[g[2], g[3]] for g in groups], dtype=np.float64)[which]
    X[:, cols_a] += program_effect * carries[:, :1]
    X[:, cols_b] += program_effect * carries[:, 1:]
    X[:, batch_cols] += batch_effect * rng.standard_normal((n_batches, batch_features))[batch]
    program = np.full(n_features, "none", dtype=object)
    program[cols_a], program[cols_b] = "A", "B"
    obs = pd.DataFrame({
        "disease": pd.Categorical([groups[w][0] for w in which],
                                  categories=["control", "disease"]),
        "subtype": pd.Categorical([groups[w][1] for w in which]),
        "batch": pd.Categorical([f"batch-{b}" for b in batch]),
    }, index=[f"cell-{i}" for i in range(n_obs)])
    var = pd.DataFrame({"program": pd.Categorical(program)},
                       index=[f"feature-{f}" for f in range(n_features)])
    adata = AnnData(X=X.astype(np.float32), obs=obs, var=var)
    adata.uns["exclusive_programs"] = {
        "n_per_group": n_per_group, "n_features": n_features, "program_size": program_size,
        "program_effect": program_effect, "n_batches": n_batches,
        "batch_features": batch_features, "batch_effect": batch_effect, "random_state": seed}
    return adata
