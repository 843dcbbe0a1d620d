"""Fitting a partly filled store: completed rows streamed from the files vs copied first.

``scdm fit`` and ``tl.fit_datamodels`` used to index ``masks[completed]``, which reads every
completed row into memory (and keeps the pages mapped) before the solver streams anything:
about 15 GB for CIFAR-10 at α = 0.5. They now read the completed rows in chunks through
``scdm._memmap.RowSubset``. This benchmark fills a MadryLab-layout store (bool masks,
float16 margins) with every other model complete and fits it both ways, each in a fresh
process, printing wall time, the peak private (anonymous) memory — what a copy costs and
what runs a machine out of memory — and the peak of file pages mapped (page cache the kernel
may drop at any time; how much of it stays mapped depends on the kernel's page-cache state
and varied between runs here), and the largest weight difference.

    python workflows/benchmarks/interop.py [--models 200000] [--features 1000] [--targets 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

CHILD = """
import json, sys, threading, time
import numpy as np
from scdm._memmap import RowSubset
from scdm.regression import LassoPath
from scdm.store import ModelStore

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")}

peak = {"RssAnon": 0.0, "RssFile": 0.0}
def sample():
    while True:
        for k, v in status().items():
            peak[k] = max(peak[k], v)
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
store = ModelStore.open(sys.argv[1])
done = store.completed_indices()
start = time.perf_counter()
if sys.argv[2] == "copied":
    X, Y = store.masks[done], store.margins[done]
else:
    X, Y = RowSubset(store.masks, done), RowSubset(store.margins, done)
model = LassoPath(n_lambdas=10, memory_budget=256 << 20, verbose=False).fit(X, Y)
np.save(sys.argv[3], model.coef_)
time.sleep(0.05)
print(json.dumps({"seconds": time.perf_counter() - start, **peak}))
"""


def make_store(path: Path, n_models: int, n_features: int, n_targets: int) -> None:
    """A store as MadryLab's initialize_store + workers leave it, every other model done."""
    rng = np.random.default_rng(0)
    masks = open_memmap(path / "masks.npy", mode="w+", dtype=np.bool_,
                        shape=(n_models, n_features))
    margins = open_memmap(path / "margins.npy", mode="w+", dtype=np.float16,
                          shape=(n_models, n_targets))
    done = open_memmap(path / "_completed.npy", mode="w+", dtype=np.bool_, shape=(n_models,))
    weights = rng.normal(size=(n_features, n_targets)) * (rng.random((n_features, n_targets))
                                                          < 0.02)
    for start in range(0, n_models, 20000):
        rows = slice(start, min(start + 20000, n_models))
        m = rng.random((rows.stop - rows.start, n_features)) < 0.5
        masks[rows] = m
        margins[rows] = m @ weights + rng.normal(size=(m.shape[0], n_targets))
    done[::2] = True
    for array in (masks, margins, done):
        array.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--targets", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        path.mkdir()
        make_store(path, args.models, args.features, args.targets)
        size = (path / "masks.npy").stat().st_size / 2**20
        print(f"store: {args.models} models ({args.models // 2} complete) x {args.features} "
              f"features, {args.targets} float16 targets; masks.npy {size:.0f} MiB")
        rows = {}
        for way in ("copied", "streamed"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), way,
                                  f"{tmp}/{way}.npy"], capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"the {way} fit failed:\n{out.stderr}")
            rows[way] = json.loads(out.stdout.strip().splitlines()[-1])
        diff = float(np.abs(np.load(f"{tmp}/copied.npy") - np.load(f"{tmp}/streamed.npy")).max())
    print(f"{'way':9s} {'seconds':>8s} {'peak private (MiB)':>19s} {'peak file-mapped (MiB)':>23s}")
    for way, r in rows.items():
        print(f"{way:9s} {r['seconds']:8.1f} {r['RssAnon']:19.0f} {r['RssFile']:23.0f}")
    streamed, copied = rows["streamed"], rows["copied"]
    print(f"streamed / copied: peak private memory {streamed['RssAnon'] / copied['RssAnon']:.2f}, "
          f"time {streamed['seconds'] / copied['seconds']:.2f}; max |weight difference| {diff:.2e}")


if __name__ == "__main__":
    main()
