"""Plots of datamodel results, following scanpy's conventions (``show``, ``save``, ``ax``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._docs import doc_params
from ..get import UNASSIGNED, datamodel_matrix, label_key_of, subgroup_key, training_params
from ._utils import (
    category_palette,
    classes_to_draw,
    finish_figure,
    new_axes,
    panel_grid,
    target_index,
)


def _grouping_columns(adata: AnnData, key: str) -> list[str]:
    """The ``.obs`` columns present among the subgroups of ``key`` and its label, in that order."""
    candidates = [subgroup_key(key), training_params(adata, key).get("label_key")]
    return [c for c in candidates if c is not None and c in adata.obs]


def _values(adata: AnnData, name: str) -> pd.Series:
    """An ``.obs`` column or a gene's expression (``.raw`` when present, like scanpy)."""
    if name in adata.obs:
        return adata.obs[name]
    for source in (adata.raw, adata):
        if source is not None and name in source.var_names:
            column = source[:, name].X
            column = column.toarray() if sparse.issparse(column) else np.asarray(column)
            return pd.Series(column.ravel(), index=adata.obs_names, name=name)
    raise KeyError(f"color={name!r} is neither a column of adata.obs nor a gene in "
                   "adata.var_names (or adata.raw.var_names).")


@doc_params
def embedding(
    adata: AnnData,
    *,
    key: str = "datamodels",
    basis: str | None = None,
    color: str | Sequence[str] | None = None,
    classes: str | Sequence[str] | None = None,
    components: tuple[int, int] = (1, 2),
    size: float | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    ax=None,
    return_fig: bool | None = None,
):
    """The attribution embedding, one panel per class.

    The embedding is computed within each class (:func:`scdm.tl.embed_datamodels`,
    :func:`scdm.tl.umap`), so coordinates are comparable only within a class: each class gets
    its own panel (columns), each colour its own row. Categorical colours keep one palette
    across classes (``"unassigned"`` is grey); numeric columns and genes use a colour bar.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.datamodels` (or another attribution with the same keys).
    key
        Key of the attribution results; its label and subgroups are found from it.
    basis
        ``adata.obsm[f"X_{basis}"]`` is drawn; default ``f"{key}_umap"`` when
        :func:`scdm.tl.umap` has run, else ``key`` (the SVD components).
    color
        ``.obs`` columns or genes; default the subgroups (``f"{key}_subgroup"``) when computed,
        else the label.
    classes
        Classes to draw (default all).
    components
        The two components of ``basis`` to draw (1-based).
    size
        Point size (default from the number of cells in a panel).
    {show_save}
    ax
        Axes to draw into, for one class and one colour only (default: a new figure).

    Returns
    -------
    A 2-D array of Axes (rows: colours, columns: classes) when ``show=False``, the Figure
    with ``return_fig=True``.
    """
    from matplotlib.lines import Line2D

    basis = basis or (f"{key}_umap" if f"X_{key}_umap" in adata.obsm else key)
    if f"X_{basis}" not in adata.obsm:
        raise KeyError(f"adata.obsm['X_{basis}'] not found; run scdm.tl.datamodels(adata, "
                       "label_key=...) first (scdm.tl.umap for a UMAP).")
    label_key = label_key_of(adata, key, None)
    if color is None:
        color = _grouping_columns(adata, key)[:1] or [label_key]
    colors = [color] if isinstance(color, str) else list(color)
    columns = {name: _values(adata, name) for name in colors}  # bad names fail before drawing
    drawn = classes_to_draw(adata, label_key, classes)
    first, second = components
    coords = np.asarray(adata.obsm[f"X_{basis}"], dtype=np.float64)
    if not 1 <= first <= coords.shape[1] or not 1 <= second <= coords.shape[1]:
        raise ValueError(f"components {components} are out of range for X_{basis} with "
                         f"{coords.shape[1]} components (1-based).")
    coords = coords[:, [first - 1, second - 1]]
    if ax is not None and len(colors) * len(drawn) > 1:
        raise ValueError(f"ax= draws one panel, but {len(colors)} colour(s) × {len(drawn)} "
                         "class(es) were asked for; pass classes=[one] and color=one.")
    if ax is None:
        fig, axes = panel_grid(len(colors), len(drawn), (4.2, 3.6))
    else:
        fig, axes = ax.figure, np.array([[ax]])
    labels = adata.obs[label_key].astype(str).to_numpy()
    for row, name in enumerate(colors):
        values = columns[name]
        categorical = not pd.api.types.is_numeric_dtype(values) or \
            pd.api.types.is_bool_dtype(values)
        if categorical:
            values = values.astype(str).astype("category")
            lookup = category_palette(adata, name, list(values.cat.categories))
        numbers: Any = None if categorical else values.to_numpy(dtype=np.float64)
        for col, cls in enumerate(drawn):
            panel = axes[row, col]
            members = np.flatnonzero((labels == cls) & np.isfinite(coords).all(axis=1))
            dots = size or max(4.0, min(40.0, 6000 / max(members.size, 1)))
            x, y = coords[members, 0], coords[members, 1]
            if categorical:
                shown = values.iloc[members]
                # unassigned cells first, so that the subgroups are drawn on top of them
                order = np.argsort((shown != UNASSIGNED).to_numpy(), kind="stable")
                panel.scatter(x[order], y[order], s=dots, linewidths=0,
                              c=[lookup[v] for v in shown.iloc[order]])
                present = [c for c in values.cat.categories if (shown == c).any()]
                panel.legend(handles=[Line2D([], [], marker="o", linestyle="", color=lookup[c],
                                             label=f"{c} ({int((shown == c).sum())})")
                                      for c in present],
                             fontsize=7, frameon=False, loc="center left",
                             bbox_to_anchor=(1.0, 0.5))
            else:
                points = panel.scatter(x, y, s=dots, linewidths=0, c=numbers[members],
                                       cmap="viridis")
                fig.colorbar(points, ax=panel, shrink=0.8)
            panel.set_title(f"{cls} ({members.size} cells): {name}", fontsize=9)
            panel.set_xlabel(f"{basis} {first}", fontsize=8)
            panel.set_ylabel(f"{basis} {second}", fontsize=8)
            panel.set_xticks([])
            panel.set_yticks([])
    if ax is None:
        fig.tight_layout()
    return finish_figure(fig, axes, show=show, save=save, return_fig=return_fig)


