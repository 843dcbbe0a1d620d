"""Tools: the steps of a datamodels analysis on AnnData."""

from ._fit import fit_datamodels
from ._train import train_models

__all__ = ["fit_datamodels", "train_models"]
