"""Ray: model-index ranges become tasks that write disjoint rows of one store.

Tasks run :func:`scdm.workers.run_worker` on the store directory (a shared filesystem across
the cluster), so they need nothing but the path: the store carries its recipe. A task whose
worker dies is retried by Ray (``max_retries``) and, being idempotent, finishes the models its
first attempt left incomplete. Progress is read from the store's completion flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._checks import check_int
from ..store import ModelStore
from ._worker import UserMain, run_feature_worker, run_main_worker, run_worker


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("backend='ray' needs Ray: pip install 'scdm[ray]' (or pip install "
                          "ray).") from None
    return ray


def _task(path: str, start: int, stop: int, device: str, chunk_size: int | None,
          num_threads: int, user_main: UserMain | None = None,
          keep_checkpoints: bool = False) -> int:
    if user_main is not None:  # the user's main() trains; it picks its own device
        return run_main_worker(path, user_main, start, stop)
    return run_worker(path, start, stop, device=device, chunk_size=chunk_size,
                      num_threads=num_threads, keep_checkpoints=keep_checkpoints)


def task_ranges(completed: np.ndarray, start: int, stop: int, task_size: int
                ) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into ranges of ``task_size`` models, without finished ranges."""
    return [(a, min(a + task_size, stop)) for a in range(start, stop, task_size)
            if not completed[a : min(a + task_size, stop)].all()]


def _connect(fn, *, ray_address: str | None, num_cpus_per_task: float,
             num_gpus_per_task: float, device: str, max_retries: int):
    """Ray (connected to ``ray_address``, or a local one started when none is running), ``fn``
    as a remote function with the task's resources and retries, the tasks' device (``auto``:
    CUDA for tasks with GPUs, else CPU) and their torch thread count."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=False)
    if device == "auto":
        device = "cuda" if num_gpus_per_task > 0 else "cpu"
    remote = ray.remote(num_cpus=num_cpus_per_task, num_gpus=num_gpus_per_task,
                        max_retries=int(max_retries))(fn)
    return ray, remote, device, max(1, int(num_cpus_per_task))


def fill_with_ray(store_path: str | Path, start: int, stop: int, *,
                        task_size: int = 256, ray_address: str | None = None,
                        num_cpus_per_task: float = 1, num_gpus_per_task: float = 0,
                        device: str = "auto", chunk_size: int | None = None,
                        max_retries: int = 3, progress: bool = True,
                        desc: str = "training models (ray)",
                        user_main: UserMain | None = None,
                        keep_checkpoints: bool = False) -> int:
    """Train the incomplete models in ``[start, stop)`` as Ray tasks; return how many tasks ran.

    Connects to ``ray_address`` (or the cluster of ``RAY_ADDRESS``), or starts a local Ray when
    none is running. ``num_gpus_per_task`` may be fractional (several tasks share a GPU); tasks
    with GPUs train on CUDA, tasks without on CPU (``device`` overrides). With ``user_main``
    the tasks call the user's ``main(index, logdir)`` instead of the store's recipe (it must
    be importable on every node: the same module path or file). ``keep_checkpoints``: the
    tasks keep each model's parameters in the store too.
    """
    import_ray()
    check_int("task_size", task_size, 1)
    if num_cpus_per_task <= 0 or num_gpus_per_task < 0:
        raise ValueError("num_cpus_per_task must be positive and num_gpus_per_task >= 0.")
    ray, remote, device, threads = _connect(
        _task, ray_address=ray_address, num_cpus_per_task=num_cpus_per_task,
        num_gpus_per_task=num_gpus_per_task, device=device, max_retries=max_retries)
    path = str(Path(store_path).resolve())
    store = ModelStore.open(path)
    ranges = task_ranges(store.completed, start, stop, int(task_size))
    if not ranges:
        return 0
    pending = [remote.remote(path, a, b, device, chunk_size, threads, user_main,
                             keep_checkpoints)
               for a, b in ranges]
    total = stop - start
    with tqdm(total=total, desc=desc, unit="model", disable=not progress) as bar:
        bar.update(int(store.completed[start:stop].sum()))
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                ray.get(ref)  # a task that failed after its retries raises here
            bar.update(int(store.completed[start:stop].sum()) - bar.n)
    if not store.completed[start:stop].all():
        raise RuntimeError(f"Ray tasks finished but {int((~store.completed[start:stop]).sum())}"
                           f" models of [{start}, {stop}) are incomplete in {path}.")
    return len(ranges)


def _feature_task(path: str, root: str, model_ids: list[int], proj_dim: int, seed: int,
                  damping: float, device: str, num_threads: int) -> int:
    """Featurize, and return the peak resident memory of this worker process (bytes)."""
    import resource

    run_feature_worker(path, root, model_ids, proj_dim=proj_dim, seed=seed, damping=damping,
                       device=device, num_threads=num_threads)
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def features_with_ray(store_path: str | Path, root: str | Path, model_ids: Sequence[int], *,
                      n_obs: int, proj_dim: int, seed: int, damping: float,
                      ray_address: str | None = None,
                      num_cpus_per_task: float = 1, num_gpus_per_task: float = 0,
                      device: str = "auto", max_retries: int = 3, progress: bool = True
                      ) -> list[int]:
    """Featurize the stored checkpoints ``model_ids`` into ``root`` as Ray tasks, one
    checkpoint each (:func:`scdm.workers.run_feature_worker`); return, per task that ran, the
    peak resident memory of its worker process (bytes: what a worker of the cluster needs).

    Each checkpoint's features are written to files of their own, so tasks never share a
    file; a task whose worker dies is retried and redoes only its unfinished checkpoint.
    """
    from ..trak._ondisk import FeatureStore

    ray, remote, device, threads = _connect(
        _feature_task, ray_address=ray_address, num_cpus_per_task=num_cpus_per_task,
        num_gpus_per_task=num_gpus_per_task, device=device, max_retries=max_retries)
    path = str(Path(store_path).resolve())
    features = FeatureStore(root, n_obs=n_obs, proj_dim=proj_dim, model_ids=model_ids)
    todo = features.missing()
    pending = [remote.remote(path, str(Path(root).resolve()), [m], int(proj_dim), int(seed),
                             float(damping), device, threads) for m in todo]
    peaks = []
    with tqdm(total=len(features), desc="TRAK features (ray)", unit="checkpoint",
              disable=not progress) as bar:
        bar.update(len(features) - len(todo))
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                peaks.append(int(ray.get(ref)))  # a task that failed after its retries raises
            bar.update(len(features) - len(features.missing()) - bar.n)
    missing = features.missing()
    if missing:
        raise RuntimeError(f"Ray tasks finished but the features of checkpoints {missing[:5]} "
                           f"are missing from {root}.")
    return peaks


def _read_only_tensor(a: np.ndarray):
    """A tensor over an array Ray handed over read-only (it is only read: no copy)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def _products_task(plan, path: str, c: int, Q: list[np.ndarray] | None, apply: bool,
                   backwards: bool, device: str, num_threads: int):
    """One checkpoint's share of a pass of the TRAK embedding's randomized SVD
    (:func:`scdm.trak._lowrank.checkpoint_products`), its features memory-mapped from ``path``;
    returns ``Z_c``, ``F_c Z_c`` (or None) and this worker's peak resident memory (bytes)."""
    import resource

    import torch

    from ..trak._lowrank import checkpoint_products

    torch.set_num_threads(int(num_threads))
    range_ = None if Q is None else [_read_only_tensor(q) for q in Q]
    Z, P = checkpoint_products(plan, np.load(path, mmap_mode="r"), c, range_, apply=apply,
                               backwards=backwards, device=torch.device(device))
    return ([z.cpu().numpy() for z in Z], None if P is None else [p.cpu().numpy() for p in P],
            int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024)


