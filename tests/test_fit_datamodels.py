import shutil

import anndata as ad
import numpy as np
import pytest
from _helpers import make_adata
from scipy import sparse

import scdm
from scdm.store import ModelStore

TRAIN = {"epochs": 5, "hidden": (8,), "batch_size": 16, "lr": 0.05}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    scdm.settings.verbosity = 0
    adata = make_adata(n_obs=40)
    store = tmp_path_factory.mktemp("fit") / "store"
    scdm.tl.train_models(adata, "disease", n_models=800, store=store, config=TRAIN)
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
    # the own column absorbs the self-influence, which is moved out of W into uns
    assert np.allclose(W.diagonal(), 0)
    assert info["self_influence"].shape == (40,) and np.mean(info["self_influence"] > 0) > 0.9
    assert adata.obs["datamodels_ok"].all() and info["summary"]["n_degenerate"] == 0
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


def test_a_misspelt_setting_is_refused():
    """scdm.settings.verbose = False would otherwise be kept and change nothing (the bars go
    on): it is refused with the names of the settings."""
    with pytest.raises(AttributeError, match=r"no setting 'verbose'.*verbosity=0 silences"):
        scdm.settings.verbose = False
    assert not hasattr(scdm.settings, "verbose")
    before = scdm.settings.verbosity
    scdm.settings.verbosity = 0
    assert not scdm.settings.progress(None)
    scdm.settings.verbosity = before


def test_float16_margins_store_half_and_fit_the_same(trained, tmp_path):
    """settings.margins_dtype = "float16" (the published datamodels' format): margins take
    half the disk and the datamodels, LDS inputs and all readers work as with float32; a
    float32 store is not resumed under the other setting; overflow is refused unwritten."""
    reference = trained.copy()
    scdm.tl.fit_datamodels(reference)
    adata = make_adata(n_obs=40)
    try:
        with pytest.raises(ValueError, match="margins_dtype"):
            scdm.settings.margins_dtype = "bfloat16"
        scdm.settings.margins_dtype = "float16"
        with pytest.raises(scdm.store.StoreMismatchError, match="float16"):
            scdm.tl.train_models(adata, "disease", n_models=800,
                                 store=reference.uns["datamodels"]["store"], config=TRAIN)
        scdm.tl.train_models(adata, "disease", n_models=800, store=tmp_path / "half",
                             config=TRAIN)
    finally:
        scdm.settings.margins_dtype = "float32"
    half = ModelStore.open(tmp_path / "half")
    full = ModelStore.open(reference.uns["datamodels"]["store"])
    assert half.margins.dtype == np.float16 and full.margins.dtype == np.float32
    assert (tmp_path / "half/margins.npy").stat().st_size < 0.51 * (
        full.path / "margins.npy").stat().st_size + 256
    np.testing.assert_array_equal(half.masks, full.masks)  # the same models, rounded margins
    np.testing.assert_allclose(half.margins, full.margins, rtol=1e-3, atol=1e-3)
    scdm.tl.fit_datamodels(adata)
    a, b = (np.asarray(sparse.csr_matrix(x.obsp["datamodels"]).todense()).ravel()
            for x in (adata, reference))
    assert np.corrcoef(a, b)[0, 1] > 0.99
    with pytest.raises(ValueError, match="overflow"):
        ModelStore.open(tmp_path / "half", writable=True).write(
            [0], masks=half.masks[:1], margins=np.full((1, 40), 1e6, np.float32),
            heldout_accuracy=np.ones(1, np.float32))
    np.testing.assert_array_equal(ModelStore.open(tmp_path / "half").margins[0], half.margins[0])


def test_fit_refuses_missing_or_incomplete_store(trained, tmp_path):
    with pytest.raises(KeyError, match=r"run scdm\.tl\.train_models"):
        scdm.tl.fit_datamodels(make_adata(n_obs=40))
    adata = make_adata(n_obs=40)
    scdm.tl.train_models(adata, "disease", n_models=600, store=tmp_path / "s",
                         model_range=(0, 300), config=TRAIN)
    with pytest.raises(ValueError, match="300 of 600 models complete"):
        scdm.tl.fit_datamodels(adata)
    scdm.tl.fit_datamodels(adata, allow_incomplete=True)
    assert adata.uns["datamodels"]["summary"]["n_models_used"] == 300
    with pytest.raises(ValueError, match="adata has 38 observations"):
        scdm.tl.fit_datamodels(make_adata(n_obs=38), store=tmp_path / "s")


def test_too_few_heldout_models_for_a_target(tmp_path):
    adata = make_adata(n_obs=40)
    scdm.tl.train_models(adata, "disease", n_models=60, store=tmp_path / "s", min_heldout=5,
                         config=TRAIN)
    with pytest.raises(ValueError, match="held out of only"):
        scdm.tl.fit_datamodels(adata, heldout=True, min_rows=100)
    # the default fit chooses λ on the held-out validation models: 60 models are too few
    with pytest.raises(ValueError, match=r"held out of only \d+ of 60 models.*validation"):
        scdm.tl.fit_datamodels(adata)


def test_default_fit_agrees_with_heldout_fit_and_predicts_heldout_margins(trained):
    """Every model, own column absorbed (default) vs each target on the models that did not
    train on it: the same off-diagonal weights up to noise, the same held-out predictions."""
    adata = trained.copy()
    scdm.tl.fit_datamodels(adata)
    scdm.tl.fit_datamodels(adata, heldout=True, key_added="heldout")
    W = adata.obsp["datamodels"]
    W = W.toarray() if sparse.issparse(W) else W
    H = adata.obsp["heldout"]
    H = H.toarray() if sparse.issparse(H) else H
    off = ~np.eye(40, dtype=bool)
    assert np.corrcoef(W[off], H[off])[0, 1] > 0.9
    assert "self_influence" not in adata.uns["heldout"]
    assert adata.uns["datamodels"]["fit_params"]["heldout"] is False
    # the correlations are on held-out validation models in both modes: comparable
    assert abs(adata.obs["datamodels_corr"].mean() - adata.obs["heldout_corr"].mean()) < 0.1
    # moving the diagonal out leaves predictions for models without the target unchanged
    store = ModelStore.open(adata.uns["datamodels"]["store"])
    masks, margins = np.asarray(store.masks), np.asarray(store.margins)
    for t in (3, 30):
        out = ~masks[:, t]
        pred = masks[out].astype(np.float32) @ W[t] + adata.uns["datamodels"]["intercept"][t]
        assert np.corrcoef(pred, margins[out, t])[0, 1] > 0.3


def test_degenerate_datamodels_are_flagged(trained, tmp_path):
    """A target whose margin the masks cannot explain gets an all-zero datamodel: flagged,
    warned about, and left out of the embedding."""
    adata = trained.copy()
    copy = tmp_path / "noisy"
    shutil.copytree(adata.uns["datamodels"]["store"], copy)
    margins = np.load(copy / "margins.npy", mmap_mode="r+")
    margins[:, 7] = np.random.default_rng(0).normal(size=margins.shape[0])  # pure noise
    margins.flush()
    del margins
    with pytest.warns(scdm.tl.DegenerateDatamodelsWarning, match="cell7"):
        scdm.tl.fit_datamodels(adata, store=copy)
    assert not adata.obs["datamodels_ok"].iloc[7] and adata.obs["datamodels_ok"].sum() >= 35
    scdm.tl.embed_datamodels(adata, label_key="disease")
    assert np.isnan(adata.obsm["X_datamodels"][7]).all()
    assert np.isfinite(adata.obsm["X_datamodels"][adata.obs["datamodels_ok"].to_numpy()]).all()
