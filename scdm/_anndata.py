"""Reading model inputs out of AnnData, with the checks users need before expensive work."""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .store import hash_arrays

DENSE_LIMIT_BYTES = 8 << 30


@dataclass
class ModelInputs:
    """Arrays the engines train on, plus what is needed to describe them."""

    X: np.ndarray  # n × d float32, standardised if asked
    y: np.ndarray  # n int64 class codes
    classes: list[str]
    groups: np.ndarray | None  # n int64 group codes
    strata: np.ndarray | None  # n int64 codes of a nuisance held fixed in the masks
    data_hash: str


def _keys(mapping) -> str:
    keys = list(mapping.keys())
    return ", ".join(map(repr, keys[:20])) + (" …" if len(keys) > 20 else "") if keys else "none"


def get_features(adata: AnnData, use_rep: str | None = None, layer: str | None = None):
    """The feature matrix: ``.X``, ``.obsm[use_rep]`` or ``.layers[layer]`` (not both)."""
    if use_rep is not None and layer is not None:
        raise ValueError("pass use_rep or layer, not both.")
    if use_rep is not None:
        if use_rep == "X":
            return adata.X
        if use_rep not in adata.obsm:
            raise KeyError(
                f"use_rep={use_rep!r} is not in adata.obsm (keys: {_keys(adata.obsm)}). "
                "Compute it first (e.g. sc.pp.pca for 'X_pca') or pass use_rep=None for .X."
            )
        rep = adata.obsm[use_rep]
        return rep.to_numpy() if isinstance(rep, pd.DataFrame) else rep
    if layer is not None:
        if layer not in adata.layers:
            raise KeyError(f"layer={layer!r} is not in adata.layers (layers: "
                           f"{_keys(adata.layers)}).")
        return adata.layers[layer]
    if adata.X is None:
        raise ValueError("adata.X is empty; pass use_rep= (a key of .obsm) or layer=.")
    return adata.X


def check_finite(X, what: str = "the input features") -> None:
    """Raise if a dense or sparse matrix holds NaN or inf."""
    values = X.data if sparse.issparse(X) else np.asarray(X)
    dtype = values.dtype
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise TypeError(f"{what} must be real numbers, got dtype {dtype}.")
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"{what} contain {int(bad.sum())} NaN or inf value(s); impute or drop them first "
            "(e.g. adata = adata[:, np.isfinite(adata.X).all(0)])."
        )


def in_memory(X) -> bool:
    """Whether ``X`` is an array or a scipy sparse matrix in memory (not an h5py dataset or a
    backed AnnData's sparse dataset, which are read from disk in row blocks)."""
    return isinstance(X, np.ndarray) or sparse.issparse(X)


READ_ROWS = 16384  # rows of a backed matrix read at once


def dense_features(X, *, scale: bool = True) -> np.ndarray:
    """A dense float32 copy of ``X``, standardised per feature when ``scale`` (constant → 0).

    ``X`` may be an array, a scipy sparse matrix, or a matrix of an AnnData opened backed
    (``read_h5ad(..., backed="r")``: an h5py dataset or a backed sparse dataset). A backed or
    sparse matrix is read in blocks of rows straight into the float32 result (and a backed
    one checked for NaN and inf there), so memory holds the result and one block, never the
    matrix in its stored form; the file is only read.
    """
    n, d = X.shape
    if n * d * 4 > DENSE_LIMIT_BYTES:
        raise MemoryError(
            f"the feature matrix ({n} × {d}) needs {n * d * 4 / 2**30:.1f} GiB dense; train on "
            "a reduced representation instead, e.g. sc.pp.pca(adata) and use_rep='X_pca', or "
            "highly variable genes."
        )
    if isinstance(X, np.ndarray):
        dense = np.array(X, dtype=np.float32, order="C")
    else:
        X = X.tocsr() if sparse.issparse(X) else X  # row slices (COO has none)
        dense = np.empty((n, d), dtype=np.float32)
        for start in range(0, n, READ_ROWS):
            rows = slice(start, min(start + READ_ROWS, n))
            block = X[rows]
            block = block.toarray() if sparse.issparse(block) else np.asarray(block)
            if not in_memory(X):
                check_finite(block)
            dense[rows] = block
    if scale:
        mean = dense.mean(axis=0, dtype=np.float64)
        std = dense.std(axis=0, dtype=np.float64)
        std[std == 0] = np.inf
        dense -= mean.astype(np.float32)
        dense /= std.astype(np.float32)
    return dense