@doc_params
def influencers(
    adata: AnnData,
    target: str | int,
    *,
    key: str = "datamodels",
    n_top: int = 10,
    color: str | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    ax=None,
    return_fig: bool | None = None,
):
    """The training samples that move one target's prediction most, up and down.

    Bars are the target's datamodel weights (margin change when the training sample is
    included), the ``n_top`` largest positive and negative ones, coloured by ``color``
    (default: the subgroups if computed, else the label).

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.datamodels`.
    target
        Observation name or position.
    key
        The datamodel matrix ``adata.obsp[key]``.
    n_top
        Bars on each side.
    color
        ``.obs`` column to colour bars by.
    {show_save_ax}

    Returns
    -------
    Axes when ``show=False``, the Figure with ``return_fig=True``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    W = datamodel_matrix(adata, key)
    j = target_index(adata, target)
    row = W[j].toarray().ravel() if sparse.issparse(W) else np.asarray(W[j]).ravel()
    if color is None:
        color = next(iter(_grouping_columns(adata, key)), None)
    elif color not in adata.obs:
        raise KeyError(f"color={color!r} is not a column of adata.obs.")
    order = np.argsort(row)
    top = [i for i in order[::-1][:n_top] if row[i] > 0]
    bottom = [i for i in order[:n_top] if row[i] < 0][::-1]
    chosen = top + bottom

    fig, ax = new_axes(ax, (6, 0.3 * max(len(chosen), 4) + 1))
    if color is not None:
        values = adata.obs[color].astype("category")
        palette = plt.get_cmap("tab20")
        lookup = {c: palette(i % 20) for i, c in enumerate(values.cat.categories)}
        bar_colors: list[Any] = [lookup[values.iloc[i]] for i in chosen]
    else:
        bar_colors = ["tab:blue"] * len(chosen)
    positions = np.arange(len(chosen))[::-1]
    ax.barh(positions, row[chosen], color=bar_colors)
    ax.set_yticks(positions, [str(adata.obs_names[i]) for i in chosen], fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("datamodel weight (margin change when included)")
    ax.set_title(f"influencers of {adata.obs_names[j]}")
    if color is not None and chosen:
        shown = pd.unique(adata.obs[color].iloc[chosen].astype(str))
        ax.legend(handles=[Patch(color=lookup[c], label=c) for c in shown if c in lookup],
                  title=color, fontsize=7, loc="best", frameon=False)
    if not chosen:
        ax.text(0.5, 0.5, "all weights are zero", transform=ax.transAxes, ha="center")
    return finish_figure(fig, ax, show=show, save=save, return_fig=return_fig)


@doc_params
def similarity(
    adata: AnnData,
    *,
    key: str = "datamodels",
    groupby: str | None = None,
    use_rep: str | None = None,
    max_obs: int = 2000,
    random_state: int = 0,
    cmap: str = "RdBu_r",
    show: bool | None = None,
    save: str | Path | None = None,
    ax=None,
    return_fig: bool | None = None,
):
    """Heatmap of datamodel similarity (cosine of embedding rows), ordered by subgroup.

    Blocks on the diagonal are groups of samples that rely on the same training samples.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.datamodels`.
    key
        Key of the datamodels results.
    groupby
        ``.obs`` column to order and delimit by; default ``f"{key}_subgroup"`` when computed,
        else the label.
    use_rep
        Embedding (default ``f"X_{key}"``).
    max_obs
        Above this many observations, a random subset (per ``random_state``) is shown.
    cmap
        Colour map (similarities lie in [-1, 1]).
    {show_save_ax}

    Returns
    -------
    Axes when ``show=False``, the Figure with ``return_fig=True``.
    """
    use_rep = use_rep or f"X_{key}"
    if use_rep not in adata.obsm:
        raise KeyError(f"adata.obsm[{use_rep!r}] not found; run scdm.tl.datamodels(adata, "
                       "label_key=...) first.")
    if groupby is None:
        groupby = next(iter(_grouping_columns(adata, key)), None)
    elif groupby not in adata.obs:
        raise KeyError(f"groupby={groupby!r} is not a column of adata.obs.")
    rows = np.arange(adata.n_obs)
    if adata.n_obs > max_obs:
        rows = np.sort(np.random.default_rng(random_state).choice(adata.n_obs, max_obs,
                                                                  replace=False))
    groups = (adata.obs[groupby].astype("category").iloc[rows] if groupby is not None
              else pd.Series(pd.Categorical(["all"] * rows.size)))
    order = np.argsort(groups.cat.codes.to_numpy(), kind="stable")
    E = np.asarray(adata.obsm[use_rep], dtype=np.float64)[rows][order]
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    E = E / np.where(norms > 0, norms, 1)
    S = E @ E.T

    fig, ax = new_axes(ax, (6, 5))
    image = ax.imshow(S, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="datamodel similarity (cosine)")
    codes = groups.cat.codes.to_numpy()[order]
    bounds = np.flatnonzero(np.diff(codes)) + 0.5
    for b in bounds:
        ax.axhline(b, color="black", linewidth=0.6)
        ax.axvline(b, color="black", linewidth=0.6)
    edges = np.concatenate([[-0.5], bounds, [codes.size - 0.5]])
    centers = (edges[:-1] + edges[1:]) / 2
    names = [str(groups.cat.categories[c]) for c in pd.unique(codes)]
    ax.set_xticks(centers, names, rotation=90, fontsize=7)
    ax.set_yticks(centers, names, fontsize=7)
    ax.set_title(f"datamodel similarity by {groupby}" if groupby else "datamodel similarity")
    return finish_figure(fig, ax, show=show, save=save, return_fig=return_fig)


@doc_params
def path(
    adata: AnnData,
    target: str | int,
    *,
    key: str = "datamodels",
    show: bool | None = None,
    save: str | Path | None = None,
    ax=None,
    return_fig: bool | None = None,
):
    """Regularisation path of one target: train and validation MSE and non-zeros against λ.

    The dashed line marks the λ chosen on the validation models. λ values after an early stop
    were not fitted and are not drawn.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.fit_datamodels`.
    target
        Observation name or position.
    key
        Key of ``adata.uns`` with the fit.
    {show_save_ax}

    Returns
    -------
    Axes when ``show=False``, the Figure with ``return_fig=True``.
    """
    info = adata.uns.get(key)
    if not isinstance(info, dict) or "path" not in info:
        raise KeyError(f"adata.uns[{key!r}]['path'] not found; run scdm.tl.datamodels(adata, "
                       "label_key=...) or scdm.tl.fit_datamodels first.")
    j = target_index(adata, target)
    lam = np.asarray(info["path"]["lambda"])[:, j]
    fitted = np.isfinite(np.asarray(info["path"]["val_mse"])[:, j])
    fig, ax = new_axes(ax, (5, 3.5))
    for name, style in (("train_mse", "-o"), ("val_mse", "-s")):
        values = np.asarray(info["path"][name])[:, j]
        ax.plot(lam[fitted], values[fitted], style, markersize=3,
                label=name.replace("_mse", " MSE"))
    ax.set_xscale("log")
    ax.set_xlabel("λ")
    ax.set_ylabel("mean squared error of margins")
    ax.axvline(float(np.asarray(info["lambda"])[j]), color="gray", linestyle="--",
               label="chosen λ")
    nnz_ax = ax.twinx()
    nnz_ax.plot(lam[fitted], np.asarray(info["path"]["nnz"])[:, j][fitted], ":", color="gray")
    nnz_ax.set_ylabel("non-zero weights (dotted)")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"regularisation path of {adata.obs_names[j]}")
    return finish_figure(fig, ax, show=show, save=save, return_fig=return_fig)
