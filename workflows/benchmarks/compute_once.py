"""Compute once: TRAK's checkpoints trained once, its features computed once (issue 29).

Part 1: the first ``scdm.tl.trak`` call on N cells (``gaussian_subtypes``, raw features, 40
checkpoints), done the way before (the store filled without parameters, then every checkpoint
retrained to keep them: ``train_models`` + ``tl.trak`` on that store, as ``tl.trak`` did
inside) and now (one ``tl.trak`` call: each checkpoint's parameters kept as it is trained).
The two results must be equal bitwise.

Part 2: ``scdm run --method trak --lds-models 200`` on the bundled data, with the kept TRAK
features turned off (before: every tool after ``tl.trak`` computed the checkpoints' gradients
and inverse Gram matrices again) and on (now): how many times the factors were computed, the
seconds spent computing them, and the run's wall time.

    python workflows/benchmarks/compute_once.py [--cells 5000]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import stable_allocator

import scdm
import scdm.tl._trak as trak_module
from scdm.cli import main as cli_main


class FactorMeter:
    """Counts ``checkpoint_factors`` calls that computed the factors (not read them back) and
    the seconds they took: the real function, timed."""

    def __init__(self) -> None:
        self.computed, self.seconds = 0, 0.0
        self._real_features = trak_module.mlp_features

    def __enter__(self) -> FactorMeter:
        def features(*args, **kwds):
            self.computed += 1
            return self._real_features(*args, **kwds)

        real_factors = trak_module.checkpoint_factors

        def factors(*args, **kwds):
            start = time.perf_counter()
            try:
                return real_factors(*args, **kwds)
            finally:
                self.seconds += time.perf_counter() - start

        self._saved = (trak_module.mlp_features, trak_module.checkpoint_factors)
        trak_module.mlp_features, trak_module.checkpoint_factors = features, factors
        return self

    def __exit__(self, *exc) -> None:
        trak_module.mlp_features, trak_module.checkpoint_factors = self._saved


@contextlib.contextmanager
def factors_not_kept():
    """The code before: no finalized features kept in the store."""
    saved = trak_module.FACTORS_MAX_BYTES
    trak_module.FACTORS_MAX_BYTES = -1
    try:
        yield
    finally:
        trak_module.FACTORS_MAX_BYTES = saved


def first_call(n_cells: int, root: Path) -> list[dict]:
    per = n_cells // 6
    adata = scdm.datasets.gaussian_subtypes(
        {"control": [n_cells - 3 * per], "disease": [per] * 3}, random_state=0)
    rows = []
    start = time.perf_counter()
    with factors_not_kept():
        scdm.tl.train_models(adata, "disease", n_models=40, min_heldout=0,
                             store=root / "before", key_added="trak")
        before = scdm.tl.trak(adata, "disease", store=root / "before", copy=True)
    rows.append({"part": f"first tl.trak, {n_cells} cells", "way": "before (train, retrain)",
                 "seconds": time.perf_counter() - start})
    start = time.perf_counter()
    now = scdm.tl.trak(adata, "disease", store=root / "now", copy=True)
    rows.append({"part": f"first tl.trak, {n_cells} cells", "way": "now (train once)",
                 "seconds": time.perf_counter() - start})
    for key in ("X_trak", "X_trak_half1", "X_trak_half2"):
        np.testing.assert_array_equal(before.obsm[key], now.obsm[key])
    return rows


def cli_run(root: Path) -> list[dict]:
    rows = []
    for way, keep in (("before (features recomputed)", factors_not_kept()),
                      ("now (features kept)", contextlib.nullcontext())):
        out = root / ("cli_before" if "before" in way else "cli_now")
        with keep, FactorMeter() as meter:
            start = time.perf_counter()
            code = cli_main(["run", "--method", "trak", "--lds-models", "200", "--quiet",
                             "--out", str(out)])
            wall = time.perf_counter() - start
        if code:
            sys.exit(f"scdm run failed ({code})")
        rows.append({"part": "scdm run --method trak --lds-models 200", "way": way,
                     "seconds": wall, "factor computations": meter.computed,
                     "factor seconds": meter.seconds})
    return rows


def main() -> None:
    stable_allocator()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=5000)
    args = parser.parse_args()
    scdm.settings.verbosity = 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = first_call(args.cells, Path(tmp)) + cli_run(Path(tmp))
    print("| part | way | seconds | factor computations | factor seconds |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['part']} | {row['way']} | {row['seconds']:.1f} | "
              f"{row.get('factor computations', '')} | "
              + (f"{row['factor seconds']:.1f} |" if "factor seconds" in row else " |"))
    for part in dict.fromkeys(r["part"] for r in rows):
        a, b = (r["seconds"] for r in rows if r["part"] == part)
        print(f"{part}: before / now = {a / b:.2f}x")


if __name__ == "__main__":
    main()
