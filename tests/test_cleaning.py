"""Data cleaning: label issues, influence removal, D3M debiasing (real training, no mocks)."""

import warnings

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from sklearn.metrics import roc_auc_score

import scdm
from scdm.cleaning import (
    confident_labels,
    group_weights,
    label_issue_scores,
    removal_effect,
    top_influencers,
)
from scdm.tl import attribution

pytestmark = pytest.mark.slow  # end to end: CI runs these, the quick default run does not

matplotlib.use("Agg")

# class names with "/" and "+" as cell types have them ("CD4+/CD25 T Reg"): not h5ad keys
CLASSES = ["B", "CD4+/T", "CD8+/T"]


def three_types(n_per: int = 50, n_flip: int = 12, seed: int = 0) -> AnnData:
    """Three cell types on a line (B - CD4 - CD8: CD4 and CD8 are neighbours), ``n_flip``
    cells relabelled to a neighbouring type, as annotation errors are."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per)
    X = rng.normal(size=(3 * n_per, 10)).astype(np.float32)
    X[:, 0] += 6.0 * y
    X[:, 1] += np.where(y == 0, 2.0, 0.0)
    noisy = y.copy()
    flip = rng.choice(y.size, n_flip, replace=False)
    noisy[flip] = np.where(y[flip] == 1, rng.choice([0, 2], n_flip), 1)
    names = np.array(CLASSES)
    obs = pd.DataFrame({"cell_type": pd.Categorical(names[noisy]),
                        "truth": pd.Categorical(names[y]), "flipped": noisy != y},
                       index=[f"c{i}" for i in range(y.size)])
    return AnnData(X=X, obs=obs)


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    scdm.settings.verbosity = 0
    adata = three_types()
    scdm.settings.store_dir = tmp_path_factory.mktemp("stores")
    scdm.tl.label_issues(adata, "cell_type", n_models=100, device="cpu")
    return adata


def test_confident_labels_use_per_class_thresholds():
    # class 0 is confidently predicted, class 1 is hard (low probabilities for its own cells)
    P = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.5, 0.5], [0.55, 0.45]])
    y = np.array([0, 0, 1, 1, 1])
    # thresholds: class 0 = 0.85, class 1 = 0.45; cell 2 (p1 = 0.4 < 0.45, p0 = 0.6 < 0.85)
    # keeps its label although another class is more probable; cell 1 (p0 = 0.8 < 0.85,
    # p1 = 0.2 < 0.45) too
    assert confident_labels(P, y).tolist() == [0, 0, 1, 1, 1]
    P[1] = [0.3, 0.7]  # now class 1 reaches its threshold for a class-0 cell: an issue
    assert confident_labels(P, y)[1] == 1


def test_label_issues_rank_flips_flag_them_and_suggest_the_true_type(flipped):
    a = flipped
    flips = a.obs["flipped"].to_numpy()
    assert roc_auc_score(flips, a.obs["label_issue_score"]) > 0.9
    assert roc_auc_score(flips, a.obs["label_issue_cell_score"]) > 0.9  # the cell alone
    assert roc_auc_score(flips, a.obs["label_issue_vote"]) > 0.8  # the vote, as a diagnostic
    flagged = a.obs["label_issue"].to_numpy()
    # confident learning flags conservatively: few clean cells, a good share of the flips
    assert flips[flagged].mean() >= 0.6 and flagged[flips].mean() >= 0.3
    suggested = a.obs["label_issue_suggested"].astype(str).to_numpy()
    truth = a.obs["truth"].astype(str).to_numpy()
    assert (suggested[flagged & flips] == truth[flagged & flips]).mean() >= 0.8
    assert a.obs["label_issue_suggested"].isna().to_numpy()[~flagged].all()
    info = a.uns["label_issue"]
    assert "confident-learning" in info["rule"] and info["n_flagged"] == flagged.sum()
    assert info["params"]["key"] == "label_issue_trak" and info["params"]["method"] == "trak"
    assert np.isfinite(a.obs["label_issue_self_influence"]).all()
    axes = scdm.pl.label_issues(a, show=False)
    assert len(axes) == 2 and len(axes[0].collections) == 2  # not flagged / flagged
    # other-label influence pulls flipped cells away from their (wrong) label more
    assert a.obs["label_issue_other_influence"][flips].mean() < \
        a.obs["label_issue_other_influence"][~flips].mean()


def test_label_issues_round_trip_h5ad_and_reuse_a_key(flipped, tmp_path):
    a = flipped.copy()
    path = tmp_path / "a.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a.write_h5ad(path)
    b = ad.read_h5ad(path)
    again = scdm.tl.label_issues(b, "cell_type", key="label_issue_trak", key_added="again",
                                 device="cpu", copy=True)
    np.testing.assert_array_equal(again.obs["again"], a.obs["label_issue"])
    np.testing.assert_allclose(again.obs["again_score"], a.obs["label_issue_score"])


def test_label_issues_with_datamodels_and_no_flips_flag_almost_nothing(tmp_path):
    clean = three_types(n_per=40, n_flip=0, seed=1)
    # models that fit the labels (label_issues' own training settings)
    scdm.tl.datamodels(clean, "cell_type", n_models=600, store=tmp_path / "dm",
                       device="cpu", fit_kwds={"n_lambdas": 8},
                       train_kwds={"epochs": 60, "lr": 1e-2})
    scdm.tl.label_issues(clean, "cell_type", key="datamodels", device="cpu")
    assert clean.uns["label_issue"]["params"]["method"] == "datamodels"
    # separable types, no flips: only cells on the border between CD4 and CD8 may be flagged
    assert clean.obs["label_issue"].sum() <= 2
    assert clean.uns["label_issue"]["mean_heldout_accuracy"] > 0.9


def test_factors_give_the_same_attribution_as_the_matrix(tmp_path):
    a = three_types(n_per=20, n_flip=0)
    scdm.tl.trak(a, "cell_type", n_models=8, store=tmp_path / "t", device="cpu")
    dense = attribution(a, "trak")
    del a.obsp["trak"]
    lowrank = attribution(a, "trak", device="cpu")
    assert dense.W is not None and lowrank.W is None
    R = np.random.default_rng(0).normal(size=(a.n_obs, 3))
    np.testing.assert_allclose(lowrank.target_sums(R), dense.target_sums(R), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(lowrank.class_sums(R), dense.class_sums(R), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(np.diag(np.asarray(dense.W)), dense.diagonal, rtol=1e-4)


def test_influence_removal_moves_targets_against_random_and_is_deterministic(flipped):
    a = flipped.copy()
    targets = a.obs_names[(a.obs["cell_type"] == "CD4+/T").to_numpy()][:10]
    kwds = dict(key="label_issue_trak", targets=targets, n_remove=15, n_models=40,
                n_random=9, device="cpu")
    pos = scdm.tl.influence_removal(a, direction="positive", **kwds)
    summary = a.uns["label_issue_trak_removal"]["summary"]
    assert list(pos["removal"][:2]) == ["none", "attribution"] and len(pos) == 11
    assert summary["margin_effect"] < summary["margin_random_mean"]
    assert summary["margin_p_value"] == pytest.approx(0.1)  # the smallest with 9 random sets
    assert summary["predicted_margin_change"] < 0
    removed = a.obs["label_issue_trak_removal_removed"].to_numpy()
    assert removed.sum() == 15 and not removed[a.obs_names.isin(targets)].any()
    neg = scdm.tl.influence_removal(a, direction="negative", **kwds)
    assert neg["margin_change"].iloc[1] > pos["margin_change"].iloc[1]
    # the same seeds however the models are chunked (to float32 rounding of the batched
    # three-class forward pass)
    again = scdm.tl.influence_removal(a.copy(), direction="positive", chunk_size=7, **kwds)
    pd.testing.assert_frame_equal(again, pos, check_exact=False, rtol=1e-5, atol=1e-6)


def test_debias_removes_the_shortcut_teachers_and_beats_random(tmp_path):
    a = scdm.datasets.spurious_groups(300, core_effect=1.5, site_effect=1.0,
                                      correlation=0.85, unaffected=0.4, random_state=0)
    scdm.tl.trak(a, "disease", n_models=60, store=tmp_path / "t", device="cpu")
    table = scdm.tl.debias(a, "disease", "site", key="trak", n_remove=[30, 60], n_models=60,
                           n_random=3, max_accuracy_loss=0.05, device="cpu")
    means = table.groupby(["removal", "n_removed"])["worst_group_accuracy"].mean()
    base = means[("none", 0)]
    for k in (30, 60):
        assert means[("d3m", k)] > max(means[("random", k)], base)
    info = a.uns["debias"]
    assert info["recommended_n_remove"] in (30, 60)
    remove = a.obs["debias_remove"].to_numpy()
    assert remove.sum() == info["recommended_n_remove"]
    # the cells that teach the site shortcut: disease cells at site B without disease signal
    assert a.obs["unaffected"].to_numpy()[remove].mean() > 0.5
    assert set(info["groups"]["names"]) == {"control | A", "control | B", "disease | A",
                                            "disease | B"}
    axes = scdm.pl.debias(a, show=False)
    assert [ax.get_ylabel() for ax in axes] == ["held-out worst-group accuracy",
                                                "held-out overall accuracy"]
    with warnings.catch_warnings():  # the results survive h5ad
        warnings.simplefilter("error")
        a.write_h5ad(tmp_path / "d.h5ad")
    b = ad.read_h5ad(tmp_path / "d.h5ad")
    assert b.uns["debias"]["recommended_n_remove"] == info["recommended_n_remove"]
    scdm.pl.debias(b, show=False)


def test_debias_recommends_nothing_without_a_shortcut(tmp_path):
    a = scdm.datasets.spurious_groups(300, core_effect=1.5, site_effect=1.0, correlation=0.5,
                                      random_state=1)
    scdm.tl.trak(a, "disease", n_models=60, store=tmp_path / "t", device="cpu")
    scdm.tl.debias(a, "disease", "site", key="trak", n_remove=[15, 30, 60], n_models=60,
                   n_random=5, device="cpu")
    assert a.uns["debias"]["recommended_n_remove"] == 0
    assert not a.obs["debias_remove"].any()
    assert "no removal size" in a.uns["debias"]["reason"]


def test_label_issues_too_large_to_train_names_the_reuse_of_a_trak_key(monkeypatch):
    """label_issues without key trains its own 200 TRAK checkpoints; where their cost check
    refuses them, the message also names the cheaper path: an earlier tl.trak's key."""
    a = three_types(n_per=20, n_flip=0)
    monkeypatch.setattr(scdm.settings, "max_memory", 2**20)  # 1 MiB
    with pytest.raises(MemoryError, match=r"max_memory.*key='trak'"):
        scdm.tl.label_issues(a, "cell_type", device="cpu")
    assert "label_issue_trak" not in a.uns and "label_issue" not in a.obs


