"""Counterfactual checks of datamodels: LDS, signal-to-noise and permutation p-values.

These are the array-level computations behind :func:`scdm.tl.lds`,
:func:`scdm.tl.signal_to_noise` and :func:`scdm.tl.validate_subgroups`; they take plain arrays
(or memmaps) so that they also serve stores written outside AnnData (e.g. the CIFAR pipeline).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.stats import rankdata


def _masked_pearson(A: np.ndarray, B: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Pearson correlation per column over the rows where ``keep``; 0 where either side is
    constant (a prediction that never moves has no skill), NaN with fewer than 3 rows."""
    n = keep.sum(0)
    safe = np.maximum(n, 1)
    A = np.where(keep, A, 0.0)
    B = np.where(keep, B, 0.0)
    A = np.where(keep, A - A.sum(0) / safe, 0.0)
    B = np.where(keep, B - B.sum(0) / safe, 0.0)
    cov = (A * B).sum(0)
    var_a, var_b = (A * A).sum(0), (B * B).sum(0)
    constant = (var_a <= 1e-12 * np.maximum(var_b, 1e-30)) | (var_b <= 0)
    corr = np.where(constant, 0.0, cov / np.sqrt(np.maximum(var_a * var_b, 1e-300)))
    return np.where(n >= 3, corr, np.nan)


