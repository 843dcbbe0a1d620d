# %% [markdown]
# # Datamodels on PBMCs: what does "myeloid" lump together?
#
# scanpy's bundled `pbmc68k_reduced` (700 cells). We train classifiers of a coarse label,
# `lineage` (myeloid = CD14+ monocytes and dendritic cells, vs the rest), and ask the datamodels
# which myeloid cells rely on which: the subgroups should split the two cell types that the
# label lumps together, without ever being told about them.
#
# Run as a script (`python tutorials/pbmc68k.py`) or open as a notebook with jupytext.
# `SCDM_TUTORIAL_SMALL=1` shrinks it to a smoke test.

# %%
import os

import matplotlib.pyplot as plt
import pandas as pd
from sklearn.metrics import adjusted_rand_score

import scdm
from scdm.datasets import pbmc68k_lineage

SMALL = os.environ.get("SCDM_TUTORIAL_SMALL") == "1"
N_MODELS = 1000 if SMALL else None  # None: ~25 per cell
scdm.settings.verbosity = 0 if SMALL else 1

# %%
adata = pbmc68k_lineage()
if SMALL:
    adata = adata[::2].copy()  # every other cell: a faster smoke test
pd.crosstab(adata.obs["bulk_labels"], adata.obs["lineage"])

# %% [markdown]
# ## Datamodels on the PCA representation

# %%
scdm.tl.datamodels(adata, "lineage", use_rep="X_pca", n_models=N_MODELS,
                   store="scdm_stores/tutorial-pbmc")
scdm.tl.subgroups(adata)
myeloid = (adata.obs["lineage"] == "myeloid").to_numpy()
print(pd.crosstab(adata.obs["datamodels_subgroup"][myeloid], adata.obs["bulk_labels"][myeloid]
                  .cat.remove_unused_categories()))
print("ARI vs cell type within myeloid:", round(adjusted_rand_score(
    adata.obs["bulk_labels"][myeloid], adata.obs["datamodels_subgroup"][myeloid]), 3))

# %% [markdown]
# Marker genes of each myeloid subgroup against the other myeloid cells (on `.raw`):

# %%
markers = adata.uns["datamodels_subgroup"]["markers"]
markers.query("`class` == 'myeloid' and rank < 5")[["subgroup", "gene", "logfoldchange"]]

# %%
scdm.pl.embedding(adata, color=["datamodels_subgroup", "bulk_labels"], show=False)
scdm.pl.similarity(adata, show=False)
plt.close("all")
