"""Counterfactual evaluation on small planted data: LDS, model-count curve, subgroup validation,
signal-to-noise. Uses the session fixture ``planted`` (conftest): trained datamodels."""

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata import read_h5ad
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import scdm
from scdm.evaluation import linear_datamodeling_score, signal_to_noise, spearman_columns
from scdm.store import ModelStore


@pytest.fixture(scope="module")
def evaluated(planted, tmp_path_factory):
    adata = planted.copy()
    scdm.tl.lds(adata, n_models=100, store=tmp_path_factory.mktemp("lds") / "eval")
    return adata


def dense(W):
    return W.toarray() if hasattr(W, "toarray") else np.asarray(W)


def test_spearman_columns_matches_scipy_on_kept_rows():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(40, 5))
    B = A + rng.normal(size=(40, 5))
    B[:, 2] = np.round(B[:, 2])  # ties
    keep = rng.random((40, 5)) < 0.7
    expected = [spearmanr(A[keep[:, j], j], B[keep[:, j], j])[0] for j in range(5)]
    np.testing.assert_allclose(spearman_columns(A, B, keep), expected, rtol=1e-12)
    A[:, 4] = 1.0  # a constant prediction has no skill
    assert spearman_columns(A, B)[4] == 0.0


def test_lds_is_far_above_shuffled_weights(evaluated):
    adata = evaluated
    info = adata.uns["datamodels"]["lds"]
    scores = adata.obs["datamodels_lds"].to_numpy()
    assert info["mean"] == pytest.approx(np.nanmean(scores))
    assert info["mean"] > 0.4
    store = ModelStore.open(info["store"])
    assert store.n_completed == 100
    masks, margins = np.asarray(store.masks), np.asarray(store.margins)
    W = dense(adata.obsp["datamodels"])
    shuffled = W[:, np.random.default_rng(0).permutation(W.shape[1])]
    null = np.nanmean(linear_datamodeling_score(shuffled, masks, margins, rows="targets",
                                                heldout=True))
    assert abs(null) < 0.1
    assert info["mean"] > null + 0.3
    # evaluation subsets come from their own stream, never the training masks
    train_masks = np.asarray(ModelStore.open(adata.uns["datamodels"]["store"]).masks[:100])
    assert not (train_masks == masks).all(axis=1).any()


def test_lds_is_reproducible_and_resumes(evaluated, tmp_path):
    adata = evaluated.copy()
    scdm.tl.lds(adata, n_models=100, store=tmp_path / "again")
    np.testing.assert_array_equal(adata.obs["datamodels_lds"], evaluated.obs["datamodels_lds"])
    # an interrupted evaluation store resumes: wipe half the completion flags and rerun
    flags = np.load(tmp_path / "again" / "_completed.npy", mmap_mode="r+")
    flags[50:] = False
    flags.flush()
    del flags
    scdm.tl.lds(adata, n_models=100, store=tmp_path / "again")
    np.testing.assert_array_equal(adata.obs["datamodels_lds"], evaluated.obs["datamodels_lds"])
    # averaging seeds per subset removes seed noise from the target: the LDS rises
    scdm.tl.lds(adata, n_models=60, n_seeds=3, store=tmp_path / "seeds")
    assert adata.uns["datamodels"]["lds"]["params"]["n_seeds"] == 3
    assert adata.uns["datamodels"]["lds"]["mean"] > evaluated.uns["datamodels"]["lds"]["mean"]


@pytest.mark.slow
def test_model_count_curve_rises_and_recommends(evaluated):
    adata = evaluated.copy()
    scdm.tl.model_count_curve(adata, n_models=[250, 1000, 4000])
    curve = adata.uns["datamodels"]["model_curve"]
    assert list(curve["n_models"]) == [250, 1000, 4000]
    assert np.all(np.diff(curve["mean_lds"]) > 0) and np.all(np.diff(curve["mean_corr"]) > 0)
    gains = np.diff(curve["mean_lds"])  # each step quadruples the models: it flattens
    assert gains[1] < gains[0]
    # the last point is the fit already in adata
    assert curve["mean_lds"][-1] == pytest.approx(adata.uns["datamodels"]["lds"]["mean"])
    assert ("still rising" in curve["recommendation"]) != curve["flat"]
    # a generous tolerance declares the same curve flat
    scdm.tl.model_count_curve(adata, n_models=[1000, 4000], flat_tol=1.0)
    assert adata.uns["datamodels"]["model_curve"]["flat"]
    with pytest.raises(ValueError, match="completed models"):
        scdm.tl.model_count_curve(adata, n_models=[100, 10_000])
    # plots, also after an h5ad round trip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        axes = scdm.pl.lds(adata, show=False)
    assert len(axes) == 5  # the LDS by class, three targets, the model-count curve
    assert [t.get_text().split(" (")[0] for t in axes[0].get_yticklabels()] == list(
        dict.fromkeys(adata.obs["disease"].astype(str)))
    plt.close("all")


