"""Plotting: datamodel embeddings, influencers, similarity and regularisation paths."""

from ._plots import embedding, influencers, path, similarity

__all__ = ["embedding", "influencers", "path", "similarity"]
