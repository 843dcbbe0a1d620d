import signal
import subprocess
import sys
import textwrap
import time
import warnings

import anndata as ad
import numpy as np
import pytest
from _helpers import make_adata

import scdm
from scdm.store import ModelStore, StoreMismatchError
from scdm.workers import LocalBackend

FAST = {"epochs": 5, "hidden": (8,), "batch_size": 16, "lr": 0.05}


def test_train_models_fills_store_and_records_in_uns(adata, tmp_path):
    scdm.tl.train_models(adata, "disease", n_models=120, store=tmp_path / "s", config=FAST)
    info = adata.uns["datamodels"]
    assert info["n_completed"] == 120 and info["classes"] == ["control", "disease"]
    assert info["params"]["alpha"] == 0.5 and info["params"]["hidden"] == [8]
    assert info["mean_heldout_accuracy"] > 0.7  # chance is 0.5; feature 0 separates classes
    store = ModelStore.open(info["store"])
    assert store.masks.shape == (120, 60) and (store.masks.sum(1) == 30).all()
    # h5ad round trip of what train_models writes
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["datamodels"]["store"] == info["store"]
    assert list(back.uns["datamodels"]["params"]["hidden"]) == [8]


def test_default_store_is_per_configuration_and_resumes(adata):
    scdm.tl.train_models(adata, "disease", n_models=100, config=FAST)
    first = adata.uns["datamodels"]["store"]
    scdm.tl.train_models(adata, "disease", n_models=150, config=FAST)  # extends the same store
    assert adata.uns["datamodels"]["store"] == first
    assert ModelStore.open(first).n_completed == 150
    scdm.tl.train_models(adata, "disease", n_models=100, alpha=0.3, config=FAST)
    assert adata.uns["datamodels"]["store"] != first


def test_copy_leaves_input_untouched(adata, tmp_path):
    out = scdm.tl.train_models(adata, "disease", n_models=100, store=tmp_path / "s", copy=True,
                               config=FAST)
    assert "datamodels" in out.uns and "datamodels" not in adata.uns


def test_groups_and_use_rep(tmp_path):
    adata = make_adata(n_obs=80, n_donors=8)
    adata.obsm["X_rep"] = adata.X[:, :3] * 2
    scdm.tl.train_models(adata, "disease", group_key="donor", use_rep="X_rep", n_models=100,
                         store=tmp_path / "s", config=FAST)
    masks = ModelStore.open(tmp_path / "s").masks
    donors = adata.obs["donor"].to_numpy()
    for d in np.unique(donors):
        block = masks[:, donors == d]
        assert (block == block[:, :1]).all()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"label_key": "nope"}, KeyError, "not a column of adata.obs"),
    ({"label_key": "single"}, ValueError, "only one class"),
    ({"label_key": "score"}, TypeError, "continuous values"),
    ({"label_key": "disease", "use_rep": "X_pca"}, KeyError, "not in adata.obsm"),
    ({"label_key": "disease", "layer": "counts"}, KeyError, "not in adata.layers"),
    ({"label_key": "disease", "group_key": "donor"}, KeyError, "group_key='donor'"),
    ({"label_key": "disease", "alpha": 1.0}, ValueError, r"alpha must lie in \(0, 1\)"),
    ({"label_key": "disease", "n_models": 0}, ValueError, "at least 1"),
    ({"label_key": "disease", "n_models": 10}, ValueError, "held out of only"),
    ({"label_key": "disease", "model_range": (50, 200)}, ValueError, "model_range"),
])
def test_bad_input_is_refused_before_any_store_is_made(adata, tmp_path, kwargs, error, match):
    adata.obs["single"] = "a"
    adata.obs["score"] = np.linspace(0, 1, adata.n_obs)
    kwargs = {"n_models": 100, **kwargs}
    with pytest.raises(error, match=match):
        scdm.tl.train_models(adata, store=tmp_path / "s", **kwargs)
    assert not (tmp_path / "s").exists()