AUTO = "auto"  # use_rep's default: .X, or its PCs where .X is mostly noise (choose_input)
AUTO_PCS = 50  # PCs computed where none are given (sc.pp.pca's default)
# With fewer features, 50 PCs do not drop noise: they rotate .X and, standardised as the models
# see them, whiten it, which buried a site shortcut that 15 of 40 features carry (D3M's test
# data, flagged at 14 % above the edge) instead of clearing it
AUTO_MIN_FEATURES = 2 * AUTO_PCS
MEASURED_CELLS = 2000  # cells the noise measure of .X reads (a random draw, sorted)


class UnnormalisedCountsWarning(UserWarning):
    """The models' input looks like counts (or their ``log1p``) not normalised per cell,
    whose totals differ widely: attribution then follows sequencing depth."""


# Per-cell totals that differ this many times between the 5 % lowest and the 5 % highest
# cells (sequencing depth) make unnormalised counts worth a warning. Planted subtypes under a
# 25-fold depth spread (cells' size factors log-uniform on 0.2-5; the 5-95 % totals ~10-fold
# apart): normalised and log1p, all three subtypes in 3 of 3 seeds (ARI 0.96-0.98); log1p of
# the counts, 1 of 3; the counts, 0 of 3 (RESULTS.md, session 40). Droplet data's depth (log
# SD 0.7) puts them ~10-fold apart; the generators' default spread (SD 0.2), ~2-fold.
DEPTH_RATIO = 2.0
INTEGER_SHARE = 0.99  # values within rounding of an integer that make a matrix counts


def _near_integers(values: np.ndarray) -> float:
    """The share of ``values`` within float32 rounding of an integer."""
    return float((np.abs(values - np.round(values)) <= 1e-2 + 1e-5 * np.abs(values)).mean())


def unnormalised_counts(X) -> dict | None:
    """Whether a cells × features matrix (dense or sparse; a sample of the cells will do)
    holds counts not normalised per cell: non-negative integers, or their ``log1p`` (whose
    ``expm1`` are integers), larger than 2 somewhere (genotype dosages, 0/1/2, are not
    counts), with per-cell totals :data:`DEPTH_RATIO` or more times apart between the 5 %
    lowest and highest cells. Returns ``{"form": "counts" | "log1p counts", "depth_ratio"}``
    or ``None``. Normalised data (``normalize_total``, then ``log1p``) are neither: their
    ``expm1`` are fractions."""
    # the stored values: a sparse matrix's nonzeros, or the dense cells × features
    values = (X.data if sparse.issparse(X) else np.asarray(X)).astype(np.float64)
    if values.size == 0 or values.min() < 0:
        return None
    if _near_integers(values) >= INTEGER_SHARE and values.max() > 2:
        form = "counts"
    else:
        values = np.expm1(values)
        if _near_integers(values) < INTEGER_SHARE or values.max() <= 2:
            return None
        form = "log1p counts"
    if sparse.issparse(X):
        counts = X.astype(np.float64)  # a copy, its nonzeros replaced by the counts
        counts.data = values
        totals = np.asarray(counts.sum(axis=1)).ravel()
    else:
        totals = values.sum(axis=1)
    low, high = np.quantile(totals, [0.05, 0.95])
    ratio = float(high / low) if low > 0 else float("inf")
    return {"form": form, "depth_ratio": ratio} if ratio >= DEPTH_RATIO else None


