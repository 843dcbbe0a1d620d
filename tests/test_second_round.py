"""tl.subgroups' undecided classes and tl.second_round, on real attributions and stores."""

import warnings

import numpy as np
import pytest
from anndata import read_h5ad

import scdm
from scdm.store import ModelStore, StoreMismatchError


def _planted(effect: float, n_controls: int, n_per_subtype: int):
    import scanpy as sc

    adata = scdm.datasets.planted_subtypes(n_controls=n_controls, n_per_subtype=n_per_subtype,
                                           n_subtypes=2, n_genes=200, batch_genes=100,
                                           program_effect=effect, random_state=0)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    return adata


def _decided_like_round_two(adata, key: str, first_labels, label_key: str = "disease"):
    """The undecided class takes the second round's subgroups, every other class keeps its
    own, and the evidence says what was decided."""
    sub = f"{key}_subgroup"
    info = adata.uns[sub]
    undecided = adata.obs[label_key] == "disease"
    np.testing.assert_array_equal(adata.obs.loc[~undecided, sub].astype(str),
                                  first_labels[~undecided.to_numpy()])
    np.testing.assert_array_equal(adata.obs.loc[undecided, sub].astype(str),
                                  adata.obs.loc[undecided, f"{key}_round2_subgroup"].astype(str))
    evidence = info["reproducibility"]["disease"]
    names = adata.obs.loc[undecided, sub].astype(str)
    n_found = names[names != "unassigned"].nunique()  # degenerate datamodels are unassigned
    assert evidence["n_subgroups"] == n_found
    assert evidence["second_round"]["n_subgroups"] == n_found
    assert list(info["second_round"]["classes"]) == ["disease"]
    assert (list(info["second_round"]["split"]) == ["disease"]) == (n_found > 1)
    assert list(info["undecided"]) == list(info["second_round"]["undecided"])


@pytest.mark.slow
def test_trak_classes_left_undecided_are_decided_by_more_checkpoints(tmp_path):
    adata = _planted(1.2, 120, 60)
    store = tmp_path / "s"
    # max_obsp under the 300 cells: no n × n matrix, in the second round either
    scdm.tl.trak(adata, "disease", use_rep="X_pca", store=store, max_obsp=100)

    # at the default bar the subtypes are accepted: nothing is undecided, nothing trained
    scdm.tl.subgroups(adata, key="trak", markers=False)
    assert list(adata.uns["trak_subgroup"]["undecided"]) == []
    # 2, or 3 where an inner split cuts one subtype at its bar: the float rounding of the
    # machine decides that one (RESULTS.md, session 30); what matters here is that it split
    assert adata.uns["trak_subgroup"]["reproducibility"]["disease"]["n_subgroups"] >= 2
    scdm.tl.second_round(adata, key="trak")
    assert ModelStore.open(store).n_models == 40 and "trak_round2" not in adata.uns

    # a bar above the halves' agreement: the same clusters beyond the null, undecided
    with pytest.warns(scdm.tl.UndecidedSubgroupsWarning, match="second_round"):
        scdm.tl.subgroups(adata, key="trak", min_reproducibility=0.99)
    info = adata.uns["trak_subgroup"]
    assert list(info["undecided"]) == ["disease"]
    pending = info["reproducibility"]["disease"]["undecided"]
    assert pending["n_clusters"] == 2 and 0.5 <= pending["reproducibility"] < 0.99
    assert pending["margin"] >= scdm.clustering.MIN_MARGIN
    assert adata.obs.loc[adata.obs["disease"] == "disease", "trak_subgroup"].nunique() == 1
    assert "Undecided: both halves find 2 clusters" in scdm.get.describe_evidence(
        dict(info["reproducibility"]["disease"]))
    first_labels = adata.obs["trak_subgroup"].astype(str).to_numpy()
    first_margins = np.array(ModelStore.open(store).margins[:40])

    # other data than the store's is refused before any model is trained
    changed = adata.copy()
    changed.obsm["X_pca"] = changed.obsm["X_pca"] * 1.01
    with pytest.raises(StoreMismatchError, match="data_hash"):
        scdm.tl.second_round(changed, key="trak", factor=2)
    assert ModelStore.open(store).n_models == 40

    with warnings.catch_warnings():  # still undecided or not: both are checked below
        warnings.simplefilter("ignore", scdm.tl.UndecidedSubgroupsWarning)
        # a smaller projection than the first round's 512: the same models, new features
        scdm.tl.second_round(adata, key="trak", factor=2, proj_dim=256)
    grown = ModelStore.open(store)
    assert grown.n_models == 80
    np.testing.assert_array_equal(np.array(grown.margins[:40]), first_margins)  # kept
    second = adata.uns["trak_round2"]
    assert second["trak_params"]["n_checkpoints"] == 80
    assert list(second["halves"]["n_models"]) == [40, 40]
    for name in ("damping", "rank", "max_obsp"):
        assert second["trak_params"][name] == adata.uns["trak"]["trak_params"][name]
    assert second["trak_params"]["proj_dim"] == 256
    assert adata.uns["trak"]["trak_params"]["proj_dim"] == 512
    assert "trak" not in adata.obsp and "trak_round2" not in adata.obsp
    assert adata.uns["trak"]["trak_params"]["n_checkpoints"] == 40  # the first round stays
    _decided_like_round_two(adata, "trak", first_labels)
    assert adata.uns["trak_subgroup"]["second_round"]["n_models"] == 80
    assert adata.uns["trak_subgroup"]["second_round"]["proj_dim"] == 256
    assert "markers" in adata.uns["trak_subgroup"]  # made again for the merged subgroups
    assert scdm.get.describe_evidence(dict(adata.uns["trak_subgroup"]["reproducibility"][
        "disease"])).startswith("undecided by the first models (their halves found 2 clusters")

    adata.write_h5ad(tmp_path / "a.h5ad")
    back = read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["trak_subgroup"]["second_round"]["factor"] == 2
    with pytest.raises(ValueError, match="second round already"):
        scdm.tl.second_round(adata, key="trak")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::scdm.tl.DegenerateDatamodelsWarning")