def test_cleaning_bad_input_fails_before_training(flipped, tmp_path):
    a = flipped.copy()
    tiny = three_types(n_per=20, n_flip=0)
    tiny.obs["cell_type"] = tiny.obs["cell_type"].astype(str)
    tiny.obs.iloc[:17, tiny.obs.columns.get_loc("cell_type")] = "CD4+/T"
    with pytest.raises(ValueError, match="too small to train on"):
        scdm.tl.label_issues(tiny, "cell_type")
    assert not any(scdm.settings.store_dir.glob("*"))  # nothing was trained
    with pytest.raises(ValueError, match="predict 'cell_type', not 'truth'"):
        scdm.tl.label_issues(a, "truth", key="label_issue_trak")
    kw = dict(key="label_issue_trak")
    with pytest.raises(KeyError, match=r"not in adata\.obs_names"):
        scdm.tl.influence_removal(a, targets=["nope"], **kw)
    with pytest.raises(ValueError, match="more than half"):
        scdm.tl.influence_removal(a, targets=a.obs_names[:10], n_remove=100, **kw)
    with pytest.raises(ValueError, match="direction"):
        scdm.tl.influence_removal(a, targets=a.obs_names[:10], direction="up", **kw)
    with pytest.raises(ValueError, match="select no cell"):
        scdm.tl.influence_removal(a, targets={"cell_type": "NK"}, **kw)
    with pytest.raises(KeyError, match="group_key='site'"):
        scdm.tl.debias(a, "cell_type", "site", **kw)
    a.obs["site"] = "A"
    with pytest.raises(ValueError, match="single value"):
        scdm.tl.debias(a, "cell_type", "site", **kw)
    a.obs["site"] = np.where(np.arange(a.n_obs) % 2, "A", "B")
    with pytest.raises(ValueError, match="more than half"):
        scdm.tl.debias(a, "cell_type", "site", n_remove=[100], **kw)


