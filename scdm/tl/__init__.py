"""Tools: the steps of a datamodels analysis on AnnData."""

from .._anndata import UnnormalisedCountsWarning
from ._attribution import Attribution, attribution
from ._composition import subgroup_composition
from ._datamodels import datamodels
from ._debias import debias
from ._embed import embed_datamodels, umap
from ._evaluate import lds, model_count_curve
from ._fit import DegenerateDatamodelsWarning, fit_datamodels
from ._influence import influence_removal
from ._label_issues import label_issues
from ._second_round import second_round
from ._subgroups import (
    DatamodelsCompositionWarning,
    NoisyInputWarning,
    PossibleContinuumWarning,
    StandardisedComponentsWarning,
    UndecidedSubgroupsWarning,
    ZeroInflatedInputWarning,
    subgroup_markers,
    subgroups,
)
from ._train import train_models
from ._trak import trak
from ._tuning import signal_to_noise
from ._validate import validate_subgroups

__all__ = [
    "Attribution",
    "DatamodelsCompositionWarning",
    "DegenerateDatamodelsWarning",
    "NoisyInputWarning",
    "PossibleContinuumWarning",
    "StandardisedComponentsWarning",
    "UndecidedSubgroupsWarning",
    "UnnormalisedCountsWarning",
    "ZeroInflatedInputWarning",
    "attribution",
    "datamodels",
    "debias",
    "embed_datamodels",
    "fit_datamodels",
    "influence_removal",
    "label_issues",
    "lds",
    "model_count_curve",
    "second_round",
    "signal_to_noise",
    "subgroup_composition",
    "subgroup_markers",
    "subgroups",
    "train_models",
    "trak",
    "umap",
    "validate_subgroups",
]
