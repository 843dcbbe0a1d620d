import numpy as np
import pytest

from scdm.masks import MaskSampler


def test_balanced_masks_take_alpha_of_each_class():
    labels = np.array([0] * 30 + [1] * 10)
    masks = MaskSampler(labels, 0.3).sample(np.arange(50))
    assert (masks[:, labels == 0].sum(1) == 9).all()
    assert (masks[:, labels == 1].sum(1) == 3).all()
    assert len({row.tobytes() for row in masks}) == 50  # models differ


def test_mask_of_a_model_depends_on_seed_and_index_only():
    labels = np.arange(40) % 2
    sampler = MaskSampler(labels, 0.5, random_state=3)
    all_at_once = sampler.sample(np.arange(20))
    assert np.array_equal(sampler.sample([13, 2]), all_at_once[[13, 2]])
    assert np.array_equal(MaskSampler(labels, 0.5, random_state=3).sample([7]), all_at_once[[7]])
    assert not np.array_equal(MaskSampler(labels, 0.5, random_state=4).sample(np.arange(20)),
                              all_at_once)


def test_bernoulli_masks_have_alpha_on_average():
    masks = MaskSampler(np.arange(200) % 2, 0.25, mode="bernoulli").sample(np.arange(400))
    assert abs(masks.mean() - 0.25) < 0.01
    assert np.unique(masks.sum(1)).size > 5  # subset sizes vary, unlike balanced masks


def test_groups_are_in_or_out_together():
    labels = np.repeat([0, 1], 20)
    groups = np.repeat(np.arange(8), 5)  # 4 donors per class, 5 cells each
    masks = MaskSampler(labels, 0.5, groups=groups).sample(np.arange(30))
    for g in range(8):
        block = masks[:, groups == g]
        assert (block == block[:, :1]).all()
    assert (masks[:, labels == 0].sum(1) == 10).all()  # 2 of 4 donors per class


def test_group_spanning_two_labels_is_refused():
    labels = np.array([0, 0, 1, 1, 0, 1])
    groups = np.array([0, 0, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="span more than one label"):
        MaskSampler(labels, 0.5, groups=groups)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\) \(the fraction"):
        MaskSampler(np.arange(10) % 2, alpha)


def test_class_too_small_for_alpha_is_refused():
    labels = np.array([0] * 20 + [1] * 2)
    with pytest.raises(ValueError, match=r"cannot be split with alpha=0\.1"):
        MaskSampler(labels, 0.1)


def test_too_few_heldout_models_is_refused():
    sampler = MaskSampler(np.arange(40) % 2, 0.5)
    counts = sampler.check_heldout(200, 50)
    assert counts.min() >= 50 and counts.sum() == 200 * 20
    with pytest.raises(ValueError, match=r"held out of only .* Train more models"):
        sampler.check_heldout(20, 50, obs_names=[f"c{i}" for i in range(40)])


def test_stratified_masks_hold_every_class_stratum_cell_fixed():
    labels = np.repeat([0, 1], 300)
    batch = np.tile(np.arange(4), 150)  # 75 per (class, batch) cell: alpha * 75 = 37.5
    sampler = MaskSampler(labels, 0.5, strata=batch, random_state=3)
    masks = sampler.sample(np.arange(300))
    assert np.all(masks[:, labels == 0].sum(1) == 150)
    assert np.all(masks[:, labels == 1].sum(1) == 150)
    for b in range(4):
        disease = masks[:, (labels == 1) & (batch == b)].sum(1)
        control = masks[:, (labels == 0) & (batch == b)].sum(1)
        assert set(np.unique(disease)) == {37, 38}
        np.testing.assert_array_equal(disease, control)  # no batch-label tilt in any mask
    np.testing.assert_array_equal(masks, MaskSampler(labels, 0.5, strata=batch,
                                                      random_state=3).sample(np.arange(300)))
    # A stratum of one sample per class is still trained on in about alpha of the masks.
    tiny = MaskSampler(np.array([0, 0, 0, 1, 1, 1]), 0.5, strata=np.array([0, 1, 2] * 2))
    np.testing.assert_allclose(tiny.sample(np.arange(4000)).mean(0), 0.5, atol=0.03)


def test_stratified_masks_bad_input():
    labels = np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match="balanced"):
        MaskSampler(labels, 0.5, strata=np.zeros(20), mode="bernoulli")
    with pytest.raises(ValueError, match="shape"):
        MaskSampler(labels, 0.5, strata=np.zeros(5))
    groups = np.repeat(np.arange(4), 5)
    with pytest.raises(ValueError, match="spans several strata"):
        MaskSampler(labels, 0.5, groups=groups, strata=np.arange(20) % 2)


def test_one_wording_for_fractions():
    from scdm._checks import check_fraction

    assert check_fraction("f", 0, "[0, 1)") == 0.0 and check_fraction("f", 1, "(0, 1]") == 1.0
    for value, interval in ((0, "(0, 1)"), (1, "[0, 1)"), (float("nan"), "[0, 1]")):
        with pytest.raises(ValueError, match=r"f must lie in [\[(]0, 1[\])], got"):
            check_fraction("f", value, interval)
    with pytest.raises(TypeError, match="f must be a number"):
        check_fraction("f", "half")
