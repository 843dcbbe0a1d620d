"""What the plots share: scanpy's show / save / return, panel grids, colours, checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from ..get import UNASSIGNED


def finish_figure(fig, axes, *, show: bool | None, save: str | Path | None,
                  return_fig: bool | None):
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


# class panels per row: a row of 10 made a 4,683 px wide figure that a report shrinks to a strip
PANELS_PER_ROW = 4
# and no figure wider than 4:1 either: the grid's width / height before legends (~10 % more)
MAX_ASPECT = 3.2


def panel_grid(n_rows: int, n_panels: int, panel_size: tuple[float, float]):
    """A figure of ``n_rows`` × ``n_panels`` panels (rows: colours, panels: classes), each row
    wrapped at :data:`PANELS_PER_ROW`; returns the figure and the axes indexed
    ``[row, panel]`` whatever the wrapping."""
    import matplotlib.pyplot as plt

    cols = max(1, min(n_panels, PANELS_PER_ROW))
    lines = -(-n_panels // cols)  # grid rows per colour
    width = panel_size[0] * cols
    # a single row of four panels (and its legends) would come out wider than 4:1, a strip
    # the report shrinks to thumbnails: such rows get taller panels instead
    height = max(panel_size[1] * n_rows * lines, width / MAX_ASPECT)
    fig, grid = plt.subplots(n_rows * lines, cols, squeeze=False, figsize=(width, height))
    axes = np.empty((n_rows, n_panels), dtype=object)
    for r in range(n_rows):
        for p in range(n_panels):
            axes[r, p] = grid[r * lines + p // cols, p % cols]
        for p in range(n_panels, lines * cols):  # the empty places of a wrapped row
            grid[r * lines + p // cols, p % cols].set_visible(False)
    return fig, axes


def new_axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def target_index(adata: AnnData, target: str | int) -> int:
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not -adata.n_obs <= target < adata.n_obs:
            raise IndexError(f"target {target} is out of range for {adata.n_obs} observations.")
        return int(target) % adata.n_obs
    if target not in adata.obs_names:
        raise KeyError(f"target {target!r} is not an observation name (adata.obs_names).")
    return int(adata.obs_names.get_loc(target))


def category_palette(adata: AnnData, column: str, categories) -> dict:
    """Category → colour, from ``adata.uns[f"{column}_colors"]`` (scanpy's) when it fits."""
    import matplotlib.pyplot as plt

    stored = adata.uns.get(f"{column}_colors")
    if stored is not None and len(stored) == len(categories):
        return dict(zip(categories, stored, strict=True))
    cmap = plt.get_cmap("tab10" if len(categories) <= 10 else "tab20")
    named = [c for c in categories if c != UNASSIGNED]
    colours: dict[Any, Any] = {c: cmap(i % cmap.N) for i, c in enumerate(named)}
    colours[UNASSIGNED] = "lightgray"
    return colours


def classes_to_draw(adata: AnnData, label_key: str, classes) -> list[str]:
    labels = adata.obs[label_key].astype("category")
    present = [str(c) for c in labels.cat.categories if (labels == c).any()]
    if classes is None:
        return present
    chosen = [classes] if isinstance(classes, str) else [str(c) for c in classes]
    unknown = sorted(set(chosen) - set(present))
    if unknown:
        raise ValueError(f"classes {unknown} are not in adata.obs[{label_key!r}] (classes: "
                         f"{present}).")
    return chosen
