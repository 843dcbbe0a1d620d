"""Plots of datamodel results, following scanpy's conventions (``show``, ``save``, ``ax``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..tl._embed import datamodel_matrix


def _finish(fig, axes, *, show: bool | None, save: str | Path | None, return_fig: bool | None):
    """Save, show and return like scanpy: Axes when not shown, the Figure when asked."""
    import matplotlib.pyplot as plt

    if save:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show is None:
        show = save is None and not return_fig
    if show:
        plt.show()
        return None
    return fig if return_fig else axes


def _new_axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _target_index(adata: AnnData, target: str | int) -> int:
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not -adata.n_obs <= target < adata.n_obs:
            raise IndexError(f"target {target} is out of range for {adata.n_obs} observations.")
        return int(target) % adata.n_obs
    if target not in adata.obs_names:
        raise KeyError(f"target {target!r} is not an observation name (adata.obs_names).")
    return int(adata.obs_names.get_loc(target))


def _grouping_columns(adata: AnnData, key: str) -> list[str]:
    """The ``.obs`` columns present among the subgroups of ``key`` and its label, in that order."""
    info = adata.uns.get(key)
    params = info.get("params", {}) if isinstance(info, dict) else {}
    candidates = [f"{key}_subgroup", params.get("label_key")]
    return [c for c in candidates if c is not None and c in adata.obs]


def embedding(
    adata: AnnData,
    *,
    basis: str = "datamodels",
    color: str | Sequence[str] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    ax=None,
    return_fig: bool | None = None,
    **kwargs,
):
    """Scatter plot of the datamodel embedding (``adata.obsm[f"X_{basis}"]``).

    A thin wrapper of :func:`scanpy.pl.embedding` (which works with ``basis="datamodels"`` as
    well). With ``color=None`` it colours by the label and, when computed, the subgroups.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.datamodels`.
    basis
        ``adata.obsm[f"X_{basis}"]`` is plotted.
    color
        ``.obs`` columns or genes to colour by.
    show, save, ax, return_fig
        As in scanpy; ``save`` is a file path.
    **kwargs
        Passed to :func:`scanpy.pl.embedding`.

    Returns
    -------
    Axes (a list for several colours) when ``show=False``, the Figure with ``return_fig=True``.
    """
    import scanpy as sc

    if f"X_{basis}" not in adata.obsm:
        raise KeyError(f"adata.obsm['X_{basis}'] not found; run scdm.tl.datamodels(adata, "
                       "label_key=...) first.")
    if color is None:
        color = _grouping_columns(adata, basis)[::-1] or None
    with warnings.catch_warnings():
        # matplotlib's deprecation notices about calls inside scanpy are not the user's to fix.
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        axes = sc.pl.embedding(adata, basis=basis, color=color, show=False, ax=ax, **kwargs)
    first = axes[0] if isinstance(axes, list) else axes
    return _finish(first.figure, axes, show=show, save=save, return_fig=return_fig)


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
    show, save, ax, return_fig
        As in scanpy; ``save`` is a file path.

    Returns
    -------
    Axes when ``show=False``, the Figure with ``return_fig=True``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    W = datamodel_matrix(adata, key)
    j = _target_index(adata, target)
    row = W[j].toarray().ravel() if sparse.issparse(W) else np.asarray(W[j]).ravel()
    if color is None:
        color = next(iter(_grouping_columns(adata, key)), None)
    elif color not in adata.obs:
        raise KeyError(f"color={color!r} is not a column of adata.obs.")
    order = np.argsort(row)
    top = [i for i in order[::-1][:n_top] if row[i] > 0]
    bottom = [i for i in order[:n_top] if row[i] < 0][::-1]
    chosen = top + bottom

    fig, ax = _new_axes(ax, (6, 0.3 * max(len(chosen), 4) + 1))
    if color is not None:
        values = adata.obs[color].astype("category")
        palette = plt.get_cmap("tab20")
        lookup = {c: palette(i % 20) for i, c in enumerate(values.cat.categories)}
        bar_colors = [lookup[values.iloc[i]] for i in chosen]
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
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig)


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
    show, save, ax, return_fig
        As in scanpy; ``save`` is a file path.

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

    fig, ax = _new_axes(ax, (6, 5))
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
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig)


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
    show, save, ax, return_fig
        As in scanpy; ``save`` is a file path.

    Returns
    -------
    Axes when ``show=False``, the Figure with ``return_fig=True``.
    """
    info = adata.uns.get(key)
    if not isinstance(info, dict) or "path" not in info:
        raise KeyError(f"adata.uns[{key!r}]['path'] not found; run scdm.tl.datamodels(adata, "
                       "label_key=...) or scdm.tl.fit_datamodels first.")
    j = _target_index(adata, target)
    lam = np.asarray(info["path"]["lambda"])[:, j]
    fitted = np.isfinite(np.asarray(info["path"]["val_mse"])[:, j])
    fig, ax = _new_axes(ax, (5, 3.5))
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
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig)
