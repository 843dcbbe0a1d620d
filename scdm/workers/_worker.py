"""Idempotent workers: CLI processes, scheduler jobs and Ray tasks that fill model ranges.

Every model's mask, initialisation and data order depend only on ``(random_state, model
index)``, so a store ends up the same however its ranges are split, repeated, retried or
resumed. A worker leaves a heartbeat (``STORE/workers/<host>-<pid>.json``) for ``scdm
status``. Besides the built-in recipes, a worker can run a user's own
``main(index=i, logdir=DIR)`` (MadryLab's contract).
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..store import ModelStore
from ._loop import train_into_store
from ._recipes import MLPRecipe, read_recipe

WORKERS_DIR = "workers"


def parse_range(text: str, n_models: int, flag: str = "--models") -> tuple[int, int]:
    """``"START:STOP"`` (either side may be empty) → a checked ``(start, stop)``."""
    try:
        start_text, stop_text = text.split(":")
        start = int(start_text) if start_text else 0
        stop = int(stop_text) if stop_text else n_models
    except ValueError:
        raise ValueError(f"{flag} must look like START:STOP (e.g. 0:1000), got {text!r}."
                         ) from None
    if not 0 <= start < stop <= n_models:
        what = "the store's number of models" if flag == "--models" else "the number there is"
        raise ValueError(f"{flag} {text} must satisfy 0 <= START < STOP <= {n_models} ({what}).")
    return start, stop


class Heartbeat:
    """``workers/<host>-<pid>.json``: what this worker does, for ``scdm status`` (and tests)."""

    def __init__(self, store_path: Path, start: int, stop: int, total: int) -> None:
        folder = store_path / WORKERS_DIR
        folder.mkdir(exist_ok=True)
        self.path = folder / f"{socket.gethostname()}-{os.getpid()}.json"
        self.state = {"host": socket.gethostname(), "pid": os.getpid(), "models": [start, stop],
                      "to_train": total, "trained": 0, "started": time.time(), "state": "running"}
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.state, "updated": time.time()}))
        os.replace(tmp, self.path)

    def update(self, trained: int) -> None:
        self.state["trained"] = trained
        self.write()

    def finish(self, state: str) -> None:
        self.state["state"] = state
        self.write()

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("done" if exc_type is None else "failed")


def check_models(models: tuple[int, int] | None, n_models: int) -> tuple[int, int]:
    """``(start, stop)`` of a store's model range (``None``: all), checked."""
    start, stop = (0, n_models) if models is None else (int(models[0]), int(models[1]))
    if not 0 <= start < stop <= n_models:
        raise ValueError(f"models {(start, stop)} must satisfy 0 <= start < stop <= "
                         f"{n_models} (the store's number of models).")
    return start, stop


def run_worker(store_path: str | Path, start: int, stop: int, *, device: str = "auto",
               chunk_size: int | None = None, num_threads: int | None = None,
               progress: bool = False, keep_checkpoints: bool = False) -> int:
    """Train the incomplete models in ``[start, stop)`` of the store; return how many.

    Idempotent: completed models are skipped, so reruns, overlapping ranges and retried tasks
    are safe; every chunk is written before the next starts. ``keep_checkpoints``: keep each
    model's parameters in the store too (what TRAK uses).
    """
    import torch

    if num_threads:
        torch.set_num_threads(int(num_threads))
    path = Path(store_path)
    recipe = read_recipe(path)
    store = ModelStore.open(path, writable=True)
    todo = np.arange(start, stop)
    todo = todo[~store.completed[start:stop]]
    with Heartbeat(path, start, stop, int(todo.size)) as beat:
        return train_into_store(store, recipe.trainer(device), recipe.mask_source(), todo,
                                chunk_size=chunk_size, progress=progress, on_chunk=beat.update,
                                keep_checkpoints=keep_checkpoints)