class RayCheckpointProducts:
    """Runs each checkpoint's share of a pass of the TRAK embedding (its ``F_cᵀ Q`` and
    ``F_c (F_cᵀ Q)``) as a Ray task that memory-maps the checkpoint's features from ``paths``
    (a filesystem every node sees), and yields the shares in the order asked, so that the
    caller sums them as it would its own: the embedding equals a local one bitwise on CPU.

    At most one task per free worker runs ahead of the share being summed (a share is as large
    as the range: 0.55 GB at 1,000,000 cells), so the object store holds a few at a time.
    ``peaks``: each task's worker peak resident memory (bytes).
    """

    def __init__(self, paths: Sequence[str | Path], *, ray_address: str | None = None,
                 num_cpus_per_task: float = 1, num_gpus_per_task: float = 0,
                 device: str = "auto", max_retries: int = 3):
        self.ray, self.remote, self.device, self.threads = _connect(
            _products_task, ray_address=ray_address, num_cpus_per_task=num_cpus_per_task,
            num_gpus_per_task=num_gpus_per_task, device=device, max_retries=max_retries)
        self.paths = [str(Path(p).resolve()) for p in paths]
        slots = self.ray.cluster_resources().get("GPU" if num_gpus_per_task > 0 else "CPU", 1)
        per = num_gpus_per_task if num_gpus_per_task > 0 else num_cpus_per_task
        self.ahead = max(1, int(slots // per)) + 1
        self.peaks: list[int] = []
        self._plan: tuple[object, object] | None = None

    def __call__(self, plan, order, Q, apply: bool, backwards: bool):
        if self._plan is None or self._plan[0] is not plan:  # sent once per embedding
            self._plan = (plan, self.ray.put(plan))
        plan_ref = self._plan[1]
        q_ref = None if Q is None else self.ray.put([q.cpu().numpy() for q in Q])
        order = list(order)
        pending = {}
        for i, c in enumerate(order):
            for ahead in order[i:i + self.ahead]:
                if ahead not in pending:
                    pending[ahead] = self.remote.remote(plan_ref, self.paths[ahead], ahead,
                                                        q_ref, apply, backwards, self.device,
                                                        self.threads)
            Z, P, peak = self.ray.get(pending.pop(c))  # failed after its retries: raises
            self.peaks.append(peak)
            yield (c, [_read_only_tensor(z) for z in Z],
                   None if P is None else [_read_only_tensor(p) for p in P])
