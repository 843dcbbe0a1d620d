"""scdm: single-cell datamodels."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, evaluation, get, io, pl, pp, regression, tl, trak, vision, workers
from ._settings import settings

try:
    __version__ = version("scdm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["datasets", "evaluation", "get", "io", "pl", "pp", "regression", "settings", "tl",
           "trak", "vision", "workers"]
