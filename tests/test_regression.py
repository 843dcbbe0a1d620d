import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso, lasso_path

from scdm.io import load_published, read_datamodels, read_datamodels_pt, write_datamodels_pt
from scdm.regression import LassoPath


def planted(n=800, p=30, n_targets=6, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    X = rng.random((n, p)) < 0.5
    W = np.zeros((p, n_targets), dtype=np.float32)
    for t in range(n_targets):
        W[rng.choice(p, 4, replace=False), t] = rng.choice([-1, 1], 4) * rng.uniform(1, 2, 4)
    Y = (X @ W + 3.0 + noise * rng.normal(size=(n, n_targets))).astype(np.float32)
    return X, Y, W


def standardised(X):
    return (X - X.mean(0)) / X.std(0)


EXACT = {"val_fraction": 0.0, "tol": 1e-10, "max_iter": 20000, "dtype": torch.float64,
         "verbose": False}


@pytest.mark.parametrize("precompute", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_sklearn_lasso_on_standardised_data(dtype, precompute):
    X, Y, _ = planted()
    lam = 0.05
    tol = 1e-6 if dtype == torch.float32 else 1e-10  # float32 cannot certify a smaller gap
    model = LassoPath(lambdas=[lam], precompute=precompute,
                      **{**EXACT, "dtype": dtype, "tol": tol}).fit(X, Y)
    assert model.precompute_ is precompute
    Xs = standardised(X)
    for t in range(Y.shape[1]):
        ref = Lasso(alpha=lam, tol=1e-12, max_iter=100_000).fit(Xs, Y[:, t])
        coef_std = model.coef_[:, t] * X.std(0)  # raw units → standardised units
        np.testing.assert_allclose(coef_std, ref.coef_, rtol=1e-3, atol=1e-4)
        # raw-unit intercept: prediction on raw X equals sklearn's on standardised X
        np.testing.assert_allclose(model.predict(X[:5])[:, t], ref.predict(Xs[:5]), rtol=1e-3)
    np.testing.assert_allclose(model.mean_, X.mean(0))
    np.testing.assert_allclose(model.scale_, X.std(0))


def test_heldout_mode_matches_sklearn_on_kept_rows():
    rng = np.random.default_rng(1)
    X, Y, _ = planted(n=900, p=12, n_targets=12)
    weights = rng.random(Y.shape) < 0.6
    lam = 0.03
    model = LassoPath(lambdas=[lam], **EXACT).fit(X, Y, sample_weight=weights)
    Xs = standardised(X)  # standardisation over all rows, as LassoPath does
    for t in range(Y.shape[1]):
        keep = weights[:, t]
        ref = Lasso(alpha=lam, tol=1e-12, max_iter=100_000).fit(Xs[keep], Y[keep, t])
        np.testing.assert_allclose(model.coef_[:, t] * X.std(0), ref.coef_, rtol=1e-3,
                                   atol=1e-4)
    # "heldout": target t keeps the rows where feature t is 0
    square = LassoPath(lambdas=[lam], **EXACT).fit(X, Y[:, :12], sample_weight="heldout")
    for t in (0, 7):
        keep = ~X[:, t]
        ref = Lasso(alpha=lam, tol=1e-12, max_iter=100_000).fit(Xs[keep], Y[keep, t])
        np.testing.assert_allclose(square.coef_[:, t] * X.std(0), ref.coef_, rtol=1e-3,
                                   atol=1e-4)


@pytest.mark.parametrize("precompute", [True, False])
def test_planted_support_and_lambda_choice_match_sklearn_path(precompute):
    X, Y, W = planted(n=1500, p=40, n_targets=5, noise=1.0)
    val = np.arange(1200, 1500)
    model = LassoPath(n_lambdas=20, eps=1e-3, val_rows=val, tol=1e-6, path_tol=1e-6,
                      early_stopping=False, precompute=precompute, verbose=False).fit(X, Y)
    strong = np.abs(W) > 0
    assert (model.coef_[strong] != 0).all()  # every planted weight found
    # sklearn lasso_path on the same training rows and λ grid, λ picked on the same rows
    Xs = (X - model.mean_) / model.scale_
    train = np.arange(1200)
    for t in range(Y.shape[1]):
        xm, ym = Xs[train].mean(0), Y[train, t].mean()
        lambdas = model.path_["lambda"][:, t]
        _, coefs, _ = lasso_path(Xs[train] - xm, Y[train, t] - ym, alphas=lambdas, tol=1e-10)
        val_mse = (((Xs[val] - xm) @ coefs + ym - Y[val, t][:, None]) ** 2).mean(0)
        np.testing.assert_allclose(model.path_["val_mse"][:, t], val_mse, rtol=1e-3)
        chosen = lambdas[np.argmin(val_mse)]
        assert abs(np.log(model.lambda_[t] / chosen)) <= np.log(lambdas[0] / lambdas[1]) + 1e-6
    assert (model.val_corr_ > 0.7).all()  # noise sd 1 vs signal of 4 weights of 1-2
    pred = model.predict(X[val])
    assert np.corrcoef(pred[:, 0], Y[val, 0])[0, 1] > 0.8


@pytest.mark.parametrize("precompute", [True, False])
def test_default_loose_path_then_exact_refit_matches_sklearn_at_chosen_lambda(precompute):
    """Path points solved to path_tol=1e-3 only pick λ; the returned weights are solved to tol
    (default 1e-5) and match scikit-learn's Lasso at that λ on all rows."""
    X, Y, _ = planted(n=1500, p=40, n_targets=5, noise=1.0)
    val = np.arange(1200, 1500)
    loose = LassoPath(n_lambdas=20, val_rows=val, early_stopping=False, precompute=precompute,
                      verbose=False).fit(X, Y)
    exact = LassoPath(n_lambdas=20, val_rows=val, early_stopping=False, precompute=precompute,
                      path_tol=1e-8, tol=1e-8, dtype=torch.float64, verbose=False).fit(X, Y)
    np.testing.assert_allclose(loose.lambda_, exact.lambda_, rtol=1e-5)  # the same λ chosen
    assert loose.converged_.all()
    Xs = standardised(X)
    for t in range(Y.shape[1]):
        ref = Lasso(alpha=loose.lambda_[t], tol=1e-12, max_iter=100_000).fit(Xs, Y[:, t])
        coef = loose.coef_[:, t] * X.std(0)
        assert np.abs(coef - ref.coef_).max() <= 1e-4 * np.abs(ref.coef_).max()


def test_validation_rows_scored_per_target_and_too_few_refused():
    """val_sample_weight='heldout' scores target t on the validation rows with X[:, t] == 0,
    while every row trains it (the datamodels default: own mask column absorbed)."""
    rng = np.random.default_rng(3)
    X = rng.random((1200, 10)) < 0.5
    Y = (X @ rng.normal(size=(10, 10)) + 0.3 * rng.normal(size=(1200, 10))).astype(np.float32)
    Y += 5 * X  # each target's own column dominates the rows that include it
    val = np.arange(1000, 1200)
    both = LassoPath(val_rows=val, verbose=False).fit(X, Y)
    held = LassoPath(val_rows=val, verbose=False).fit(X, Y, val_sample_weight="heldout")
    np.testing.assert_array_equal(held.n_val_rows_, (~X[val]).sum(0))
    np.testing.assert_array_equal(both.n_val_rows_, np.full(10, 200))
    assert held.precompute_  # training rows still from the Gram matrix
    np.testing.assert_allclose(held.coef_, both.coef_, atol=0.05)  # same fit, other score
    # one λ: the validation MSE is that of the training-row fit on the kept validation rows
    one = LassoPath(lambdas=[0.05], val_rows=val, tol=1e-8, path_tol=1e-8, dtype=torch.float64,
                    verbose=False).fit(X, Y, val_sample_weight="heldout")
    Xs = (X - one.mean_) / one.scale_
    for t in (0, 4):
        ref = Lasso(alpha=0.05, tol=1e-12, max_iter=100_000).fit(Xs[:1000], Y[:1000, t])
        kept = val[~X[val, t]]
        expected = ((ref.predict(Xs[kept]) - Y[kept, t]) ** 2).mean()
        assert one.val_mse_[t] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="only 2 of the 4 validation rows"):
        X2 = X.copy()
        X2[1000:1002], X2[1002:1004] = True, False  # every target keeps 2 of these 4 rows
        LassoPath(val_rows=[1000, 1001, 1002, 1003], verbose=False).fit(
            X2, Y, val_sample_weight="heldout")
    X2[1004:1010] = False  # now 8 kept validation rows each: too few to trust, enough to run
    with pytest.warns(UserWarning, match="8 of the 10 validation rows .fewer than 10"):
        LassoPath(val_rows=np.arange(1000, 1010), verbose=False).fit(
            X2, Y, val_sample_weight="heldout")
    with pytest.raises(ValueError, match="val_sample_weight"):
        LassoPath(verbose=False).fit(X, Y, val_sample_weight="other")


@pytest.mark.parametrize("precompute", [True, False])
def test_streamed_memmap_in_small_chunks_equals_in_memory(tmp_path, precompute):
    """Also Gram vs streaming: the in-memory fit takes the Gram form ('auto')."""
    X, Y, _ = planted(n=700, p=20, n_targets=7)
    np.save(tmp_path / "masks.npy", X)
    np.save(tmp_path / "margins.npy", Y)
    Xm, Ym = load_published(tmp_path / "masks.npy", tmp_path / "margins.npy")
    settings = {"n_lambdas": 8, "val_fraction": 0.2, "tol": 1e-6, "verbose": False}
    in_memory = LassoPath(**settings).fit(X, Y)
    assert in_memory.precompute_
    streamed = LassoPath(row_chunk_size=64, target_block_size=3, memory_budget=1,
                         precompute=precompute, **settings).fit(Xm, Ym)
    assert streamed.precompute_ is precompute  # a 1-byte budget rules out 'auto'
    np.testing.assert_allclose(streamed.path_["val_mse"], in_memory.path_["val_mse"],
                               rtol=1e-4)
    np.testing.assert_allclose(streamed.coef_, in_memory.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(streamed.lambda_, in_memory.lambda_, rtol=1e-6)
    np.testing.assert_allclose(streamed.intercept_, in_memory.intercept_, rtol=1e-4)


def test_constant_feature_gets_zero_weight():
    X, Y, _ = planted(p=10)
    X[:, 3] = True
    model = LassoPath(lambdas=[0.01], **EXACT).fit(X, Y)
    assert (model.coef_[3] == 0).all() and model.scale_[3] == 0
    assert np.isfinite(model.intercept_).all()


@pytest.mark.parametrize("units", ["standardized", "raw"])
def test_datamodels_pt_roundtrip(tmp_path, units):
    X, Y, _ = planted(n=300, p=10, n_targets=3)
    X[:, 4] = True  # a constant column: scale 0, weight 0 in both conventions
    model = LassoPath(n_lambdas=5, verbose=False).fit(X, Y)
    path = write_datamodels_pt(model, tmp_path / "datamodels.pt", units=units)
    data = read_datamodels_pt(path)
    assert data["weight"].shape == (10, 3) and data["units"] == units
    np.testing.assert_allclose(data["lam"], model.lambda_, rtol=1e-6)
    back = read_datamodels(path)
    assert back.units == units and not back.inferred
    np.testing.assert_allclose(back.weight, model.coef_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(back.predict(X), model.predict(X), rtol=1e-5, atol=1e-5)
    if units == "standardized":  # fast_l1's formula, with the file's own statistics
        scale = np.where(data["scale"] > 0, data["scale"], 1.0)
        pred = (X - data["mean"]) / scale @ data["weight"] + data["bias"]
        np.testing.assert_allclose(pred, model.predict(X), rtol=1e-5, atol=1e-5)
        assert data["weight"][4].max() == 0 and np.allclose(data["bias"], Y.mean(0), atol=0.2)


@pytest.mark.parametrize(("kwargs", "fit", "match"), [
    ({}, {"Y": np.zeros((5, 2))}, "rows"),
    ({"eps": 1.5}, {}, "eps"),
    ({"val_fraction": 1.0}, {}, "val_fraction"),
    ({}, {"sample_weight": np.ones((3, 3))}, "sample_weight must have Y's shape"),
    ({}, {"sample_weight": "heldout"}, "as many columns"),
    ({"min_rows": 1000}, {}, "min_rows"),
    ({"precompute": True}, {"sample_weight": np.ones((200, 3))}, "precompute=True needs"),
    ({"precompute": "yes"}, {}, "precompute must be"),
])
def test_bad_input(kwargs, fit, match):
    X, Y, _ = planted(n=200, p=10, n_targets=3)
    args = {"Y": Y, **fit}
    with pytest.raises(ValueError, match=match):
        LassoPath(verbose=False, **kwargs).fit(X, **args)


def test_nan_in_targets_is_refused():
    X, Y, _ = planted(n=200, p=10, n_targets=3)
    Y[7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        LassoPath(verbose=False).fit(X, Y)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu():
    X, Y, _ = planted()
    cpu = LassoPath(n_lambdas=10, tol=1e-6, device="cpu", verbose=False).fit(X, Y)
    gpu = LassoPath(n_lambdas=10, tol=1e-6, device="cuda", verbose=False).fit(X, Y)
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-3, atol=1e-4)