@dataclass
class InputChoice:
    """What the models train on, and why: :func:`choose_input`'s answer."""

    use_rep: str | None  # None: .X (or the layer)
    evidence: dict | None = None  # only for use_rep="auto": the measure and the decision
    compute_pcs: bool = False  # the PCs are computed by apply() (sc.pp.pca), not given
    counts: dict | None = None  # where the input is unnormalised counts (unnormalised_counts)

    def width(self, adata: AnnData) -> int:
        """Features the models will see (before :meth:`apply` has computed the PCs)."""
        if self.compute_pcs:
            return min(AUTO_PCS, adata.n_obs - 1, adata.n_vars - 1)
        if self.use_rep not in (None, "X"):
            return int(np.shape(adata.obsm[self.use_rep])[1])
        return int(adata.n_vars)

    def apply(self, adata: AnnData, random_state: int) -> None:
        """Compute the PCs the choice needs into ``adata`` (as ``sc.pp.pca`` stores them)."""
        if self.compute_pcs and self.use_rep not in adata.obsm:
            import scanpy as sc

            sc.pp.pca(adata, n_comps=self.width(adata), random_state=random_state)

    def record(self, adata: AnnData, key: str) -> None:
        """Record the choice of ``"auto"`` in the training's ``uns[key]["params"]`` (by
        :func:`scdm.tl.train_models`, or by the tool that chose before calling it)."""
        if self.evidence is not None:
            adata.uns[key]["params"]["input_choice"] = uns_safe(self.evidence)
        if self.counts is not None:
            adata.uns[key]["params"]["unnormalised_counts"] = uns_safe(self.counts)


def _sample_rows(X, random_state: int):
    """:data:`MEASURED_CELLS` random rows of ``X`` (all where fewer), in memory (read in
    sorted order from a backed matrix)."""
    from .clustering import check_subsample

    rows = check_subsample(X.shape[0], MEASURED_CELLS, random_state)
    if rows is None:
        if in_memory(X):
            return X
        rows = np.arange(X.shape[0])
    return X[rows]


# Set while a tool that checked its input for unnormalised counts trains through
# train_models: the choose_input there does not read and test the same cells again.
_COUNTS_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("scdm_counts_checked",
                                                                       default=False)


@contextlib.contextmanager
def counts_checked():
    """Within it, :func:`choose_input` leaves out the unnormalised-counts check (and its
    warning): the calling tool's own :func:`choose_input` made it on the same input."""
    token = _COUNTS_CHECKED.set(True)
    try:
        yield
    finally:
        _COUNTS_CHECKED.reset(token)


def _counts_check(sample, layer: str | None) -> dict | None:
    """:func:`unnormalised_counts` of a sample of the input's cells, warned of
    (:class:`UnnormalisedCountsWarning`) before any model is trained."""
    found = unnormalised_counts(sample)
    if found is None:
        return None
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    undo = ("" if found["form"] == "counts" else
            f"first take the log back ({where} = np.expm1({where})), then ")
    warnings.warn(
        f"{where} looks like {found['form']} not normalised per cell: the cells' totals differ "
        f"{found['depth_ratio']:.1f}-fold between the 5 % lowest and highest (sequencing "
        "depth). Attribution then follows depth, a nuisance every class has, and subtypes "
        "behind it are lost (planted subtypes under a 25-fold depth spread: none of 3 seeds "
        "found on the counts, 1 on their log1p, 3 normalised). Normalise per cell: "
        f"{undo}sc.pp.normalize_total(adata), then sc.pp.log1p(adata).",
        UnnormalisedCountsWarning, stacklevel=2)
    return found