def test_datamodels_second_round_grows_the_same_store(tmp_path):
    adata = _planted(2.0, 80, 40)
    store = tmp_path / "dm"
    scdm.tl.datamodels(adata, "disease", use_rep="X_pca", n_models=1000, store=store)
    with pytest.warns(scdm.tl.UndecidedSubgroupsWarning):
        scdm.tl.subgroups(adata, min_reproducibility=1.0, markers=False)
    assert list(adata.uns["datamodels_subgroup"]["undecided"]) == ["disease"]
    first_labels = adata.obs["datamodels_subgroup"].astype(str).to_numpy()
    first = ModelStore.open(store)
    masks, margins = np.array(first.masks[:1000]), np.array(first.margins[:1000])
    with pytest.raises(ValueError, match="proj_dim is TRAK's"):  # before anything is trained
        scdm.tl.second_round(adata, key="datamodels", proj_dim=1024)
    assert ModelStore.open(store).n_models == 1000

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scdm.tl.UndecidedSubgroupsWarning)
        scdm.tl.second_round(adata, key="datamodels", factor=2)
    grown = ModelStore.open(store)
    assert grown.n_models == 2000 and grown.completed.all()
    np.testing.assert_array_equal(np.array(grown.masks[:1000]), masks)
    np.testing.assert_array_equal(np.array(grown.margins[:1000]), margins)
    second = adata.uns["datamodels_round2"]
    assert second["n_models"] == 2000
    assert second["summary"]["n_models_used"] == 2000
    recorded = dict(adata.uns["datamodels"]["fit_params"])
    assert recorded.pop("n_models_used") == 1000
    assert {k: v for k, v in second["fit_params"].items() if k != "n_models_used"} == recorded
    _decided_like_round_two(adata, "datamodels", first_labels)


def test_second_round_bad_input(tmp_path):
    adata = _planted(1.2, 60, 30)
    with pytest.raises(KeyError, match=r"tl\.subgroups"):
        scdm.tl.second_round(adata, key="trak")
    scdm.tl.trak(adata, "disease", use_rep="X_pca", store=tmp_path / "s", n_models=8)
    scdm.tl.subgroups(adata, key="trak", resolution=0.5, markers=False)
    with pytest.raises(KeyError, match="automatic"):  # a fixed resolution decides nothing
        scdm.tl.second_round(adata, key="trak")
    scdm.tl.subgroups(adata, key="trak", markers=False, key_added="mine")
    with pytest.raises(ValueError, match="factor"):
        scdm.tl.second_round(adata, key="trak", key_added="mine", factor=1)
    with pytest.raises(ValueError, match="proj_dim"):
        scdm.tl.second_round(adata, key="trak", key_added="mine", proj_dim=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        scdm.tl.second_round(adata, key="trak", key_added="mine", backend="cluster")
    adata.uns["other"] = adata.uns["trak"]
    with pytest.raises(ValueError, match="key='trak'"):
        scdm.tl.second_round(adata, key="other", key_added="mine")
    assert ModelStore.open(tmp_path / "s").n_models == 8  # nothing was trained
