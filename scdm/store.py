"""The memory-mapped mask/margin store.

A store is a directory in the MadryLab datamodels layout: one ``.npy`` file per field
(``masks.npy`` ``M × n`` bool, ``margins.npy`` ``M × n_targets`` float32, extra per-model fields
such as ``heldout_accuracy.npy``), ``_completed.npy`` (``M`` bool), and ``spec.json`` with the
schema, the number of models and a fingerprint of the configuration that produced it.

``spec.json`` names dtypes as MadryLab's specs do (numpy attribute names: ``"bool_"``,
``"float16"``), so MadryLab's ``preprocess_spec`` accepts it; a MadryLab spec is accepted as an
input too (:meth:`ModelStore.from_spec`), and a directory that MadryLab's
``initialize_store`` and workers wrote opens as a store without anything being written into it
(:meth:`ModelStore.from_madrylab`).

Writers fill disjoint rows. Each write puts every field of its rows on disk (``pwrite`` +
``fsync``) *before* it sets the rows' completion flags, so a row flagged complete is never torn,
however a worker dies. Many processes can therefore fill one store at once. Readers see the
fields as read-only memmaps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from ._checks import check_int
from ._settings import MARGIN_DTYPES

CHECKPOINTS = "checkpoints"  # folder of a store that keeps some models' parameters

SPEC_FILE = "spec.json"
COMPLETED = "_completed"
STORE_FORMAT = "scdm-store"
STORE_VERSION = 1


class StoreMismatchError(ValueError):
    """An existing store was written with a configuration other than the one asked for."""


def store_schema(n_obs: int, n_targets: int | None = None, *,
                 margins_dtype: str = "float32") -> dict:
    """Fields of a training store: masks over samples, margins on targets (``float32`` or
    ``float16``), held-out accuracy."""
    if np.dtype(margins_dtype).name not in MARGIN_DTYPES:
        raise ValueError(f"margins_dtype must be one of {MARGIN_DTYPES}, got {margins_dtype!r}.")
    return {
        "masks": (np.bool_, (n_obs,)),
        "margins": (np.dtype(margins_dtype), (n_obs if n_targets is None else n_targets,)),
        "heldout_accuracy": (np.float32, ()),
    }


def hash_arrays(*arrays: np.ndarray | None) -> str:
    """Content hash of arrays (shape, dtype and bytes), for store fingerprints."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data.cast("B"))
    return h.hexdigest()


def spec_dtype_name(dtype: Any) -> str:
    """A dtype as MadryLab's specs name it: the numpy attribute (``"bool_"``, ``"float16"``).

    Their ``preprocess_spec`` accepts a dtype only when ``hasattr(numpy, name)``; ``"bool"`` is
    not such an attribute on numpy 1.24–1.26, so booleans are ``"bool_"``. A dtype without a
    numpy attribute (a non-native byte order) keeps numpy's ``str`` form.
    """
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "bool_"
    name = dtype.name
    attr = getattr(np, name, None)
    if isinstance(attr, type) and issubclass(attr, np.generic) and np.dtype(attr) == dtype:
        return name
    return dtype.str


def parse_spec_dtype(name: Any, field: str = "?") -> np.dtype:
    """The dtype of a spec entry: a numpy attribute name (MadryLab), or any numpy dtype string
    (``"|b1"``, ``"<f2"``: what stores written before scdm 0.1 hold)."""
    attr = getattr(np, name, None) if isinstance(name, str) else None
    try:
        if isinstance(attr, type) and issubclass(attr, np.generic):
            return np.dtype(attr)
        return np.dtype(name)
    except TypeError:
        raise ValueError(
            f"field {field!r}: unknown dtype {name!r}; use a numpy dtype name such as "
            "'bool_', 'float16', 'float32' or 'uint8'.") from None