def test_planted_subtype_validates_and_random_subset_does_not(evaluated, tmp_path):
    adata = evaluated.copy()
    rng = np.random.default_rng(3)
    disease = np.flatnonzero(adata.obs["disease"] == "disease")
    proposal = np.where(adata.obs["disease"] == "disease", "rest", "control").astype(object)
    subtype = adata.obs["subtype"].astype(str).to_numpy()
    planted = np.flatnonzero(subtype == subtype[disease[0]])  # a whole subtype (40 cells)
    proposal[planted] = "planted"
    controls = np.flatnonzero(adata.obs["disease"] == "control")
    proposal[rng.choice(controls, 20, replace=False)] = "random-set"
    adata.obs["proposal"] = pd.Categorical(proposal)
    # against feature-space neighbourhoods of the same size, spread over the recorded batches as
    # the subgroup is (the default comparison sets); half a subtype would not pass them (the
    # other half still supports it), a whole one does
    table = scdm.tl.validate_subgroups(adata, subgroup_key="proposal", n_random=19, n_models=8,
                                       subgroups=["planted", "random-set"])
    assert list(table.index) == ["planted", "random-set"]
    assert table.loc["planted", "p_value_margin"] == pytest.approx(0.05)  # the smallest possible
    assert table.loc["planted", "margin_drop"] > table.loc["planted", "random_margin_drop"] + 0.1
    assert table.loc["random-set", "p_value_margin"] > 0.2
    # Benjamini-Hochberg across the two tested subgroups
    assert table.loc["planted", "q_value_margin"] == pytest.approx(
        min(0.1, table.loc["random-set", "p_value_margin"]))
    assert (table["q_value"] >= table["p_value"]).all()
    stored = adata.uns["proposal"]["validation"]
    assert stored["random"].shape[0] == 2 * 19 and stored["params"]["null"] == "cuts"
    # reproducible with the same seed
    again = scdm.tl.validate_subgroups(adata, subgroup_key="proposal", n_random=19, n_models=8,
                                       subgroups=["planted", "random-set"])
    pd.testing.assert_frame_equal(table, again)
    adata.write_h5ad(tmp_path / "v.h5ad")
    back = read_h5ad(tmp_path / "v.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scdm.pl.validation(back, subgroup_key="proposal", metric="margin", show=False)
        scdm.pl.lds(back, targets=[back.obs_names[0]], show=False)
    plt.close("all")


@pytest.mark.slow
def test_feature_space_clusters_of_null_data_do_not_validate(tmp_path):
    """No subtypes: clusters of the input features are coherent but meaningless. Against
    uniform random sets they "validate"; against feature-space neighbourhoods (the default)
    they must not."""
    adata = scdm.datasets.planted_subtypes(n_controls=80, n_per_subtype=80, n_subtypes=1,
                                           n_genes=200, batch_genes=100, random_state=2)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    scdm.tl.datamodels(adata, "disease", use_rep="X_pca", stratify_key="batch",
                       n_models=2000, store=tmp_path / "s")
    disease = np.flatnonzero(adata.obs["disease"] == "disease")
    clusters = KMeans(4, n_init=10, random_state=0).fit_predict(adata.obsm["X_pca"][disease])
    proposal = np.full(adata.n_obs, "control", dtype=object)
    proposal[disease] = [f"cluster-{c}" for c in clusters]
    adata.obs["proposal"] = pd.Categorical(proposal)
    tested = [f"cluster-{c}" for c in range(4)]
    fair = scdm.tl.validate_subgroups(adata, subgroup_key="proposal", subgroups=tested,
                                      n_random=19, n_models=8)
    assert (fair["q_value"] > 0.05).all() and (fair["q_value_margin"] > 0.05).all()
    uniform = scdm.tl.validate_subgroups(adata, subgroup_key="proposal", subgroups=tested,
                                         n_random=19, n_models=8, null="random")
    assert (uniform["p_value_margin"] <= 0.1).sum() >= 3  # the unfair null passes them
    with pytest.raises(ValueError, match="null must be one of"):
        scdm.tl.validate_subgroups(adata, subgroup_key="proposal", null="uniform")


def test_shared_regions_are_the_other_classes_clusters(monkeypatch):
    """Regions come from the classes other than the tested one: an unrecorded batch there
    (Gaussian and Poisson generators) gives them; structureless data gives one region."""
    from scdm.tl._validate import shared_regions

    for adata, n_batches in (
            (scdm.datasets.gaussian_subtypes(random_state=0), 3),
            (scdm.datasets.planted_subtypes(n_controls=200, n_per_subtype=60, random_state=1),
             4)):
        X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        y = (adata.obs["disease"] != "control").to_numpy().astype(int)
        regions = shared_regions(X, y, 1)
        batch = adata.obs["batch"].to_numpy()[y == 1]
        assert regions.shape == batch.shape
        assert adjusted_rand_score(batch, regions) == 1.0, n_batches
        # the subtypes are the disease class's own structure, not a region
        assert adjusted_rand_score(adata.obs["subtype"].to_numpy()[y == 1], regions) < 0.05
        # a large other class is fitted on a subsample, with the same regions
        monkeypatch.setattr("scdm.tl._validate.REGION_FIT_MAX", 120)
        assert adjusted_rand_score(batch, shared_regions(X, y, 1)) == 1.0
        monkeypatch.undo()
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((300, 50)), np.repeat([0, 1], 150)
    assert (shared_regions(X, y, 1) == 0).all()
    strata = np.tile([5, 7], 150)  # recorded strata win, renumbered
    assert np.array_equal(shared_regions(X, y, 1, strata=strata), np.tile([0, 1], 75))


@pytest.mark.slow
def test_subtypes_spread_over_an_unrecorded_batch_validate_on_raw_features(tmp_path):
    """The default path (raw features, no stratify_key) with a batch that dominates the input.
    Sets of the nearest cells lie within one batch, and leaving one out hurts more than leaving
    out a subtype spread over three (the former default validated none); comparison sets
    spread over the batches like the subtype validate them, and cuts of a batch cluster of null
    data do not validate against cuts."""
    from scdm.tl._validate import comparison_sets, shared_regions

    adata = scdm.datasets.gaussian_subtypes(
        classes={"control": [150], "disease": [60, 60]}, random_state=1)
    scdm.tl.train_models(adata, "disease", n_models=400, store=tmp_path / "s", random_state=1)
    adata.obs["proposal"] = adata.obs["subtype"]
    tested = ["disease-0", "disease-1"]
    for null in ("cuts", "neighbourhood"):
        table = scdm.tl.validate_subgroups(adata, subgroup_key="proposal", subgroups=tested,
                                           n_random=19, n_models=8, null=null)
        assert (table["n_regions"] == 3).all() and (table["regions_spanned"] == 3).all()
        assert np.allclose(table["p_value_margin"], 0.05)  # the smallest possible
        assert (table["margin_drop"] > 1.3 * table["random_margin_drop"]).all()
    # why the former sets failed: without the regions each set is a whole batch (40 cells
    # of the class) and the rest from a second one, where the subtype has ~20 in each
    X, y = np.asarray(adata.X), (adata.obs["disease"] == "disease").to_numpy().astype(int)
    pool, batch = np.flatnonzero(y == 1), adata.obs["batch"].to_numpy()
    subtype = np.flatnonzero(adata.obs["subtype"] == "disease-0")
    rng = np.random.default_rng(0)
    plain = comparison_sets(X, pool, subtype.size, 10, rng, "neighbourhood")
    most = pd.Series(batch[subtype]).value_counts().max()
    assert all(pd.Series(batch[s]).value_counts().max() == 40 > 1.5 * most for s in plain)
    regions = shared_regions(X, y, 1)
    for null in ("cuts", "neighbourhood"):
        for s in comparison_sets(X, pool, subtype.size, 10, rng, null, regions, subtype):
            assert s.size == subtype.size
            assert (pd.Series(batch[s]).value_counts().sort_index().to_numpy()
                    == pd.Series(batch[subtype]).value_counts().sort_index().to_numpy()).all()

    null = scdm.datasets.gaussian_subtypes(
        classes={"control": [150], "disease": [120]}, random_state=3)
    scdm.tl.train_models(null, "disease", n_models=400, store=tmp_path / "n", random_state=3)
    disease = np.flatnonzero(null.obs["disease"] == "disease")
    clusters = KMeans(4, n_init=10, random_state=0).fit_predict(np.asarray(null.X)[disease])
    proposal = np.full(null.n_obs, "control", dtype=object)
    proposal[disease] = [f"cluster-{c}" for c in clusters]
    null.obs["proposal"] = pd.Categorical(proposal)
    table = scdm.tl.validate_subgroups(null, subgroup_key="proposal", n_random=19, n_models=8,
                                       subgroups=[f"cluster-{c}" for c in range(4)])
    assert (table["q_value_margin"] > 0.05).all() and (table["q_value"] > 0.05).all()


def test_signal_to_noise_separates_subset_from_seed_variance(planted):
    out = scdm.tl.signal_to_noise(planted, "disease", use_rep="X_pca", stratify_key="batch",
                                  n_masks=8, n_seeds=2)
    assert out["snr"].shape == (planted.n_obs,)
    assert out["median_signal"] > 0 and out["median_noise"] > 0
    assert out["params"]["alpha"] == 0.5 and 0.5 < out["mean_heldout_accuracy"] <= 1
    # pure seed noise: margins independent of the subset have no signal
    rng = np.random.default_rng(0)
    noise_only = signal_to_noise(rng.normal(size=(200, 4, 30)))
    assert noise_only["median_snr"] < 0.1
    planted_signal = signal_to_noise(rng.normal(size=(200, 1, 30)) * 2 +
                                     rng.normal(size=(200, 4, 30)))
    assert 2.5 < planted_signal["median_snr"] < 6  # signal variance 4 / noise variance 1


def test_evaluation_rejects_bad_input(planted):
    adata = planted.copy()
    with pytest.raises(ValueError, match="n_models must be at least 1"):
        scdm.tl.lds(adata, n_models=0)
    with pytest.raises(KeyError, match="no fitted datamodels"):
        scdm.tl.lds(scdm.datasets.planted_subtypes(n_controls=20, n_per_subtype=10))
    changed = adata.copy()
    changed.obsm["X_pca"] = changed.obsm["X_pca"] + np.random.default_rng(0).normal(
        size=changed.obsm["X_pca"].shape)  # e.g. a PCA recomputed since training
    with pytest.raises(ValueError, match="differ from those"):
        scdm.tl.lds(changed)
    with pytest.raises(KeyError, match="no column"):
        scdm.tl.validate_subgroups(adata, subgroup_key="missing")
    adata.obs["mixed"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 2, "a", "b"))
    with pytest.raises(ValueError, match="spans the classes"):
        scdm.tl.validate_subgroups(adata, subgroup_key="mixed")
    with pytest.raises(ValueError, match="unknown subgroups"):
        scdm.tl.validate_subgroups(adata, subgroup_key="mixed", subgroups=["c"])
    with pytest.raises(ValueError, match="n_seeds >= 2"):
        scdm.tl.signal_to_noise(adata, "disease", use_rep="X_pca", n_seeds=1)
    with pytest.raises(KeyError, match="no LDS"):
        scdm.pl.lds(adata, show=False)
    with pytest.raises(KeyError, match="no validation"):
        scdm.pl.validation(adata, show=False)


