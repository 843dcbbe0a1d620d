"""Example and synthetic datasets."""

from ._exclusive import exclusive_programs
from ._gaussian import gaussian_subtypes
from ._modules import module_subtypes
from ._pbmc import PBMC68K_COVARIATES, pbmc68k_lineage
from ._planted import planted_subtypes
from ._spurious import spurious_groups

__all__ = ["PBMC68K_COVARIATES", "exclusive_programs", "gaussian_subtypes", "module_subtypes",
           "pbmc68k_lineage", "planted_subtypes", "spurious_groups"]