def test_engine_helpers():
    pool = np.array([0, 2, 3, 5])
    influence = np.array([9.0, 1.0, 3.0, 3.0, 0.0, -1.0])
    assert top_influencers(influence, pool, 2, "positive").tolist() == [0, 2]  # tie: index
    assert top_influencers(influence, pool, 1, "negative").tolist() == [5]
    w = group_weights(np.array([0.9, 0.5, 0.7]))
    assert w[1] > 0 > w[0] and np.abs(w).sum() == pytest.approx(1)
    r = removal_effect(-0.5, np.array([0.0, 0.1, -0.1]), "positive")
    assert r["p_value"] == pytest.approx(0.25) and r["z"] < 0


def test_label_issue_score_is_the_heldout_probability_margin():
    P = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    y = np.array([0, 0, 2])
    np.testing.assert_allclose(label_issue_scores(P, y), [0.2 - 0.7, 0.5 - 0.2, 0.1 - 0.8])


def test_neighbourhood_probabilities_average_a_cell_with_its_neighbours():
    from scdm.cleaning import neighbourhood_probabilities

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (20, 2))])
    P = np.tile([0.9, 0.1], (40, 1))
    P[20:] = [0.2, 0.8]
    P[3] = [0.1, 0.9]  # a cell whose own estimate disagrees with everything around it
    out = neighbourhood_probabilities(P, X, n_neighbors=5, weight=0.5)
    np.testing.assert_allclose(out.sum(1), 1.0)
    np.testing.assert_allclose(out[3], 0.5 * P[3] + 0.5 * np.array([0.9, 0.1]))
    np.testing.assert_allclose(out[30], P[30])  # agreeing neighbourhoods change nothing
    np.testing.assert_array_equal(neighbourhood_probabilities(P, X, weight=0.0), P)
    with pytest.raises(ValueError, match="weight"):
        neighbourhood_probabilities(P, X, weight=1.5)


