"""Example and synthetic datasets."""

from ._planted import planted_subtypes

__all__ = ["planted_subtypes"]
