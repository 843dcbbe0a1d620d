"""Plots of data cleaning: the label-issue ranking and the D3M removal curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from anndata import AnnData

from .._docs import doc_params
from ._utils import finish_figure


@doc_params
def label_issues(
    adata: AnnData,
    *,
    key: str = "label_issue",
    n_top: int = 20,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool | None = None,
):
    """The label-issue ranking and the flagged cells' given → suggested labels.

    Left: every cell's score, sorted, flagged cells in red. Right: for the flagged cells,
    how many of each given label the held-out models would relabel as each suggestion (the
    pairs to look at first: an annotation confused between two types), with the ``n_top``
    highest-scoring flagged cells listed below.

    Parameters
    ----------
    adata
        After :func:`scdm.tl.label_issues`.
    key
        Its ``key_added``.
    n_top
        Flagged cells named in the title of the right panel.
    {show_save}

    Returns
    -------
    The two Axes when ``show=False``, the Figure with ``return_fig=True``.
    """
    import matplotlib.pyplot as plt

    column = f"{key}_score"
    if column not in adata.obs or key not in adata.uns:
        raise KeyError(f"adata.obs[{column!r}] not found; run scdm.tl.label_issues(adata, "
                       f"label_key, key_added={key!r}) first.")
    score = adata.obs[column].to_numpy()
    flagged = adata.obs[key].to_numpy(dtype=bool)
    order = np.argsort(-score, kind="stable")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8),
                                      gridspec_kw={"width_ratios": [1.3, 1]})
    ranks = np.arange(1, score.size + 1)
    left.scatter(ranks[~flagged[order]], score[order][~flagged[order]], s=6, color="0.6",
                 label="not flagged")
    left.scatter(ranks[flagged[order]], score[order][flagged[order]], s=10, color="tab:red",
                 label=f"flagged ({int(flagged.sum())})")
    left.set_xlabel("cells, by score")
    left.set_ylabel("held-out probability:\nbest other label − given")
    left.legend(fontsize=8, frameon=False)
    pairs = adata.uns[key]["pairs"]
    counts = np.asarray(pairs["counts"])
    if counts.size:
        image = right.imshow(counts, cmap="Reds", aspect="auto")
        right.set_yticks(range(len(pairs["given"])), pairs["given"], fontsize=7)
        right.set_xticks(range(len(pairs["suggested"])), pairs["suggested"], rotation=45,
                         ha="right", fontsize=7)
        right.set_ylabel("given label")
        right.set_xlabel("suggested label")
        for (i, j), value in np.ndenumerate(counts):
            if value:
                right.text(j, i, str(value), ha="center", va="center", fontsize=7)
        fig.colorbar(image, ax=right, fraction=0.05)
    else:
        right.text(0.5, 0.5, "no cell flagged", ha="center", va="center")
        right.set_axis_off()
    top = [adata.obs_names[i] for i in order if flagged[i]][:n_top]
    right.set_title(f"flagged cells (top: {', '.join(top[:3])}{'…' if len(top) > 3 else ''})",
                    fontsize=8)
    fig.tight_layout()
    return finish_figure(fig, [left, right], show=show, save=save, return_fig=return_fig)


@doc_params
def debias(
    adata: AnnData,
    *,
    key: str = "debias",
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool | None = None,
):
    """Worst-group and overall accuracy as D3M removes more cells, against random removal.

    Accuracies are held-out, on the evaluation half of the cells (the half that did not
    choose the removals). Red: D3M; grey: random removals of the same size (mean ± sd);
    dashed: no removal; the recommended size is marked.

    Parameters
    ----------
    adata
        After :func:`scdm.tl.debias`.
    key
        Its ``key_added``.
    {show_save}

    Returns
    -------
    The two Axes when ``show=False``, the Figure with ``return_fig=True``.
    """
    import matplotlib.pyplot as plt

    info = adata.uns.get(key)
    if not isinstance(info, dict) or "table" not in info:
        raise KeyError(f"adata.uns[{key!r}] has no debias table; run scdm.tl.debias first.")
    table = info["table"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    base = table[table["removal"] == "none"].iloc[0]
    d3m = table[table["removal"] == "d3m"]
    random = table[table["removal"] == "random"].groupby("n_removed")
    for ax, column, label in zip(axes, ("worst_group_accuracy", "overall_accuracy"),
                                 ("worst-group accuracy", "overall accuracy"), strict=True):
        mean, sd = random[column].mean(), random[column].std().fillna(0.0)
        ax.fill_between(mean.index, mean - sd, mean + sd, color="0.85")
        ax.plot(mean.index, mean, "o-", color="0.5", label="random removal")
        ax.plot(d3m["n_removed"], d3m[column], "o-", color="tab:red", label="D3M")
        ax.axhline(base[column], color="0.3", linestyle="--", linewidth=0.8,
                   label="no removal")
        if info["recommended_n_remove"]:
            row = d3m[d3m["n_removed"] == info["recommended_n_remove"]].iloc[0]
            ax.scatter([row["n_removed"]], [row[column]], s=120, facecolors="none",
                       edgecolors="black", label="recommended")
        ax.set_xlabel("cells removed")
        ax.set_ylabel(f"held-out {label}")
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle(info["reason"], fontsize=8)
    fig.tight_layout()
    return finish_figure(fig, list(axes), show=show, save=save, return_fig=return_fig)
