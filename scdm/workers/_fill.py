"""One verb, :func:`fill_store`, and where it runs: :class:`LocalBackend` or :class:`RayBackend`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._checks import check_int
from ..store import ModelStore
from ._loop import train_into_store
from ._ray import RayCheckpointProducts, features_with_ray, fill_with_ray, import_ray
from ._recipes import TrainingRecipe, read_recipe, write_recipe
from ._worker import UserMain, check_models, run_feature_worker, run_main_worker


@dataclass(frozen=True)
class LocalBackend:
    """Train in this process, ``chunk_size`` models at a time (default: from the device's
    memory). Results do not depend on ``chunk_size`` (bitwise on CPU). ``keep_checkpoints``:
    also keep each model's parameters in the store as it is written (``STORE/checkpoints``;
    what ``tl.trak`` does for its checkpoints, so nothing is trained twice)."""

    chunk_size: int | None = None
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)


@dataclass(frozen=True)
class RayBackend:
    """Ranges of ``task_size`` models become Ray tasks that write disjoint rows of the store.

    The store must lie on a filesystem every Ray node sees. Connects to ``address`` (default:
    ``RAY_ADDRESS``, else a local Ray is started). ``num_gpus_per_task`` may be fractional
    (several tasks share a GPU); a task whose worker dies is retried ``max_retries`` times and
    finishes what its first attempt left. Results are identical to :class:`LocalBackend` on
    CPU. A task costs ~0.1-1 s of overhead (``workflows/benchmarks/scaling.py``).
    ``keep_checkpoints``: the tasks keep each model's parameters in the store too.
    """

    address: str | None = None
    num_cpus_per_task: float = 1
    num_gpus_per_task: float = 0
    task_size: int = 256
    chunk_size: int | None = None
    max_retries: int = 3
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        check_int("task_size", self.task_size, 1)
        if not self.num_cpus_per_task > 0 or self.num_gpus_per_task < 0:
            raise ValueError("num_cpus_per_task must be positive and num_gpus_per_task >= 0.")


Backend = LocalBackend | RayBackend
BACKENDS = ("local", "ray")


def as_backend(backend: str | Backend) -> Backend:
    """``"local"``, ``"ray"`` or a backend object → a backend object; Ray is imported here, so
    a missing Ray fails before any work."""
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or a LocalBackend / "
                             f"RayBackend, got {backend!r}.")
        backend = LocalBackend() if backend == "local" else RayBackend()
    if not isinstance(backend, (LocalBackend, RayBackend)):
        raise TypeError(f"backend must be 'local', 'ray', a LocalBackend or a RayBackend, got "
                        f"{type(backend).__name__}.")
    if isinstance(backend, RayBackend):
        import_ray()
    return backend


def fill_store(store: ModelStore | str | Path, recipe: TrainingRecipe | UserMain | None = None,
               *, models: tuple[int, int] | None = None, backend: str | Backend = "local",
               device: str = "auto", progress: bool = True,
               desc: str = "training models") -> None:
    """Train the incomplete models in ``models`` (``(start, stop)``, default all) of a store.

    ``recipe`` says how: a :class:`TrainingRecipe` (saved into the store first when Ray tasks
    need it), a user's ``main`` (:class:`UserMain`), or ``None``: the recipe the store holds.
    Completed models are skipped, so any split of the work gives the same store. A backend
    with ``keep_checkpoints`` keeps each new model's parameters in the store as well.
    """
    backend = as_backend(backend)
    keep_checkpoints = backend.keep_checkpoints
    if keep_checkpoints and isinstance(recipe, UserMain):
        raise ValueError("keep_checkpoints needs a training recipe: a user's main() returns "
                         "store rows, not model parameters.")
    if not isinstance(store, ModelStore):
        store = ModelStore.open(store, writable=True)
    start, stop = check_models(models, store.n_models)
    if isinstance(backend, RayBackend):
        user_main = recipe if isinstance(recipe, UserMain) else None
        if recipe is not None and not isinstance(recipe, UserMain):
            write_recipe(store.path, recipe)
        fill_with_ray(store.path, start, stop, task_size=backend.task_size,
                      ray_address=backend.address, num_cpus_per_task=backend.num_cpus_per_task,
                      num_gpus_per_task=backend.num_gpus_per_task, device=device,
                      chunk_size=backend.chunk_size, max_retries=backend.max_retries,
                      progress=progress, desc=f"{desc} (ray)", user_main=user_main,
                      keep_checkpoints=keep_checkpoints)
    elif isinstance(recipe, UserMain):
        run_main_worker(store.path, recipe, start, stop, progress=progress)
    else:
        recipe = read_recipe(store.path) if recipe is None else recipe
        train_into_store(store, recipe.trainer(device), recipe.mask_source(),
                         np.arange(start, stop), chunk_size=backend.chunk_size,
                         progress=progress, desc=desc, keep_checkpoints=keep_checkpoints)


def fill_features(store: str | Path, root: str | Path, model_ids, *, n_obs: int, proj_dim: int,
                  seed: int, damping: float, backend: str | Backend = "local",
                  device: str = "auto", progress: bool = True) -> list[int]:
    """Write the TRAK features of the store's kept checkpoints ``model_ids`` into ``root``
    (:mod:`scdm.trak._ondisk`), here or as Ray tasks (one checkpoint each), from the store's
    recipe and checkpoints alone. Checkpoints already featurized are skipped; the numbers do
    not depend on the backend (bitwise on CPU). Returns the peak resident memory (bytes) of
    the worker of each Ray task that ran (empty here)."""
    backend = as_backend(backend)
    ids = [int(m) for m in model_ids]
    if isinstance(backend, RayBackend):
        return features_with_ray(store, root, ids, n_obs=n_obs, proj_dim=proj_dim,
                                 seed=seed, damping=damping, ray_address=backend.address,
                                 num_cpus_per_task=backend.num_cpus_per_task,
                                 num_gpus_per_task=backend.num_gpus_per_task, device=device,
                                 max_retries=backend.max_retries, progress=progress)
    run_feature_worker(store, root, ids, proj_dim=proj_dim, seed=seed, damping=damping,
                       device=device)
    return []


def embedding_executor(paths, *, backend: str | Backend = "local", device: str = "auto"
                       ) -> RayCheckpointProducts | None:
    """Where the TRAK embedding's per-checkpoint products run
    (:func:`scdm.trak._lowrank.randomized_left_classes`' ``executor``): Ray tasks that
    memory-map the checkpoints' features at ``paths`` for a :class:`RayBackend`, here
    (``None``) otherwise. The numbers do not depend on the backend (bitwise on CPU)."""
    backend = as_backend(backend)
    if not isinstance(backend, RayBackend):
        return None
    return RayCheckpointProducts(paths, ray_address=backend.address,
                                 num_cpus_per_task=backend.num_cpus_per_task,
                                 num_gpus_per_task=backend.num_gpus_per_task, device=device,
                                 max_retries=backend.max_retries)
