"""Boundaries of an accepted partition moved by the models' input where the attribution agrees
(:func:`scdm.clustering.refined_boundaries`)."""

import numpy as np
from sklearn.metrics import adjusted_rand_score

from scdm.clustering import REFINE_MIN_CELLS, cross_separation, refined_boundaries


def blurred(seed: int = 0, n: int = 240, swap: float = 0.2):
    """Three groups: inputs with each group's programme on 5 of 40 features (correlated, as
    genes of a programme are, so that the input's leading components hold it); attribution
    halves with the same groups in 3 of 10 dimensions plus each half's own noise; and a
    partition with a fifth of the cells in a wrong group (a boundary drawn by a noisy graph)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), n // 3)
    inputs = rng.normal(size=(n, 40))
    inputs[:, :15] += 1.5 * np.repeat(np.eye(3)[truth], 5, axis=1)
    signal = rng.normal(size=(n, 10)) * 0.3
    signal[:, :3] += 1.5 * np.eye(3)[truth]
    half1 = signal + rng.normal(size=(n, 10)) * 0.5
    half2 = signal + rng.normal(size=(n, 10)) * 0.5
    labels = truth.copy()
    wrong = rng.random(n) < swap
    labels[wrong] = (truth[wrong] + rng.integers(1, 3, wrong.sum())) % 3
    return inputs, labels, truth, half1, half2


def test_a_blurred_boundary_is_sharpened_where_the_halves_agree():
    inputs, labels, truth, half1, half2 = blurred()
    assert adjusted_rand_score(truth, labels) < 0.6
    refined, evidence = refined_boundaries(inputs, labels, half1, half2, random_state=0)
    assert adjusted_rand_score(truth, refined) > 0.9
    assert evidence["taken"] and evidence["moved"] == int((refined != labels).sum()) > 30
    assert evidence["after"] > evidence["before"]
    assert evidence["after"] == cross_separation(half1, half2, refined, refined)
    # the same seed, the same cells moved
    again, _ = refined_boundaries(inputs, labels, half1, half2, random_state=0)
    assert (again == refined).all()


def test_a_move_the_attribution_does_not_back_is_not_taken():
    """The input holds other groups than the attribution's: the discriminant would move the
    cells towards the input's groups, and the halves separate that partition less, so the
    accepted partition stays as it was."""
    inputs, _, truth, half1, half2 = blurred(seed=1, swap=0.0)
    rng = np.random.default_rng(1)
    other = rng.permutation(truth)  # the input's groups, unrelated to the attribution's
    inputs = rng.normal(size=inputs.shape)
    inputs[:, :15] += 1.5 * np.repeat(np.eye(3)[other], 5, axis=1)
    labels = truth.copy()
    wrong = rng.random(truth.size) < 0.1
    labels[wrong] = other[wrong]  # a few cells already where the input would put them
    refined, evidence = refined_boundaries(inputs, labels, half1, half2, random_state=0)
    assert evidence is not None and evidence["moved"] > 0 and not evidence["taken"]
    assert evidence["after"] < evidence["before"]
    assert refined is labels or (refined == labels).all()


def test_nothing_to_refine_is_left_alone():
    inputs, labels, _, half1, half2 = blurred(seed=2)
    whole = np.zeros(labels.size, dtype=np.int64)
    assert refined_boundaries(inputs, whole, half1, half2)[1] is None
    small = labels.copy()
    small[np.flatnonzero(small == 2)[REFINE_MIN_CELLS - 1:]] = 0
    out, evidence = refined_boundaries(inputs, small, half1, half2)
    assert evidence is None and (out == small).all()
    assert refined_boundaries(inputs, labels, half1, half2, n_components=0)[1] is None
