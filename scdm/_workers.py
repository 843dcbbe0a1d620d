"""Workers that fill a store from what the store itself holds: CLI workers and Ray tasks.

A store that other processes or machines will fill carries its *recipe*: the training inputs
(``inputs.npz``: standardised features, labels, groups, strata) and the settings
(``recipe.json``: mask sampler, model, seeds). Any worker that can read the store directory can
then train any range of its models, and because every model's mask, initialisation and data
order depend only on ``(random_state, model index)``, the store ends up the same however the
ranges are split, repeated, retried or resumed.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ._seeding import check_random_state
from ._training import train_into_store
from .ensemble import EnsembleTrainer, TrainConfig, resolve_device
from .masks import MaskSampler
from .store import ModelStore

RECIPE_FILE = "recipe.json"
INPUTS_FILE = "inputs.npz"
WORKERS_DIR = "workers"


class TrainingRecipe(Protocol):
    """What a worker needs of a recipe kind (:class:`Recipe`, ``scdm.vision.ImageRecipe``)."""

    kind: ClassVar[str]
    targets_are_training: ClassVar[bool]

    def to_files(self) -> tuple[dict, dict]: ...

    def trainer(self, device: str = "auto") -> Any: ...

    def mask_source(self) -> Any: ...


@dataclass
class Recipe:
    """Everything needed to train model ``m`` of a store anywhere."""

    X: np.ndarray
    y: np.ndarray
    n_classes: int
    alpha: float
    config: TrainConfig
    random_state: int
    mask_mode: str = "balanced"
    groups: np.ndarray | None = None
    strata: np.ndarray | None = None
    seeds_per_mask: int = 1

    @classmethod
    def from_inputs(cls, inputs, config: TrainConfig, *, alpha: float, mask_mode: str,
                    random_state: int, seeds_per_mask: int = 1) -> Recipe:
        """From ``ModelInputs`` (features, labels, groups, strata) and the model settings."""
        return cls(X=inputs.X, y=inputs.y, n_classes=len(inputs.classes), alpha=float(alpha),
                   config=config, random_state=random_state, mask_mode=mask_mode,
                   groups=inputs.groups, strata=inputs.strata, seeds_per_mask=seeds_per_mask)

    kind: ClassVar[str] = "mlp"
    targets_are_training: ClassVar[bool] = True  # margins are recorded on the samples

    def to_files(self) -> tuple[dict, dict]:
        """``(arrays for inputs.npz, settings for recipe.json)``."""
        arrays = {"X": self.X, "y": self.y, "groups": self.groups, "strata": self.strata}
        settings = {"n_classes": self.n_classes, "alpha": self.alpha,
                    "config": self.config.to_dict(), "random_state": self.random_state,
                    "mask_mode": self.mask_mode, "seeds_per_mask": self.seeds_per_mask}
        return arrays, settings

    @classmethod
    def from_files(cls, arrays: dict, settings: dict) -> Recipe:
        return cls(X=arrays["X"], y=arrays["y"], groups=arrays.get("groups"),
                   strata=arrays.get("strata"), n_classes=int(settings["n_classes"]),
                   alpha=float(settings["alpha"]), config=TrainConfig(**settings["config"]),
                   random_state=check_random_state(settings["random_state"]),
                   mask_mode=settings["mask_mode"],
                   seeds_per_mask=int(settings.get("seeds_per_mask", 1)))

    def sampler(self) -> MaskSampler:
        return MaskSampler(self.y, self.alpha, groups=self.groups, mode=self.mask_mode,
                           strata=self.strata, random_state=self.random_state)

    def trainer(self, device: str = "auto") -> EnsembleTrainer:
        return EnsembleTrainer(self.X, self.y, self.config, n_classes=self.n_classes,
                               device=resolve_device(device), random_state=self.random_state)

    def mask_source(self):
        """What ``train_into_store`` draws masks from (repeated when several seeds per mask)."""
        sampler = self.sampler()
        if self.seeds_per_mask == 1:
            return sampler
        return RepeatedMasks(sampler, self.seeds_per_mask)


class RepeatedMasks:
    """Model ``m·n_seeds + s`` trains on mask ``m``: ``n_seeds`` initialisations per subset."""

    def __init__(self, sampler: MaskSampler, n_seeds: int) -> None:
        self.sampler, self.n_seeds = sampler, n_seeds

    def sample(self, model_indices) -> np.ndarray:
        return self.sampler.sample(np.asarray(model_indices) // self.n_seeds)


# Recipe kinds: ``recipe.json``'s "kind" → the class that reads it (imported when needed).
RECIPE_KINDS = {"mlp": "scdm._workers:Recipe", "resnet9": "scdm.vision._recipe:ImageRecipe"}


def _recipe_class(kind: str):
    if kind not in RECIPE_KINDS:
        raise ValueError(f"unknown recipe kind {kind!r} (known: {sorted(RECIPE_KINDS)}); the "
                         "store was written by a newer scdm.")
    module, name = RECIPE_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def write_recipe(store_path: str | Path, recipe: TrainingRecipe) -> None:
    """Save ``recipe`` into the store directory (atomically; an identical one is kept).

    ``recipe`` is any recipe kind (:data:`RECIPE_KINDS`): it gives its arrays and settings
    through ``to_files()``, and the ``kind`` is saved with the settings.
    """
    path = Path(store_path)
    arrays, settings = recipe.to_files()
    arrays = {k: v for k, v in arrays.items() if v is not None}
    settings = {"kind": recipe.kind, **settings}
    if (path / RECIPE_FILE).exists() and (path / INPUTS_FILE).exists():
        stored = json.loads((path / RECIPE_FILE).read_text())
        stored.setdefault("kind", "mlp")
        with np.load(path / INPUTS_FILE) as old:
            same = (stored == json.loads(json.dumps(settings)) and set(old.files) == set(arrays)
                    and all(np.array_equal(old[k], v) for k, v in arrays.items()))
        if not same:
            raise ValueError(f"the store {path} already holds a different training recipe; "
                             "use a new store path for these settings.")
        return
    for name, write in ((INPUTS_FILE, lambda f: np.savez(f, **arrays)),
                        (RECIPE_FILE, lambda f: f.write(json.dumps(settings, indent=2).encode()))):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=path)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path / name)


def targets_are_training_samples(store_path: str | Path, masks_width: int,
                                 margins_width: int, stated: bool | None = None) -> bool:
    """Whether target ``j`` of a store is training sample ``j`` (its datamodel is then chosen
    on the models that did not train on it): as ``stated``, else as the store's recipe says.

    A store without a recipe (made from a spec, or by MadryLab's code) must say: equal widths
    do not tell margins on the training samples from margins on as many test samples.
    """
    recipe_file = Path(store_path) / RECIPE_FILE
    if stated is None and recipe_file.exists():
        kind = json.loads(recipe_file.read_text()).get("kind", "mlp")
        stated = bool(_recipe_class(kind).targets_are_training)
    if stated is None:
        raise ValueError(
            f"the store {store_path} has no training recipe that says whether its targets are "
            "its training samples; pass --targets-are-training yes (margins recorded on the "
            "training samples themselves) or no (test targets).")
    if stated and masks_width != margins_width:
        raise ValueError(f"targets that are the training samples need as many margin columns "
                         f"as mask columns; the store has {margins_width} and {masks_width}.")
    return stated


def read_recipe(store_path: str | Path) -> TrainingRecipe:
    """The recipe saved in a store (its class follows the saved ``kind``)."""
    path = Path(store_path)
    if not (path / RECIPE_FILE).exists():
        raise FileNotFoundError(
            f"{path} holds no training recipe ({RECIPE_FILE}); create the store with "
            "`scdm store init` or scdm.tl.train_models(..., backend='ray'), which save it.")
    settings = json.loads((path / RECIPE_FILE).read_text())
    with np.load(path / INPUTS_FILE) as arrays:
        data = {k: arrays[k] for k in arrays.files}
    return _recipe_class(settings.pop("kind", "mlp")).from_files(data, settings)


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


class _Heartbeat:
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


def run_worker(store_path: str | Path, start: int, stop: int, *, device: str = "auto",
               chunk_size: int | None = None, num_threads: int | None = None,
               progress: bool = False) -> int:
    """Train the incomplete models in ``[start, stop)`` of the store; return how many.

    Idempotent: completed models are skipped, so reruns, overlapping ranges and retried tasks
    are safe; every chunk is written before the next starts.
    """
    import torch

    if num_threads:
        torch.set_num_threads(int(num_threads))
    path = Path(store_path)
    recipe = read_recipe(path)
    store = ModelStore.open(path, writable=True)
    todo = np.arange(start, stop)
    todo = todo[~store.completed[start:stop]]
    beat = _Heartbeat(path, start, stop, int(todo.size))
    try:
        trained = train_into_store(store, recipe.trainer(device), recipe.mask_source(), todo,
                                   chunk_size=chunk_size, progress=progress,
                                   on_chunk=beat.update)
    except BaseException:
        beat.finish("failed")
        raise
    beat.finish("done")
    return trained


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
    from .store import COMPLETED

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
    beat = _Heartbeat(path, start, stop, int(todo.size))
    argv = sys.argv
    trained = 0
    try:
        sys.argv = [main.target, *main.args]
        for index in tqdm(todo, desc="models (user main)", unit="model", disable=not progress):
            logdir = path / WORKERS_DIR / str(int(index))
            logdir.mkdir(parents=True, exist_ok=True)
            row = check_row(func(index=int(index), logdir=str(logdir), **kwargs), schema,
                            int(index))
            store.write([int(index)], **row)
            trained += 1
            beat.update(trained)
    except BaseException:
        beat.finish("failed")
        raise
    finally:
        sys.argv = argv
    beat.finish("done")
    return trained
