"""Plots of proposed subgroups: their markers, their make-up, and why there are as many."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._anndata import uns_names
from .._checks import check_int
from .._docs import doc_params
from ..get import UNASSIGNED
from ._utils import category_palette, classes_to_draw, finish_figure, new_axes, panel_grid


def _subgroup_info(adata: AnnData, key: str) -> dict:
    info = adata.uns.get(key)
    if key not in adata.obs or not isinstance(info, dict) or "params" not in info:
        raise KeyError(f"adata.obs[{key!r}] with its parameters in adata.uns[{key!r}] not "
                       "found; run scdm.tl.subgroups(adata) first (key= names the column).")
    return info


@doc_params
def markers(
    adata: AnnData,
    *,
    key: str = "datamodels_subgroup",
    classes: str | Sequence[str] | None = None,
    n_genes: int = 5,
    kind: str = "dotplot",
    use_raw: bool | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool | None = None,
    **kwargs,
):
    """Each subgroup's top marker genes within its class, as a scanpy dot plot or matrix plot.

    One panel per class that has markers (at least two subgroups); genes are the top
    ``n_genes`` of :func:`scdm.tl.subgroup_markers` per subgroup, shown on the class's cells
    only (``"unassigned"`` cells left out).

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.subgroups` (with ``markers=True``).
    key
        The subgroup column and its ``adata.uns`` entry.
    classes
        Classes to draw (default all with markers).
    n_genes
        Genes per subgroup.
    kind
        ``"dotplot"`` or ``"matrixplot"`` (:func:`scanpy.pl.dotplot`,
        :func:`scanpy.pl.matrixplot`).
    use_raw
        Passed to scanpy (default: ``.raw`` when present).
    {show_save}
    **kwargs
        Passed to the scanpy plot.

    Returns
    -------
    A dict class → scanpy's dict of Axes when ``show=False``, the Figure with
    ``return_fig=True``.
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    info = _subgroup_info(adata, key)
    if "markers" not in info:
        raise KeyError(f"adata.uns[{key!r}] has no markers; run scdm.tl.subgroups(adata, "
                       "markers=True) or scdm.tl.subgroup_markers(adata).")
    plot = {"dotplot": sc.pl.dotplot, "matrixplot": sc.pl.matrixplot}.get(kind)
    if plot is None:
        raise ValueError(f"kind must be 'dotplot' or 'matrixplot', got {kind!r}.")
    check_int("n_genes", n_genes, 1)
    table = info["markers"]
    label_key = info["params"]["label_key"]
    with_markers = [str(c) for c in pd.unique(table["class"].astype(str))]
    drawn = [c for c in classes_to_draw(adata, label_key, classes) if c in with_markers]
    if not drawn:
        raise ValueError("no class to draw has markers: every class is a single subgroup (or "
                         "its subgroups are too small to test).")
    labels = adata.obs[label_key].astype(str)
    groups = adata.obs[key].astype(str)
    genes = {}
    for cls in drawn:
        part = table[(table["class"].astype(str) == cls) & (table["rank"] < n_genes)]
        genes[cls] = {str(g): list(part.loc[part["subgroup"] == g, "gene"].astype(str))
                      for g in pd.unique(part["subgroup"].astype(str))}
    width = max(sum(len(v) for v in genes[c].values()) for c in drawn)
    # each class's panel as tall as its rows of subgroups plus room for the gene names, and
    # never shorter than scanpy's legends (dot sizes above the colour bar): in a panel of two
    # subgroups the colour bar's title was drawn over the size legend
    heights = [max(0.4 * len(genes[c]) + 1.3, 3.0) for c in drawn]
    fig = plt.figure(figsize=(max(6.0, 0.32 * width + 3), sum(heights) + 0.5))
    grid = fig.add_gridspec(len(drawn), 1, hspace=0.6, height_ratios=heights)
    axes = {}
    for i, cls in enumerate(drawn):
        cells = ((labels == cls) & (groups != UNASSIGNED)).to_numpy()
        sub = adata[cells].copy()
        sub.obs[key] = pd.Categorical(groups[cells], categories=list(genes[cls]))
        ax = fig.add_subplot(grid[i])
        with warnings.catch_warnings():
            # scanpy's and pandas' version chatter is not the user's to fix here
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            # no title: it would sit on the subgroup brackets, whose names carry the class
            axes[cls] = plot(sub, genes[cls], groupby=key, use_raw=use_raw, ax=ax, show=False,
                             **kwargs)
    return finish_figure(fig, axes, show=show, save=save, return_fig=return_fig)


@doc_params
def composition(
    adata: AnnData,
    by: str,
    *,
    key: str = "datamodels_subgroup",
    classes: str | Sequence[str] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    ax=None,
    return_fig: bool | None = None,
):
    """What each subgroup is made of: its share of every level of ``by`` (donor, batch, …).

    One horizontal bar per subgroup, after a bar for its whole class, stacked by the levels of
    ``by`` (a numeric ``by`` is shown as box plots per subgroup instead). Subgroups flagged by
    :func:`scdm.tl.subgroup_composition` for ``by`` carry the flag in their label.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.subgroups`.
    by
        ``.obs`` column (any; need not have been checked).
    key
        The subgroup column.
    classes
        Classes to draw (default all).
    {show_save_ax}

    Returns
    -------
    Axes when ``show=False``, the Figure with ``return_fig=True``.
    """
    from matplotlib.patches import Patch

    info = _subgroup_info(adata, key)
    if by not in adata.obs:
        raise KeyError(f"by={by!r} is not a column of adata.obs.")
    if by == key:
        raise ValueError("by must be another column than the subgroups themselves.")
    label_key = info["params"]["label_key"]
    drawn = classes_to_draw(adata, label_key, classes)
    labels = adata.obs[label_key].astype(str).to_numpy()
    groups = adata.obs[key].astype(str).to_numpy()
    flags = {}
    table = info.get("composition")
    if table is not None and len(table):
        rows = table[(table["covariate"].astype(str) == by) & (table["flag"].astype(str) != "")]
        flags = dict(zip(rows["subgroup"].astype(str), rows["flag"].astype(str), strict=True))
    bars = []  # (label, mask of cells)
    for cls in drawn:
        bars.append((f"{cls} (all)", labels == cls))
        for g in [c for c in adata.obs[key].astype("category").cat.categories
                  if c != UNASSIGNED and (groups[labels == cls] == c).any()]:
            bars.append((f"{g} [{flags[g]}]" if g in flags else g, (groups == g)
                         & (labels == cls)))
    values = adata.obs[by]
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    fig, ax = new_axes(ax, (6.5, 0.38 * len(bars) + 1.4))
    positions = np.arange(len(bars))[::-1]
    if numeric:
        data = [values.to_numpy(dtype=np.float64)[mask] for _, mask in bars]
        import matplotlib

        # matplotlib 3.10 renamed vert=False to orientation="horizontal" (3.11 warns on vert)
        horizontal = ({"orientation": "horizontal"} if tuple(
            int(p) for p in matplotlib.__version__.split(".")[:2]) >= (3, 10)
            else {"vert": False})
        ax.boxplot([d[np.isfinite(d)] for d in data], positions=positions, widths=0.6,
                   showfliers=False, **horizontal)
        ax.set_xlabel(by)
    else:
        levels = values.astype(str).astype("category")
        lookup = category_palette(adata, by, list(levels.cat.categories))
        left = np.zeros(len(bars))
        for level in levels.cat.categories:
            share = np.array([(levels.to_numpy()[mask] == level).mean() if mask.any() else 0.0
                              for _, mask in bars])
            ax.barh(positions, share, left=left, color=lookup[level], height=0.7,
                    edgecolor="white", linewidth=0.3)
            left += share
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"fraction of cells by {by}")
        if len(levels.cat.categories) <= 20:
            ax.legend(handles=[Patch(color=lookup[c], label=c) for c in levels.cat.categories],
                      fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5),
                      title=by)
    ax.set_yticks(positions, [name for name, _ in bars], fontsize=8)
    for tick, (name, _) in zip(ax.get_yticklabels(), bars, strict=True):
        if name.endswith("]"):
            tick.set_color("firebrick")
            tick.set_fontweight("bold")
        elif name.endswith("(all)"):
            tick.set_fontstyle("italic")
    ax.set_title(f"subgroup make-up by {by}")
    return finish_figure(fig, ax, show=show, save=save, return_fig=return_fig)


@doc_params
def reproducibility(
    adata: AnnData,
    *,
    key: str = "datamodels_subgroup",
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool | None = None,
):
    """Why each class has the subgroups it has: the scan of :func:`scdm.tl.subgroups`.

    Per class, against the Leiden resolution: the agreement (ARI) of the two halves'
    partitions with the ``min_reproducibility`` line, and the numbers of clusters each half
    found; accepted resolutions are filled, the chosen one is marked. Where a split divided
    another class the same way (a shared nuisance), the scan shown is the second one, made with
    that partition taken out, and the title says so.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.subgroups` with ``resolution=None``.
    key
        The subgroup column and its ``adata.uns`` entry.
    {show_save}

    Returns
    -------
    The array of Axes (one per class) when ``show=False``, the Figure with
    ``return_fig=True``.
    """

    info = _subgroup_info(adata, key)
    scans = uns_names(info.get("reproducibility_scan"))
    if not scans:
        raise KeyError(f"adata.uns[{key!r}] has no reproducibility scan; it is made by "
                       "scdm.tl.subgroups(adata) with resolution=None (the default).")
    evidence = uns_names(info.get("reproducibility"))
    threshold = float(info["params"]["min_reproducibility"])
    fig, axes = panel_grid(1, len(scans), (4.2, 3.2))
    for ax, (cls, scan) in zip(axes[0], scans.items(), strict=True):
        scan = pd.DataFrame(scan)
        res = scan["resolution"].to_numpy(dtype=np.float64)
        ari = scan["reproducibility"].to_numpy(dtype=np.float64)
        accepted = scan["accepted"].to_numpy(dtype=bool)
        ax.plot(res, ari, "-", color="gray", linewidth=1)
        ax.scatter(res[accepted], ari[accepted], color="tab:green", zorder=3,
                   label="accepted (reproduces, beats the null by the margin)")
        ax.scatter(res[~accepted], ari[~accepted], facecolors="none", edgecolors="tab:red",
                   zorder=3, label="rejected")
        if "reproducing_accepted" in scan:
            # accepted on the clusters that reproduce on their own: their own agreement
            own = scan["reproducing_accepted"].to_numpy(dtype=bool)
            if own.any():
                ax.scatter(res[own], scan["reproducing_agreement"].to_numpy(np.float64)[own],
                           marker="D", color="tab:green", zorder=3,
                           label="accepted on the clusters that reproduce on their own")
        ax.axhline(threshold, color="black", linestyle=":", linewidth=1,
                   label=f"min_reproducibility {threshold:g}")
        for r, a, n1, n2 in zip(res, ari, scan["n_clusters_half1"], scan["n_clusters_half2"],
                                strict=True):
            ax.annotate(f"{n1}/{n2}", (r, a), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=6)
        chosen = evidence.get(cls, {})
        shared = chosen.get("shared")
        if chosen.get("split"):
            ax.axvline(float(chosen["resolution"]), color="tab:green", linestyle="--")
            verdict = f"{chosen.get('n_subgroups', '?')} subgroups"
        elif shared:
            verdict = "one subgroup (its split is shared)"
        else:
            verdict = "one subgroup (no split reproduces)"
        if shared:  # the scan shown is the second one, with the shared partition taken out
            verdict += (f"\nafter taking out {shared['n_subgroups']} subgroups that divide "
                        f"{', '.join(map(str, shared['shared_with']))} too")
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.1)
        ax.set_xlabel("Leiden resolution")
        ax.set_ylabel("ARI between halves")
        ax.set_title(f"{cls}: {verdict}", fontsize=9)
    axes[0, 0].legend(fontsize=6, frameon=False, loc="lower left")
    fig.tight_layout()
    return finish_figure(fig, axes, show=show, save=save, return_fig=return_fig)
