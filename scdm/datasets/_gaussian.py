"""Synthetic Gaussian features with planted subtypes: a second generator, unlike the first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .._anndata import uns_safe
from .._checks import check_int
from .._seeding import check_random_state
from ._planted import stage_strengths


def lay_out_classes(classes: Mapping[str, Sequence[int]], n_batches: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each cell's class, subtype (``"{class}-{k}"``, or the class name for a class of one
    subtype) and batch, the batches dealt round-robin within every subtype (balanced), in a
    random order drawn from ``rng``."""
    cls_list: list[str] = []
    sub_list: list[str] = []
    for c, sizes in classes.items():
        for k, size in enumerate(sizes):
            cls_list += [c] * int(size)
            sub_list += [c if len(sizes) == 1 else f"{c}-{k}"] * int(size)
    cls_of, sub_of = np.array(cls_list), np.array(sub_list)
    batch = np.empty(cls_of.size, dtype=np.int64)
    for s in pd.unique(sub_of):
        members = np.flatnonzero(sub_of == s)
        batch[members] = rng.permutation(np.arange(members.size) % n_batches)
    return cls_of, sub_of, batch


def gaussian_subtypes(
    classes: Mapping[str, Sequence[int]] | None = None,
    *,
    n_features: int = 80,
    program_size: int = 5,
    program_effect: float = 1.5,
    n_batches: int = 3,
    batch_features: int = 50,
    batch_effect: float = 1.5,
    gradient_features: int = 0,
    gradient_effect: float = 1.5,
    trajectory: bool = False,
    random_state: int = 0,
) -> AnnData:
    """Gaussian features of classes made of hidden subtypes, under a batch effect.

    Unlike :func:`planted_subtypes` (Poisson counts, log-normalised), every feature here is
    Gaussian with unit noise, and the batch shifts each of ``batch_features`` features by a
    normal draw of scale ``batch_effect`` per batch. The first class is the reference (e.g.
    controls) and has no program; every subtype of every other class (a class without
    subtypes counts as one) shifts its own program of ``program_size`` features by
    ``program_effect``, so a classifier must recognise each subtype by its own program.
    Batches are dealt round-robin within every subtype, so they are balanced.

    Parameters
    ----------
    classes
        Class name → subtype sizes, e.g. ``{"control": [300], "disease": [70, 80, 90]}`` (the
        default); a single size is a class without subtypes. The first class is the reference.
    n_features
        Features in total; programs, batch and gradient features are disjoint.
    program_size, program_effect
        Features per (class, subtype) program and their mean shift.
    n_batches, batch_features, batch_effect
        The nuisance: batches, features they shift, and the scale of the shifts.
    gradient_features, gradient_effect
        A continuous nuisance: ``obs["state"]`` ~ U(-1, 1) shifts ``gradient_features``
        features by ``±gradient_effect · state``.
    trajectory
        The subtypes of each class but the first are stages of one path instead: every cell
        of such a class has a pseudotime ``t`` ~ U(0, 1) (``obs["pseudotime"]``, NaN in the
        reference) and shifts the program of stage ``k`` by ``program_effect`` times a hat
        function peaking at ``t = k / (K - 1)`` (``K`` stages; falling to 0 at the
        neighbouring peaks). ``obs["subtype"]`` is then the class name: a continuum, no
        discrete subtype. Needs at least two stages in each such class.
    random_state
        Seed.

    Returns
    -------
    AnnData (``.X`` float32) with ``.obs["disease"]`` (the class), ``.obs["subtype"]`` (the
    ground truth: ``"{class}-{k}"``, or the class name for a class without subtypes),
    ``.obs["batch"]``, ``.obs["state"]`` and ``.var["program"]``.
    """
    seed = check_random_state(random_state)
    classes = dict(classes if classes is not None else
                   {"control": [300], "disease": [70, 80, 90]})
    if len(classes) < 2 or any(len(v) < 1 or min(v) < 1 for v in classes.values()):
        raise ValueError("classes needs at least two classes, each with positive subtype sizes.")
    check_int("n_batches", n_batches, 1)
    reference = next(iter(classes))
    programs = [(c, k) for c, sizes in classes.items() if c != reference
                for k in range(len(sizes))]
    needed = len(programs) * program_size + batch_features + gradient_features
    if needed > n_features:
        raise ValueError(f"{len(programs)} programs of {program_size} features, "
                         f"{batch_features} batch and {gradient_features} gradient features "
                         f"need {needed} features but n_features={n_features}.")
    if trajectory and any(len(v) < 2 for c, v in classes.items() if c != reference):
        raise ValueError("trajectory needs at least two stages (subtype sizes) in every class "
                         "but the first, e.g. {'control': [300], 'disease': [100, 100, 100]}.")
    rng = np.random.default_rng(seed)
    cls_of, sub_of, batch = lay_out_classes(classes, n_batches, rng)
    n_obs = cls_of.size
    features = rng.permutation(n_features)
    X = rng.standard_normal((n_obs, n_features))
    program = np.full(n_features, "none", dtype=object)
    pseudotime = np.full(n_obs, np.nan)
    # per class on a path, its cells and their strength of each stage's program; drawn only
    # when asked, so that the default data stay as they were
    on_path: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if trajectory:
        for c in classes:
            if c != reference:
                rows = np.flatnonzero(cls_of == c)
                pseudotime[rows] = rng.uniform(0.0, 1.0, size=rows.size)
                on_path[c] = rows, stage_strengths(pseudotime[rows], len(classes[c]))
    for i, (c, k) in enumerate(programs):
        cols = features[i * program_size:(i + 1) * program_size]
        name = c if len(classes[c]) == 1 else f"{c}-{k}"
        if trajectory:  # every cell of the class on the path, at this stage's strength
            rows, strength = on_path[c]
            X[np.ix_(rows, cols)] += program_effect * strength[:, k, None]
        else:
            X[np.ix_(np.flatnonzero(sub_of == name), cols)] += program_effect
        program[cols] = name
    if trajectory:
        sub_of = cls_of.copy()
    start = len(programs) * program_size
    batch_cols = features[start:start + batch_features]
    X[:, batch_cols] += batch_effect * rng.standard_normal((n_batches, batch_features))[batch]
    grad_cols = features[start + batch_features:start + batch_features + gradient_features]
    state = rng.uniform(-1.0, 1.0, size=n_obs)
    X[:, grad_cols] += state[:, None] * (gradient_effect * rng.choice([-1.0, 1.0],
                                                                      size=grad_cols.size))
    obs = pd.DataFrame({
        "disease": pd.Categorical(cls_of, categories=list(classes)),
        "subtype": pd.Categorical(sub_of, categories=list(pd.unique(sub_of))),
        "batch": pd.Categorical([f"batch-{b}" for b in batch]),
        "state": state.astype(np.float32),
        **({"pseudotime": pseudotime.astype(np.float32)} if trajectory else {}),
    }, index=[f"cell-{i}" for i in range(n_obs)])
    var = pd.DataFrame({"program": pd.Categorical(program)},
                       index=[f"feature-{f}" for f in range(n_features)])
    adata = AnnData(X=X.astype(np.float32), obs=obs, var=var)
    adata.uns["gaussian_subtypes"] = uns_safe({  # class names may hold "/"
        "classes": {c: [int(v) for v in sizes] for c, sizes in classes.items()},
        "n_features": n_features, "program_size": program_size,
        "program_effect": program_effect, "n_batches": n_batches,
        "batch_features": batch_features, "batch_effect": batch_effect,
        "gradient_features": gradient_features, "gradient_effect": gradient_effect,
        "trajectory": trajectory, "random_state": seed})
    return adata