def spearman_columns(A: np.ndarray, B: np.ndarray, keep: np.ndarray | None = None
                     ) -> np.ndarray:
    """Spearman correlation of ``A[:, j]`` and ``B[:, j]`` for every column ``j``.

    ``keep`` (same shape, boolean) restricts column ``j`` to its rows where ``keep`` is true;
    ties get average ranks.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.shape != B.shape or A.ndim != 2:
        raise ValueError(f"A and B must be 2-d arrays of one shape, got {A.shape} and {B.shape}.")
    keep = np.ones(A.shape, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if keep.shape != A.shape:
        raise ValueError(f"keep must have shape {A.shape}, got {keep.shape}.")
    ranks_a = rankdata(np.where(keep, A, np.nan), axis=0, nan_policy="omit")
    ranks_b = rankdata(np.where(keep, B, np.nan), axis=0, nan_policy="omit")
    return _masked_pearson(np.nan_to_num(ranks_a), np.nan_to_num(ranks_b), keep)


def predict_margins(weights, masks: np.ndarray, intercept: np.ndarray | None = None
                    ) -> np.ndarray:
    """Margins predicted by datamodels: ``masks @ weightsᵀ + intercept``.

    ``weights`` is ``n_targets × n_train`` (row = target, as in ``adata.obsp``), dense or sparse.
    """
    masks = np.asarray(masks, dtype=np.float32)
    pred = (weights @ masks.T).T if sparse.issparse(weights) else masks @ np.asarray(
        weights, dtype=np.float32).T
    pred = np.asarray(pred, dtype=np.float64)
    return pred if intercept is None else pred + np.asarray(intercept, dtype=np.float64)


ROWS = ("targets", "train")


def as_targets_by_train(weights, n_train: int, n_targets: int, rows: str | None = None):
    """``weights`` oriented targets × training samples, from either orientation.

    scdm's ``obsp`` holds targets × train (row = target); TRAK, dattri and ``datamodels.pt``
    use train × targets. ``rows`` says which (``"targets"`` or ``"train"``); without it the
    shapes decide, and a square matrix (as many targets as training samples) is an error,
    since both readings fit it.
    """
    if rows is not None and rows not in ROWS:
        raise ValueError(f"rows must be one of {ROWS} (what the rows of weights are), got "
                         f"{rows!r}.")
    shape = tuple(weights.shape)
    readings = {"targets": (n_targets, n_train), "train": (n_train, n_targets)}
    if rows is None:
        fits = [name for name, want in readings.items() if shape == want]
        if not fits:
            raise ValueError(
                f"weights {shape} fit neither targets × train {readings['targets']} nor train "
                f"× targets {readings['train']} for masks over {n_train} training samples and "
                f"margins of {n_targets} targets.")
        if len(fits) == 2:
            raise ValueError(
                f"weights are square ({shape[0]} × {shape[1]}), so their orientation is "
                "ambiguous: pass rows='targets' (row = target, as adata.obsp) or rows='train' "
                "(row = training sample, as TRAK scores, dattri and datamodels.pt).")
        rows = fits[0]
    if shape != readings[rows]:
        raise ValueError(f"weights with rows={rows!r} must be {readings[rows]}, got {shape}.")
    return weights if rows == "targets" else weights.T


def linear_datamodeling_score(weights, masks: np.ndarray, margins: np.ndarray, *,
                              rows: str | None = None, intercept: np.ndarray | None = None,
                              heldout: bool = False) -> np.ndarray:
    """Linear datamodeling score (LDS) per target.

    For fresh training subsets (``masks``, ``n_models × n_train``) and the margins that models
    trained on them actually produced (``n_models × n_targets``), the Spearman correlation,
    across the models, of predicted and actual margins, for each target.

    Parameters
    ----------
    weights
        Datamodels or attribution scores, dense or sparse: ``n_targets × n_train`` (``rows=
        "targets"``, as ``adata.obsp``) or ``n_train × n_targets`` (``rows="train"``, as TRAK,
        dattri and ``datamodels.pt``).
    masks, margins
        The evaluation models (never used to fit ``weights``).
    rows
        What the rows of ``weights`` are; needed when ``weights`` is square (see
        :func:`as_targets_by_train`).
    intercept
        Per-target intercept (does not change a rank correlation; kept for predictions).
    heldout
        Target ``j`` is training sample ``j``, and only models that did not train on it count —
        the regime in which held-out datamodels were fitted.

    Returns
    -------
    ndarray (n_targets,): Spearman correlation per target; NaN where the datamodel is all zero
    (it predicts nothing: excluded from means, as TRAK and dattri do) or fewer than 3 models
    count.
    """
    masks = np.asarray(masks, dtype=bool)
    margins = np.asarray(margins, dtype=np.float64)
    if masks.ndim != 2 or margins.ndim != 2 or masks.shape[0] != margins.shape[0]:
        raise ValueError(f"masks {masks.shape} and margins {margins.shape} must be 2-d with one "
                         "row per evaluation model.")
    n_train, n_targets = masks.shape[1], margins.shape[1]
    weights = as_targets_by_train(weights, n_train, n_targets, rows)
    if heldout and n_targets != n_train:
        raise ValueError("heldout=True pairs target j with training sample j; weights must be "
                         "square.")
    pred = predict_margins(weights, masks, intercept)
    keep = ~masks if heldout else None
    scores = spearman_columns(pred, margins, keep)
    scores[all_zero_rows(weights)] = np.nan
    return scores


def all_zero_rows(weights) -> np.ndarray:
    """Targets (rows of a targets × train matrix, dense or sparse) whose weights are all 0."""
    if sparse.issparse(weights):
        return np.asarray(abs(weights).sum(axis=1)).ravel() == 0
    return ~np.any(np.asarray(weights) != 0, axis=1)


def signal_to_noise(margins: np.ndarray, masks: np.ndarray | None = None) -> dict:
    """Variance of margins across training subsets against variance across seeds.

    ``margins`` is ``n_masks × n_seeds × n_targets``: models trained on the same subset with
    different initialisations and data orders. The signal a datamodel can learn is the
    variance across subsets of the seed-averaged margin (less the part the seed noise
    contributes to it); the noise is the variance across seeds on a fixed subset. With
    ``masks`` (``n_masks × n_targets``, target ``j`` = sample ``j``), only subsets that did
    not train on ``j`` count for ``j``.

    Returns
    -------
    dict with per-target ``"signal"``, ``"noise"``, ``"snr"`` (signal / noise) and the medians
    ``"median_snr"``, ``"median_signal"``, ``"median_noise"``.
    """
    margins = np.asarray(margins, dtype=np.float64)
    if margins.ndim != 3 or margins.shape[1] < 2:
        raise ValueError("margins must be n_masks × n_seeds × n_targets with at least 2 seeds.")
    n_masks, n_seeds, n_targets = margins.shape
    keep = (np.ones((n_masks, n_targets), dtype=bool) if masks is None
            else ~np.asarray(masks, dtype=bool))
    if keep.shape != (n_masks, n_targets):
        raise ValueError(f"masks must be n_masks × n_targets = {(n_masks, n_targets)}.")
    count = keep.sum(0)
    noise_per_mask = margins.var(axis=1, ddof=1)  # across seeds, per subset and target
    noise = np.where(keep, noise_per_mask, 0.0).sum(0) / np.maximum(count, 1)
    mean = margins.mean(axis=1)
    centre = np.where(keep, mean, 0.0).sum(0) / np.maximum(count, 1)
    between = np.where(keep, (mean - centre) ** 2, 0.0).sum(0) / np.maximum(count - 1, 1)
    signal = np.maximum(between - noise / n_seeds, 0.0)  # E[var of a seed mean] = signal + σ²/s
    snr = np.where(noise > 0, signal / np.maximum(noise, 1e-300), np.inf)
    snr = np.where(count >= 2, snr, np.nan)
    return {"signal": signal, "noise": noise, "snr": snr,
            "median_snr": float(np.nanmedian(snr)), "median_signal": float(np.median(signal)),
            "median_noise": float(np.median(noise))}


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """One-sided empirical p-value ``(1 + #{null ≥ observed}) / (1 + len(null))``."""
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))
