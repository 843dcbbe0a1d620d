"""LassoPath vs per-target scikit-learn ``lasso_path`` with validation selection.

Issue 3's configuration: X = 4,000 × 500 Bernoulli(0.5) masks, 500 targets each with 10
non-zero true weights, noise σ = 2, 1,000 validation rows, 20-λ path (λ_max · logspace(0, −3)).
Both solve the same standardised problems on the same training rows and pick λ by the same
validation rows; the script prints both validation MSEs (they must agree), times, the speed-up
and the fraction of a ``torch.mm`` ceiling. ``--streamed`` adds a memmap case larger than the
cache budget and reports its time and peak RSS.

    python workflows/benchmarks/regression.py [--device auto] [--streamed]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import lasso_path

sys.path.insert(0, str(Path(__file__).parent))
from _common import matmul_ceiling, stable_allocator, timed

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--streamed", action="store_true")
    parser.add_argument("--streamed-rows", type=int, default=200_000)
    parser.add_argument("--streamed-features", type=int, default=2_000)
    parser.add_argument("--streamed-targets", type=int, default=50)
    args = parser.parse_args()
    stable_allocator()
    rng = np.random.default_rng(0)
    X, Y, W_true = planted(4000, 500, 500, rng)
    val = np.arange(3000, 4000)
    LassoPath(n_lambdas=3, device=args.device, verbose=False).fit(X[:500], Y[:500, :5])  # warm-up
    ours_s, model = timed(lambda: LassoPath(n_lambdas=20, eps=1e-3, val_rows=val,
                                            device=args.device, verbose=False).fit(X, Y))
    lambdas = model.path_["lambda"]
    full = np.where(np.isnan(lambdas), np.nanmin(lambdas, axis=0), lambdas)  # sklearn: all 20
    sk_s, sk_mse = timed(sklearn_baseline, X, Y, val, full, model.mean_, model.scale_)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    ceiling = matmul_ceiling(device)
    iters = model.n_iter_.mean()
    # each FISTA iteration: X̃V and X̃ᵀR over the training rows, all targets
    flops = 2 * 2 * 3000 * 500 * 500 * iters
    support = ((model.coef_ != 0) == (W_true != 0)).mean()
    print(f"device: {device}, {torch.get_num_threads()} threads")
    print(f"scdm LassoPath   : {ours_s:7.2f} s   mean best val MSE {np.nanmean(model.val_mse_):.4f}"
          f"   mean iterations/target {iters:.0f}")
    print(f"sklearn per target: {sk_s:7.2f} s   mean best val MSE {sk_mse.mean():.4f}")
    print(f"speed-up         : {sk_s / ours_s:7.1f}x")
    print(f"torch.mm ceiling : {ceiling / 1e9:.1f} GFLOP/s; LassoPath sustains "
          f"{flops / ours_s / 1e9:.1f} GFLOP/s = {100 * flops / ours_s / ceiling:.0f}% of it")
    print(f"support agreement with the planted weights: {100 * support:.1f}% of entries")

    if args.streamed:
        n, p, t = args.streamed_rows, args.streamed_features, args.streamed_targets
        with tempfile.TemporaryDirectory() as tmp:
            Xm = np.lib.format.open_memmap(Path(tmp) / "masks.npy", mode="w+", dtype=bool,
                                           shape=(n, p))
            Ym = np.lib.format.open_memmap(Path(tmp) / "margins.npy", mode="w+",
                                           dtype=np.float32, shape=(n, t))
            W = np.zeros((p, t), dtype=np.float32)
            W[:10] = rng.normal(size=(10, t))
            for start in range(0, n, 20_000):
                block = rng.random((min(20_000, n - start), p)) < 0.5
                Xm[start : start + block.shape[0]] = block
                Ym[start : start + block.shape[0]] = block @ W + rng.normal(
                    size=(block.shape[0], t))
            Xm.flush()
            Ym.flush()
            del Xm, Ym
            Xr = np.load(Path(tmp) / "masks.npy", mmap_mode="r")
            Yr = np.load(Path(tmp) / "margins.npy", mmap_mode="r")
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            budget = 256 << 20
            st_s, st = timed(lambda: LassoPath(n_lambdas=10, eps=1e-2, val_fraction=0.1,
                                               memory_budget=budget, device=args.device,
                                               verbose=False).fit(Xr, Yr))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            size = (n * p + n * t * 4) / 2**20
            print(f"streamed: {n} × {p} masks + {t} targets on disk ({size:.0f} MiB), "
                  f"memory budget {budget >> 20} MiB: {st_s:.1f} s, peak RSS {rss:.0f} MiB "
                  f"(before: {rss_before:.0f} MiB), mean iterations {st.n_iter_.mean():.0f}, "
                  f"support recovered {100 * ((st.coef_[:10] != 0).mean()):.0f}% / "
                  f"false {100 * (st.coef_[10:] != 0).mean():.1f}%")


if __name__ == "__main__":
    main()
