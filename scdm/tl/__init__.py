"""Tools: the steps of a datamodels analysis on AnnData."""

from ._datamodels import datamodels
from ._embed import embed_datamodels
from ._fit import fit_datamodels
from ._subgroups import subgroup_markers, subgroups
from ._train import train_models

__all__ = [
    "datamodels",
    "embed_datamodels",
    "fit_datamodels",
    "subgroup_markers",
    "subgroups",
    "train_models",
]
