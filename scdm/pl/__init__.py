"""Plotting: datamodel embeddings, influencers, similarity, regularisation paths, evaluation."""

from ._evaluation import lds, validation
from ._plots import embedding, influencers, path, similarity

__all__ = ["embedding", "influencers", "lds", "path", "similarity", "validation"]
