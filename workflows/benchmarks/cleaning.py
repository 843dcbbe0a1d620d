"""Data cleaning: label issues against kNN disagreement and cleanlab; D3M against random removal.

**Label issues** (pbmc68k_reduced, 700 cells, ``bulk_labels``, 10 types): a fraction of the
cells get the label of the *nearest other* type (the other type whose centroid in PCA space is
closest to the cell) — confusable errors, as real annotation errors are, not uniform flips.
Compared, on the same cells and features (``X_pca``):

- ``scdm``: ``scdm.tl.label_issues`` at defaults (its own 200 TRAK checkpoints): AUROC of the
  score (the held-out probability margin), the flag's precision and recall, how often the
  suggestion is the true type; and the AUROC of the diagnostics beside the score (the held-out
  vote, held-out margin, self-influence, other-label influence);
- ``kNN``: share of the 15 nearest neighbours with another label (suggestion: their majority
  other label);
- ``cleanlab (LR)`` / ``cleanlab (MLP)``: ``cleanlab.filter.find_label_issues`` and
  ``cleanlab.rank.get_label_quality_scores`` on 5-fold cross-validated probabilities of a
  logistic regression / sklearn MLP (64 hidden units).

The "true" types are ``bulk_labels`` themselves, which were assigned by correlation with
sorted bulk profiles and are noisy (dendritic cells vs monocytes, the CD4 T subsets): no method
reaches AUROC 1 and every flag's precision is understated.

**Influence removal** (pbmc68k_reduced, ``bulk_labels``, TRAK with 100 checkpoints): for 15
cells of each of three types, remove the 20 cells with the most positive (negative) summed
influence on them, retrain, and compare the targets' held-out margin with 19 random removals.

**D3M** (``scdm.datasets.spurious_groups``, 400 cells): disease predicted by a site it
co-occurs with 85 % of the time, 40 % of the disease cells at the majority site carrying no
disease signal (they teach the shortcut). ``scdm.tl.debias`` with TRAK (100 checkpoints) or
datamodels (4,000 models): worst-group and overall held-out accuracy (evaluation half) with no
removal, with D3M's recommended removal, and with random removal of the same size; and a null
scenario without a shortcut (correlation 0.5, no unaffected cells), where nothing should be
recommended beyond what random removal gives.

    python workflows/benchmarks/cleaning.py [--seeds 0 1 2] [--fractions 0.05 0.1]
        [--no-datamodels]

Needs ``cleanlab`` (``pip install --no-deps cleanlab termcolor``); scdm does not depend on it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import NearestNeighbors

import scdm


def confusable_flips(adata, label_key: str, fraction: float, seed: int) -> np.ndarray:
    """Relabel ``fraction`` of the cells to the other type whose centroid is nearest."""
    X = adata.obsm["X_pca"]
    y = adata.obs[label_key].astype(str).to_numpy()
    classes = np.unique(y)
    centroids = np.stack([X[y == c].mean(0) for c in classes])
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    for i in rng.choice(y.size, round(fraction * y.size), replace=False):
        d = ((centroids - X[i]) ** 2).sum(1)
        d[classes == y[i]] = np.inf
        noisy[i] = classes[np.argmin(d)]
    return noisy


def knn_scores(X, labels: np.ndarray, k: int = 15) -> tuple[np.ndarray, np.ndarray]:
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    neighbours = labels[idx[:, 1:]]
    score = (neighbours != labels[:, None]).mean(1)
    classes = np.unique(labels)
    counts = np.stack([(neighbours == c).sum(1) for c in classes], 1).astype(float)
    counts[np.arange(labels.size), np.searchsorted(classes, labels)] = -1
    return score, classes[counts.argmax(1)]


def cleanlab_scores(X, codes: np.ndarray, model) -> tuple[np.ndarray, np.ndarray]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probs = cross_val_predict(model, X, codes, cv=cv, method="predict_proba")
    return 1 - get_label_quality_scores(codes, probs), find_label_issues(codes, probs)


def label_issue_rows(fraction: float, seed: int) -> list[dict]:
    import scanpy as sc
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    adata = sc.datasets.pbmc68k_reduced()
    truth = adata.obs["bulk_labels"].astype(str).to_numpy()
    adata.obs["noisy"] = confusable_flips(adata, "bulk_labels", fraction, seed)
    noisy = adata.obs["noisy"].to_numpy()
    flips = noisy != truth
    rows = []

    def row(method, score, flagged=None, suggested=None, seconds=np.nan):
        r = {"fraction": fraction, "seed": seed, "method": method,
             "auroc": roc_auc_score(flips, score), "seconds": seconds}
        if flagged is not None:
            r.update({"n_flagged": int(flagged.sum()), "precision": flips[flagged].mean(),
                      "recall": flagged[flips].mean()})
        if suggested is not None:
            hit = flips if flagged is None else flips & flagged
            r["suggestion_correct"] = (suggested[hit] == truth[hit]).mean()
        rows.append(r)

    start = time.perf_counter()
    scdm.tl.label_issues(adata, "noisy", use_rep="X_pca", random_state=seed)
    seconds = time.perf_counter() - start
    obs = adata.obs
    row("scdm", obs["label_issue_score"], obs["label_issue"].to_numpy(),
        obs["label_issue_suggested"].astype(str).to_numpy(), seconds)
    row("scdm: the cell's own held-out margin (the score before 2026-12-02)",
        obs["label_issue_cell_score"])
    row("scdm: held-out vote", obs["label_issue_vote"])
    row("scdm: -held-out margin", -obs["label_issue_margin"])
    row("scdm: self-influence", obs["label_issue_self_influence"])
    row("scdm: -other-label influence", -obs["label_issue_other_influence"])

    X = adata.obsm["X_pca"]
    start = time.perf_counter()
    score, suggested = knn_scores(X, noisy)
    row("kNN (k=15)", score, None, suggested, time.perf_counter() - start)
    codes = pd.factorize(noisy, sort=True)[0]
    for name, model in (("cleanlab (LR)", LogisticRegression(max_iter=2000)),
                        ("cleanlab (MLP)", MLPClassifier((64,), max_iter=500,
                                                         random_state=seed))):
        start = time.perf_counter()
        score, flagged = cleanlab_scores(X, codes, model)
        row(name, score, flagged, None, time.perf_counter() - start)
    return rows


def removal_rows(seed: int) -> list[dict]:
    """``tl.influence_removal`` on pbmc68k_reduced (TRAK, 100 checkpoints): 15 cells of each
    of three types as targets, their top supporters / opponents removed vs random."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    scdm.tl.trak(adata, "bulk_labels", use_rep="X_pca", n_models=100, random_state=seed)
    rng = np.random.default_rng(seed)
    rows = []
    for cell_type in ("CD19+ B", "CD14+ Monocyte", "CD56+ NK"):
        members = np.flatnonzero((adata.obs["bulk_labels"] == cell_type).to_numpy())
        targets = adata.obs_names[rng.choice(members, 15, replace=False)]
        for direction in ("positive", "negative"):
            scdm.tl.influence_removal(adata, key="trak", targets=targets, n_remove=20,
                                      direction=direction, random_state=seed)
            s = adata.uns["trak_removal"]["summary"]
            rows.append({"seed": seed, "targets": cell_type, "direction": direction,
                         "margin_change": s["margin_effect"],
                         "random_mean": s["margin_random_mean"],
                         "random_sd": s["margin_random_sd"], "z": s["margin_z"],
                         "p": s["margin_p_value"],
                         "accuracy_change": s["accuracy_effect"],
                         "random_accuracy": s["accuracy_random_mean"],
                         "predicted": s["predicted_margin_change"]})
    return rows


