"""scanpy's bundled pbmc68k_reduced with a coarse label that lumps two cell types together."""

from __future__ import annotations

import numpy as np

# bulk_labels lumped into "myeloid": datamodels of that class should tell them apart again
MYELOID = ("CD14+ Monocyte", "Dendritic")
# obs columns a reviewer would check a subgroup against: cell-cycle phase, library size and
# mitochondrial fraction (the data has no donors or batches)
PBMC68K_COVARIATES = ("phase", "n_counts", "percent_mito")


def pbmc68k_lineage():
    """scanpy's bundled pbmc68k_reduced (700 cells) with the binary label ``lineage``.

    ``lineage`` is ``"myeloid"`` for CD14+ monocytes and dendritic cells and ``"other"`` for
    the lymphoid and progenitor cells; datamodels of the myeloid class should separate the two
    myeloid cell types that the label lumps together (``obs["bulk_labels"]`` says which is
    which). :data:`PBMC68K_COVARIATES` are its columns to check subgroups against. This is
    the data ``scdm run`` uses when given no input.
    """
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    adata.obs["lineage"] = np.where(adata.obs["bulk_labels"].isin(MYELOID), "myeloid", "other")
    adata.obs["lineage"] = adata.obs["lineage"].astype("category")
    return adata
