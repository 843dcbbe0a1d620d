"""LassoPath vs per-target scikit-learn ``lasso_path`` with validation selection.

Issue 3's configuration: X = 4,000 × 500 Bernoulli(0.5) masks, 500 targets each with 10
non-zero true weights, noise σ = 2, 1,000 validation rows, 20-λ path (λ_max · logspace(0, −3)).
Both solve the same standardised problems on the same training rows and pick λ by the same
validation rows; the script prints the validation MSEs (they must agree), times, the speed-up
and the fraction of a ``torch.mm`` ceiling, for the Gram form (the default here) and the
streaming form (the one per-target row weights need). ``--streamed`` runs instead, in its own
process, a case on disk far larger than the memory budget and reports its time and peak RSS.

    python workflows/benchmarks/regression.py [--device auto]
    python workflows/benchmarks/regression.py --streamed [--streamed-targets 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import lasso_path

sys.path.insert(0, str(Path(__file__).parent))
from _common import matmul_ceiling, stable_allocator, timed

from scdm._memmap import read_rows
from scdm.ensemble import resolve_device
from scdm.regression import LassoPath


def planted(n_rows, p, n_targets, rng, noise=2.0, nnz=10):
    X = rng.random((n_rows, p)) < 0.5
    W = np.zeros((p, n_targets), dtype=np.float32)
    for t in range(n_targets):
        W[rng.choice(p, nnz, replace=False), t] = rng.normal(size=nnz)
    Y = (X @ W + noise * rng.normal(size=(n_rows, n_targets))).astype(np.float32)
    return X, Y, W


def sklearn_baseline(X, Y, val, lambdas, mean, scale):
    """Per target: sklearn lasso_path on the standardised, centred training rows, λ by val MSE."""
    train = np.setdiff1d(np.arange(X.shape[0]), val)
    Xs = (X - mean) / np.where(scale > 0, scale, 1)
    Xt, Xv = Xs[train], Xs[val]
    x_mean = Xt.mean(0)
    best = np.empty(Y.shape[1])
    for t in range(Y.shape[1]):
        y = Y[train, t].astype(np.float64)
        _, coefs, _ = lasso_path(Xt - x_mean, y - y.mean(), alphas=lambdas[:, t], tol=1e-4)
        pred = (Xv - x_mean) @ coefs + y.mean()
        best[t] = ((pred - Y[val, t][:, None]) ** 2).mean(0).min()
    return best


def dense_case(device_name: str) -> None:
    rng = np.random.default_rng(0)
    X, Y, W_true = planted(4000, 500, 500, rng)
    val = np.arange(3000, 4000)
    n_train, p, t = 3000, 500, 500
    for precompute in (True, False):  # warm-up
        LassoPath(n_lambdas=3, precompute=precompute, device=device_name,
                  verbose=False).fit(X[:500], Y[:500, :5])

    def fit(precompute):
        return LassoPath(n_lambdas=20, eps=1e-3, val_rows=val, precompute=precompute,
                         device=device_name, verbose=False).fit(X, Y)

    gram_s, gram = timed(fit, True, repeat=2)
    stream_s, stream = timed(fit, False)
    lambdas = gram.path_["lambda"]
    full = np.where(np.isnan(lambdas), np.nanmin(lambdas, axis=0), lambdas)  # sklearn: all 20
    sk_s, sk_mse = timed(sklearn_baseline, X, Y, val, full, gram.mean_, gram.scale_)

    device = resolve_device(device_name)
    ceiling = matmul_ceiling(device)
    # streaming: X̃V and X̃ᵀR over the training rows per iteration (the refit's extra rows are
    # not counted); Gram: X̃ᵀX̃ and X̃ᵀY once over all rows, then G·V per iteration
    stream_flops = 2 * 2 * n_train * p * t * stream.n_iter_.mean()
    gram_flops = 2 * 4000 * p * (p + t) + 2 * p * p * t * gram.n_iter_.mean()
    print(f"device: {device}, {torch.get_num_threads()} threads, "
          f"torch.mm ceiling {ceiling / 1e9:.1f} GFLOP/s")
    print(f"sklearn per target      : {sk_s:7.2f} s   mean best val MSE {sk_mse.mean():.4f}")
    for name, seconds, model, flops in (("LassoPath Gram (auto)", gram_s, gram, gram_flops),
                                        ("LassoPath streaming", stream_s, stream, stream_flops)):
        support = ((model.coef_ != 0) == (W_true != 0)).mean()
        print(f"{name:24s}: {seconds:7.2f} s   mean best val MSE {np.nanmean(model.val_mse_):.4f}"
              f"   {sk_s / seconds:5.1f}x sklearn   {flops / seconds / 1e9:5.1f} GFLOP/s = "
              f"{100 * flops / seconds / ceiling:3.0f}% of ceiling   iterations/target "
              f"{model.n_iter_.mean():.0f}   support agreement {100 * support:.1f}%")
    print(f"max |coef| difference Gram vs streaming: {np.abs(gram.coef_ - stream.coef_).max():.2e}")
    tolerance_case(X, Y, val, device_name)


def tolerance_case(X, Y, val, device_name: str, n_check: int = 25) -> None:
    """Exactness against scikit-learn's ``Lasso`` at the λ each fit chose (refit on all rows),
    for the former default (every path point to tol 1e-3) and the current one (path points to
    1e-3, the chosen λ to 1e-5), and for scikit-learn's own default tol."""
    from sklearn.linear_model import Lasso

    Xs = (X - X.mean(0)) / X.std(0)
    targets = np.arange(n_check)
    for name, kwargs in (("former default: tol = path_tol = 1e-3", {"tol": 1e-3,
                                                                     "path_tol": 1e-3}),
                         ("default: tol 1e-5, path_tol 1e-3", {})):
        seconds, model = timed(lambda kw=kwargs: LassoPath(
            n_lambdas=20, eps=1e-3, val_rows=val, device=device_name, verbose=False,
            **kw).fit(X, Y), repeat=2)
        errors, sk_default = [], []
        for t in targets:
            exact = Lasso(alpha=model.lambda_[t], tol=1e-12, max_iter=100_000).fit(Xs, Y[:, t])
            scale = np.abs(exact.coef_).max()
            ours = model.coef_[:, t] * X.std(0)
            errors.append(np.abs(ours - exact.coef_).max() / scale)
            default = Lasso(alpha=model.lambda_[t]).fit(Xs, Y[:, t])
            sk_default.append(np.abs(default.coef_ - exact.coef_).max() / scale)
        print(f"{name:40s}: {seconds:6.2f} s (all 500 targets), max relative weight error vs "
              f"exact Lasso at the chosen λ: median {np.median(errors):.1e}, worst "
              f"{np.max(errors):.1e} ({n_check} targets)   [sklearn Lasso default tol: median "
              f"{np.median(sk_default):.1e}]")