def debias_rows(seed: int, methods: list[str]) -> list[dict]:
    rows = []
    scenarios = {"shortcut": dict(core_effect=1.5, site_effect=1.0, correlation=0.85,
                                  unaffected=0.4),
                 "null": dict(core_effect=1.5, site_effect=1.0, correlation=0.5,
                              unaffected=0.0)}
    for scenario, kwds in scenarios.items():
        for method in methods:
            adata = scdm.datasets.spurious_groups(400, random_state=seed, **kwds)
            start = time.perf_counter()
            if method == "trak":
                scdm.tl.trak(adata, "disease", n_models=100, random_state=seed)
            else:
                scdm.tl.datamodels(adata, "disease", n_models=4000, random_state=seed)
            table = scdm.tl.debias(adata, "disease", "site", key=method,
                                   n_remove=[8, 20, 40, 80, 120], random_state=seed)
            seconds = time.perf_counter() - start
            info = adata.uns["debias"]
            base = table[table["removal"] == "none"].iloc[0]
            d3m = table[table["removal"] == "d3m"].set_index("n_removed")
            random = table[table["removal"] == "random"].groupby("n_removed")[
                ["worst_group_accuracy", "overall_accuracy"]].mean()
            k = int(info["recommended_n_remove"])
            best = int(d3m["worst_group_accuracy"].idxmax())
            remove = adata.obs["debias_remove"].to_numpy()
            rows.append({
                "scenario": scenario, "method": method, "seed": seed,
                "worst_none": base["worst_group_accuracy"],
                "overall_none": base["overall_accuracy"],
                "recommended": k,
                "worst_d3m": d3m.loc[k, "worst_group_accuracy"] if k else np.nan,
                "worst_random": random.loc[k, "worst_group_accuracy"] if k else np.nan,
                "overall_d3m": d3m.loc[k, "overall_accuracy"] if k else np.nan,
                "best_k": best,
                "worst_d3m_best": d3m.loc[best, "worst_group_accuracy"],
                "worst_random_best": random.loc[best, "worst_group_accuracy"],
                "overall_d3m_best": d3m.loc[best, "overall_accuracy"],
                "unaffected_share": adata.obs["unaffected"].to_numpy()[remove].mean()
                if k else np.nan,
                "seconds": seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--only", choices=["labels", "removal", "d3m"], default=None)
    parser.add_argument("--no-datamodels", action="store_true",
                        help="D3M with TRAK only (the datamodels runs take ~1 min each)")
    args = parser.parse_args()
    scdm.settings.verbosity = 0
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    with tempfile.TemporaryDirectory() as tmp:
        scdm.settings.store_dir = tmp
        if args.only in (None, "labels"):
            rows = [r for f in args.fractions for s in args.seeds
                    for r in label_issue_rows(f, s)]
            table = pd.DataFrame(rows)
            print("\n## Label issues: pbmc68k_reduced, confusable flips (per fraction and "
                  "seed)\n")
            print(table.round(3).to_string(index=False))
            print("\n## Label issues: mean over seeds\n")
            print(table.groupby(["fraction", "method"], sort=False).mean(numeric_only=True)
                  .drop(columns="seed").round(3).to_string())
        if args.only in (None, "removal"):
            table = pd.DataFrame([r for s in args.seeds for r in removal_rows(s)])
            print("\n## Influence removal: pbmc68k_reduced, TRAK, 15 targets, 20 removed, "
                  "19 random sets\n")
            print(table.round(3).to_string(index=False))
        if args.only in ("labels", "removal"):
            return
        methods = ["trak"] if args.no_datamodels else ["trak", "datamodels"]
        rows = [r for s in args.seeds for r in debias_rows(s, methods)]
        table = pd.DataFrame(rows)
        print("\n## D3M: spurious_groups (400 cells), held-out accuracy on the evaluation "
              "half\n")
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
