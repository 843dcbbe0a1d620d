"""Data cleaning from attribution, on arrays: label-issue scores and suggestions, which samples
to remove for a set of targets, D3M group alignment, and removal effects against random.

The AnnData tools are :func:`scdm.tl.label_issues`, :func:`scdm.tl.influence_removal` and
:func:`scdm.tl.debias`; this module knows nothing of AnnData.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._checks import check_fraction
from .clustering import knn_adjacency
from .evaluation import permutation_p_value

NEIGHBOURHOOD_SIZE = 15  # neighbours whose held-out probabilities join a cell's own
NEIGHBOURHOOD_WEIGHT = 0.5  # their share of the averaged probabilities


def label_issue_scores(probabilities: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The held-out probability margin: the mean held-out probability of the most probable
    *other* class minus that of the given label (``probabilities``: ``n × C``, over models that
    never trained on the cell), in [−1, 1].

    Measured on confusable label flips (``workflows/benchmarks/cleaning.py``: pbmc68k_reduced,
    and Gaussian planted types) it ranked mislabeled cells above the plain held-out vote (the
    share of held-out models not predicting the label, kept as a diagnostic), the probability of
    the given label alone, self-influence and own- vs other-label influence.
    """
    P = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y)
    given = P[np.arange(y.size), y]
    other = P.copy()
    other[np.arange(y.size), y] = -np.inf
    return other.max(1) - given


def neighbourhood_probabilities(probabilities: np.ndarray, features: np.ndarray, *,
                                n_neighbors: int = NEIGHBOURHOOD_SIZE,
                                weight: float = NEIGHBOURHOOD_WEIGHT) -> np.ndarray:
    """Held-out class probabilities averaged over each cell and its neighbourhood:
    ``(1 − weight)·P_i + weight·mean_{j ∈ kNN(i)} P_j`` in ``features`` (the representation the
    models were trained on), on the symmetric kNN graph of :func:`scdm.clustering.knn_adjacency`.

    A cell's own held-out probability comes from the ~100–200 models that never trained on it
    and is noisy; those of its neighbours were computed by other held-out models at nearby
    points. A mislabeled cell sits among cells of its true type, whose held-out probabilities
    agree on that type; a correctly labelled cell at a boundary is not pulled away by a single
    noisy estimate. Measured on confusable flips (RESULTS.md) before it became the score:
    pbmc68k_reduced 5 % / 10 % 0.901 / 0.890 → 0.909 / 0.915 (above kNN label disagreement,
    0.887 / 0.891, in 6 of 6 runs), Gaussian planted types 0.921 → 0.935 (3 of 3); weights 0.25
    and 0.5 were tried.
    """
    P = np.asarray(probabilities, dtype=np.float64)
    weight = check_fraction("weight", weight, "[0, 1]")
    graph = knn_adjacency(np.asarray(features, dtype=np.float64),
                          min(int(n_neighbors), P.shape[0] - 1))
    degree = np.asarray(graph.sum(1)).ravel()
    around = np.asarray(graph @ P) / np.maximum(degree, 1)[:, None]
    return (1.0 - weight) * P + weight * around


def confident_thresholds(probabilities: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per class, the mean probability of that class over the cells labelled with it (``inf``
    for a class no cell carries): confident learning's thresholds."""
    P = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y)
    return np.array([P[y == c, c].mean() if (y == c).any() else np.inf
                     for c in range(P.shape[1])])


