"""Subtypes made of an interaction: two programs that mark disease only when one is alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import check_int
from .._seeding import check_random_state


def exclusive_programs(
    n_per_group: int = 100,
    *,
    n_programs: int = 2,
    label_relevant: bool = True,
    n_features: int = 80,
    program_size: int = 5,
    program_effect: float = 1.5,
    n_batches: int = 3,
    batch_features: int = 50,
    batch_effect: float = 1.5,
    random_state: int = 0,
) -> AnnData:
    """Gaussian cells whose class is an interaction of programs, under a batch effect.

    With two programs (the default), disease cells carry program A without B (subtype
    ``"disease-0"``) or B without A (``"disease-1"``); controls carry both (``"control-0"``)
    or neither (``"control-1"``): the class is the exclusive-or of the two. With
    ``n_programs = k`` disease cells carry exactly one of the k programs (subtypes
    ``"disease-0"`` … ``"disease-{k-1}"``), and controls carry two of them (one subtype per
    pair, ``"control-0"`` …, together half the controls) or none (the last control subtype,
    the other half). Every program is then carried by 1/k of each class, so no program
    feature passes a class-vs-rest test, yet the classifier must tell the subtypes apart to
    predict the class. It is also the case that looks like a shared nuisance and is not: each
    class's subtypes are programs the other class carries in other combinations.

    ``label_relevant=False`` is its null twin: the same program combinations, dealt to cells
    at random whatever their class, and the class marked by a program of its own
    (``var["program"] == "class"``, raised in disease cells). The combinations are real
    expression structure that the label does not depend on, so every class is one subtype
    (``obs["subtype"]`` is the class) and a method that reports them as subtypes reports
    expression, not attribution.

    A batch (balanced in every group) shifts ``batch_features`` features by a normal draw of
    scale ``batch_effect``, as in :func:`gaussian_subtypes`.

    Parameters
    ----------
    n_per_group
        Cells of each disease subtype; each class has ``n_programs * n_per_group`` cells.
    n_programs
        Programs (at least 2).
    label_relevant
        Whether the class is the interaction of the programs (``True``) or the programs are
        independent of the class (``False``, the null).
    n_features
        Features in total (programs and the batch features are disjoint).
    program_size, program_effect
        Features of each program and their mean shift.
    n_batches, batch_features, batch_effect
        The nuisance.
    random_state
        Seed.

    Returns
    -------
    AnnData (``.X`` float32) with ``.obs["disease"]``, ``.obs["subtype"]`` (the truth),
    ``.obs["programs"]`` (the programs a cell carries, e.g. ``"A+B"``), ``.obs["batch"]`` and
    ``.var["program"]`` (``"A"``, ``"B"``, …, ``"class"`` or ``"none"``).
    """
    seed = check_random_state(random_state)
    if isinstance(n_programs, bool) or not isinstance(n_programs, int | np.integer) \
            or not 2 <= n_programs <= 26:
        raise ValueError(f"n_programs must be an integer from 2 to 26, got {n_programs!r}.")
    marked = n_programs + (0 if label_relevant else 1)
    if marked * program_size + batch_features > n_features:
        raise ValueError(f"{marked} programs of {program_size} features and {batch_features} "
                         f"batch features need {marked * program_size + batch_features} "
                         f"features but n_features={n_features}.")
    check_int("n_per_group", n_per_group, 1)
    check_int("n_batches", n_batches, 1)
    rng = np.random.default_rng(seed)
    names = [chr(ord("A") + i) for i in range(n_programs)]
    pairs = [(i, j) for i in range(n_programs) for j in range(i + 1, n_programs)]
    n_class = n_programs * n_per_group
    # the controls: half carry no program, the other half is shared evenly by the pairs
    pair_sizes = np.diff(np.round(np.linspace(0, n_class - n_class // 2, len(pairs) + 1)))
    # (class, subtype, programs carried, cells)
    groups = [("control", f"control-{g}", set(pair), int(size))
              for g, (pair, size) in enumerate(zip(pairs, pair_sizes, strict=True))]
    groups.append(("control", f"control-{len(pairs)}", set(), n_class // 2))
    groups += [("disease", f"disease-{i}", {i}, n_per_group) for i in range(n_programs)]
    which = np.repeat(np.arange(len(groups)), [g[3] for g in groups])
    n_obs = which.size
    batch = np.concatenate([rng.permutation(np.arange(g[3]) % n_batches) for g in groups])
    features = rng.permutation(n_features)
    program_cols = [features[i * program_size:(i + 1) * program_size]
                    for i in range(n_programs)]
    start = n_programs * program_size
    batch_cols = features[start:start + batch_features]
    X = rng.standard_normal((n_obs, n_features))
    classes = np.array([groups[w][0] for w in which], dtype=object)
    carried = [groups[w][2] for w in which]
    subtype = np.array([groups[w][1] for w in which], dtype=object)
    if not label_relevant:
        # the same combinations, independent of the class; the class has a program of its own
        order = rng.permutation(n_obs)
        carried = [carried[i] for i in order]
        class_cols = features[start + batch_features:start + batch_features + program_size]
        X[np.ix_(np.flatnonzero(classes == "disease"), class_cols)] += program_effect
        subtype = classes.copy()
    for i, cols in enumerate(program_cols):
        rows = np.flatnonzero([i in c for c in carried])
        X[np.ix_(rows, cols)] += program_effect
    X[:, batch_cols] += batch_effect * rng.standard_normal((n_batches, batch_features))[batch]
    program = np.full(n_features, "none", dtype=object)
    for name, cols in zip(names, program_cols, strict=True):
        program[cols] = name
    if not label_relevant:
        program[class_cols] = "class"
    obs = pd.DataFrame({
        "disease": pd.Categorical(classes, categories=["control", "disease"]),
        "subtype": pd.Categorical(subtype),
        "programs": pd.Categorical(["+".join(names[i] for i in sorted(c)) or "none"
                                    for c in carried]),
        "batch": pd.Categorical([f"batch-{b}" for b in batch]),
    }, index=[f"cell-{i}" for i in range(n_obs)])
    var = pd.DataFrame({"program": pd.Categorical(program)},
                       index=[f"feature-{f}" for f in range(n_features)])
    adata = AnnData(X=X.astype(np.float32), obs=obs, var=var)
    adata.uns["exclusive_programs"] = {
        "n_per_group": n_per_group, "n_programs": n_programs,
        "label_relevant": bool(label_relevant), "n_features": n_features,
        "program_size": program_size, "program_effect": program_effect,
        "n_batches": n_batches, "batch_features": batch_features,
        "batch_effect": batch_effect, "random_state": seed}
    return adata
