"""Tools: the steps of a datamodels analysis on AnnData."""

from ._train import train_models

__all__ = ["train_models"]
