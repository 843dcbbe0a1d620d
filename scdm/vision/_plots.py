"""Figures of image datamodels: the strongest training images per target, and the embedding."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def _show_image(ax, image: np.ndarray, title: str, colour: str = "black") -> None:
    ax.imshow(np.transpose(image, (1, 2, 0)))
    ax.set_title(title, fontsize=7, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])


def influencer_grid(weights: np.ndarray, train_images: np.ndarray, target_images: np.ndarray,
                    targets: Sequence[int], *, n_top: int = 5,
                    train_names: Sequence[str] | None = None,
                    target_names: Sequence[str] | None = None):
    """One row per target: the target image, its ``n_top`` most positive training images
    (training on them raises the target's margin) and its ``n_top`` most negative ones.

    ``weights`` is ``n_targets × n_train`` (row = target); images are ``uint8 [n, 3, H, W]``.
    Returns the figure.
    """
    weights = np.asarray(weights)
    targets = list(targets)
    fig, axes = plt.subplots(len(targets), 1 + 2 * n_top, squeeze=False,
                             figsize=(1.1 * (1 + 2 * n_top), 1.3 * len(targets)))
    for row, target in zip(axes, targets, strict=True):
        w = weights[target]
        name = f"target {target}" + (f"\n{target_names[target]}" if target_names else "")
        _show_image(row[0], target_images[target], name)
        order = np.argsort(w)
        top = [(i, "tab:green") for i in order[::-1][:n_top]]
        bottom = [(i, "tab:red") for i in order[:n_top]]
        for ax, (i, colour) in zip(row[1:], top + bottom, strict=True):
            label = f"{w[i]:+.3f}" + (f"\n{train_names[i]}" if train_names else "")
            _show_image(ax, train_images[i], label, colour if w[i] != 0 else "grey")
    axes[0, 1].annotate("most positive →", (0, 1.45), xycoords="axes fraction", fontsize=8)
    axes[0, 1 + n_top].annotate("most negative →", (0, 1.45), xycoords="axes fraction",
                                fontsize=8)
    fig.tight_layout()
    return fig


def embedding_pca(weights: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *,
                  ax=None):
    """First two principal components of the datamodel embeddings (rows of ``weights``),
    coloured by class. Returns the Axes."""
    weights = np.asarray(weights, dtype=np.float64)
    centred = weights - weights.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    pcs = u[:, :2] * s[:2]
    share = s[:2] ** 2 / max((s**2).sum(), np.finfo(float).tiny)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.2))
    cmap = plt.get_cmap("tab10")
    for code in np.unique(labels):
        keep = labels == code
        ax.scatter(pcs[keep, 0], pcs[keep, 1], s=10, color=cmap(int(code) % 10),
                   label=class_names[int(code)])
    ax.set_xlabel(f"PC1 ({share[0]:.0%})")
    ax.set_ylabel(f"PC2 ({share[1]:.0%})" if len(share) > 1 else "PC2")
    ax.set_title("datamodel embeddings of the targets")
    ax.legend(fontsize=7, markerscale=1.5, frameon=False, loc="best")
    return ax
