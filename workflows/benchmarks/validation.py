"""Does ``tl.validate_subgroups`` pass noise? Feature-space clusters of null data vs true subtypes.

For each scenario of the suite in ``subgroups.py`` (trained with scdm's defaults on the
representations ``--reps``; ``--cache`` shares them with that script) and each comparison null
(``cuts``, the default: in every region the other classes share, as many cells as the
subgroup has there, furthest along a random direction of the region's top principal axes;
``neighbourhood``: the same regions, the cells nearest a random cell; ``random``: uniform),
``validate_subgroups`` runs with its defaults (99 comparison sets, 16 models each) on:

- null scenarios (no subtypes): k-means clusters (k = 4) of the disease cells in the features
  the models train on — coherent, meaningless;
- planted scenarios: the true subtypes.

Prints per proposed subgroup the margin drop, the comparison sets' mean drop, p and BH q.
Goal (issues 13, 27): q > 0.05 for the clusters of null data, q ≤ 0.05 for true subtypes, on
every representation.

    python workflows/benchmarks/validation.py [--seeds 0 1 2] [--cache DIR] [--reps pca raw]
        [--nulls cuts neighbourhood random] [--scenarios P-null G-null P-3 G-3class ...]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).parent))
from subgroups import model_input, trained

import scdm

SCENARIOS = ["P-null", "G-null", "P-3", "G-3class"]


def proposals(adata, name: str, seed: int) -> tuple[list[str], str]:
    """Subgroups to test in ``obs["proposal"]``: k-means clusters of null data, or the truth."""
    label = adata.uns["benchmark"]["label"]
    proposal = adata.obs[label].astype(str).to_numpy().astype(object)
    if "null" in name:
        disease = np.flatnonzero(adata.obs[label] == "disease")
        clusters = KMeans(4, n_init=10, random_state=seed).fit_predict(
            model_input(adata)[disease])
        proposal[disease] = [f"cluster-{c}" for c in clusters]
        tested, kind = [f"cluster-{c}" for c in range(4)], "k-means clusters of null data"
    else:
        truth = adata.obs["truth"].astype(str).to_numpy()
        classes = adata.obs[label].astype(str).to_numpy()
        split = [c for c in np.unique(classes) if len(set(truth[classes == c])) > 1]
        tested = sorted(set(truth[np.isin(classes, split)]))
        mask = np.isin(truth, tested)
        proposal[mask] = truth[mask]
        kind = "true subtypes"
    adata.obs["proposal"] = pd.Categorical(proposal)
    return tested, kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS)
    parser.add_argument("--cache", help="trained datamodels (shared with subgroups.py)")
    parser.add_argument("--reps", nargs="+", default=["pca"], choices=["pca", "raw", "scaled"],
                        help="the models' input, as in subgroups.py")
    parser.add_argument("--nulls", nargs="+", default=["cuts", "neighbourhood"],
                        choices=scdm.tl._validate.NULL_SETS)
    args = parser.parse_args()
    scdm.settings.verbosity = 0
    warnings.filterwarnings("ignore", category=scdm.tl.DegenerateDatamodelsWarning)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        for name, rep, seed in itertools.product(args.scenarios, args.reps, args.seeds):
            adata = trained(name, seed, cache, rep=rep)
            tested, kind = proposals(adata, name, seed)
            for null in args.nulls:
                start = time.perf_counter()
                table = scdm.tl.validate_subgroups(adata, subgroup_key="proposal",
                                                   subgroups=tested, null=null,
                                                   random_state=seed)
                seconds = time.perf_counter() - start
                for subgroup, row in table.iterrows():
                    rows.append({"scenario": name, "rep": rep, "seed": seed, "proposed": kind,
                                 "null": null, "subgroup": subgroup, "seconds": seconds,
                                 **row.to_dict()})
                    print(f"{name:9s} {rep} seed {seed} {null:13s} {subgroup:10s} "
                          f"({row['n_cells']:3d} cells): margin drop "
                          f"{row['margin_drop']:.2f} vs {row['random_margin_drop']:.2f}, "
                          f"p {row['p_value_margin']:.2f}, q {row['q_value_margin']:.2f}",
                          flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby(["rep", "proposed", "null"]).agg(
        subgroups=("q_value_margin", "size"),
        validated_q05=("q_value_margin", lambda q: f"{(q <= 0.05).mean():.0%}"),
        validated_q01=("q_value_margin", lambda q: f"{(q <= 0.01).mean():.0%}"),
        median_q=("q_value_margin", "median"),
        seconds_per_call=("seconds", "mean"))
    print("\n" + summary.to_string())


if __name__ == "__main__":
    main()