def choose_input(adata: AnnData, label_key: str, use_rep: str | None,
                 layer: str | None = None, *, scale: bool = True,
                 random_state: int = 0) -> InputChoice:
    """The models' input for ``use_rep``: as given, or for ``"auto"`` ``.X`` unless it is
    mostly noise, then its PCs (``obsm["X_pca"]`` where present, else computed as
    ``sc.pp.pca`` does by :meth:`InputChoice.apply`).

    "Mostly noise" is :func:`scdm.clustering.noise_dominated` on ``.X`` as the models see it
    (standardised when ``scale``), measured on :data:`MEASURED_CELLS` random cells: the
    components above the Marchenko-Pastur edge hold under 15 % of its variance. Thousands of
    sparse genes are; there the models' attribution found none of the module generator's
    planted subtypes on the genes and most on their PCs (RESULTS.md, session 28), while on
    every input that stands clear of noise (the other generators, the real datasets) the
    features themselves found as much or more. ``.X`` with fewer than
    :data:`AUTO_MIN_FEATURES` features is used as it is, mostly noise or not (its PCs would
    not be fewer than its features). A named ``layer`` is used as it is.
    ``label_key`` is checked first, so that a wrong one fails before any PCs are computed.
    """
    get_labels(adata, label_key)
    checked = _COUNTS_CHECKED.get()  # by the tool that called train_models
    counts = sample = None
    # components (an obsm key) are not counts; "auto" measures the sample in any case
    if use_rep == AUTO or (use_rep in (None, "X") and not checked):
        sample = _sample_rows(get_features(adata, None, layer), random_state)
        if in_memory(sample):
            check_finite(sample)
        if not checked:
            counts = _counts_check(sample, layer)
    if use_rep != AUTO:
        return InputChoice(use_rep, counts=counts)
    if layer is not None:
        return InputChoice(None, {"requested": AUTO, "chosen": f"layer {layer!r}",
                                  "reason": "a named layer is used as it is"}, counts=counts)
    from .clustering import NOISE_DOMINATED, above_noise, noise_dominated

    X = get_features(adata)
    assert sample is not None  # sampled above: .X, as no layer is named here
    coordinates, share = above_noise(dense_features(sample, scale=scale),
                                     random_state=random_state)
    evidence = {"requested": AUTO, "share_above_noise": share,
                "noise_dominated": noise_dominated(share, coordinates),
                "threshold": NOISE_DOMINATED, "n_measured": int(sample.shape[0])}
    if not evidence["noise_dominated"]:
        return InputChoice(None, {**evidence, "chosen": "X"}, counts=counts)
    if X.shape[1] < AUTO_MIN_FEATURES:
        return InputChoice(None, {**evidence, "chosen": "X", "reason": (
            f"fewer than {AUTO_MIN_FEATURES} features: their PCs would not drop noise")},
                           counts=counts)
    if "X_pca" in adata.obsm:
        return InputChoice("X_pca", {**evidence, "chosen": "X_pca", "pcs": "given"},
                           counts=counts)
    if not in_memory(X):
        raise ValueError(
            f"use_rep='auto': .X is mostly noise (its components above the noise edge hold "
            f"{share:.0%} of its variance, under {NOISE_DOMINATED:.0%}), so the models would "
            "train on its PCs, but .X is read from disk (backed) and they are not computed "
            "here. Compute them first (sc.pp.pca(adata, chunked=True) for a backed file, or "
            "on the data loaded into memory) and pass use_rep='X_pca', or pass use_rep='X' to "
            "train on .X as it is.")
    return InputChoice("X_pca", {**evidence, "chosen": "X_pca", "pcs": "computed"},
                       compute_pcs=True, counts=counts)


def get_labels(adata: AnnData, label_key: str) -> tuple[np.ndarray, list[str]]:
    """Integer class codes and class names of ``adata.obs[label_key]``."""
    if label_key is None or label_key not in adata.obs:
        raise KeyError(
            f"label_key={label_key!r} is not a column of adata.obs (columns: "
            f"{_keys(adata.obs)}). Pass the column holding the class to predict, e.g. "
            "label_key='disease'."
        )
    values = adata.obs[label_key]
    missing = values.isna()
    if missing.any():
        raise ValueError(
            f"adata.obs[{label_key!r}] has {int(missing.sum())} missing value(s); drop those "
            "observations or fill them before training."
        )
    if pd.api.types.is_float_dtype(values) and not np.all(np.mod(values.to_numpy(), 1) == 0):
        raise TypeError(
            f"adata.obs[{label_key!r}] holds continuous values; datamodels need class labels. "
            "Bin it first, e.g. adata.obs['group'] = pd.cut(adata.obs[label_key], 2)."
        )
    categorical = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype(
        "category")
    categorical = categorical.cat.remove_unused_categories()
    # classes sorted by name, not in the column's category order: a string column becomes a
    # categorical in another order when written to h5ad, and the same labels must give the
    # same codes (and models) however they are stored
    categorical = categorical.cat.reorder_categories(
        sorted(categorical.cat.categories, key=str))
    classes = [str(c) for c in categorical.cat.categories]
    if len(classes) < 2:
        raise ValueError(
            f"adata.obs[{label_key!r}] has only one class ({classes[0]!r}); a classifier needs "
            "at least two. Include the comparison group (e.g. controls) or pick another label."
        )
    return categorical.cat.codes.to_numpy().astype(np.int64), classes


