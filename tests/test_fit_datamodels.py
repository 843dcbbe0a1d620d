import anndata as ad
import numpy as np
import pytest
from conftest import make_adata
from scipy import sparse

import scdm
from scdm.store import ModelStore

TRAIN = {"epochs": 5, "hidden": (8,), "batch_size": 16, "lr": 0.05}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    scdm.settings.verbosity = 0
    adata = make_adata(n_obs=40)
    store = tmp_path_factory.mktemp("fit") / "store"
    scdm.tl.train_models(adata, "disease", n_models=800, store=store, **TRAIN)
    return adata


def test_fit_writes_obsp_obs_uns_and_roundtrips(trained, tmp_path):
    adata = trained.copy()
    scdm.tl.fit_datamodels(adata, sparse_threshold=1.0)
    W = adata.obsp["datamodels"]
    assert sparse.issparse(W) and W.shape == (40, 40) and W.dtype == np.float32
    corr = adata.obs["datamodels_corr"]
    assert corr.notna().all() and corr.mean() > 0.3  # margins are predictable out of sample
    info = adata.uns["datamodels"]
    assert info["lambda"].shape == (40,) and (info["lambda"] > 0).all()
    assert info["summary"]["n_models_used"] == 800
    assert info["params"]["label_key"] == "disease"  # training record kept
    # in held-out mode a target's own column is always 0 (it never trains on itself)
    assert np.allclose(W.diagonal(), 0)
    # weights are in raw mask units: they predict the margins of the stored models
    store = ModelStore.open(info["store"])
    heldout = ~store.masks[:, 5]
    pred = store.masks[heldout].astype(np.float32) @ W[5].toarray().ravel() + info["intercept"][5]
    assert np.corrcoef(pred, store.margins[heldout, 5])[0, 1] > 0.3
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    np.testing.assert_array_equal(back.obsp["datamodels"].toarray(), W.toarray())
    np.testing.assert_array_equal(back.uns["datamodels"]["lambda"], info["lambda"])
    scdm.tl.fit_datamodels(back, key_added="again")  # works after the round trip
    assert back.obsp["again"].shape == (40, 40)


def test_fit_refuses_missing_or_incomplete_store(trained, tmp_path):
    with pytest.raises(KeyError, match=r"run scdm\.tl\.train_models"):
        scdm.tl.fit_datamodels(make_adata(n_obs=40))
    adata = make_adata(n_obs=40)
    scdm.tl.train_models(adata, "disease", n_models=600, store=tmp_path / "s",
                         model_range=(0, 300), **TRAIN)
    with pytest.raises(ValueError, match="300 of 600 models complete"):
        scdm.tl.fit_datamodels(adata)
    scdm.tl.fit_datamodels(adata, allow_incomplete=True)
    assert adata.uns["datamodels"]["summary"]["n_models_used"] == 300
    with pytest.raises(ValueError, match="adata has 38 observations"):
        scdm.tl.fit_datamodels(make_adata(n_obs=38), store=tmp_path / "s")


def test_too_few_heldout_models_for_a_target(tmp_path):
    adata = make_adata(n_obs=40)
    scdm.tl.train_models(adata, "disease", n_models=60, store=tmp_path / "s", min_heldout=5,
                         **TRAIN)
    with pytest.raises(ValueError, match="held out of only"):
        scdm.tl.fit_datamodels(adata, min_rows=100)
