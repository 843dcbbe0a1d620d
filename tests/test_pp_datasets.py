"""pp.pseudobulk and the synthetic datasets (planted_subtypes, module_subtypes)."""

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import scdm


def cells(seed: int = 0, as_sparse: bool = False) -> AnnData:
    rng = np.random.default_rng(seed)
    n = 90
    donor = np.repeat([f"d{i}" for i in range(6)], 15)
    cell_type = np.tile(["B", "T", "T"], 30)
    X = rng.poisson(2.0, size=(n, 5)).astype(np.float32)
    obs = pd.DataFrame({
        "donor": pd.Categorical(donor),
        "cell_type": pd.Categorical(cell_type),
        "status": pd.Categorical(np.where(np.isin(donor, ["d0", "d1", "d2"]), "case", "ctrl")),
        "age": np.repeat(np.arange(6) * 10.0, 15),
        "n_genes": rng.integers(100, 200, n),  # varies within a donor: not donor metadata
    }, index=[f"cell{i}" for i in range(n)])
    return AnnData(X=sparse.csr_matrix(X) if as_sparse else X, obs=obs,
                   var=pd.DataFrame(index=[f"g{g}" for g in range(5)]))


@pytest.mark.parametrize("as_sparse", [False, True])
def test_pseudobulk_means_and_metadata(as_sparse):
    adata = cells(as_sparse=as_sparse)
    bulk = scdm.pp.pseudobulk(adata, "donor")
    dense = adata.X.toarray() if as_sparse else adata.X
    assert bulk.obs_names.tolist() == [f"d{i}" for i in range(6)]
    np.testing.assert_allclose(bulk["d3"].X.ravel(), dense[45:60].mean(0), rtol=1e-6)
    assert bulk.obs["status"].tolist() == ["case"] * 3 + ["ctrl"] * 3
    assert isinstance(bulk.obs["status"].dtype, pd.CategoricalDtype)
    assert bulk.obs["age"].tolist() == [0, 10, 20, 30, 40, 50]
    assert "n_genes" not in bulk.obs and "cell_type" not in bulk.obs
    assert bulk.obs["n_cells"].tolist() == [15] * 6


def test_pseudobulk_per_cell_type_concatenates_features():
    adata = cells()
    bulk = scdm.pp.pseudobulk(adata, "donor", groupby="cell_type", func="sum")
    assert bulk.shape == (6, 10)
    assert bulk.var_names[:2].tolist() == ["B:g0", "B:g1"]
    assert bulk.var["gene"].tolist()[:5] == [f"g{g}" for g in range(5)]
    donor0_t = adata.X[:15][adata.obs["cell_type"].to_numpy()[:15] == "T"].sum(0)
    np.testing.assert_allclose(bulk["d0", [f"T:g{g}" for g in range(5)]].X.ravel(), donor0_t)
    assert bulk.obs["n_cells_B"].tolist() == [5] * 6
    assert bulk.obs["n_cells_T"].tolist() == [10] * 6
    assert bulk.uns["pseudobulk"]["params"]["groupby"] == "cell_type"


def test_pseudobulk_min_cells_and_bad_input():
    adata = cells()
    bulk = scdm.pp.pseudobulk(adata, "donor", groupby="cell_type", min_cells=6)
    assert np.all(bulk[:, bulk.var["group"] == "B"].X == 0)  # 5 B cells per donor < 6
    with pytest.raises(KeyError, match="sample_key"):
        scdm.pp.pseudobulk(adata, "patient")
    with pytest.raises(ValueError, match="func"):
        scdm.pp.pseudobulk(adata, "donor", func="median")
    adata.obs.loc["cell0", "donor"] = np.nan
    with pytest.raises(ValueError, match="missing"):
        scdm.pp.pseudobulk(adata, "donor")
    adata = cells()
    adata.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        scdm.pp.pseudobulk(adata, "donor")