def _schema_of(spec_schema: Mapping[str, Any]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """``{field: (dtype, row shape)}`` of a spec's schema, whichever way its dtypes are named."""
    return {name: (parse_spec_dtype(f["dtype"], name), tuple(int(s) for s in f["shape"]))
            for name, f in spec_schema.items()}


def check_madrylab_spec(spec: Mapping[str, Any]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Validate a MadryLab ``spec.json`` (``{"num_models": M, "schema": {field: {"dtype",
    "shape"}}}``) and return its schema as ``{field: (dtype, row shape)}``.

    Raises a ``ValueError`` that names the offending field and the fix.
    """
    if not isinstance(spec, Mapping):
        raise ValueError("a spec must be a JSON object with 'num_models' and 'schema'.")
    missing = [key for key in ("num_models", "schema") if key not in spec]
    if missing:
        raise ValueError(f"the spec has no {' or '.join(map(repr, missing))}; a MadryLab spec "
                         'looks like {"num_models": 100, "schema": {"masks": {"shape": [50000], '
                         '"dtype": "bool_"}, "margins": {"shape": [10000], "dtype": '
                         '"float16"}}}.')
    n_models = spec["num_models"]
    n_models = check_int("num_models", n_models, 1)
    schema = spec["schema"]
    if not isinstance(schema, Mapping) or not schema:
        raise ValueError("the spec's schema must map at least one field to {dtype, shape}.")
    if COMPLETED in schema:
        raise ValueError(f"the field name {COMPLETED!r} is reserved for the completion flags; "
                         "rename that field.")
    for name, entry in schema.items():
        if not isinstance(entry, Mapping) or "dtype" not in entry or "shape" not in entry:
            raise ValueError(f"field {name!r} needs a 'dtype' and a 'shape', got {entry!r}.")
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ValueError(f"field {name!r}: shape must be a list of non-negative integers "
                             f"(e.g. [50000], or [] for one number per model), got {shape!r}.")
    return _schema_of(schema)  # dtype names are checked there


def _normalize(value: Any) -> Any:
    """JSON-comparable form of a fingerprint value (tuples become lists, numpy scalars plain)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a store spec: {value!r}")


def fingerprint_differences(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Human-readable list of the fields in which two fingerprints differ."""
    stored, requested = _normalize(stored), _normalize(requested)
    missing = object()
    lines = []
    for key in sorted(set(stored) | set(requested)):
        old, new = stored.get(key, missing), requested.get(key, missing)
        if old != new:
            old_s = "<absent>" if old is missing else repr(old)
            new_s = "<absent>" if new is missing else repr(new)
            lines.append(f"{key}: store has {old_s}, this call has {new_s}")
    return lines


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    with open(path, "rb") as f:
        version = npy_format.read_magic(f)
        read = (npy_format.read_array_header_1_0 if version == (1, 0)
                else npy_format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path} is Fortran-ordered; the store needs C order.")
        return tuple(shape), np.dtype(dtype), f.tell()


def _write_npy_header(path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> bool:
    """Rewrite a ``.npy`` header in place; False if the new header would not fit."""
    import io

    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    for writer in (npy_format.write_array_header_1_0, npy_format.write_array_header_2_0):
        buf = io.BytesIO()
        writer(buf, header)
        if buf.tell() == offset:
            break
    else:
        return False
    with open(path, "r+b") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    return True


def _is_scdm_store(path: Path) -> bool:
    """Whether ``path`` holds a ``spec.json`` that scdm wrote (not a user's MadryLab spec)."""
    try:
        return json.loads((path / SPEC_FILE).read_text()).get("format") == STORE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class ObsView:
    """A lazy ``n_obs × n_models`` (transposed) view of a ``n_models × n_obs`` store field.

    Indexing reads only what is asked for from the memmap; ``np.asarray(view)`` reads it all.
    """

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim != 2:
            raise ValueError("an obs-aligned view needs a 2-d field (models × samples).")
        self._array = array

    @property
    def shape(self) -> tuple[int, int]:
        return (self._array.shape[1], self._array.shape[0])

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise IndexError("an obs-aligned view takes at most two indices (obs, models).")
            obs_key, model_key = key
        else:
            obs_key, model_key = key, slice(None)
        rows = np.asarray(self._array[model_key])
        return rows[obs_key] if rows.ndim == 1 else rows[:, obs_key].T

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self._array).T
        return out.astype(dtype) if dtype is not None else out

    def __repr__(self) -> str:
        return f"ObsView(shape={self.shape}, dtype={self.dtype})"


class ModelStore:
    """A directory of per-model fields on disk, filled row by row by any number of workers.

    Use :meth:`create` to make (or resume) a store and :meth:`open` to read one. Fields are
    exposed as read-only memmaps through :meth:`field` (and the shortcuts :attr:`masks`,
    :attr:`margins`, :attr:`completed`); rows are written with :meth:`write`.
    """

    def __init__(self, path: str | os.PathLike, *, writable: bool = False,
                 spec: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        if spec is None:
            spec_path = self.path / SPEC_FILE
            if not spec_path.is_file():
                raise FileNotFoundError(
                    f"no scdm store at {self.path} (no {SPEC_FILE}). Create one with "
                    "ModelStore.create, or read a MadryLab directory with "
                    "ModelStore.from_madrylab.")
            spec = json.loads(spec_path.read_text())
        self.spec = dict(spec)
        self.writable = writable
        self._memmaps: dict[str, np.ndarray] = {}
        self._check_files()

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        n_models: int,
        schema: Mapping[str, tuple[Any, Sequence[int]]],
        fingerprint: Mapping[str, Any] | None = None,
        resume: bool = True,
    ) -> ModelStore:
        """Create a store, or resume the one already at ``path``.

        Parameters
        ----------
        path
            Directory of the store. It must not exist, be empty, or hold a store.
        n_models
            Number of model rows. Resuming a smaller store extends it; a larger one is kept.
        schema
            ``{field: (dtype, row_shape)}``, e.g. ``{"masks": (bool, (n,)), ...}``.
        fingerprint
            Configuration that produced the store (data hash, label, alpha, hyper-parameters,
            seed). Resuming requires the same fingerprint; any difference is an error that names
            the differing fields. The existing store is never modified in that case.
        resume
            If False, an existing store at ``path`` is an error instead of being resumed.
        """
        path = Path(path)
        n_models = check_int("n_models", n_models, 1)
        schema = {name: (np.dtype(dt), tuple(int(s) for s in shape)) for name, (dt, shape) in
                  schema.items()}
        if COMPLETED in schema:
            raise ValueError(f"{COMPLETED!r} is reserved for the completion flags.")
        fingerprint = _normalize(dict(fingerprint or {}))
        spec_schema = {name: {"dtype": spec_dtype_name(dt), "shape": list(shape)}
                       for name, (dt, shape) in schema.items()}

        if (path / SPEC_FILE).exists():
            if not resume:
                raise FileExistsError(
                    f"a store already exists at {path}; pass resume=True to continue it, or "
                    "choose another path (scdm never wipes an existing store)."
                )
            return cls._resume(path, n_models, spec_schema, fingerprint)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(
                f"{path} exists and is not an scdm store; refusing to write into it. "
                "Choose an empty or new directory."
            )

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            for name, (dt, shape) in schema.items():
                npy_format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt,
                                       shape=(n_models, *shape))
            npy_format.open_memmap(tmp / f"{COMPLETED}.npy", mode="w+", dtype=bool,
                                   shape=(n_models,))
            spec = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "num_models": int(n_models),
                "schema": spec_schema,
                "fingerprint": fingerprint,
            }
            (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2))
            if path.exists():
                path.rmdir()  # empty (checked above); rename cannot replace a directory we race
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if (path / SPEC_FILE).exists():  # another worker created it first: resume theirs
                return cls._resume(path, n_models, spec_schema, fingerprint)
            raise
        return cls(path, writable=True)

    @classmethod
    def _resume(cls, path: Path, n_models: int, spec_schema: dict, fingerprint: Mapping
                ) -> ModelStore:
        store = cls(path, writable=True)
        diffs = fingerprint_differences(store.fingerprint, fingerprint)
        # compared as dtypes: stores written before the MadryLab names said "|b1", not "bool_"
        diffs += [
            f"schema: store has {store.spec['schema']}, this call has {spec_schema}"
        ] if _schema_of(store.spec["schema"]) != _schema_of(spec_schema) else []
        if diffs:
            raise StoreMismatchError(
                f"the store at {path} was written with another configuration:\n  - "
                + "\n  - ".join(diffs)
                + "\nUse a new store path for this configuration, or repeat the original "
                "settings to resume it. The existing store was left untouched."
            )
        if n_models > store.n_models:
            store.extend(n_models)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, *, writable: bool = False,
             fingerprint: Mapping[str, Any] | None = None) -> ModelStore:
        """Open an existing store; with ``fingerprint``, refuse one made with another config.

        A directory written by MadryLab's ``initialize_store`` and workers (no scdm
        ``spec.json``) opens through :meth:`from_madrylab`, with an empty fingerprint.
        """
        path = Path(path)
        if not _is_scdm_store(path) and (path / f"{COMPLETED}.npy").is_file():
            store = cls.from_madrylab(path, writable=writable)
        else:
            store = cls(path, writable=writable)
        if fingerprint is not None:
            diffs = fingerprint_differences(store.fingerprint, fingerprint)
            if diffs:
                raise StoreMismatchError(
                    f"the store at {path} was written with another configuration:\n  - "
                    + "\n  - ".join(diffs)
                )
        return store

    @classmethod
    def from_spec(cls, path: str | os.PathLike, spec: Mapping[str, Any] | str | os.PathLike,
                  *, resume: bool = True) -> ModelStore:
        """Create (or resume) a store from a MadryLab ``spec.json`` (a path or its dict).

        The directory gets what MadryLab's ``initialize_store`` makes (one ``<field>.npy`` per
        schema field and ``_completed.npy``, ``num_models`` rows each) plus scdm's
        ``spec.json``, so MadryLab's workers and ``np.load`` read it as theirs, and ``scdm
        worker --main-import`` fills it with a user's training function.
        """
        if isinstance(spec, (str, os.PathLike)):
            spec_file = Path(spec)
            try:
                loaded = json.loads(spec_file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{spec_file} is not valid JSON: {err}") from None
        else:
            loaded = spec
        schema = check_madrylab_spec(loaded)
        return cls.create(path, n_models=int(loaded["num_models"]), schema=schema,
                          fingerprint={"source": "madrylab-spec"}, resume=resume)

    @classmethod
    def from_madrylab(cls, path: str | os.PathLike, *, writable: bool = False) -> ModelStore:
        """Open a directory written by MadryLab's ``datamodels`` (``*.npy`` + ``_completed.npy``).

        The spec is read off the ``.npy`` headers and kept in memory: nothing is written into
        the directory (a read-only folder opens, and a ``spec.json`` of the user's is never
        touched). The store has an empty fingerprint; ``writable=True`` lets workers fill its
        rows.
        """
        path = Path(path)
        if _is_scdm_store(path):
            return cls(path, writable=writable)
        completed = path / f"{COMPLETED}.npy"
        if not completed.is_file():
            raise FileNotFoundError(
                f"{path} has no {COMPLETED}.npy; a MadryLab datamodels directory holds one "
                "<field>.npy per field plus _completed.npy."
            )
        (n_models,), _, _ = _read_npy_header(completed)
        # the user's own spec.json (MadryLab's format), where there is one, names the fields
        user_spec = None
        if (path / SPEC_FILE).is_file():
            try:
                user_spec = check_madrylab_spec(json.loads((path / SPEC_FILE).read_text()))
            except ValueError:
                user_spec = None
        files = ([path / f"{name}.npy" for name in user_spec] if user_spec is not None else
                 [f for f in sorted(path.glob("*.npy")) if f.stem != COMPLETED])
        schema = {}
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{path / SPEC_FILE} names the field {file.stem!r}, "
                                        f"but {file.name} is missing.")
            shape, dtype, _ = _read_npy_header(file)
            if not shape or shape[0] != n_models:
                if user_spec is not None:
                    raise ValueError(f"{file.name} has shape {shape}, but _completed.npy says "
                                     f"{n_models} models.")
                warnings.warn(f"{file} has shape {shape}, not one row per model "
                              f"({n_models}); it is not read as a field of the store.",
                              stacklevel=2)
                continue
            schema[file.stem] = {"dtype": spec_dtype_name(dtype), "shape": list(shape[1:])}
        spec = {"format": STORE_FORMAT, "version": STORE_VERSION, "num_models": int(n_models),
                "schema": schema, "fingerprint": {}, "imported_from": "madrylab"}
        return cls(path, writable=writable, spec=spec)

    # ------------------------------------------------------------------ description
    @property
    def n_models(self) -> int:
        return int(self.spec["num_models"])

    @property
    def fingerprint(self) -> dict:
        return dict(self.spec.get("fingerprint", {}))

    @property
    def fields(self) -> list[str]:
        return list(self.spec["schema"])

    @property
    def schema(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """``{field: (dtype, row shape)}`` (without the completion flags)."""
        return _schema_of(self.spec["schema"])

    def _file(self, name: str) -> Path:
        return self.path / f"{name}.npy"

    def _check_files(self) -> None:
        expected = {name: (dtype, (self.n_models, *shape))
                    for name, (dtype, shape) in self.schema.items()}
        expected[COMPLETED] = (np.dtype(bool), (self.n_models,))
        for name, (dtype, shape) in expected.items():
            file = self._file(name)
            if not file.is_file():
                raise FileNotFoundError(f"store {self.path} is missing {file.name}.")
            got_shape, got_dtype, offset = _read_npy_header(file)
            if got_dtype != dtype or got_shape[1:] != shape[1:] or got_shape[0] < shape[0]:
                raise ValueError(
                    f"{file} holds {got_dtype} {got_shape}, but {SPEC_FILE} says {dtype} {shape}; "
                    "the store is damaged (was it extended while another process wrote to it?)."
                )
            if file.stat().st_size < offset + int(np.prod(got_shape)) * dtype.itemsize:
                raise ValueError(f"{file} is shorter than its header says; the store is damaged.")

    def __repr__(self) -> str:
        return (f"ModelStore({str(self.path)!r}, n_models={self.n_models}, "
                f"completed={self.n_completed}, fields={self.fields})")

    # ------------------------------------------------------------------ reading
    def field(self, name: str) -> np.ndarray:
        """Read-only memmap of one field (``n_models × ...``), opened lazily and cached."""
        if name != COMPLETED and name not in self.spec["schema"]:
            raise KeyError(f"store has no field {name!r}; fields are {self.fields}.")
        if name not in self._memmaps:
            mm = np.load(self._file(name), mmap_mode="r")
            self._memmaps[name] = mm[: self.n_models]
        return self._memmaps[name]

    @property
    def masks(self) -> np.ndarray:
        return self.field("masks")

    @property
    def margins(self) -> np.ndarray:
        return self.field("margins")

    @property
    def completed(self) -> np.ndarray:
        """Completion flags, read fresh from disk (other workers may be writing)."""
        self._memmaps.pop(COMPLETED, None)
        return np.array(self.field(COMPLETED))

    @property
    def n_completed(self) -> int:
        return int(self.completed.sum())

    def completed_indices(self) -> np.ndarray:
        return np.flatnonzero(self.completed)

    def incomplete_indices(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Model indices in ``[start, stop)`` that are not complete yet."""
        stop = self.n_models if stop is None else min(stop, self.n_models)
        return start + np.flatnonzero(~self.completed[start:stop])

    def obs_view(self, name: str = "margins", completed_only: bool = True) -> ObsView:
        """``n_obs × n_models`` lazy view of a field, as AnnData users see samples."""
        array = self.field(name)
        if completed_only:
            array = array[self.completed_indices()] if self.n_completed < self.n_models else array
        return ObsView(array)

    # ------------------------------------------------------------------ model parameters
    # Masks and margins are the store's rows; the parameters of a few models (TRAK's
    # checkpoints) are kept beside them, one file per model, each tied to the model's mask so
    # that a store refilled in place never hands out another model's parameters.
    def checkpoint_path(self, model: int) -> Path:
        """Where the parameters of model ``model`` are kept (``checkpoints/model_<m>.pt``)."""
        return self.path / CHECKPOINTS / f"model_{int(model)}.pt"

    def save_checkpoint(self, model: int, state: Mapping[str, Any], mask: np.ndarray) -> None:
        """Keep the parameters ``state`` (tensors by name) of model ``model``, trained on
        ``mask``. Written atomically: a reader never sees half a file."""
        import torch

        path = self.checkpoint_path(model)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state": dict(state), "mask": hash_arrays(np.asarray(mask, dtype=bool))}, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, model: int) -> dict | None:
        """The kept parameters of model ``model``, or ``None`` when none are kept or they
        belong to another mask than the store's completed row (the store was refilled)."""
        import torch

        path = self.checkpoint_path(model)
        if not path.is_file():
            return None
        # one flag, read fresh (``completed`` would read all of them for every model)
        if not np.load(self._file(COMPLETED), mmap_mode="r")[int(model)]:
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("mask") != hash_arrays(np.asarray(self.masks[int(model)], dtype=bool)):
            return None
        return saved["state"]

    # ------------------------------------------------------------------ writing
    def write(self, model_indices: Sequence[int] | np.ndarray, **fields: np.ndarray) -> None:
        """Write rows of every field, make them durable, then mark those models complete.

        All schema fields must be given, each with one row per model index.
        """
        if not self.writable:
            raise PermissionError(f"store {self.path} was opened read-only.")
        idx = np.asarray(model_indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= self.n_models:
            raise IndexError(f"model indices must lie in [0, {self.n_models}).")
        missing = set(self.fields) - set(fields)
        extra = set(fields) - set(self.fields)
        if missing or extra:
            raise ValueError(f"write needs exactly the fields {self.fields}; "
                             f"missing {sorted(missing)}, unknown {sorted(extra)}.")
        rows = {}
        schema = self.schema
        for name, values in fields.items():
            dtype, shape = schema[name][0], (idx.size, *schema[name][1])
            values = np.asarray(values)
            if values.shape != shape:
                raise ValueError(f"field {name!r}: expected shape {shape}, got {values.shape}.")
            with np.errstate(over="ignore"):  # overflow is checked (and refused) next
                rows[name] = np.ascontiguousarray(values, dtype=dtype)
            if dtype.kind == "f" and dtype.itemsize < values.dtype.itemsize and not (
                    np.isfinite(rows[name]) | ~np.isfinite(values)).all():
                raise ValueError(
                    f"field {name!r}: values up to {np.nanmax(np.abs(values)):.3g} overflow the "
                    f"store's {dtype}; nothing was written. Use a float32 store "
                    "(scdm.settings.margins_dtype = 'float32').")
        for name, values in rows.items():
            self._pwrite_rows(name, idx, values)
        self._pwrite_rows(COMPLETED, idx, np.ones(idx.size, dtype=bool))

    def _pwrite_rows(self, name: str, idx: np.ndarray, values: np.ndarray) -> None:
        file = self._file(name)
        _, dtype, offset = _read_npy_header(file)
        row_bytes = values[0].nbytes if values.ndim > 1 else dtype.itemsize
        fd = os.open(file, os.O_WRONLY)
        try:
            order = np.argsort(idx, kind="stable")
            sorted_idx = idx[order]
            # write runs of consecutive indices with one call each
            breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
            for run in np.split(np.arange(idx.size), breaks):
                data = values[order[run]].tobytes()
                os.pwrite(fd, data, offset + int(sorted_idx[run[0]]) * row_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)

    def extend(self, n_models: int) -> None:
        """Grow the store to ``n_models`` rows; finished rows are not rewritten.

        Do not extend while other processes write to the store.
        """
        if not self.writable:
            raise PermissionError(f"store {self.path} was opened read-only.")
        if n_models <= self.n_models:
            return
        self._memmaps.clear()
        names = [*self.fields, COMPLETED]
        headers = {name: _read_npy_header(self._file(name)) for name in names}
        for name in names:  # grow the data first: a header never claims bytes that do not exist
            shape, dtype, offset = headers[name]
            row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            with open(self._file(name), "r+b") as f:
                f.truncate(offset + n_models * row)
        for name in names:
            shape, dtype, offset = headers[name]
            new_shape = (n_models, *shape[1:])
            if not _write_npy_header(self._file(name), new_shape, dtype, offset):
                self._rewrite_grown(name, new_shape, dtype, offset)
        self.spec["num_models"] = int(n_models)
        if self.spec.get("imported_from") == "madrylab" and not _is_scdm_store(self.path):
            return  # the spec of a MadryLab directory lives in memory only
        tmp = self.path / f".{SPEC_FILE}.tmp"
        tmp.write_text(json.dumps(self.spec, indent=2))
        os.replace(tmp, self.path / SPEC_FILE)

    def _rewrite_grown(self, name: str, shape: tuple[int, ...], dtype: np.dtype, offset: int
                       ) -> None:
        """Fallback when a header cannot grow in place: copy into a new file, swap atomically."""
        old = np.memmap(self._file(name), dtype=dtype, mode="r", offset=offset, shape=shape)
        tmp = self.path / f".{name}.npy.tmp"
        new = npy_format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        new[:] = old
        new.flush()
        del new, old
        os.replace(tmp, self._file(name))
