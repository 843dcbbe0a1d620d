"""The whole workflow on small planted data: datamodels → subgroups → plots, and h5ad round trip."""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
from anndata import read_h5ad
from sklearn.metrics import adjusted_rand_score

import scdm


def expression_leiden_ari(adata) -> float:
    disease = adata[adata.obs["disease"] == "disease"].copy()
    sc.pp.pca(disease, random_state=0)
    sc.pp.neighbors(disease, method="gauss", transformer="sklearn", random_state=0)
    sc.tl.leiden(disease, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    return adjusted_rand_score(disease.obs["subtype"], disease.obs["leiden"])


def test_datamodels_recover_planted_subtypes_better_than_expression(planted):
    adata = planted.copy()
    info = adata.uns["datamodels"]
    assert info["n_completed"] == info["n_models"] == 4000  # the default: 25 per sample
    assert adata.obsp["datamodels"].shape == (adata.n_obs, adata.n_obs)
    assert adata.obsm["X_datamodels"].shape == (adata.n_obs, 10)
    assert adata.obs["datamodels_corr"].mean() > 0.2
    scdm.tl.subgroups(adata)
    disease = (adata.obs["disease"] == "disease").to_numpy()
    ari = adjusted_rand_score(adata.obs["subtype"][disease],
                              adata.obs["datamodels_subgroup"][disease])
    baseline = expression_leiden_ari(adata)
    assert ari > 0.8
    assert ari > baseline + 0.5
    # Markers of the subgroups are the planted program genes.
    markers = adata.uns["datamodels_subgroup"]["markers"]
    top = markers[(markers["class"] == "disease") & (markers["rank"] < 3)]
    programs = adata.var.loc[top["gene"], "program"].astype(str)
    assert (programs != "none").mean() > 0.8


@pytest.mark.slow
def test_every_result_survives_h5ad(planted, tmp_path):
    adata = planted.copy()
    scdm.tl.subgroups(adata)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = read_h5ad(tmp_path / "a.h5ad")
    for key in ("datamodels", ):
        W, W_back = adata.obsp[key], back.obsp[key]
        W = W.toarray() if hasattr(W, "toarray") else W
        W_back = W_back.toarray() if hasattr(W_back, "toarray") else W_back
        np.testing.assert_array_equal(W, W_back)
    np.testing.assert_array_equal(back.obsm["X_datamodels"], adata.obsm["X_datamodels"])
    assert back.obs["datamodels_subgroup"].equals(adata.obs["datamodels_subgroup"])
    assert back.uns["datamodels"]["params"]["label_key"] == "disease"
    assert back.uns["datamodels"]["embedding"]["params"]["within_class"]
    # The read-back object supports every later step and plot.
    scdm.tl.embed_datamodels(back)
    np.testing.assert_allclose(back.obsm["X_datamodels"], adata.obsm["X_datamodels"], atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scdm.pl.embedding(back, show=False)
        scdm.pl.influencers(back, back.obs_names[-1], show=False)
        scdm.pl.similarity(back, show=False)
        scdm.pl.path(back, back.obs_names[-1], show=False)
    plt.close("all")


def test_datamodels_rerun_resumes_store_and_rejects_bad_input(planted):
    adata = planted.copy()
    store = adata.uns["datamodels"]["store"]
    # Training again with the same settings finds every model in the store: nothing to train.
    before = Path(store, "margins.npy").stat().st_mtime_ns
    scdm.tl.train_models(adata, "disease", use_rep="X_pca", stratify_key="batch", store=store)
    assert Path(store, "margins.npy").stat().st_mtime_ns == before
    assert adata.uns["datamodels"]["n_completed"] == 4000
    with pytest.raises(ValueError, match="stratify_key"):  # another configuration, same store
        scdm.tl.train_models(adata, "disease", use_rep="X_pca", store=store)
    one_class = adata[adata.obs["disease"] == "disease"].copy()
    with pytest.raises(ValueError, match="only one class"):
        scdm.tl.datamodels(one_class, "disease", use_rep="X_pca")
    with pytest.raises(KeyError, match="label_key"):
        scdm.tl.datamodels(adata, "condition", use_rep="X_pca")
    with pytest.raises(KeyError, match="stratify_key"):
        scdm.tl.datamodels(adata, "disease", use_rep="X_pca", stratify_key="plate")
    with pytest.raises(TypeError, match="train_kwds"):
        scdm.tl.datamodels(adata, "disease", train_kwds={"store": "x"})
