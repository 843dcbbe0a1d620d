"""Regularisation-path LASSO for many targets at once (fast_l1 semantics, in plain PyTorch).

For each target ``t`` (a column of ``Y``) and each ``λ`` on its path, solve

    min_{w, b}  1/(2 n_t) Σ_i s_it (x̃_i·w + b − y_it)²  +  λ ||w||₁

on standardised features ``x̃ = (x − mean_) / scale_`` — scikit-learn's ``Lasso(alpha=λ)`` on
standardised ``X`` with an intercept, restricted to the rows a target keeps (``s_it > 0``).
All targets are columns of one weight matrix and advance together; rows are streamed from
arrays or memmaps in chunks and never standardised in memory.

The solver is FISTA with per-target adaptive restart. The intercept is solved in closed form at
every step, so the gradient is exact also when targets keep different rows. The step size comes
from a rigorous bound (top eigenvalue of the standardised Gram matrix over the rows, divided by
each target's row count), so it needs no tuning and cannot diverge. Convergence is a duality gap
below ``tol`` times the target's variance; a target that converges is frozen and leaves the
computation. Compared with fast_l1: λ_max is computed on the standardised, centred problem;
per-target state is kept by target index, never by position in a shrinking matrix; tolerance
is relative to each target's scale; and weights are returned in raw units with the
standardisation kept in ``mean_``/``scale_``.
"""

from ._datamodels import fit_datamodels_path
from ._estimator import LassoPath
from ._fista import ConvergenceWarning
from ._rows import HELDOUT, MIN_ROWS, MIN_VAL_ROWS

__all__ = ["HELDOUT", "MIN_ROWS", "MIN_VAL_ROWS", "ConvergenceWarning", "LassoPath",
           "fit_datamodels_path"]