def test_nan_in_features_and_mixed_groups_are_refused(tmp_path):
    adata = make_adata(n_donors=6)
    adata.X[4, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        scdm.tl.train_models(adata, "disease", n_models=100, store=tmp_path / "s")
    adata = make_adata(n_donors=6)
    adata.obs["donor"] = "same"
    with pytest.raises(ValueError, match="span more than one label"):
        scdm.tl.train_models(adata, "disease", group_key="donor", n_models=100,
                             store=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_store_of_another_configuration_is_refused_untouched(adata, tmp_path):
    scdm.tl.train_models(adata, "disease", n_models=100, store=tmp_path / "s", config=FAST)
    before = (tmp_path / "s" / "margins.npy").read_bytes()
    with pytest.raises(StoreMismatchError, match="weight_decay"):
        scdm.tl.train_models(adata, "disease", n_models=100, store=tmp_path / "s",
                             config={**FAST, "weight_decay": 0.5})
    assert (tmp_path / "s" / "margins.npy").read_bytes() == before


WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from _helpers import make_adata
    import scdm
    from scdm.workers import LocalBackend
    scdm.settings.verbosity = 0
    adata = make_adata(n_obs=60)
    start, stop = int(sys.argv[1]), int(sys.argv[2])
    scdm.tl.train_models(adata, "disease", n_models={n_models}, store={store!r},
                         backend=LocalBackend(chunk_size={chunk}), model_range=(start, stop),
                         config={fast!r})
""")


def worker(store, n_models, chunk, start, stop):
    from pathlib import Path

    script = WORKER.format(tests=str(Path(__file__).parent), store=str(store),
                           n_models=n_models, chunk=chunk, fast=FAST)
    return subprocess.Popen([sys.executable, "-c", script, str(start), str(stop)])


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(adata, tmp_path):
    n_models = 3000
    proc = worker(tmp_path / "killed", n_models, 20, 0, n_models)
    completed = tmp_path / "killed" / "_completed.npy"
    deadline = time.time() + 120
    while time.time() < deadline:
        if completed.exists() and np.load(completed).sum() >= 200:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = int(np.load(completed).sum())
    assert 200 <= done < n_models, "the worker should have been killed mid-run"
    scdm.tl.train_models(adata, "disease", n_models=n_models, store=tmp_path / "killed",
                         backend=LocalBackend(chunk_size=64), config=FAST)
    scdm.tl.train_models(adata, "disease", n_models=n_models, store=tmp_path / "clean", config=FAST)
    killed, clean = ModelStore.open(tmp_path / "killed"), ModelStore.open(tmp_path / "clean")
    assert killed.n_completed == n_models
    np.testing.assert_array_equal(killed.masks, clean.masks)
    np.testing.assert_array_equal(killed.margins, clean.margins)


@pytest.mark.slow
def test_two_processes_fill_disjoint_ranges_of_one_store(adata, tmp_path):
    procs = [worker(tmp_path / "s", 400, 30, a, b) for a, b in [(0, 200), (200, 400)]]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    scdm.tl.train_models(adata, "disease", n_models=400, store=tmp_path / "one", config=FAST)
    shared, one = ModelStore.open(tmp_path / "s"), ModelStore.open(tmp_path / "one")
    assert shared.n_completed == 400
    np.testing.assert_array_equal(shared.masks, one.masks)
    np.testing.assert_array_equal(shared.margins, one.margins)


def test_auto_input_trains_on_the_pcs_of_genes_that_are_mostly_noise(tmp_path):
    """use_rep="auto" (the default): 1,000 sparse genes (the module generator, under 15 % of
    their variance above the noise edge) are trained on through their PCs, computed and
    stored as sc.pp.pca does (on the copy with copy=True), with the measure recorded; PCs
    already in obsm are used as they are; genes clear of noise (the planted generator) and
    an explicit "X" are trained on as they are. tl.subgroups then has nothing to warn of."""
    import scanpy as sc

    from scdm.get import models_input

    scdm.settings.verbosity = 0
    genes = scdm.datasets.module_subtypes({"control": [120], "disease": [60, 60]},
                                          random_state=0)
    fresh = genes.copy()
    out = scdm.tl.trak(genes, "disease", n_models=8, store=tmp_path / "t", copy=True)
    assert "X_pca" not in genes.obsm  # copy=True: the PCs went to the copy
    params = out.uns["trak"]["params"]
    choice = params["input_choice"]
    assert params["use_rep"] == "X_pca" and choice["pcs"] == "computed"
    assert choice["noise_dominated"] and 0 < choice["share_above_noise"] < 0.15
    np.testing.assert_array_equal(out.obsm["X_pca"], sc.pp.pca(fresh.X, n_comps=50,
                                                               random_state=0))
    assert models_input(out, out.uns["trak"]) == "50 PCs of 1,000 features"
    with warnings.catch_warnings():
        warnings.simplefilter("error", scdm.tl.NoisyInputWarning)
        scdm.tl.subgroups(out, key="trak", markers=False)
    assert not out.uns["trak_subgroup"]["input_noise"]["noise_dominated"]

    sc.pp.pca(fresh, n_comps=20, random_state=1)  # the user's own PCs are taken as they are
    given = fresh.obsm["X_pca"].copy()
    scdm.tl.train_models(fresh, "disease", n_models=4, store=tmp_path / "m", config=FAST,
                         min_heldout=0)
    assert fresh.uns["datamodels"]["params"]["input_choice"]["pcs"] == "given"
    np.testing.assert_array_equal(fresh.obsm["X_pca"], given)

    planted = scdm.datasets.planted_subtypes(n_controls=120, n_per_subtype=60, n_subtypes=2,
                                             n_genes=200, batch_genes=100, random_state=0)
    scdm.tl.train_models(planted, "disease", n_models=4, store=tmp_path / "p", config=FAST,
                         min_heldout=0)
    params = planted.uns["datamodels"]["params"]
    assert "use_rep" not in params and params["input_choice"]["chosen"] == "X"
    assert params["input_choice"]["share_above_noise"] > 0.3 and "X_pca" not in planted.obsm
    scdm.tl.train_models(genes, "disease", use_rep="X", n_models=4, store=tmp_path / "x",
                         config=FAST, min_heldout=0)
    assert "input_choice" not in genes.uns["datamodels"]["params"]
    assert "X_pca" not in genes.obsm
    # 40 features, mostly noise, are kept: 39 standardised PCs would only whiten them
    few = scdm.datasets.spurious_groups(300, core_effect=1.5, site_effect=1.0,
                                        correlation=0.85, unaffected=0.4, random_state=0)
    scdm.tl.train_models(few, "disease", n_models=4, store=tmp_path / "f", config=FAST,
                         min_heldout=0)
    choice = few.uns["datamodels"]["params"]["input_choice"]
    assert choice["noise_dominated"] and choice["chosen"] == "X" and "X_pca" not in few.obsm
    assert "fewer than 100 features" in choice["reason"]


def test_auto_input_is_refused_before_work_where_it_cannot_be_made(tmp_path):
    """A wrong label fails before any PCs are computed; a backed .X that is mostly noise is
    refused with the fix (its PCs are not computed from disk here), the store never made."""
    genes = scdm.datasets.module_subtypes({"control": [60], "disease": [30, 30]},
                                          random_state=0)
    with pytest.raises(KeyError, match="nope"):
        scdm.tl.trak(genes, "nope", n_models=4, store=tmp_path / "t")
    assert "X_pca" not in genes.obsm and not (tmp_path / "t").exists()
    genes.write_h5ad(tmp_path / "g.h5ad")
    backed = ad.read_h5ad(tmp_path / "g.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"mostly noise.*backed.*use_rep='X_pca'.*use_rep='X'"):
        scdm.tl.train_models(backed, "disease", n_models=4, store=tmp_path / "b",
                             min_heldout=0)
    assert not (tmp_path / "b").exists()


def test_counts_not_normalised_per_cell_are_warned_of_before_training(tmp_path):
    """Counts whose cells' totals differ ~10-fold (droplet-like sequencing depth), and their
    log1p, are named with the fix before any model is trained (a warning, not a refusal: the
    user may mean it) and recorded in the training's params; the same counts normalised and
    log1p (the generators' .X), genotype dosages (0/1/2), counts of even depth, a sparse
    layer and components in obsm are not."""
    import scanpy as sc

    from scdm._anndata import unnormalised_counts

    planted = scdm.datasets.planted_subtypes(n_controls=60, n_per_subtype=30, n_subtypes=2,
                                             n_genes=120, batch_genes=60, depth_spread=0.7,
                                             random_state=0)
    counts = planted.layers["counts"]
    found = unnormalised_counts(counts)  # sparse, as the generator stores them
    assert found is not None and found["form"] == "counts" and found["depth_ratio"] > 5
    logged = unnormalised_counts(np.log1p(counts.toarray()).astype(np.float32))
    assert logged is not None and logged["form"] == "log1p counts"
    assert unnormalised_counts(planted.X) is None  # normalised, then log1p
    rng = np.random.default_rng(0)
    assert unnormalised_counts(rng.integers(0, 3, (200, 50)).astype(np.float32)) is None
    even = rng.poisson(np.full((200, 50), 5.0)).astype(np.float32)
    assert unnormalised_counts(even) is None  # depth the same in every cell

    raw = planted.copy()
    raw.X = np.log1p(counts.toarray()).astype(np.float32)
    with pytest.warns(scdm.tl.UnnormalisedCountsWarning,
                      match=r"log1p counts not normalised.*np\.expm1.*normalize_total") as said:
        scdm.tl.trak(raw, "disease", n_models=4, store=tmp_path / "t")
    # once, not again by the train_models that tl.trak calls
    assert sum(w.category is scdm.tl.UnnormalisedCountsWarning for w in said) == 1
    assert raw.uns["trak"]["params"]["unnormalised_counts"]["form"] == "log1p counts"
    said = scdm.get.models_input(raw, raw.uns["trak"], why=True)  # scdm run's summary, report
    assert "caution: log1p counts not normalised per cell" in said
    with pytest.warns(scdm.tl.UnnormalisedCountsWarning, match=r"adata\.layers\['counts'\]"):
        scdm.tl.train_models(planted, "disease", layer="counts", n_models=2, config=FAST,
                             store=tmp_path / "c", min_heldout=0)
    with pytest.raises(KeyError, match="nope"):  # a wrong label still fails first
        scdm.tl.trak(raw, "nope", n_models=4, store=tmp_path / "n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", scdm.tl.UnnormalisedCountsWarning)
        scdm.tl.train_models(planted, "disease", n_models=2, config=FAST,
                             store=tmp_path / "x", min_heldout=0)
        assert "unnormalised_counts" not in planted.uns["datamodels"]["params"]
        raw.obsm["X_pca"] = sc.pp.pca(planted.X, n_comps=10, random_state=0)
        scdm.tl.train_models(raw, "disease", use_rep="X_pca", n_models=2, config=FAST,
                             store=tmp_path / "o", min_heldout=0)  # components: not counts
    assert "unnormalised_counts" not in raw.uns["datamodels"]["params"]
