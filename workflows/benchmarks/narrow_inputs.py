"""Narrow inputs: do classes without subtypes stay whole when the models see few features?

A user with a small gene panel, a list of marker genes or the few features that pass a test
gives the models ten or twenty features instead of hundreds. Every class here has no
subtypes (controls, and a disease class whose one programme shifts every cell alike), so a
split is false. Each row runs the path users take: ``scdm.tl.trak`` at its defaults
(``use_rep="auto"``), then ``scdm.tl.subgroups`` at its defaults, on 600 cells:

- ``counts``: the planted generator (``datasets.planted_subtypes``, sparse Poisson counts,
  log-normalised), one subtype per disease class, only its first ``width`` genes: the
  disease programme's ten genes first, then genes without a programme. ``depth`` is the
  generator's ``base_log_rate`` (0.5 its default: 25-35 % zeros; -1.5: 60-70 %).
- ``counts, zeros jittered``: the same values plus Gaussian noise (SD 0.3): no value sits
  at zero any more, the programme is kept.
- ``Gaussian`` / ``Gaussian, rounded``: ``datasets.gaussian_subtypes`` (no zeros), the
  values rounded to integers or not: discrete, not zero-inflated.

Columns: the share of values at their feature's floor (``clustering.zero_share``), how
many of the 2 × seeds null classes were split, and how many splits carried the caution of
``tl.subgroups`` for few zero-inflated features (``zero_inflated_input``).

    python workflows/benchmarks/narrow_inputs.py [--seeds 0 1 2] [--rows counts-10 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

import scdm
from scdm.clustering import zero_share

ROWS = {  # name: (generator, width, depth, transform)
    "counts-10": ("counts", 10, 0.5, None),
    "counts-12": ("counts", 12, 0.5, None),
    "counts-15": ("counts", 15, 0.5, None),
    "counts-20": ("counts", 20, 0.5, None),
    "counts-40": ("counts", 40, 0.5, None),
    "counts-10-deep-zeros": ("counts", 10, -1.5, None),
    "counts-20-deep-zeros": ("counts", 20, -1.5, None),
    "counts-10-jittered": ("counts", 10, 0.5, "jitter"),
    "gaussian-10": ("gaussian", 10, None, None),
    "gaussian-10-rounded": ("gaussian", 10, None, "round"),
    "gaussian-20-rounded": ("gaussian", 20, None, "round"),
}


def null_data(row: str, seed: int):
    generator, width, depth, transform = ROWS[row]
    if generator == "counts":
        adata = scdm.datasets.planted_subtypes(n_subtypes=1, n_per_subtype=300,
                                               base_log_rate=depth, random_state=seed)
        programme = (adata.var["program"].astype(str) != "none").to_numpy()
        order = np.r_[np.flatnonzero(programme), np.flatnonzero(~programme)]
        adata = adata[:, order[:width]].copy()
    else:
        adata = scdm.datasets.gaussian_subtypes(classes={"control": [300], "disease": [240]},
                                                n_features=width, batch_features=width // 2,
                                                random_state=seed)
    X = np.asarray(adata.X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if transform == "jitter":
        X = X + rng.normal(0.0, 0.3, X.shape).astype(np.float32)
    elif transform == "round":
        X = np.round(X)
    adata.X = X
    return adata


def run(row: str, seed: int) -> list[dict]:
    adata = null_data(row, seed)
    start = time.perf_counter()
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as store:
        warnings.simplefilter("ignore")
        scdm.tl.trak(adata, "disease", random_state=seed, store=store)
        scdm.tl.subgroups(adata, key="trak", random_state=seed)
    seconds = time.perf_counter() - start
    evidence = adata.uns["trak_subgroup"]["reproducibility"]
    zeros = zero_share(np.asarray(adata.X))
    return [{"row": row, "seed": seed, "class": cls, "width": adata.n_vars,
             "zero_share": zeros, "found": int(e["n_subgroups"]),
             "cautioned": "zero_inflated_input" in e, "seconds": seconds}
            for cls, e in evidence.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    args = parser.parse_args()
    scdm.settings.verbosity = 0
    records = []
    for row in args.rows:
        for seed in args.seeds:
            records += run(row, seed)
            last = records[-2:]
            print(f"{row:22s} seed {seed}: " + ", ".join(
                f"{r['class']} {r['found']}{' (cautioned)' if r['cautioned'] else ''}"
                for r in last) + f"  [{last[0]['seconds']:.0f} s]", flush=True)
    table = pd.DataFrame(records)
    summary = table.groupby("row", sort=False).agg(
        width=("width", "first"), zero_share=("zero_share", "mean"),
        classes=("found", "size"), split=("found", lambda f: int((f > 1).sum())),
        cautioned=("cautioned", "sum"))
    summary["split, not cautioned"] = (
        table.assign(bare=(table["found"] > 1) & ~table["cautioned"])
        .groupby("row", sort=False)["bare"].sum())
    print()
    print(summary.round(2).to_string())


if __name__ == "__main__":
    main()