def write_npy_in_chunks(path: Path, shape, dtype, make_chunk, chunk_rows=5_000) -> None:
    """Write an .npy file chunk by chunk through plain file writes (no mapping, small RSS)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                "shape": shape})
        for start in range(0, shape[0], chunk_rows):
            f.write(np.ascontiguousarray(make_chunk(start, min(start + chunk_rows, shape[0])),
                                         dtype=dtype).tobytes())


def streamed_case(args) -> None:
    n, p, t = args.streamed_rows, args.streamed_features, args.streamed_targets
    rng = np.random.default_rng(1)
    W = np.zeros((p, t), dtype=np.float32)
    W[:10] = rng.normal(size=(10, t))
    with tempfile.TemporaryDirectory() as tmp:
        masks, margins = Path(tmp) / "masks.npy", Path(tmp) / "margins.npy"
        write_npy_in_chunks(masks, (n, p), bool, lambda a, b: np.random.default_rng(a).random(
            (b - a, p)) < 0.5)
        Xr = np.load(masks, mmap_mode="r")
        write_npy_in_chunks(margins, (n, t), np.float32, lambda a, b: read_rows(
            Xr, slice(a, b), np.float32)[:, :10] @ W[:10] + np.random.default_rng(n + a).normal(
            size=(b - a, t)))
        size = (masks.stat().st_size + margins.stat().st_size) / 2**20
        budget = args.memory_budget << 20
        # the fit runs in a fresh process, so its peak RSS is its own, not the generator's
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            st_s, idle, rss, precompute_used, n_iter, found, false = pool.submit(
                _fit_streamed, str(masks), str(margins), budget, args.precompute,
                args.device).result()
        print(f"streamed: {n} × {p} masks + {t} targets on disk ({size:.0f} MiB), memory budget "
              f"{budget >> 20} MiB, Gram form {precompute_used}: {st_s:.1f} s, peak RSS of the "
              f"fitting process {rss:.0f} MiB (of which {idle:.0f} MiB before the fit: "
              f"interpreter, torch, numpy), mean iterations {n_iter:.0f}, planted weights "
              f"found {100 * found:.0f}%, false non-zeros {100 * false:.2f}%")


def _fit_streamed(masks: str, margins: str, budget: int, precompute: str, device: str):
    Xr = np.load(masks, mmap_mode="r")
    Yr = np.load(margins, mmap_mode="r")
    idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    precompute = {"auto": "auto", "true": True, "false": False}[precompute]
    seconds, st = timed(lambda: LassoPath(n_lambdas=10, eps=1e-2, val_fraction=0.1,
                                          memory_budget=budget, precompute=precompute,
                                          device=device, verbose=True).fit(Xr, Yr))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (seconds, idle, rss, st.precompute_, st.n_iter_.mean(),
            (st.coef_[:10] != 0).mean(), (st.coef_[10:] != 0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--streamed", action="store_true",
                        help="run only the on-disk case (its own process, so peak RSS is its own)")
    parser.add_argument("--streamed-rows", type=int, default=200_000)
    parser.add_argument("--streamed-features", type=int, default=2_000)
    parser.add_argument("--streamed-targets", type=int, default=2_000)
    parser.add_argument("--memory-budget", type=int, default=256, help="MiB")
    parser.add_argument("--precompute", choices=["auto", "true", "false"], default="auto")
    args = parser.parse_args()
    if args.streamed:  # measures memory: glibc's default of returning freed blocks is wanted
        streamed_case(args)
    else:
        stable_allocator()
        dense_case(args.device)


if __name__ == "__main__":
    main()