def test_partitioned_knn_finds_the_neighbours_above_the_exact_search_size(monkeypatch):
    """Above EXACT_KNN_MAX points the kNN graph comes from the inverted-file search: on cells
    along a curve in 20 dimensions (a manifold, as expression is) it finds ≥ 95 % of the
    exact neighbours, never a point itself, the same ones every run; and the label issues'
    neighbourhood vote runs on it (no O(n²) search)."""
    import scdm.clustering as clustering
    from scdm.cleaning import neighbourhood_probabilities

    rng = np.random.default_rng(0)
    t = rng.uniform(0, 6, 6000)
    X = np.column_stack([np.sin(k * t / 3 + k) for k in range(1, 21)]) * 3
    X += rng.normal(0, 0.1, X.shape)
    exact = clustering.knn_indices(X, 10, exact=True)
    found = clustering.partitioned_knn(X, 10, random_state=0)
    assert found.shape == (6000, 10)
    assert not (found == np.arange(6000)[:, None]).any()
    recall = np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(found, exact,
                                                                       strict=True)])
    assert recall >= 0.95, recall
    np.testing.assert_array_equal(found, clustering.partitioned_knn(X, 10, random_state=0))
    # a probe of one list (its own) misses the neighbours across its borders: recall measured
    narrow = clustering.partitioned_knn(X, 10, random_state=0, n_probe=1)
    assert np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(narrow, exact,
                                                                     strict=True)]) < recall
    with pytest.raises(ValueError, match="fewer"):
        clustering.partitioned_knn(X[:5], 5)

    P = np.column_stack([t / 6, 1 - t / 6])
    monkeypatch.setattr(clustering, "EXACT_KNN_MAX", 1000)
    np.testing.assert_array_equal(clustering.knn_indices(X, 10), found)
    approximate = neighbourhood_probabilities(P, X, n_neighbors=10)
    monkeypatch.setattr(clustering, "EXACT_KNN_MAX", 10**6)
    np.testing.assert_allclose(approximate, neighbourhood_probabilities(P, X, n_neighbors=10),
                               atol=0.02)


def test_d3m_rule_split_and_scoring_on_arrays():
    """debias' engine: a random half per group chooses, the other half scores, and a size is
    recommended only when it beats every random removal, gains enough and keeps accuracy."""
    from scdm.cleaning import group_accuracy_table, recommend_removal, selection_half

    names = np.array(["a"] * 6 + ["b"] * 5)
    selection = selection_half(names, ["a", "b"], np.random.default_rng(0))
    assert selection[:6].sum() == 3 and selection[6:].sum() == 2
    rows = [("none", 0, 0), ("d3m", 2, 0), ("random", 2, 1), ("random", 2, 2)]
    acc = np.array([[1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 0.9, 0.9], [1.0, 1.0, 0.6, 0.6],
                    [1.0, 1.0, 0.7, np.nan]])
    table = group_accuracy_table(rows, acc, {"a": np.array([0, 1]), "b": np.array([2, 3])})
    assert table["worst_group"].tolist() == ["b"] * 4
    np.testing.assert_allclose(table["worst_group_accuracy"], [0.5, 0.9, 0.6, 0.7])
    np.testing.assert_allclose(table["overall_accuracy"], [0.75, 0.95, 0.8, 0.9])
    k, reason = recommend_removal(table, n_random=2, min_gain=0.02, max_accuracy_loss=0.01)
    assert k == 2 and "from 0.500 to 0.900" in reason
    # a gain that does not beat the best random removal, or one too small, is not taken
    worse = table.copy()
    worse.loc[1, "worst_group_accuracy"] = 0.7
    assert recommend_removal(worse, n_random=2, min_gain=0.02, max_accuracy_loss=0.01)[0] == 0
    assert recommend_removal(table, n_random=2, min_gain=0.5, max_accuracy_loss=0.01)[0] == 0
    costly = table.copy()
    costly.loc[1, "overall_accuracy"] = 0.7
    assert recommend_removal(costly, n_random=2, min_gain=0.02, max_accuracy_loss=0.01)[0] == 0