def get_codes(adata: AnnData, key: str, argname: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes (sorted by name) and names of a categorical ``adata.obs[key]``."""
    if key not in adata.obs:
        raise KeyError(f"{argname}={key!r} is not a column of adata.obs (columns: "
                       f"{_keys(adata.obs)}).")
    values = adata.obs[key]
    if values.isna().any():
        raise ValueError(f"adata.obs[{key!r}] ({argname}) has {int(values.isna().sum())} "
                         "missing value(s); every observation needs one.")
    codes, names = pd.factorize(values.astype(str), sort=True)
    return codes.astype(np.int64), [str(n) for n in names]


def get_groups(adata: AnnData, group_key: str | None) -> np.ndarray | None:
    """Integer group codes of ``adata.obs[group_key]``, or None."""
    return None if group_key is None else get_codes(adata, group_key, "group_key")[0]


def model_inputs(adata: AnnData, label_key: str, *, use_rep: str | None = None,
                 layer: str | None = None, group_key: str | None = None,
                 stratify_key: str | None = None, scale: bool = True) -> ModelInputs:
    """Validate and extract everything the trainer needs from ``adata``."""
    y, classes = get_labels(adata, label_key)
    groups = get_groups(adata, group_key)
    strata = None if stratify_key is None else get_codes(adata, stratify_key, "stratify_key")[0]
    raw = get_features(adata, use_rep, layer)
    if raw.shape[0] != adata.n_obs:
        raise ValueError(f"the features have {raw.shape[0]} rows but adata has {adata.n_obs} "
                         "observations.")
    if in_memory(raw):  # a backed matrix is checked as it is read
        check_finite(raw)
    X = dense_features(raw, scale=scale)
    return ModelInputs(X=X, y=y, classes=classes, groups=groups, strata=strata,
                       data_hash=hash_arrays(X, y, groups, *(() if strata is None else (strata,))))


# An h5 group name cannot hold "/" (anndata warns, and says its next minor release refuses),
# yet class and subgroup names often do ("CD4+/CD25 T Reg"). Where such names key a mapping
# in ``uns`` they keep a look-alike (DIVISION SLASH) instead; ``uns_names`` gives the user's
# names back, so the file writes and reads back with them intact.
KEY_SLASH = "\u2215"


def uns_key(name) -> str:
    """``name`` as a key of a mapping in ``uns`` (writable to h5ad)."""
    return str(name).replace("/", KEY_SLASH)


def uns_names(mapping) -> dict:
    """A mapping of ``uns`` keyed by the user's names again (see :func:`uns_key`)."""
    return {str(k).replace(KEY_SLASH, "/"): v for k, v in (mapping or {}).items()}


def uns_safe(value):
    """A copy of ``value`` that anndata can write to h5ad (no None, tuples or numpy scalars;
    "/" in keys as :func:`uns_key` writes it). A list of mappings is refused: h5ad cannot
    hold one (``write_h5ad`` fails on it long after the result was made), so records are
    kept numbered, ``{"1": ..., "2": ...}``."""
    if isinstance(value, dict):
        return {uns_key(k): uns_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, Mapping) for v in value):
            raise TypeError("a list of mappings cannot be written to h5ad; keep the records "
                            "numbered instead, {'1': ..., '2': ...}")
        return [uns_safe(v) for v in value if v is not None]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.memmap):
        return np.array(value)
    return value
