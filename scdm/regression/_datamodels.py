"""Fitting a path the datamodels way: rows are models, features their masks, and targets that
are training samples handled by their own mask column."""

from __future__ import annotations

import numpy as np

from ._estimator import LassoPath
from ._rows import HELDOUT


def fit_datamodels_path(model: LassoPath, X, Y, *, targets_are_training: bool = True,
                        heldout: bool = False, target_offset: int | None = None) -> LassoPath:
    """Fit ``model`` the datamodels way and return it; rows are models, ``X`` their masks.

    - Targets that are not training samples (test images): every row counts for every target.
    - Targets that are training samples, ``heldout=False`` (the default): every target is fitted
      on every model with its own mask column as a feature, which absorbs the self-influence
      (the margin jump when a sample trains on itself), in the Gram form; λ is chosen on the
      validation models that did *not* train on the target. The self-influence is then moved
      out of the weights: ``model.self_influence_`` keeps the diagonal and ``coef_``'s diagonal
      is set to 0, which leaves every prediction for a model that did not train on the target
      unchanged. On planted data this is faster than ``heldout=True`` (the gap grows with the
      samples) at a higher LDS (``workflows/benchmarks/fit_modes.py``; RESULTS.md).
    - ``heldout=True``: target ``t`` is fitted only on the models that did not train on it.

    ``target_offset``: the columns of ``Y`` are training samples ``target_offset …
    target_offset + n_targets − 1`` (a range of the targets, fitted on its own); ``None``:
    they are all the training samples, in order.
    """
    if not targets_are_training:
        if heldout:
            raise ValueError("heldout=True pairs target t with training sample t; the targets "
                             "here are not training samples.")
        model.fit(X, Y)
        model.self_influence_ = None
        return model
    if target_offset is None and X.shape[1] != Y.shape[1]:
        raise ValueError(f"targets that are the training samples need as many mask columns as "
                         f"margin columns; got {X.shape[1]} and {Y.shape[1]}.")
    if heldout:
        model.fit(X, Y, sample_weight=HELDOUT, target_offset=target_offset)
        model.self_influence_ = None
        return model
    model.fit(X, Y, val_sample_weight=HELDOUT, target_offset=target_offset)
    targets = np.arange(Y.shape[1])
    features = (target_offset or 0) + targets
    model.self_influence_ = model.coef_[features, targets].copy()
    model.coef_[features, targets] = 0.0
    return model
