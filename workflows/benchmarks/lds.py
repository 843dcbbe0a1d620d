"""LDS and held-out correlation against the number of models, on planted subtypes.

``scdm.datasets.planted_subtypes`` (defaults: 300 controls + 3 disease subtypes × 100 cells,
4 batches) → PCA → ``scdm.tl.datamodels(n_models=N)`` → ``scdm.tl.lds`` on fresh evaluation
models → ``scdm.tl.model_count_curve`` (refits on nested subsets) → ``scdm.tl.subgroups`` →
``scdm.tl.validate_subgroups``. Prints the curve, the LDS of the same weights with shuffled
columns (the no-skill reference, measured in the same run), the LDS with seed-averaged
targets, the validation table and the wall time of every step.

Anchors for scale: TRAK's CIFAR-10 quickstart reaches LDS 0.09; its CI accepts > 0.05 on CIFAR-2.

    python workflows/benchmarks/lds.py [--n-models 15000] [--lds-models 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scanpy as sc

import scdm
from scdm.evaluation import linear_datamodeling_score
from scdm.store import ModelStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-models", type=int, default=15_000)
    parser.add_argument("--lds-models", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scdm.settings.verbosity = 0
    adata = scdm.datasets.planted_subtypes(random_state=args.seed)
    sc.pp.pca(adata, random_state=args.seed)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        scdm.tl.datamodels(adata, "disease", use_rep="X_pca", n_models=args.n_models,
                           store=Path(tmp) / "train", random_state=args.seed)
        times["train + fit + embed"] = time.perf_counter() - start

        start = time.perf_counter()
        scdm.tl.lds(adata, n_models=args.lds_models, store=Path(tmp) / "lds")
        times[f"lds ({args.lds_models} evaluation models)"] = time.perf_counter() - start
        info = adata.uns["datamodels"]["lds"]
        store = ModelStore.open(info["store"])
        W = adata.obsp["datamodels"]
        W = W.toarray() if hasattr(W, "toarray") else np.asarray(W)
        shuffled = W[:, np.random.default_rng(0).permutation(W.shape[1])]
        null = np.nanmean(linear_datamodeling_score(shuffled, np.asarray(store.masks),
                                                    np.asarray(store.margins), rows="targets",
                                                    heldout=True))

        start = time.perf_counter()
        scdm.tl.model_count_curve(adata)
        times["model-count curve (refits)"] = time.perf_counter() - start
        curve = adata.uns["datamodels"]["model_curve"]

        evaluated = adata.copy()
        start = time.perf_counter()
        scdm.tl.lds(evaluated, n_models=args.lds_models // 3, n_seeds=3,
                    store=Path(tmp) / "lds_seeds")
        times[f"lds ({args.lds_models // 3} subsets × 3 seeds)"] = time.perf_counter() - start
        seeded = evaluated.uns["datamodels"]["lds"]["mean"]

        scdm.tl.subgroups(adata)
        start = time.perf_counter()
        table = scdm.tl.validate_subgroups(adata)
        times["validate_subgroups (19 random sets × 32 models each)"] = (
            time.perf_counter() - start)

    print(f"planted_subtypes(random_state={args.seed}): {adata.n_obs} cells; "
          f"{args.n_models} training models, mean held-out accuracy "
          f"{adata.uns['datamodels']['mean_heldout_accuracy']:.3f}")
    print("models   mean held-out corr   mean LDS")
    for n, c, v in zip(curve["n_models"], curve["mean_corr"], curve["mean_lds"], strict=True):
        print(f"{n:6d}   {c:18.3f}   {v:8.3f}")
    print(f"recommendation: {curve['recommendation']}")
    print(f"LDS {info['mean']:.3f} (median {info['median']:.3f}); shuffled weights {null:.3f}; "
          f"targets averaged over 3 seeds {seeded:.3f}")
    tested = table[table["status"] == "tested"]
    print(tested[["class", "n_cells", "accuracy_drop", "random_accuracy_drop", "p_value",
                  "margin_drop", "random_margin_drop", "p_value_margin"]].round(3).to_string())
    subtype_of = adata.obs.groupby("datamodels_subgroup", observed=True)["subtype"].agg(
        lambda s: s.value_counts().index[0])
    print("majority planted subtype per subgroup:", dict(subtype_of))
    for name, seconds in times.items():
        print(f"{name:55s} {seconds:7.1f} s")


if __name__ == "__main__":
    main()