def test_planted_subtypes_structure():
    adata = scdm.datasets.planted_subtypes(n_controls=40, n_per_subtype=20, n_subtypes=2,
                                           n_genes=100, batch_genes=40, random_state=1)
    assert adata.shape == (80, 100)
    assert adata.obs["subtype"].value_counts().to_dict() == {
        "control": 40, "subtype-0": 20, "subtype-1": 20}
    # Batches are balanced within every subtype, so batch carries no label information.
    table = pd.crosstab(adata.obs["subtype"], adata.obs["batch"])
    assert (table.max(axis=1) - table.min(axis=1) <= 1).all()
    program = adata.var["program"] == "subtype-0"
    assert program.sum() == 10
    in_subtype = (adata.obs["subtype"] == "subtype-0").to_numpy()
    assert adata.X[in_subtype][:, program].mean() > adata.X[~in_subtype][:, program].mean() + 0.3
    # The batch dominates expression variance.
    batch_genes = adata.var["batch_gene"].to_numpy()
    assert adata.X[:, batch_genes].var(0).mean() > adata.X[:, program].var(0).mean()
    again = scdm.datasets.planted_subtypes(n_controls=40, n_per_subtype=20, n_subtypes=2,
                                           n_genes=100, batch_genes=40, random_state=1)
    np.testing.assert_array_equal(adata.X, again.X)
    with pytest.raises(ValueError, match="n_genes"):
        scdm.datasets.planted_subtypes(n_genes=50)


def test_graded_subtypes_shade_into_the_class():
    """program_spread grades each cell's program; 0 leaves every disease cell at full
    strength and draws nothing more (the default data are unchanged)."""
    kwds = dict(n_controls=40, n_per_subtype=40, n_subtypes=2, n_genes=100, batch_genes=40,
                random_state=2)
    plain = scdm.datasets.planted_subtypes(**kwds)
    strength = plain.obs["program_strength"].to_numpy()
    disease = (plain.obs["disease"] == "disease").to_numpy()
    assert (strength[disease] == 1).all() and (strength[~disease] == 0).all()
    graded = scdm.datasets.planted_subtypes(program_spread=0.75, **kwds)
    strength = graded.obs["program_strength"].to_numpy()
    assert 0.25 <= strength[disease].min() < 0.5 and 1.5 < strength[disease].max() <= 1.75
    # the program's expression follows the strength within a subtype
    cells = np.flatnonzero((graded.obs["subtype"] == "subtype-0").to_numpy())
    genes = (graded.var["program"] == "subtype-0").to_numpy()
    level = graded.layers["counts"][cells][:, genes].toarray().mean(1)
    assert np.corrcoef(strength[cells], level)[0, 1] > 0.5
    with pytest.raises(ValueError, match=r"program_spread must lie in \[0, 1\]"):
        scdm.datasets.planted_subtypes(program_spread=1.5)


def test_a_trajectory_runs_through_the_programs_in_turn():
    """trajectory=True: one disease class along a path, each program peaking at its own
    pseudotime; the truth is one group, and the default data are unchanged."""
    kwds = dict(n_controls=60, n_per_subtype=60, n_subtypes=3, n_genes=100, batch_genes=40,
                random_state=4)
    path = scdm.datasets.planted_subtypes(trajectory=True, **kwds)
    disease = (path.obs["disease"] == "disease").to_numpy()
    assert path.obs["subtype"].value_counts().to_dict() == {"control": 60, "trajectory": 180}
    t = path.obs["pseudotime"].to_numpy()
    assert np.isnan(t[~disease]).all() and 0 <= t[disease].min() < 0.05 < 0.95 < t[disease].max()
    counts = path.layers["counts"]
    for k, peak in enumerate((0.0, 0.5, 1.0)):
        genes = (path.var["program"] == f"subtype-{k}").to_numpy()
        level = counts[:, genes].toarray().mean(1)
        near = disease & (np.abs(t - peak) < 0.15)
        far = disease & (np.abs(t - peak) > 0.45)
        # highest at its own stage, back near the controls' level a stage away
        assert level[near].mean() > 2 * level[far].mean()
        assert level[far].mean() < 1.5 * level[~disease].mean()
    assert path.uns["planted_subtypes"]["trajectory"] is True
    plain = scdm.datasets.planted_subtypes(**kwds)
    np.testing.assert_array_equal(plain.X, scdm.datasets.planted_subtypes(**kwds).X)
    assert "pseudotime" not in plain.obs
    with pytest.raises(ValueError, match="n_subtypes >= 2"):
        scdm.datasets.planted_subtypes(trajectory=True, n_subtypes=1)
    with pytest.raises(ValueError, match="pass one"):
        scdm.datasets.planted_subtypes(trajectory=True, program_spread=0.5)


