"""Example and synthetic datasets."""

from ._exclusive import exclusive_programs
from ._gaussian import gaussian_subtypes
from ._planted import planted_subtypes
from ._spurious import spurious_groups

__all__ = ["exclusive_programs", "gaussian_subtypes", "planted_subtypes", "spurious_groups"]
