"""``scdm.tl.subgroup_composition``: is a subgroup one donor, batch or sample?"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._anndata import uns_safe
from .._checks import check_int
from .._seeding import COMPOSITION_PURPOSE, check_random_state
from ..composition import CompositionRule, adjust_and_flag, categorical_test, numeric_test
from ..get import UNASSIGNED, training_params

NUMERIC_MIN_LEVELS = 10  # numeric columns with fewer distinct values are treated as levels


def covariates_of(adata: AnnData, subgroup_key: str) -> list[str]:
    """The donor and nuisance columns the models were trained with (``group_key``,
    ``stratify_key`` of the datamodels behind ``subgroup_key``), where present."""
    training = training_params(adata, training_params(adata, subgroup_key).get("key", ""))
    keys = [training.get("group_key"), training.get("stratify_key")]
    return [k for k in dict.fromkeys(keys) if k and k in adata.obs]


def _is_numeric(column: pd.Series) -> bool:
    return (pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
            and column.nunique(dropna=True) > NUMERIC_MIN_LEVELS)


def subgroup_composition(
    adata: AnnData,
    keys: str | Sequence[str] | None = None,
    *,
    key: str = "datamodels_subgroup",
    max_fraction: float = 0.8,
    min_imbalance: float = 0.25,
    min_auc_shift: float = 0.25,
    alpha: float = 0.05,
    n_permutations: int = 999,
    random_state: int = 0,
    copy: bool = False,
) -> pd.DataFrame | AnnData:
    """Check whether each subgroup is just one donor, batch or sample (confounding).

    Every subgroup is compared with the rest of its class on each covariate in ``keys``. For
    a categorical covariate the p-value is a permutation test of Pearson's χ² (exact
    hypergeometric draws, valid for small donors); for a numeric one (more than 10 distinct
    values, e.g. library size) a Mann–Whitney test. q-values are Benjamini–Hochberg over all
    subgroups and covariates. A subgroup is flagged only where the difference is both
    significant (q < ``alpha``) and large (see :mod:`scdm.composition`):

    - ``"dominated"``: one level holds ≥ ``max_fraction`` of the subgroup, more than its
      share of the class — the subgroup may be that donor or batch rather than a subtype;
    - ``"imbalanced"``: the subgroup's make-up differs from the rest of its class by a total
      variation distance ≥ ``min_imbalance``;
    - ``"shifted"``: a numeric covariate has AUC ≥ 0.5 + ``min_auc_shift`` or ≤ 0.5 −
      ``min_auc_shift`` against the rest of the class.

    Where subtypes are properties of patients (each donor has one subtype), every subtype
    spans only its own donors and is "imbalanced" by donor by design; what matters then is
    that it is not "dominated", i.e. that it spans several donors (``effective_levels``).
    A class with a single subgroup has nothing to compare with and is never flagged;
    ``"unassigned"`` cells take no part. :func:`scdm.tl.subgroups` runs this check itself on
    the ``group_key`` and ``stratify_key`` the models were trained with.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.subgroups`.
    keys
        ``.obs`` columns to check (default: the training's ``group_key`` and
        ``stratify_key``).
    key
        The subgroup column (``adata.obs[key]``, ``adata.uns[key]``).
    max_fraction, min_imbalance, min_auc_shift, alpha
        The flag rule (above).
    n_permutations
        Draws per categorical test; the smallest p-value is ``1 / (n_permutations + 1)``.
    random_state
        Seed of the permutation draws (each subgroup and covariate has its own stream, so a
        result does not depend on which other covariates are checked).
    copy
        Return an annotated copy instead of writing into ``adata``.

    Returns
    -------
    The table (one row per subgroup and covariate) unless ``copy``, else the copy. Columns:
    ``class``, ``subgroup``, ``covariate``, ``kind`` (``"categorical"``/``"numeric"``),
    ``n_cells``, ``n_missing``, ``dominant``, ``dominant_fraction``, ``class_fraction`` (the
    dominant level's share of the class), ``n_levels`` and ``effective_levels`` (how many
    donors the subgroup spans, and the inverse Simpson index: how many equally large donors
    that amounts to), ``imbalance``, ``mean``, ``class_mean``, ``auc``,
    ``statistic``, ``p_value``, ``q_value``, ``flag`` (``""`` when none). Also stored in
    ``adata.uns[key]["composition"]`` with the rule in ``["composition_params"]``.
    """
    rule = CompositionRule(max_fraction=max_fraction, min_imbalance=min_imbalance,
                           min_auc_shift=min_auc_shift, alpha=alpha)
    seed = check_random_state(random_state)
    check_int("n_permutations", n_permutations, 19)
    if key not in adata.obs or key not in adata.uns or "params" not in adata.uns[key]:
        raise KeyError(f"adata.obs[{key!r}] with its parameters in adata.uns[{key!r}] not "
                       "found; run scdm.tl.subgroups(adata) first.")
    keys = covariates_of(adata, key) if keys is None else (
        [keys] if isinstance(keys, str) else list(keys))
    missing = [k for k in keys if k not in adata.obs]
    if missing:
        raise KeyError(f"covariates {missing} are not columns of adata.obs (columns: "
                       f"{list(adata.obs.columns)[:20]}).")
    if key in keys:
        raise ValueError(f"the subgroup column {key!r} cannot be its own covariate.")
    label_key = adata.uns[key]["params"]["label_key"]
    groups = adata.obs[key].astype(str).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()

    rows = []
    for covariate in keys:
        column = adata.obs[covariate]
        numeric = _is_numeric(column)
        present = column.notna().to_numpy()
        codes: Any = None if numeric else column.astype("category").cat.codes.to_numpy()
        names: Any = None if numeric else column.astype("category").cat.categories
        stream = zlib.crc32(covariate.encode())
        for cls in pd.unique(labels):
            in_class = (labels == cls) & (groups != UNASSIGNED)
            members = in_class & present
            for subgroup in sorted(pd.unique(groups[in_class])):
                inside = groups[members] == subgroup
                row: dict[str, Any] = {
                       "class": str(cls), "subgroup": str(subgroup), "covariate": covariate,
                       "kind": "numeric" if numeric else "categorical",
                       "n_cells": int((groups[in_class] == subgroup).sum()),
                       "n_missing": int(((groups == subgroup) & in_class & ~present).sum())}
                if numeric:
                    row.update(numeric_test(column.to_numpy()[members], inside))
                    row.update(dominant="", dominant_fraction=np.nan, class_fraction=np.nan,
                               n_levels=0, effective_levels=np.nan, imbalance=np.nan)
                else:
                    rng = np.random.default_rng([seed, COMPOSITION_PURPOSE, stream,
                                                 zlib.crc32(str(subgroup).encode())])
                    result = categorical_test(codes[members], inside,
                                              n_permutations=n_permutations, rng=rng)
                    dominant = result.pop("dominant")
                    row.update(result, dominant=str(names[dominant]) if dominant >= 0 else "",
                               mean=np.nan, class_mean=np.nan, auc=np.nan)
                rows.append(row)
    rows = adjust_and_flag(rows, rule)
    columns = ["class", "subgroup", "covariate", "kind", "n_cells", "n_missing", "dominant",
               "dominant_fraction", "class_fraction", "n_levels", "effective_levels",
               "imbalance", "mean", "class_mean", "auc", "statistic", "p_value", "q_value",
               "flag"]
    table = pd.DataFrame(rows, columns=columns)
    for column in ("class", "subgroup", "covariate", "kind", "dominant", "flag"):
        table[column] = table[column].astype(str)

    adata = adata.copy() if copy else adata
    info = dict(adata.uns[key])
    info["composition"] = table
    info["composition_params"] = {"keys": keys, "max_fraction": max_fraction,
                                  "min_imbalance": min_imbalance,
                                  "min_auc_shift": min_auc_shift, "alpha": alpha,
                                  "n_permutations": n_permutations, "random_state": seed}
    adata.uns[key] = uns_safe(info)
    return adata if copy else table