def test_gaussian_stages_of_one_path():
    """gaussian_subtypes(trajectory=True): the subtypes of every class but the reference are
    stages of one path, each program's shift peaking at its own pseudotime; the truth is the
    class, and at least two stages are needed."""
    classes = {"control": [100], "disease": [100, 100, 100]}
    adata = scdm.datasets.gaussian_subtypes(classes, trajectory=True, random_state=5)
    disease = (adata.obs["disease"] == "disease").to_numpy()
    assert set(adata.obs["subtype"][disease]) == {"disease"}
    t = adata.obs["pseudotime"].to_numpy()
    assert np.isnan(t[~disease]).all() and np.isfinite(t[disease]).all()
    for k, peak in enumerate((0.0, 0.5, 1.0)):
        cols = (adata.var["program"] == f"disease-{k}").to_numpy()
        shift = adata.X[:, cols].mean(1)
        near, far = disease & (np.abs(t - peak) < 0.1), disease & (np.abs(t - peak) > 0.45)
        assert shift[near].mean() > 1.0 and abs(shift[far].mean()) < 0.3
    assert adata.uns["gaussian_subtypes"]["trajectory"] is True
    assert "pseudotime" not in scdm.datasets.gaussian_subtypes(classes, random_state=5).obs
    with pytest.raises(ValueError, match="at least two stages"):
        scdm.datasets.gaussian_subtypes({"control": [50], "disease": [50]}, trajectory=True)


def test_module_subtypes_spread_programmes_thinly_over_many_genes():
    """Each subtype shifts 150 genes a little; modules vary alike in every class; the batch
    shifts every gene; counts are sparse and overdispersed; seeded."""
    kwds = dict(classes={"control": [120], "disease": [40, 40, 40]}, random_state=3)
    adata = scdm.datasets.module_subtypes(**kwds)
    assert adata.shape == (240, 1000)
    assert adata.obs["subtype"].value_counts().to_dict() == {
        "control": 120, "disease-0": 40, "disease-1": 40, "disease-2": 40}
    table = pd.crosstab(adata.obs["subtype"], adata.obs["batch"])
    assert (table.max(axis=1) - table.min(axis=1) <= 1).all()  # batches balanced
    counts = adata.layers["counts"].toarray()
    assert 0.6 < (counts == 0).mean() < 0.85
    # overdispersed: genes' variance above their mean (Poisson: equal)
    mean, var = counts.mean(0), counts.var(0)
    assert np.median(var[mean > 1] / mean[mean > 1]) > 1.5
    # a programme is many genes, each shifted a little; the strongest names the gene
    program = (adata.var["program"] == "disease-0").to_numpy()
    assert 100 <= program.sum() <= 150
    inside = (adata.obs["subtype"] == "disease-0").to_numpy()
    shift = adata.X[inside][:, program].mean(0) - adata.X[~inside][:, program].mean(0)
    assert np.median(np.abs(shift)) < 0.5 and (shift > 0).mean() > 0.6
    # modules vary alike in both classes and move their genes together
    activity = adata.obsm["modules"]
    assert activity.shape == (240, 6)
    disease = (adata.obs["disease"] == "disease").to_numpy()
    assert abs(activity[disease].mean() - activity[~disease].mean()) < 0.3
    genes = (adata.var["module"] == "module-0").to_numpy()
    assert np.corrcoef(activity[:, 0], adata.X[:, genes].mean(1))[0, 1] > 0.5
    np.testing.assert_array_equal(adata.X, scdm.datasets.module_subtypes(**kwds).X)
    # a class programme is shared by every subtype of the class
    shared = scdm.datasets.module_subtypes(class_effect=0.4, **kwds)
    assert (shared.var["program"] == "class:disease").sum() > 50
    with pytest.raises(ValueError, match="n_genes"):
        scdm.datasets.module_subtypes(n_genes=200)
    with pytest.raises(ValueError, match="module_shape"):
        scdm.datasets.module_subtypes(module_shape=0.0)
    with pytest.raises(ValueError, match="at least two classes"):
        scdm.datasets.module_subtypes({"control": [10]})


def test_planted_subtypes_depth_spread():
    """depth_spread sets the log size factors' spread (droplet data: 0.4-0.7); the default
    data are those of 0.2, and a negative spread is refused."""
    default = scdm.datasets.planted_subtypes(random_state=0)
    same = scdm.datasets.planted_subtypes(depth_spread=0.2, random_state=0)
    np.testing.assert_array_equal(default.X, same.X)
    wide = scdm.datasets.planted_subtypes(depth_spread=0.7, random_state=0)
    spread = [np.log(np.asarray(a.layers["counts"].sum(1)).ravel()).std() for a in (default, wide)]
    assert spread[1] > 2 * spread[0]
    with pytest.raises(ValueError, match="depth_spread"):
        scdm.datasets.planted_subtypes(depth_spread=-0.1)
