"""Sequencing depth, a nuisance nobody names: do classes without subtypes stay whole?

Droplet data spread a cell's depth several-fold, and normalisation (``normalize_total`` then
``log1p``) does not remove it: a low-depth cell has more zeros. Here the planted generator's
counts (one subtype per disease class: no class has subtypes; its batch as usual) are drawn
again with a depth factor per cell, log-uniform between ``low`` and ``1/low`` times,
then normalised and log1p as scanpy does. The path users take: ``scdm.tl.trak`` at its
defaults, ``scdm.tl.subgroups`` at its defaults, no batch or depth named. A split is false;
the table says how many, and how far apart the subgroups' mean log depth lies (in standard
deviations of the class's log depth), which tells a depth split.

    python workflows/benchmarks/depth.py [--seeds 0 1 ... 9] [--lows 0.3 0.5]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import numpy as np
import pandas as pd

import scdm


def deep_null(seed: int, low: float):
    """The planted null with depth between ``low`` and ``1/low`` times; its log depth."""
    adata = scdm.datasets.planted_subtypes(n_subtypes=1, n_per_subtype=300, random_state=seed)
    rng = np.random.default_rng(seed)
    counts = adata.layers["counts"].toarray().astype(np.float64)
    depth = np.exp(rng.uniform(np.log(low), np.log(1 / low), counts.shape[0]))
    counts = rng.poisson(counts * depth[:, None])
    adata.X = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    return adata, np.log(counts.sum(1))


def run(seed: int, low: float) -> list[dict]:
    adata, log_depth = deep_null(seed, low)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as store:
        warnings.simplefilter("ignore")
        scdm.tl.trak(adata, "disease", random_state=seed, store=store)
        scdm.tl.subgroups(adata, key="trak", markers=False, random_state=seed)
    groups = adata.obs["trak_subgroup"].astype(str).to_numpy()
    rows = []
    for cls, e in adata.uns["trak_subgroup"]["reproducibility"].items():
        members = (adata.obs["disease"] == cls).to_numpy()
        means = [log_depth[members & (groups == g)].mean()
                 for g in np.unique(groups[members]) if g != "unassigned"]
        shared = e.get("shared") or {}
        carried = (shared.get("shared_again") or shared).get("carried_by", "")
        rows.append({"low": low, "seed": seed, "class": cls,
                     "found": int(e["n_subgroups"]),
                     "depth_gap_sd": (max(means) - min(means)) / log_depth[members].std(),
                     "shared_carried_by": carried})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--lows", nargs="+", type=float, default=[0.3, 0.5])
    args = parser.parse_args()
    scdm.settings.verbosity = 0
    records = []
    for low in args.lows:
        for seed in args.seeds:
            records += run(seed, low)
            print(f"depth {low:g}-{1 / low:.2f}x, seed {seed}: " + ", ".join(
                f"{r['class']} {r['found']}"
                + (f" (depth gap {r['depth_gap_sd']:.1f} SD)" if r["found"] > 1 else "")
                for r in records[-2:]), flush=True)
    table = pd.DataFrame(records)
    summary = table.groupby("low").agg(
        classes=("found", "size"), split=("found", lambda f: int((f > 1).sum())),
        shared_by_discriminant=("shared_carried_by", lambda c: int((c == "linear").sum())))
    print()
    print(summary.to_string())


if __name__ == "__main__":
    main()
