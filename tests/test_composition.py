"""Confounding check: is a subgroup one donor or batch? Engine calibration and the real pipeline."""

import numpy as np
import pandas as pd
import pytest
from anndata import read_h5ad

import scdm
from scdm.composition import CompositionRule, adjust_and_flag, categorical_test, numeric_test


def test_categorical_test_is_calibrated_on_random_subgroups():
    """Subgroups drawn at random from a class of unequal donors: p-values are uniform, so about
    5 % fall below 0.05 and nothing is flagged after the BH correction."""
    rng = np.random.default_rng(0)
    donors = rng.choice(6, size=300, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    rows = []
    for _ in range(400):
        inside = np.zeros(300, dtype=bool)
        inside[rng.choice(300, size=rng.integers(10, 150), replace=False)] = True
        rows.append({"kind": "categorical", **categorical_test(
            donors, inside, n_permutations=199, rng=rng)})
    p = np.array([r["p_value"] for r in rows])
    assert 0.02 <= (p < 0.05).mean() <= 0.09
    assert 0.4 <= (p < 0.5).mean() <= 0.6
    assert not any(r["flag"] for r in adjust_and_flag(rows, CompositionRule()))


def test_categorical_test_detects_a_one_donor_subgroup_but_not_an_inherited_one():
    donors = np.repeat([0, 1, 2, 3], 25)
    inside = donors == 2
    result = categorical_test(donors, inside, n_permutations=999,
                              rng=np.random.default_rng(1))
    assert result["dominant"] == 2 and result["dominant_fraction"] == 1.0
    assert result["class_fraction"] == 0.25
    assert result["imbalance"] == pytest.approx(1.0)
    assert result["n_levels"] == 1 and result["effective_levels"] == pytest.approx(1.0)
    spread = categorical_test(donors, donors < 2, n_permutations=99,
                              rng=np.random.default_rng(1))
    assert spread["n_levels"] == 2 and spread["effective_levels"] == pytest.approx(2.0)
    assert result["p_value"] == pytest.approx(1 / 1000)
    # A class that is one donor: a subgroup of it is 100 % that donor, and that is no finding.
    same = categorical_test(np.zeros(50, dtype=np.int64), np.arange(50) < 20,
                            n_permutations=99, rng=np.random.default_rng(1))
    assert np.isnan(same["p_value"])
    # 90 % donor 0 in a class that is 90 % donor 0: not flagged.
    mostly = np.array([0] * 90 + [1] * 10)
    order = np.random.default_rng(2).permutation(100)
    row = {"kind": "categorical", **categorical_test(
        mostly[order], np.arange(100) < 50, n_permutations=999, rng=np.random.default_rng(3))}
    assert adjust_and_flag([row], CompositionRule())[0]["flag"] == ""


def test_numeric_test_auc_and_flag():
    rng = np.random.default_rng(0)
    values = rng.normal(size=200)
    inside = np.arange(200) < 50
    values[inside] += 2.0  # a subgroup of high-library-size cells
    row = {"kind": "numeric", **numeric_test(values, inside)}
    assert row["auc"] > 0.85 and row["p_value"] < 1e-10
    assert adjust_and_flag([row], CompositionRule())[0]["flag"] == "shifted"
    flat = numeric_test(np.ones(20), np.arange(20) < 5)
    assert np.isnan(flat["p_value"])


def test_rule_rejects_bad_thresholds():
    with pytest.raises(ValueError, match="max_fraction"):
        CompositionRule(max_fraction=1.5)
    with pytest.raises(ValueError, match="min_auc_shift"):
        CompositionRule(min_auc_shift=0.7)


def _donors(adata, confounded: str | None) -> pd.Categorical:
    """Four donors per class dealt round-robin; the cells of subtype ``confounded`` (if any)
    all come from one donor, which gives no cells to the rest of the class."""
    labels = adata.obs["disease"].astype(str).to_numpy()
    truth = adata.obs["subtype"].astype(str).to_numpy()
    donor = np.empty(adata.n_obs, dtype=object)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        donor[members] = [f"{cls}-d{i % 4}" for i in range(members.size)]
    if confounded is not None:
        own = truth == confounded
        rest = np.flatnonzero((labels == "disease") & ~own)
        donor[own] = "disease-d0"
        donor[rest] = [f"disease-d{1 + i % 3}" for i in range(rest.size)]
    return pd.Categorical(donor)


@pytest.mark.slow
def test_composition_flags_a_one_donor_subgroup_and_not_a_balanced_subtype(planted, tmp_path):
    """The real pipeline (datamodels → reproducible subgroups) on two planted subtypes: the
    check runs itself on the stratify_key (balanced batches: silent); a subtype whose cells all
    come from one donor is flagged "dominated"; with donors balanced across subtypes nothing
    is flagged."""
    adata = planted.copy()
    scdm.tl.subgroups(adata, markers=False)
    evidence = adata.uns["datamodels_subgroup"]["composition"]
    assert set(evidence["covariate"]) == {"batch"}  # the training's stratify_key
    assert (evidence["flag"] == "").all()

    adata.obs["donor"] = _donors(adata, "subtype-0")
    adata.obs["donor_balanced"] = _donors(adata, None)
    table = scdm.tl.subgroup_composition(adata, ["donor", "donor_balanced", "batch"])
    found = pd.crosstab(adata.obs["datamodels_subgroup"], adata.obs["subtype"])
    one_donor = found["subtype-0"].idxmax()  # the subgroup that recovered subtype 0
    donor_rows = table[table["covariate"] == "donor"].set_index("subgroup")
    assert donor_rows.loc[one_donor, "flag"] == "dominated"
    assert donor_rows.loc[one_donor, "dominant"] == "disease-d0"
    assert donor_rows.loc[one_donor, "q_value"] < 0.01
    dominated = table[table["flag"] == "dominated"]
    assert list(dominated["subgroup"]) == [one_donor]
    assert (table.loc[table["covariate"] != "donor", "flag"] == "").all()
    # Controls are one subgroup: nothing to compare with, never flagged.
    assert table.loc[table["class"] == "control", "p_value"].isna().all()

    adata.write_h5ad(tmp_path / "a.h5ad")
    back = read_h5ad(tmp_path / "a.h5ad")
    stored = back.uns["datamodels_subgroup"]["composition"]
    pd.testing.assert_frame_equal(stored.reset_index(drop=True), table.reset_index(drop=True),
                                  check_dtype=False, check_index_type=False)
    # Same seed, same answer; the covariates checked beside do not change a row's p-value.
    again = scdm.tl.subgroup_composition(back, ["donor"])
    np.testing.assert_array_equal(again["p_value"], donor_rows["p_value"].to_numpy())


def test_composition_bad_input(planted):
    adata = planted.copy()
    with pytest.raises(KeyError, match="run scdm"):
        scdm.tl.subgroup_composition(adata, ["batch"])
    scdm.tl.subgroups(adata, markers=False, resolution=1.0)
    with pytest.raises(KeyError, match="not columns"):
        scdm.tl.subgroup_composition(adata, ["donor"])
    with pytest.raises(ValueError, match="own covariate"):
        scdm.tl.subgroup_composition(adata, ["datamodels_subgroup"])
    with pytest.raises(ValueError, match="n_permutations"):
        scdm.tl.subgroup_composition(adata, ["batch"], n_permutations=5)
