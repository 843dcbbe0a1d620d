"""Plots of the counterfactual checks: LDS scatter and model-count curve, subgroup validation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from anndata import AnnData

from .._docs import doc_params
from ..evaluation import predict_margins
from ..get import datamodel_weights, lds_models
from ._utils import finish_figure, new_axes, panel_grid, target_index


@doc_params
def lds(
    adata: AnnData,
    *,
    key: str = "datamodels",
    targets: Sequence[str | int] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool | None = None,
):
    """The LDS of every target by class, predicted vs actual margins of evaluation models for
    a few targets, and the model-count curve.

    A first panel shows the distribution of the LDS over each class's targets. Then one panel
    per target: each point is an evaluation model (one that did not train on the
    target, for held-out datamodels), its margin on the target as the datamodel predicts it
    from the training subset (x) and as the model produced it (y). A last panel shows the
    model-count curve when :func:`scdm.tl.model_count_curve` has run.

    Parameters
    ----------
    adata
        After :func:`scdm.tl.lds`.
    key
        Key of the datamodels.
    targets
        Observation names or positions (default: the targets at the 90th, 50th and 10th
        percentile of LDS).
    {show_save}

    Returns
    -------
    The list of Axes when ``show=False``, the Figure with ``return_fig=True``.
    """
    info = adata.uns.get(key)
    if not isinstance(info, dict) or "lds" not in info:
        raise KeyError(f"adata.uns[{key!r}] has no LDS; run scdm.tl.lds(adata) first.")
    weights, intercept, _ = datamodel_weights(adata, key)
    scores = adata.obs[f"{key}_lds"].to_numpy(dtype=np.float64)
    if targets is None:
        order = np.argsort(np.where(np.isfinite(scores), scores, -np.inf))
        finite = order[np.isfinite(scores[order])]
        targets = [int(finite[int(q * (finite.size - 1))]) for q in (0.9, 0.5, 0.1)]
    idx = [target_index(adata, t) for t in targets]
    params = info["lds"]["params"]
    masks, margins = lds_models(adata, key)
    curve = info.get("model_curve")
    n_panels = 1 + len(idx) + (curve is not None)
    fig, grid = panel_grid(1, n_panels, (3.6, 3.4))
    axes = list(grid[0])
    _lds_by_class(axes[0], adata, info, scores)
    pred = predict_margins(weights[idx] if not hasattr(weights, "tocsr") else
                           weights.tocsr()[idx], masks, intercept[idx])
    for ax, j, column in zip(axes[1:], idx, range(len(idx)), strict=False):
        keep = ~masks[:, j] if bool(params.get("heldout", True)) else np.ones(len(masks), bool)
        ax.scatter(pred[keep, column], margins[keep, j], s=8, alpha=0.6, linewidths=0)
        ax.set_xlabel("predicted margin (datamodel)")
        ax.set_ylabel("actual margin (new model)")
        ax.set_title(f"{adata.obs_names[j]}: LDS {scores[j]:.2f}", fontsize=9)
    if curve is not None:
        ax = axes[-1]
        n = np.asarray(curve["n_models"])
        ax.plot(n, np.asarray(curve["mean_corr"]), "-o", markersize=3,
                label="held-out correlation")
        lds_curve = np.asarray(curve["mean_lds"], dtype=np.float64)
        if np.isfinite(lds_curve).any():
            ax.plot(n, lds_curve, "-s", markersize=3, label="LDS")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training models")
        ax.set_ylabel("mean over targets")
        ax.set_title("flat: enough models" if curve["flat"] else "still rising: train more",
                     fontsize=9)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return finish_figure(fig, axes, show=show, save=save, return_fig=return_fig)


def _lds_by_class(ax, adata: AnnData, info: dict, scores: np.ndarray) -> None:
    """Box plots of the targets' LDS, one per class (NaN targets left out, counted)."""
    label_key = info.get("params", {}).get("label_key")
    labels = (adata.obs[label_key].astype(str).to_numpy() if label_key in adata.obs
              else np.full(adata.n_obs, "all"))
    classes = list(dict.fromkeys(labels))
    data = [scores[(labels == c) & np.isfinite(scores)] for c in classes]
    ax.boxplot(data, orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(classes) + 1),
                  [f"{c} ({d.size})" for c, d in zip(classes, data, strict=True)], fontsize=7)
    ax.axvline(0, color="gray", linewidth=0.8)
    ax.set_xlabel("LDS of each target")
    ax.set_title(f"all targets: median {np.nanmedian(scores):.2f}", fontsize=9)


@doc_params
def validation(
    adata: AnnData,
    *,
    subgroup_key: str = "datamodels_subgroup",
    metric: str = "accuracy",
    show: bool | None = None,
    save: str | Path | None = None,
    ax=None,
    return_fig: bool | None = None,
):
    """Drop of each subgroup when left out of training, against random same-size sets.

    Grey points: the drop of each random same-class, same-size set; red diamond: the
    subgroup's own drop, with its empirical p-value.

    Parameters
    ----------
    adata
        After :func:`scdm.tl.validate_subgroups`.
    subgroup_key
        The column the subgroups were validated from.
    metric
        ``"accuracy"`` or ``"margin"``.
    {show_save_ax}

    Returns
    -------
    Axes when ``show=False``, the Figure with ``return_fig=True``.
    """
    if metric not in ("accuracy", "margin"):
        raise ValueError(f"metric must be 'accuracy' or 'margin', got {metric!r}.")
    info = adata.uns.get(subgroup_key)
    if not isinstance(info, dict) or "validation" not in info:
        raise KeyError(f"adata.uns[{subgroup_key!r}] has no validation; run "
                       "scdm.tl.validate_subgroups(adata) first.")
    table = info["validation"]["table"]
    random = info["validation"]["random"]
    tested = table[table["status"] == "tested"]
    column = f"{metric}_drop"
    p_column = "p_value" if metric == "accuracy" else "p_value_margin"
    fig, ax = new_axes(ax, (1.2 + 0.9 * len(tested), 3.5))
    rng = np.random.default_rng(0)  # horizontal jitter only
    for x, (name, row) in enumerate(tested.iterrows()):
        null = random.loc[random["subgroup"] == name, column].to_numpy()
        ax.scatter(x + rng.uniform(-0.15, 0.15, null.size), null, s=10, color="0.6",
                   label="random same-class sets" if x == 0 else None)
        ax.scatter([x], [row[column]], marker="D", s=40, color="tab:red",
                   label="subgroup held out" if x == 0 else None)
        ax.annotate(f"p={row[p_column]:.2g}", (x, row[column]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
    ax.axhline(0, color="0.8", linewidth=0.8)
    ax.set_xticks(range(len(tested)))
    ax.set_xticklabels(list(tested.index), rotation=45, ha="right")
    ax.set_ylabel(f"{metric} drop when left out of training")
    ax.legend(fontsize=8, frameon=False)
    return finish_figure(fig, ax, show=show, save=save, return_fig=return_fig)