def run_feature_worker(store_path: str | Path, root: str | Path, model_ids: Sequence[int], *,
                       proj_dim: int, seed: int, damping: float, device: str = "auto",
                       num_threads: int | None = None) -> int:
    """Write the TRAK features of the store's kept checkpoints ``model_ids`` into ``root``
    (:mod:`scdm.trak._ondisk`) from the store alone: its recipe (the models' inputs and a
    known batch) and the checkpoints' parameters. Idempotent: checkpoints already featurized
    are skipped, so a retried task redoes only what its first attempt did not finish. Returns
    how many were computed."""
    import torch

    from ..ensemble import stacked_params
    from ..trak._ondisk import FeatureStore, featurize, strata_cells

    if num_threads:
        torch.set_num_threads(int(num_threads))
    path = Path(store_path)
    recipe = read_recipe(path)
    store = ModelStore.open(path)
    loaded = [store.load_checkpoint(int(m)) for m in model_ids]
    states = [state for state in loaded if state is not None]
    lost = [int(m) for m, state in zip(model_ids, loaded, strict=True) if state is None]
    if lost or not isinstance(recipe, MLPRecipe):
        raise ValueError(f"{path} keeps no parameters of models {lost[:5]} (or its recipe is "
                         "not an MLP ensemble's): TRAK features are made from the kept "
                         "checkpoints of scdm.tl.trak.")
    trainer = recipe.trainer(device)
    params = stacked_params(states, trainer.device)
    features = FeatureStore(root, n_obs=int(trainer.X.shape[0]), proj_dim=proj_dim,
                            model_ids=model_ids)
    return featurize(features, params, trainer.X, trainer.y, seed=seed, damping=damping,
                     cells=strata_cells(recipe.y, recipe.strata))


# ---------------------------------------------------------------------- a user's main()
# MadryLab's worker contract: ``main(index=i, logdir=DIR)`` trains model ``i`` however the user
# likes and returns ``{field: array}`` for the store's schema. The store's rows, completion
# flags and heartbeats are scdm's; the training is the user's.

