# %% [markdown]
# # Datamodels over patients: pseudobulk donors
#
# Cells of one donor are not independent: a classifier that trains on some cells of a donor and
# is scored on her other cells learns the donor, not the disease. Two ways out, both shown here:
#
# 1. **pseudobulk** — one profile per donor (`scdm.pp.pseudobulk`), datamodels over donors;
# 2. **group-aware masks** — datamodels over cells, but each donor's cells enter or leave a
#    training set together (`group_key="donor"`).
#
# The data are synthetic (`scdm.datasets.planted_subtypes`): each diseased donor carries one of
# three hidden subtypes, and a strong batch effect dominates expression.
#
# Run as a script (`python tutorials/donors.py`) or open as a notebook with jupytext.
# `SCDM_TUTORIAL_SMALL=1` shrinks it to a smoke test.

# %%
import os

import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

import scdm

SMALL = os.environ.get("SCDM_TUTORIAL_SMALL") == "1"
CELLS_PER_DONOR = 10 if SMALL else 25
DONORS_PER_SUBTYPE = 4
N_MODELS = 600 if SMALL else None  # None: scdm's default (~25 per sample, at least 1,000)
scdm.settings.verbosity = 0 if SMALL else 1

# %% [markdown]
# ## Synthetic donors
# Cells of each subtype (and the controls) are dealt to donors, so a donor carries one subtype.

# %%
n_subtypes = 3
adata = scdm.datasets.planted_subtypes(
    n_controls=3 * DONORS_PER_SUBTYPE * CELLS_PER_DONOR,
    n_per_subtype=DONORS_PER_SUBTYPE * CELLS_PER_DONOR,
    n_subtypes=n_subtypes, random_state=0)
donor = np.empty(adata.n_obs, dtype=object)
for subtype in adata.obs["subtype"].cat.categories:
    members = np.flatnonzero(adata.obs["subtype"] == subtype)
    donor[members] = [f"{subtype}-donor{i // CELLS_PER_DONOR}" for i in range(members.size)]
adata.obs["donor"] = pd.Categorical(donor)
print(adata)

# %% [markdown]
# ## 1. Pseudobulk: one observation per donor
# Donor-level metadata (`disease`, `subtype`: constant within each donor) is carried into
# `.obs`; per-cell columns (`batch`, `state`) vary within donors and are dropped.

# %%
donors = scdm.pp.pseudobulk(adata, "donor")
donors.obs[["n_cells", "disease", "subtype"]].head()

# %%
sc.pp.pca(donors, n_comps=10, random_state=0)
scdm.tl.datamodels(donors, "disease", use_rep="X_pca", n_models=N_MODELS,
                   n_comps=3, store="scdm_stores/tutorial-donors")
scdm.tl.subgroups(donors, n_neighbors=3, markers=False)
disease = (donors.obs["disease"] == "disease").to_numpy()
print("donor subgroups:", donors.obs.loc[disease, "datamodels_subgroup"].value_counts().to_dict())
print("ARI vs planted subtypes:", round(adjusted_rand_score(
    donors.obs["subtype"][disease], donors.obs["datamodels_subgroup"][disease]), 3))

# %% [markdown]
# ## 2. Cells with group-aware masks
# Every model trains on half of the donors of each class, with all their cells; a cell's
# datamodel is fitted only on models that never saw its donor.

# %%
sc.pp.pca(adata, n_comps=20, random_state=0)
scdm.tl.datamodels(adata, "disease", use_rep="X_pca", group_key="donor", n_models=N_MODELS,
                   store="scdm_stores/tutorial-cells-by-donor")
scdm.tl.subgroups(adata, markers=False)
cells = (adata.obs["disease"] == "disease").to_numpy()
print("ARI vs planted subtypes (cells):", round(adjusted_rand_score(
    adata.obs["subtype"][cells], adata.obs["datamodels_subgroup"][cells]), 3))

# %% [markdown]
# ## Is a subgroup just one donor?
# `tl.subgroups` checked each subgroup's donor make-up against the rest of its class (the
# `group_key` the models were trained with). Here every donor carries one subtype, so each
# subtype subgroup spans only its own donors: "imbalanced" by donor, by design. What would
# make it suspect is "dominated": one donor making up most of it. `effective_levels` says how
# many equally large donors a subgroup amounts to — several donors carrying the same program
# is what a subtype looks like.

# %%
composition = adata.uns["datamodels_subgroup"]["composition"]
print(composition[["subgroup", "covariate", "n_levels", "effective_levels",
                   "dominant_fraction", "q_value", "flag"]].to_string())
scdm.pl.composition(adata, "donor", show=False)
