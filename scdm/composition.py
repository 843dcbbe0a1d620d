"""Is a subgroup just one donor, batch or sample? Composition tests on arrays.

A proposed subgroup is compared with the rest of its class on a covariate. For a categorical
covariate (donor, batch, sex) the statistic is Pearson's χ² of the 2 × levels table, and its
p-value is exact in the limit of many permutations: the subgroup's counts under "membership is
unrelated to the covariate" follow a multivariate hypergeometric law (a random subset of the
class of the subgroup's size), which numpy samples directly, so small donors and sparse tables
need no χ² approximation. For a numeric covariate (library size, % mitochondrial reads, age)
it is the Mann–Whitney test with the AUC (probability that a subgroup cell exceeds a cell of the
rest of the class) as the effect size.

Significance alone does not make a flag: with thousands of cells a small imbalance is
significant. A subgroup is flagged only where the effect is large as well:

- ``"dominated"``: one level holds at least ``max_fraction`` of the subgroup and is over-
  represented against the rest of the class (the test rejects); a subgroup that is 90 % donor
  A in a class that is 90 % donor A is not flagged.
- ``"imbalanced"``: the test rejects and the subgroup's distribution differs from the rest of
  its class by a total variation distance of at least ``min_imbalance``.
- ``"shifted"`` (numeric): the test rejects and ``|AUC - 0.5| >= min_auc_shift``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import false_discovery_control, mannwhitneyu

from ._checks import check_fraction

FLAGS = ("dominated", "imbalanced", "shifted")


@dataclass(frozen=True)
class CompositionRule:
    """When a difference in composition is flagged (see the module docstring)."""

    max_fraction: float = 0.8
    min_imbalance: float = 0.25
    min_auc_shift: float = 0.25
    alpha: float = 0.05

    def __post_init__(self):
        for name in ("max_fraction", "alpha"):
            check_fraction(name, getattr(self, name))
        check_fraction("min_imbalance", self.min_imbalance, "(0, 1]")
        if not 0.0 < self.min_auc_shift <= 0.5:
            raise ValueError(f"min_auc_shift must lie in (0, 0.5], got {self.min_auc_shift}.")


def _chi2(inside: np.ndarray, totals: np.ndarray, size: int) -> np.ndarray:
    """Pearson's χ² of (subgroup, rest) × levels tables; ``inside`` is (..., levels)."""
    n = totals.sum()
    expected_in = totals * (size / n)
    expected_out = totals * ((n - size) / n)
    diff = inside - expected_in  # the rest's deviation is the same with the opposite sign
    return (diff**2 * (1.0 / expected_in + 1.0 / expected_out)).sum(-1)


def categorical_test(
    levels: np.ndarray, inside: np.ndarray, *, n_permutations: int = 999,
    rng: np.random.Generator,
) -> dict:
    """Composition of one subgroup (``inside``) against the rest of its class.

    Parameters
    ----------
    levels
        Integer level codes of the class's cells (missing values already removed).
    inside
        Boolean, True for the subgroup's cells.
    n_permutations
        Hypergeometric draws for the p-value (smallest ``1 / (n_permutations + 1)``).
    rng
        Source of the draws.

    Returns
    -------
    dict with ``dominant`` (code), ``dominant_fraction``, ``class_fraction`` (the dominant
    level's share of the whole class), ``n_levels`` (levels present in the subgroup),
    ``effective_levels`` (inverse Simpson index: a subgroup spread evenly over 4 donors has 4,
    one that is 97 % one donor about 1), ``imbalance`` (total variation distance between the
    subgroup and the rest), ``statistic`` and ``p_value`` (NaN when there is no rest or only
    one level).
    """
    levels = np.asarray(levels)
    inside = np.asarray(inside, dtype=bool)
    size, n = int(inside.sum()), inside.size
    n_levels = int(levels.max()) + 1 if levels.size else 0
    totals = np.bincount(levels, minlength=n_levels).astype(np.float64)
    counts = np.bincount(levels[inside], minlength=n_levels).astype(np.float64)
    dominant = int(np.argmax(counts)) if size else -1
    shares = counts / size if size else counts
    result = {
        "dominant": dominant,
        "dominant_fraction": float(counts[dominant] / size) if size else np.nan,
        "class_fraction": float(totals[dominant] / n) if size else np.nan,
        "n_levels": int((counts > 0).sum()),
        # inverse Simpson index: how many equally large donors the subgroup amounts to
        "effective_levels": float(1.0 / (shares**2).sum()) if size else np.nan,
        "imbalance": np.nan, "statistic": np.nan, "p_value": np.nan,
    }
    present = totals > 0
    if size == 0 or size == n or present.sum() < 2:
        return result  # nothing to compare with, or nothing to differ in
    totals, counts = totals[present], counts[present]
    rest = totals - counts
    result["imbalance"] = float(0.5 * np.abs(counts / size - rest / (n - size)).sum())
    observed = float(_chi2(counts, totals, size))
    draws = rng.multivariate_hypergeometric(totals.astype(np.int64), size,
                                            size=n_permutations)
    null = _chi2(draws.astype(np.float64), totals, size)
    # relative tolerance: equal tables must tie despite summation order
    exceed = int((null >= observed * (1 - 1e-12)).sum())
    result["statistic"] = observed
    result["p_value"] = (1 + exceed) / (n_permutations + 1)
    return result


def numeric_test(values: np.ndarray, inside: np.ndarray) -> dict:
    """A numeric covariate of one subgroup against the rest of its class (Mann–Whitney).

    Returns
    -------
    dict with ``mean`` (subgroup), ``class_mean``, ``auc`` (probability that a subgroup value
    exceeds a value of the rest, ties counting one half), ``statistic`` (U) and ``p_value``
    (two-sided; NaN without a rest or with constant values).
    """
    values = np.asarray(values, dtype=np.float64)
    inside = np.asarray(inside, dtype=bool)
    a, b = values[inside], values[~inside]
    result = {"mean": float(a.mean()) if a.size else np.nan,
              "class_mean": float(values.mean()) if values.size else np.nan,
              "auc": np.nan, "statistic": np.nan, "p_value": np.nan}
    if a.size == 0 or b.size == 0 or np.ptp(values) == 0:
        return result
    test = mannwhitneyu(a, b, alternative="two-sided")
    result.update(auc=float(test.statistic / (a.size * b.size)),
                  statistic=float(test.statistic), p_value=float(test.pvalue))
    return result


def adjust_and_flag(rows: list[dict], rule: CompositionRule) -> list[dict]:
    """Benjamini–Hochberg q-values over all tested rows, then each row's flag (or "")."""
    tested = [i for i, r in enumerate(rows) if np.isfinite(r["p_value"])]
    q = (false_discovery_control([rows[i]["p_value"] for i in tested]) if tested
         else np.array([]))
    for row in rows:
        row["q_value"] = np.nan
        row["flag"] = ""
    for i, value in zip(tested, q, strict=True):
        row = rows[i]
        row["q_value"] = float(value)
        if value >= rule.alpha:
            continue
        if row["kind"] == "numeric":
            if abs(row["auc"] - 0.5) >= rule.min_auc_shift:
                row["flag"] = "shifted"
        elif (row["dominant_fraction"] >= rule.max_fraction
              and row["dominant_fraction"] > row["class_fraction"]):
            row["flag"] = "dominated"
        elif row["imbalance"] >= rule.min_imbalance:
            row["flag"] = "imbalanced"
    return rows
