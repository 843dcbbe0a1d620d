# %% [markdown]
# # Finding hidden disease subtypes with datamodels
#
# A disease class made of three hidden subtypes, each driven by its own small gene program, and
# a batch effect that dominates expression. Standard expression clustering finds the batches;
# datamodels find the subtypes, because the disease classifier relies on a different program
# for each subtype — and so each diseased cell's prediction depends on the training cells of
# its own subtype.
#
# Run as a script (`python tutorials/planted_subtypes.py`) or open as a notebook with jupytext.
# `SCDM_TUTORIAL_SMALL=1` shrinks it to a smoke test.

# %%
import os

import matplotlib.pyplot as plt
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

import scdm

SMALL = os.environ.get("SCDM_TUTORIAL_SMALL") == "1"
SIZES = dict(n_controls=80, n_per_subtype=40, n_subtypes=2, n_genes=200, batch_genes=100) \
    if SMALL else {}
N_MODELS = None  # scdm's default, ~25 per cell: fewer leave the halves too noisy to agree
scdm.settings.verbosity = 0 if SMALL else 1

# %% [markdown]
# ## The data
# `obs["subtype"]` is the ground truth we pretend not to know; `obs["batch"]` is the nuisance.

# %%
adata = scdm.datasets.planted_subtypes(random_state=0, **SIZES)
adata.obs[["disease", "subtype", "batch"]].value_counts().head()

# %% [markdown]
# ## What expression clustering sees
# The standard scanpy route on the diseased cells: PCA, neighbours, Leiden.

# %%
disease = adata[adata.obs["disease"] == "disease"].copy()
sc.pp.pca(disease, random_state=0)
sc.pp.neighbors(disease, method="gauss", transformer="sklearn", random_state=0)
sc.tl.leiden(disease, flavor="igraph", n_iterations=2, directed=False, random_state=0)
print("expression Leiden vs subtype ARI:",
      round(adjusted_rand_score(disease.obs["subtype"], disease.obs["leiden"]), 3))
print("expression Leiden vs batch ARI:  ",
      round(adjusted_rand_score(disease.obs["batch"], disease.obs["leiden"]), 3))

# %% [markdown]
# ## Datamodels
# One call trains thousands of small disease-vs-control classifiers on random halves of the
# cells (resumable, on disk), fits every cell's datamodel, and embeds them. Passing the known
# nuisance as `stratify_key` keeps every training half balanced across batches.

# %%
sc.pp.pca(adata, random_state=0)
scdm.tl.datamodels(adata, "disease", use_rep="X_pca", stratify_key="batch", n_models=N_MODELS,
                   store="scdm_stores/tutorial-planted")
print(adata.uns["datamodels"]["summary"])

# %% [markdown]
# ## Subgroups
# Leiden on the datamodel embedding within each class; subgroups are named after their class.
# How many (including none) is decided per class: the datamodels are refitted on two disjoint
# halves of the models, and a split counts only if both halves find it and its clusters are
# more separated than those of cluster-free Gaussian halves with the same signal and noise.
# The controls have no subtypes, and stay one subgroup.

# %%
scdm.tl.subgroups(adata)
cells = (adata.obs["disease"] == "disease").to_numpy()
print("datamodel subgroups vs subtype ARI:", round(adjusted_rand_score(
    adata.obs["subtype"][cells], adata.obs["datamodels_subgroup"][cells]), 3))
for cls, evidence in adata.uns["datamodels_subgroup"]["reproducibility"].items():
    print(cls, evidence)
adata.uns["datamodels_subgroup"]["markers"].query("rank < 3")

# %% [markdown]
# ## Plots
# The embedding, the similarity of datamodels ordered by subgroup, one cell's top influencers
# (the training cells that push its prediction up are of its own subtype), and its
# regularisation path.

# %%
scdm.pl.embedding(adata, color=["datamodels_subgroup", "subtype", "batch"], show=False)
scdm.pl.similarity(adata, show=False)
target = adata.obs_names[cells][0]
scdm.pl.influencers(adata, target, color="subtype", show=False)
scdm.pl.path(adata, target, show=False)
plt.close("all")

# %% [markdown]
# ## Can the datamodels be trusted?
# A datamodel is a prediction about training sets it has never seen, so check it on fresh ones:
# `tl.lds` trains new models on new random halves (a seed stream of their own, every other
# setting as recorded) and correlates, per cell, the margin its datamodel predicts with the
# margin the new model produced (Spearman; the linear datamodeling score). Shuffled weights
# score ~0. `tl.model_count_curve` refits on 1/8, 1/4, 1/2 and all of the models: when the
# curve has flattened, more models would add little.

# %%
scdm.tl.lds(adata, n_models=60 if SMALL else 300)
scdm.tl.model_count_curve(adata)
print("mean LDS:", round(adata.uns["datamodels"]["lds"]["mean"], 3))
print(adata.uns["datamodels"]["model_curve"]["recommendation"])
scdm.pl.lds(adata, show=False)
plt.close("all")

# %% [markdown]
# ## Is a subgroup real? Retrain without it
# If the cells of a subgroup support each other's predictions, leaving the whole subgroup out
# of training hurts its cells more than leaving out any other set of cells as coherent in the
# features: `tl.validate_subgroups` compares it with the nearest-neighbour sets of the same
# size around random cells of its class (uniform random sets would let any cluster of the
# features pass), and gives an empirical p-value (at best 1 / (n_random + 1)) and
# Benjamini-Hochberg q-values across subgroups.

# %%
if adata.obs["datamodels_subgroup"][cells].nunique() > 1:
    table = scdm.tl.validate_subgroups(adata, n_random=19 if SMALL else 99,
                                       n_models=8 if SMALL else 16)
    print(table[["n_cells", "margin_drop", "random_margin_drop", "p_value_margin",
                 "q_value_margin", "status"]])
    scdm.pl.validation(adata, show=False)
    plt.close("all")
else:
    print("the disease class has no reproducible split: nothing to validate")

# %% [markdown]
# ## Choosing α, regularisation and hidden size
# A datamodel can learn only the part of a margin that moves with the training subset; the part
# that moves with the seed (initialisation, data order) is noise to it. `tl.signal_to_noise`
# trains a few seeds per subset and compares the two variances. Prefer settings with a higher
# median signal-to-noise ratio among those whose models still classify well.

# %%
settings_to_try = [(0.5, {}), (0.3, {})] if SMALL else [
    (0.5, {}), (0.3, {}), (0.7, {}), (0.5, {"weight_decay": 0.1}), (0.5, {"hidden": (16,)}),
    (0.5, {"hidden": ()})]
for alpha, model in settings_to_try:  # alpha, and the models' settings (config)
    snr = scdm.tl.signal_to_noise(adata, "disease", use_rep="X_pca", stratify_key="batch",
                                  alpha=alpha, config=model, n_masks=8 if SMALL else 32,
                                  n_seeds=2 if SMALL else 4)
    print(f"alpha {alpha}", model, "median SNR", round(snr["median_snr"], 2),
          "held-out accuracy", round(snr["mean_heldout_accuracy"], 3))
