"""Preprocessing: shaping data for datamodels."""

from ._pseudobulk import pseudobulk

__all__ = ["pseudobulk"]
