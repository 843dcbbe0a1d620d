"""Ray backend vs the local backend: models/s with 1 and 2 Ray workers, overhead per task.

Issue 2's trainer configuration (2,000 samples × 50 features, MLP 50→64→2, 20 epochs, each
model on 50%), trained into a store by ``scdm.tl.train_models`` with ``backend="local"`` (one
process, all cores) and ``backend="ray"`` on a local Ray with 1 and 2 CPUs (one single-threaded
worker per CPU), for several task sizes. The overhead of a task is measured directly as the
round trip of an empty Ray task, and as the time a 1-model task costs beyond its training.

    python workflows/benchmarks/scaling.py [--n-models 2048] [--task-sizes 64 256 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import ray
import torch

import scdm
from scdm.workers import RayBackend


def dataset(n_obs: int = 2000, n_features: int = 50) -> ad.AnnData:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n_obs)
    X = rng.normal(size=(n_obs, n_features)).astype(np.float32)
    X[:, :5] += (2 * y[:, None] - 1) * 0.5
    return ad.AnnData(X=X, obs=pd.DataFrame({"label": pd.Categorical(y.astype(str))},
                                            index=[f"c{i}" for i in range(n_obs)]))


def timed_train(adata, store: Path, n_models: int, **kwargs) -> float:
    start = time.perf_counter()
    scdm.tl.train_models(adata, "label", n_models=n_models, store=store,
                         config={"batch_size": 128}, verbose=False, **kwargs)
    return time.perf_counter() - start


@ray.remote(num_cpus=1)
def _noop() -> int:
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-models", type=int, default=2048)
    parser.add_argument("--task-sizes", type=int, nargs="+", default=[64, 256, 1024])
    args = parser.parse_args()
    adata = dataset()
    n = args.n_models
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        seconds = timed_train(adata, Path(tmp) / "local", n)
        rows.append(("local", torch.get_num_threads(), "-", n / seconds))
        print(f"local backend ({torch.get_num_threads()} threads): {n / seconds:.1f} models/s",
              flush=True)
        for cpus in (1, 2):
            ray.init(num_cpus=cpus, log_to_driver=False, include_dashboard=False)
            ray.get([_noop.remote() for _ in range(4)])  # start the workers
            start = time.perf_counter()
            ray.get([_noop.remote() for _ in range(200)])
            empty = (time.perf_counter() - start) / 200
            one = timed_train(adata, Path(tmp) / f"one{cpus}", 1, backend=RayBackend(task_size=1),
                              min_heldout=0)
            for size in args.task_sizes:
                seconds = timed_train(adata, Path(tmp) / f"ray{cpus}-{size}", n,
                                      backend=RayBackend(task_size=size))
                rows.append((f"ray, {cpus} worker(s)", 1, size, n / seconds))
                print(f"ray {cpus} worker(s), task size {size}: {n / seconds:.1f} models/s",
                      flush=True)
            print(f"ray {cpus} worker(s): empty task round trip {1000 * empty:.1f} ms; a "
                  f"1-model train_models call {one:.2f} s (worker start-up, recipe, store)",
                  flush=True)
            ray.shutdown()
    print(pd.DataFrame(rows, columns=["backend", "threads per worker", "task size",
                                      "models/s"]).round(1).to_string(index=False))


if __name__ == "__main__":
    main()
