"""TRAK (Park et al. 2023): attribution from a few checkpoints' projected gradients.

- :class:`TRAKer` — MadryLab ``traker``'s workflow for any PyTorch classifier (featurize,
  finalize_features, score, finalize_scores), memory-mapped and resumable;
- :func:`mlp_features` — the closed-form, Kronecker-projected features of scdm's own stacked
  MLP ensembles, all checkpoints at once in memory (:func:`scdm.tl.trak` applies the same
  projection checkpoint by checkpoint in row blocks and writes the features to its store);
- :class:`RandomProjector`, :func:`inverse_gram` — the pieces.
"""

from ._core import inverse_gram, inverse_sqrt_gram
from ._gradients import GradientComputer, margins_and_out_to_loss
from ._mlp import dense_projection, mlp_features
from ._projection import RandomProjector
from ._traker import TRAKer

__all__ = ["GradientComputer", "RandomProjector", "TRAKer", "dense_projection",
           "inverse_gram", "inverse_sqrt_gram", "margins_and_out_to_loss", "mlp_features"]