def confident_labels(probabilities: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Confident learning (Northcutt et al. 2021) on held-out class probabilities (``n × C``):
    each class's threshold is the mean probability of that class over the cells labelled with
    it; a cell's confident label is, among the classes whose probability reaches their
    threshold, the most probable one (its given label ``y`` when none does). A cell whose
    confident label differs from its given one is a label issue, and the confident label the
    suggestion.

    Per-class thresholds are what makes the rule calibrated: a class the models find hard
    (low probabilities for all its cells) is not flagged wholesale, and a large class does not
    claim every ambiguous cell (measured on pbmc68k_reduced: a plain "most probable other
    class" suggestion was right for 51 % of flagged flipped cells, this rule for 81 %).
    """
    P = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y)
    above = np.where(P >= confident_thresholds(P, y)[None, :], P, -np.inf)
    labels = above.argmax(1)
    return np.where(np.isfinite(above.max(1)), labels, y)


def other_label_influence(class_sums: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Summed influence on each cell of the training samples of the *other* classes
    (``class_sums``: ``n × C``, each class's total push on each target). Negative: cells of
    other labels pull the cell away from its own."""
    own = class_sums[np.arange(class_sums.shape[0]), np.asarray(y)]
    return class_sums.sum(1) - own


def top_influencers(influence: np.ndarray, pool: np.ndarray, k: int, direction: str
                    ) -> np.ndarray:
    """The ``k`` members of ``pool`` (indices) with the largest (``"positive"``) or smallest
    (``"negative"``) ``influence``; ties broken by index, so the choice is deterministic."""
    values = np.asarray(influence, dtype=np.float64)[pool]
    order = np.lexsort((pool, -values if direction == "positive" else values))
    return np.sort(pool[order[:k]])


def group_weights(group_accuracy: np.ndarray) -> np.ndarray:
    """D3M's target weights per group (Jain et al. 2024): mean accuracy minus the group's
    (worse groups count positively, better ones negatively), scaled to unit absolute sum.

    A training sample's *group alignment* is its influence summed over targets with these
    weights (spread evenly over each group's targets): negative when it lowers the margins of
    the groups the model fails on, or helps only those it already gets right. Those samples
    are removed first."""
    acc = np.asarray(group_accuracy, dtype=np.float64)
    w = acc.mean() - acc
    total = np.abs(w).sum()
    return w / total if total > 0 else w


def removal_effect(effect: float, random_effects: np.ndarray, direction: str) -> dict:
    """How an attribution-chosen removal changed a metric against random removals of the same
    size: one-sided empirical p-value in the expected direction (removing positive influencers
    should lower the targets' metric, negative ones raise it) and a z-score."""
    random_effects = np.asarray(random_effects, dtype=np.float64)
    sign = -1.0 if direction == "positive" else 1.0
    sd = random_effects.std(ddof=1) if random_effects.size > 1 else np.nan
    return {
        "effect": float(effect),
        "random_mean": float(random_effects.mean()),
        "random_sd": float(sd),
        "z": float((effect - random_effects.mean()) / sd) if sd > 0 else np.nan,
        "p_value": permutation_p_value(sign * effect, sign * random_effects),
    }


def default_removal_sizes(n: int) -> list[int]:
    """D3M's removal sizes: 1, 2, 5, 10 and 20 % of ``n`` samples (at least 1 each,
    distinct)."""
    return sorted({max(1, round(f * n)) for f in (0.01, 0.02, 0.05, 0.1, 0.2)})


def selection_half(names: np.ndarray, groups: list[str], rng: np.random.Generator
                   ) -> np.ndarray:
    """A random half of each group's samples (``names == g``; groups in the order given, drawn
    from ``rng``): D3M's *selection* half, whose group accuracies weight the alignment. The
    gain is reported on the other half, so it is not measured on the samples that chose the
    removals."""
    selection = np.zeros(names.size, dtype=bool)
    for g in groups:
        cells = np.flatnonzero(names == g)
        selection[rng.permutation(cells)[: cells.size // 2]] = True
    return selection


def group_accuracy_table(rows: list[tuple], cell_accuracy: np.ndarray,
                         members: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per removal (``rows``: ``(removal, n_removed, set)``; ``cell_accuracy``: removal × cell
    held-out accuracy), each group's accuracy over its ``members``, the worst group and the
    overall accuracy over all members."""
    table = pd.DataFrame(rows, columns=["removal", "n_removed", "set"])
    for g, cells in members.items():
        table[g] = np.nanmean(cell_accuracy[:, cells], axis=1)
    table["worst_group_accuracy"] = table[list(members)].min(axis=1)
    table["worst_group"] = table[list(members)].idxmin(axis=1)
    everyone = np.concatenate(list(members.values())) if members else np.array([], int)
    table["overall_accuracy"] = np.nanmean(cell_accuracy[:, np.sort(everyone)], axis=1)
    return table


def recommend_removal(table: pd.DataFrame, *, n_random: int, min_gain: float,
                      max_accuracy_loss: float) -> tuple[int, str]:
    """D3M's recommendation from :func:`group_accuracy_table` (first row: no removal; rows
    ``"d3m"`` and ``"random"`` per size): the size with the best worst-group accuracy among
    those that beat every random removal of that size (empirical p ≤ 1 / (n_random + 1)),
    gain at least ``min_gain`` over no removal and lose at most ``max_accuracy_loss`` of
    overall accuracy; 0 when none does. Returns the size and the reason in words."""
    baseline = table.iloc[0]
    steps = table[table["removal"] == "d3m"]
    random = table[table["removal"] == "random"].groupby("n_removed")[
        ["worst_group_accuracy", "overall_accuracy"]].agg(["mean", "std", "max"])
    recommended = 0
    reason = (f"no removal size beat all {n_random} random removals of its size and raised "
              f"worst-group accuracy by {min_gain} within {max_accuracy_loss:.0%} of overall "
              "accuracy")
    best = baseline["worst_group_accuracy"] + min_gain
    for _, row in steps.iterrows():
        k = int(row["n_removed"])
        beats_random = row["worst_group_accuracy"] > random.loc[k, ("worst_group_accuracy",
                                                                    "max")]
        keeps_accuracy = (row["overall_accuracy"]
                          >= baseline["overall_accuracy"] - max_accuracy_loss)
        if beats_random and keeps_accuracy and row["worst_group_accuracy"] >= best:
            best, recommended = row["worst_group_accuracy"], k
            reason = (f"removing {k} cells raised worst-group accuracy from "
                      f"{baseline['worst_group_accuracy']:.3f} to {best:.3f} (random removals: "
                      f"{random.loc[k, ('worst_group_accuracy', 'mean')]:.3f} on average, "
                      f"{random.loc[k, ('worst_group_accuracy', 'max')]:.3f} at best) at overall "
                      f"accuracy {row['overall_accuracy']:.3f} (from "
                      f"{baseline['overall_accuracy']:.3f})")
    return recommended, reason
