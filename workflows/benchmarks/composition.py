"""Confounding check: does the composition flag fire on one-donor subgroups, and only there?

Runs the real pipeline (``scdm.tl.datamodels`` → ``scdm.tl.subgroups`` at defaults) on the
scenarios of ``subgroups.py`` (two generators: Poisson ``P-*`` and Gaussian ``G-*``; shares its
``--cache`` of trained datamodels), then gives every cell a donor (four per class, nested in
the class) under four designs and runs ``scdm.tl.subgroup_composition``:

- ``balanced``: donors dealt round-robin within each true subtype (no association);
- ``random``: donors drawn at random with unequal sizes (40/30/20/10 %), independently of the
  subtypes — a realistic null;
- ``one-donor``: every cell of the first subtype comes from donor d0, the rest of the class
  from d1–d3 — a "subtype" that is one donor; the flag must fire on the subgroup that found it;
- ``partial``: 70 % of the first subtype's cells come from d0, which gives 10 % of the rest of
  the class — an association, not a one-donor subgroup ("imbalanced", not "dominated").

Null scenarios (no subtypes) are also clustered at a fixed resolution 1 (Leiden splits noise
into several clusters) and checked under the ``random`` design: clusters of noise must not be
flagged. With ``--real``, the bundled pbmc68k_reduced subgroups are checked against its QC
columns (cell-cycle phase, library size, mitochondrial fraction); there is no truth there, the
flags are printed for reading.

    python workflows/benchmarks/composition.py [--seeds 0 1 2] [--cache DIR] [--real]
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import scdm

sys.path.insert(0, str(Path(__file__).parent))
from subgroups import trained  # the shared scenario cache

PLANTED = ["P-2", "P-3", "P-3-stratify", "P-5", "G-3", "G-3-stratify", "G-5", "G-3class"]
NULL = ["P-null", "G-null"]
DESIGNS = ("balanced", "random", "one-donor", "partial")


def donors(adata, label: str, design: str, seed: int) -> tuple[np.ndarray, str | None]:
    """Donor names for ``design`` and the subtype made (partly) of donor d0, if any."""
    rng = np.random.default_rng(seed)
    labels = adata.obs[label].astype(str).to_numpy()
    truth = adata.obs["truth"].astype(str).to_numpy()
    donor = np.empty(adata.n_obs, dtype=object)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if design == "random":
            donor[members] = [f"{cls}-d{d}" for d in rng.choice(4, members.size,
                                                                 p=[0.4, 0.3, 0.2, 0.1])]
        else:
            for t in np.unique(truth[members]):  # round-robin within each subtype
                own = members[truth[members] == t]
                donor[own] = [f"{cls}-d{i % 4}" for i in range(own.size)]
    if design in ("balanced", "random"):
        return donor, None
    cls = next(c for c in np.unique(labels) if np.unique(truth[labels == c]).size > 1)
    target = sorted(np.unique(truth[labels == cls]))[0]
    own = np.flatnonzero(truth == target)
    rest = np.flatnonzero((labels == cls) & (truth != target))
    if design == "one-donor":
        donor[own] = f"{cls}-d0"
        donor[rest] = [f"{cls}-d{1 + i % 3}" for i in range(rest.size)]
    else:
        donor[own] = np.where(rng.random(own.size) < 0.7, f"{cls}-d0",
                              [f"{cls}-d{d}" for d in rng.choice([1, 2, 3], own.size)])
        donor[rest] = np.where(rng.random(rest.size) < 0.1, f"{cls}-d0",
                               [f"{cls}-d{d}" for d in rng.choice([1, 2, 3], rest.size)])
    return donor, target


def check(adata, name: str, seed: int, design: str) -> dict:
    label = adata.uns["benchmark"]["label"]
    donor, target = donors(adata, label, design, seed)
    adata.obs["donor"] = pd.Categorical(donor)
    table = scdm.tl.subgroup_composition(adata, ["donor"], random_state=seed)
    found = adata.obs["datamodels_subgroup"].astype(str)
    row = {"scenario": name, "seed": seed, "design": design,
           "subgroups_tested": int(table["p_value"].notna().sum()),
           "dominated": int((table["flag"] == "dominated").sum()),
           "imbalanced": int((table["flag"] == "imbalanced").sum())}
    if target is not None:
        match = pd.crosstab(found, adata.obs["truth"].astype(str))[target].idxmax()
        hit = table[table["subgroup"] == match].iloc[0]
        row.update(target_subgroup=match, target_flag=hit["flag"],
                   target_fraction=hit["dominant_fraction"], target_q=hit["q_value"],
                   other_dominated=int(((table["flag"] == "dominated")
                                        & (table["subgroup"] != match)).sum()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=PLANTED + NULL)
    parser.add_argument("--cache", help="trained datamodels (shared with subgroups.py)")
    parser.add_argument("--real", action="store_true", help="also pbmc68k_reduced's QC columns")
    args = parser.parse_args()
    scdm.settings.verbosity = 0
    warnings.filterwarnings("ignore", category=scdm.tl.DegenerateDatamodelsWarning)
    names = [n for n in PLANTED + NULL if any(fnmatch.fnmatch(n, p) for p in args.scenarios)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        for name in names:
            for seed in args.seeds:
                adata = trained(name, seed, cache)
                null = name in NULL
                scdm.tl.subgroups(adata, markers=False, random_state=seed,
                                  resolution=1.0 if null else None)
                for design in ("random", "balanced") if null else DESIGNS:
                    row = check(adata, name, seed, design)
                    rows.append(row)
                    print(f"{name:13s} seed {seed} {design:9s}: tested "
                          f"{row['subgroups_tested']:2d}, dominated {row['dominated']}, "
                          f"imbalanced {row['imbalanced']}" + (
                              f"; the first subtype's subgroup {row['target_subgroup']}: "
                              f"{row['target_flag'] or 'no flag'} ({row['target_fraction']:.0%}"
                              f" d0, q = {row['target_q']:.3g})" if "target_flag" in row
                              else ""), flush=True)
        if args.real:
            adata = trained("R-pbmc68k", 0, cache)
            scdm.tl.subgroups(adata, markers=False)
            table = scdm.tl.subgroup_composition(adata, ["phase", "n_counts", "percent_mito"])
            print("\npbmc68k_reduced (lineage), QC columns:")
            print(table[["subgroup", "covariate", "dominant", "dominant_fraction", "auc",
                         "q_value", "flag"]].to_string(float_format=lambda v: f"{v:.3g}"))
    table = pd.DataFrame(rows)
    summary = table.groupby(["design"], sort=False).agg(
        runs=("seed", "size"), subgroups_tested=("subgroups_tested", "sum"),
        dominated=("dominated", "sum"), imbalanced=("imbalanced", "sum"))
    planted = table[table["scenario"].isin(PLANTED)]
    print("\n" + summary.to_string())
    for design in ("one-donor", "partial"):
        part = planted[planted["design"] == design]
        if len(part):
            print(f"{design}: the first subtype's subgroup flagged "
                  + ", ".join(f"{flag or 'none'} {n}/{len(part)}"
                              for flag, n in part["target_flag"].value_counts().items())
                  + f"; other subgroups 'dominated': {int(part['other_dominated'].sum())}")
    nulls = table[table["design"].isin(["balanced", "random"])]
    print(f"false flags (balanced + random donors, planted and null scenarios): dominated "
          f"{int(nulls['dominated'].sum())}, imbalanced {int(nulls['imbalanced'].sum())} of "
          f"{int(nulls['subgroups_tested'].sum())} subgroup tests")


if __name__ == "__main__":
    main()