def test_lds_orientation_is_explicit_and_all_zero_datamodels_score_nan():
    """A square matrix in the wrong orientation used to be scored silently (0.04 instead of
    0.93 in a trial); TRAK/dattri layouts (train × targets) are read as such."""
    rng = np.random.default_rng(0)
    n_train, n_targets, n_models = 30, 30, 400
    W = rng.normal(size=(n_targets, n_train)) * (rng.random((n_targets, n_train)) < 0.2)
    W[5] = 0.0  # an all-zero datamodel
    masks = rng.random((n_models, n_train)) < 0.5
    margins = masks @ W.T + 0.1 * rng.normal(size=(n_models, n_targets))
    with pytest.raises(ValueError, match=r"square.*rows='targets'"):
        linear_datamodeling_score(W, masks, margins)
    right = linear_datamodeling_score(W, masks, margins, rows="targets")
    assert np.nanmean(right) > 0.9
    np.testing.assert_array_equal(linear_datamodeling_score(W.T, masks, margins, rows="train"),
                                  right)
    assert np.isnan(right[5]) and np.isfinite(np.delete(right, 5)).all()
    wrong = linear_datamodeling_score(W.T, masks, margins, rows="targets")
    assert np.nanmean(wrong) < 0.3  # what a silent transpose gave
    # non-square: the shapes decide, either orientation
    tall = linear_datamodeling_score(W[:10].T, masks, margins[:, :10])
    # predictions are float32 products; another memory layout rounds them differently (numpy
    # 2.4's BLAS), which can swap nearly tied ranks: equal to float32 precision, not bitwise
    np.testing.assert_allclose(tall, right[:10], rtol=1e-4)
    with pytest.raises(ValueError, match="fit neither"):
        linear_datamodeling_score(W[:10, :20], masks, margins[:, :10])
