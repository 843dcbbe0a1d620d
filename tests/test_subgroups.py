"""Embedding, Leiden subgroups, markers and plots on a datamodel matrix with planted blocks."""

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData, read_h5ad
from scipy import sparse
from sklearn.metrics import adjusted_rand_score

import scdm


def planted_w_adata(seed: int = 0, n_controls: int = 60, n_per_subtype: int = 30,
                    n_subtypes: int = 3, as_sparse: bool = False) -> AnnData:
    """Targets of subtype k rely (positively) on training samples of subtype k, plus noise;
    their marker gene is expressed only in subtype k."""
    rng = np.random.default_rng(seed)
    truth = np.concatenate([np.full(n_controls, -1),
                            np.repeat(np.arange(n_subtypes), n_per_subtype)])
    n = truth.size
    W = 0.02 * rng.standard_normal((n, n))
    for k in range(n_subtypes):
        members = np.flatnonzero(truth == k)
        W[np.ix_(members, members)] += 0.1 * rng.random((members.size, members.size))
    np.fill_diagonal(W, 0)
    W[np.abs(W) < 0.03] = 0
    X = rng.poisson(1.0, size=(n, 12)).astype(np.float32)
    for k in range(n_subtypes):
        X[truth == k, k] += 4
    obs = pd.DataFrame({
        "disease": pd.Categorical(np.where(truth < 0, "control", "disease")),
        "subtype": pd.Categorical(["control" if t < 0 else f"s{t}" for t in truth]),
    }, index=[f"c{i}" for i in range(n)])
    adata = AnnData(X=np.log1p(X), obs=obs, var=pd.DataFrame(index=[f"g{g}" for g in range(12)]))
    adata.obsp["datamodels"] = sparse.csr_matrix(W, dtype=np.float32) if as_sparse else W.astype(
        np.float32)
    adata.uns["datamodels"] = {"params": {"label_key": "disease"}}
    return adata


@pytest.mark.parametrize("as_sparse", [False, True])
def test_embedding_and_subgroups_recover_blocks(as_sparse):
    adata = planted_w_adata(as_sparse=as_sparse)
    scdm.tl.embed_datamodels(adata, n_comps=10)
    assert adata.obsm["X_datamodels"].shape == (adata.n_obs, 10)
    assert adata.uns["datamodels"]["embedding"]["params"]["standardize"] is True
    scdm.tl.subgroups(adata, n_neighbors=10)
    groups = adata.obs["datamodels_subgroup"]
    assert isinstance(groups.dtype, pd.CategoricalDtype)
    disease = (adata.obs["disease"] == "disease").to_numpy()
    assert adjusted_rand_score(adata.obs["subtype"][disease], groups[disease]) > 0.9
    # Named after the class; no subgroup mixes classes.
    assert all(str(g).startswith("disease-") for g in groups[disease])
    assert all(str(g).startswith("control-") for g in groups[~disease])
    sizes = adata.uns["datamodels_subgroup"]["sizes"]
    assert sum(sizes.values()) == adata.n_obs
    markers = adata.uns["datamodels_subgroup"]["markers"]
    top = markers[(markers["class"] == "disease") & (markers["rank"] == 0)]
    # Each disease subgroup's top marker is its planted gene, and every planted gene shows up.
    assert sorted(top["gene"]) == ["g0", "g1", "g2"]


def test_subgroups_deterministic_and_seeded():
    adata = planted_w_adata()
    scdm.tl.embed_datamodels(adata, n_comps=10)
    first = scdm.tl.subgroups(adata, n_neighbors=10, markers=False, copy=True)
    second = scdm.tl.subgroups(adata, n_neighbors=10, markers=False, copy=True)
    assert first.obs["datamodels_subgroup"].equals(second.obs["datamodels_subgroup"])
    assert "datamodels_subgroup" not in adata.obs  # copy=True leaves the input alone
    embedded_twice = scdm.tl.embed_datamodels(adata, n_comps=10, copy=True)
    np.testing.assert_array_equal(embedded_twice.obsm["X_datamodels"], adata.obsm["X_datamodels"])


def test_subgroups_h5ad_roundtrip(tmp_path):
    adata = planted_w_adata()
    scdm.tl.embed_datamodels(adata, n_comps=10)
    scdm.tl.subgroups(adata, n_neighbors=10)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = read_h5ad(tmp_path / "a.h5ad")
    assert back.obs["datamodels_subgroup"].equals(adata.obs["datamodels_subgroup"])
    pd.testing.assert_frame_equal(back.uns["datamodels_subgroup"]["markers"],
                                  adata.uns["datamodels_subgroup"]["markers"],
                                  check_dtype=False, check_index_type=False)
    np.testing.assert_array_equal(back.obsm["X_datamodels"], adata.obsm["X_datamodels"])
    # Results read back are enough to recompute subgroups identically.
    scdm.tl.subgroups(back, n_neighbors=10, markers=False)
    assert back.obs["datamodels_subgroup"].equals(adata.obs["datamodels_subgroup"])


def test_subgroups_bad_input():
    adata = planted_w_adata()
    with pytest.raises(KeyError, match="run scdm"):
        scdm.tl.subgroups(adata)  # no embedding yet
    with pytest.raises(KeyError, match="run scdm"):
        scdm.tl.embed_datamodels(adata, key="other")
    scdm.tl.embed_datamodels(adata, n_comps=10)
    with pytest.raises(ValueError, match="n_neighbors"):
        scdm.tl.subgroups(adata, n_neighbors=100)
    with pytest.raises(ValueError, match="are not in"):
        scdm.tl.subgroups(adata, classes=["nope"])
    with pytest.raises(ValueError, match="resolution"):
        scdm.tl.subgroups(adata, resolution=0)
    del adata.uns["datamodels"]["params"]
    with pytest.raises(KeyError, match="label_key"):
        scdm.tl.subgroups(adata)
    with pytest.raises(KeyError, match="subgroups"):
        scdm.tl.subgroup_markers(adata)


def test_plots_render_without_warnings(tmp_path):
    adata = planted_w_adata()
    scdm.tl.embed_datamodels(adata, n_comps=10)
    scdm.tl.subgroups(adata, n_neighbors=10)
    lam = np.geomspace(1, 1e-2, 5)[:, None] * np.ones((1, adata.n_obs))
    mse = np.linspace(2, 1, 5)[:, None] * np.ones((1, adata.n_obs))
    adata.uns["datamodels"].update({
        "lambda": lam[2], "path": {"lambda": lam, "train_mse": mse, "val_mse": mse + 0.1,
                                   "nnz": np.arange(5)[:, None] * np.ones((1, adata.n_obs))}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = scdm.pl.embedding(adata, show=False)
        assert len(ax) == 2  # label and subgroups by default
        ax = scdm.pl.influencers(adata, "c100", show=False)
        assert len(ax.patches) > 0
        assert scdm.pl.similarity(adata, show=False).images
        assert scdm.pl.path(adata, 5, show=False).lines
        fig = scdm.pl.influencers(adata, 0, return_fig=True, show=False)
        assert isinstance(fig, plt.Figure)
        scdm.pl.similarity(adata, save=tmp_path / "sim.png", show=False)
    assert (tmp_path / "sim.png").stat().st_size > 0
    plt.close("all")
    with pytest.raises(KeyError, match="not an observation"):
        scdm.pl.influencers(adata, "nope", show=False)
    with pytest.raises(KeyError, match="run scdm"):
        scdm.pl.embedding(adata, basis="other", show=False)
    with pytest.raises(KeyError, match="run scdm"):
        scdm.pl.path(adata, 0, key="other", show=False)
