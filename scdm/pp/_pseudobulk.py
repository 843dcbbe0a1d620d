"""``scdm.pp.pseudobulk``: donor-level profiles, so datamodels can run over patients."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._anndata import check_finite, get_codes, get_features


def _donor_metadata(obs: pd.DataFrame, codes: np.ndarray, names: list[str],
                    exclude: set[str]) -> pd.DataFrame:
    """The columns of ``obs`` that are constant within every donor, one row per donor."""
    frame = obs.drop(columns=[c for c in exclude if c in obs]).copy()
    frame["_donor"] = codes
    grouped = frame.groupby("_donor", sort=True, observed=True)
    constant = [c for c in frame.columns if c != "_donor"
                and (grouped[c].nunique(dropna=False) <= 1).all()]
    first = grouped[constant].first() if constant else pd.DataFrame(index=range(len(names)))
    first.index = pd.Index(names)
    for column in constant:
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            first[column] = pd.Categorical(first[column]).remove_unused_categories()
    return first


def pseudobulk(
    adata: AnnData,
    sample_key: str,
    *,
    groupby: str | None = None,
    layer: str | None = None,
    func: Literal["mean", "sum"] = "mean",
    min_cells: int = 1,
) -> AnnData:
    """Aggregate cells into one profile per sample (donor), optionally per cell type.

    Datamodels over patients need one observation per patient: this averages (or sums) each
    donor's cells. With ``groupby`` (e.g. cell type) every donor gets one profile per group,
    concatenated into a single feature vector (features named ``"<group>:<gene>"``), so a
    classifier can use cell-type-specific changes. Donor-level metadata (every ``.obs`` column
    constant within each donor, e.g. disease status, age, sex) is carried into ``.obs``.

    Parameters
    ----------
    adata
        Cells × genes.
    sample_key
        Column of ``adata.obs`` naming the sample (donor) of each cell.
    groupby
        Optional column (e.g. cell type) to profile separately within each donor.
    layer
        Layer to aggregate instead of ``.X`` (e.g. ``"counts"`` with ``func="sum"``).
    func
        ``"mean"`` or ``"sum"`` of the cells.
    min_cells
        A (donor, group) with fewer cells gets a profile of zeros and is counted in
        ``.obs["n_cells_<group>"]`` so you can see it.

    Returns
    -------
    AnnData with one observation per donor: ``.X`` the profiles (dense float32), ``.obs`` the
    donor metadata plus ``n_cells`` (and ``n_cells_<group>`` per group), ``.var`` with
    ``"gene"`` (and ``"group"``) columns, and ``.uns["pseudobulk"]["params"]``.
    """
    if func not in ("mean", "sum"):
        raise ValueError(f"func must be 'mean' or 'sum', got {func!r}.")
    donors, donor_names = get_codes(adata, sample_key, "sample_key")
    if groupby is not None:
        if groupby == sample_key:
            raise ValueError("groupby must differ from sample_key.")
        groups, group_names = get_codes(adata, groupby, "groupby")
    else:
        groups, group_names = np.zeros(adata.n_obs, dtype=np.int64), [None]  # type: ignore[list-item]
    X = get_features(adata, layer=layer)
    check_finite(X, "the expression values")
    X = X if sparse.issparse(X) else np.asarray(X)

    n_donors, n_groups, n_genes = len(donor_names), len(group_names), adata.n_vars
    cell = donors * n_groups + groups
    # One sparse indicator product aggregates every (donor, group) at once, sparse X included.
    indicator = sparse.csr_matrix(
        (np.ones(adata.n_obs, dtype=np.float64), (cell, np.arange(adata.n_obs))),
        shape=(n_donors * n_groups, adata.n_obs))
    totals = np.asarray((indicator @ X).todense() if sparse.issparse(X) else indicator @ X,
                        dtype=np.float64)
    n_cells = np.bincount(cell, minlength=n_donors * n_groups)
    profiles = totals / np.maximum(n_cells, 1)[:, None] if func == "mean" else totals
    profiles[n_cells < min_cells] = 0.0
    profiles = profiles.reshape(n_donors, n_groups * n_genes).astype(np.float32)

    obs = _donor_metadata(adata.obs, donors, donor_names,
                          exclude={k for k in (sample_key, groupby) if k is not None})
    obs.insert(0, "n_cells", np.bincount(donors, minlength=n_donors))
    genes = adata.var_names.to_numpy().astype(str)
    if groupby is None:
        var = adata.var.copy()
        var["gene"] = genes
    else:
        counts = n_cells.reshape(n_donors, n_groups)
        for g, name in enumerate(group_names):
            obs[f"n_cells_{name}"] = counts[:, g]
        var = pd.DataFrame({
            "group": pd.Categorical(np.repeat(group_names, n_genes), categories=group_names),
            "gene": np.tile(genes, n_groups),
        }, index=[f"{g}:{gene}" for g in group_names for gene in genes])
    obs.index = pd.Index(donor_names, name=None)
    var.index = var.index.astype(str)
    out = AnnData(X=profiles, obs=obs, var=var)
    out.uns["pseudobulk"] = {"params": {"sample_key": sample_key, "groupby": groupby or "",
                                        "layer": layer or "", "func": func,
                                        "min_cells": min_cells}}
    return out