@dataclass(frozen=True)
class UserMain:
    """A user's training function named as ``MODULE[:FUNC]`` or ``path/to/file.py[:FUNC]``.

    Picklable (a Ray task imports it again on its node). ``args`` are extra command-line
    arguments: ``sys.argv`` holds them while ``main`` runs (fastargs/argparse scripts, as with
    MadryLab's worker, read them there), and ``--name=value`` / ``--name value`` pairs whose
    ``name`` is a parameter of ``main`` (or ``main`` takes ``**kwargs``) are also passed as
    keyword arguments, with values read as JSON where they parse (``2`` → 2) and as strings
    otherwise.
    """

    target: str
    args: tuple[str, ...] = ()
    sys_path: tuple[str, ...] = ()
    func: Any = None  # a callable given directly (Ray pickles it by value)

    @classmethod
    def resolve(cls, target: str, args: tuple[str, ...] | list[str] = ()) -> UserMain:
        """Check that ``target`` imports and names a callable, before any model is trained;
        the current directory and a file's folder go on the import path (as ``python -m``)."""
        paths = [os.getcwd()]
        module = target.partition(":")[0]
        if module.endswith(".py"):
            file = Path(module).resolve()
            if not file.is_file():
                raise FileNotFoundError(f"--main-import {target!r}: no file {file}.")
            paths.insert(0, str(file.parent))
        main = cls(target=target, args=tuple(str(a) for a in args), sys_path=tuple(paths))
        main.load()
        return main

    def load(self):
        import sys

        if self.func is not None:
            return self.func
        for entry in reversed(self.sys_path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        module_name, _, func_name = self.target.partition(":")
        func_name = func_name or "main"
        if module_name.endswith(".py"):
            module_name = Path(module_name).stem
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ImportError(
                f"cannot import {module_name!r} for --main-import {self.target!r} ({err}); give "
                "a module importable from the current directory (package.module) or a .py "
                "file path.") from err
        func = getattr(module, func_name, None)
        if not callable(func):
            raise ValueError(f"{module_name!r} has no function {func_name!r}; --main-import "
                             "takes MODULE[:FUNC] with FUNC(index=..., logdir=...) (default "
                             "main).")
        return func

    def keywords(self, func) -> dict[str, Any]:
        """The ``args`` that ``func`` accepts as keyword arguments."""
        import inspect

        params = inspect.signature(func).parameters
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        out: dict[str, Any] = {}
        args = list(self.args)
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if not arg.startswith("--"):
                continue
            name, eq, value = arg[2:].partition("=")
            if not eq:
                if i < len(args) and not args[i].startswith("--"):
                    value = args[i]
                    i += 1
                else:
                    value = "true"
            if not name.isidentifier() or name in ("index", "logdir"):
                continue
            if var_kw or (name in params and params[name].kind in (
                    params[name].POSITIONAL_OR_KEYWORD, params[name].KEYWORD_ONLY)):
                try:
                    out[name] = json.loads(value)
                except ValueError:
                    out[name] = value
        return out


def check_row(result: Any, schema: dict[str, tuple[np.dtype, tuple[int, ...]]], index: int
              ) -> dict[str, np.ndarray]:
    """What a user's ``main`` returned for model ``index``, checked against the store's schema
    (names, shapes, dtypes, finite values) and cast to the field dtypes, one row each."""
    from ..store import COMPLETED

    where = f"main() for model {index}"
    if not isinstance(result, dict):
        raise TypeError(f"{where} returned {type(result).__name__}; it must return a dict "
                        f"{{field: array}} with the fields {sorted(schema)}.")
    if COMPLETED in result:
        raise ValueError(f"{where} returned {COMPLETED!r}; scdm sets the completion flags "
                         "itself, after the row is written. Drop that key.")
    missing, unknown = set(schema) - set(result), set(result) - set(schema)
    if missing or unknown:
        raise ValueError(f"{where} returned the fields {sorted(result)}, the store's schema "
                         f"has {sorted(schema)} (missing {sorted(missing)}, unknown "
                         f"{sorted(unknown)}); return exactly the schema's fields.")
    rows = {}
    for name, (dtype, shape) in schema.items():
        value = result[name]
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        if value.shape != shape:
            raise ValueError(f"{where}: field {name!r} has shape {value.shape}, the schema says "
                             f"{shape}.")
        kind = value.dtype.kind
        if kind not in "biuf":
            raise TypeError(f"{where}: field {name!r} is {value.dtype}, not numbers.")
        if dtype.kind == "b" and kind != "b" and not np.isin(value, (0, 1)).all():
            raise ValueError(f"{where}: field {name!r} is a boolean field (mask) but holds "
                             "values other than 0/1.")
        if dtype.kind in "iu" and kind == "f" and not (np.isfinite(value).all() and (
                value == np.round(value)).all()):
            raise ValueError(f"{where}: field {name!r} is {dtype} but holds non-integer values.")
        with np.errstate(over="ignore", invalid="ignore"):
            cast = value.astype(dtype)
        if dtype.kind == "f" and not np.isfinite(cast).all():
            bad = "NaN or inf" if not np.isfinite(value).all() else f"values beyond {dtype}"
            raise ValueError(f"{where}: field {name!r} holds {bad}; nothing was written for "
                             "this model. Fix the training (or widen the field's dtype).")
        rows[name] = cast[None]
    return rows


def run_main_worker(store_path: str | Path, main: UserMain, start: int, stop: int, *,
                    redo: bool = False, progress: bool = False) -> int:
    """Call the user's ``main`` for each incomplete model in ``[start, stop)`` and write its
    row, then its completion flag; return how many models were trained.

    Idempotent like :func:`run_worker` (completed models are skipped unless ``redo``), with a
    heartbeat for ``scdm status``. ``main`` gets ``index`` and ``logdir`` (``STORE/workers/
    <index>``, as MadryLab's worker gives). A returned row that does not fit the schema is an
    error before anything of that model is written; rows written before stay.
    """
    import sys

    from tqdm.auto import tqdm

    path = Path(store_path)
    store = ModelStore.open(path, writable=True)
    schema = store.schema
    func = main.load()
    kwargs = main.keywords(func)
    todo = np.arange(start, stop)
    if not redo:
        todo = todo[~store.completed[start:stop]]
    argv = sys.argv
    trained = 0
    with Heartbeat(path, start, stop, int(todo.size)) as beat:
        try:
            sys.argv = [main.target, *main.args]
            for index in tqdm(todo, desc="models (user main)", unit="model",
                              disable=not progress):
                logdir = path / WORKERS_DIR / str(int(index))
                logdir.mkdir(parents=True, exist_ok=True)
                row = check_row(func(index=int(index), logdir=str(logdir), **kwargs), schema,
                                int(index))
                store.write([int(index)], **row)
                trained += 1
                beat.update(trained)
        finally:
            sys.argv = argv
    return trained
