"""Models per second: scdm's batched trainer vs a plain one-model-at-a-time PyTorch loop.

Configuration (issue 2): 2,000 samples × 50 features, MLP 50→64→2, Adam, batch 128, 20 epochs,
each model on 50% of the samples. Both train the same models (same masks, initialisations and
data orders) so their held-out accuracies agree; the batched trainer is also compared with the
FLOP rate of one large ``torch.mm`` on the same device.

    python workflows/benchmarks/train_throughput.py [--device auto] [--models 1024] [--plain 8]
        [--features 50] [--chunk-size K] [--as-installed]

``--features 765`` is the width of pbmc68k's genes (what ``use_rep="auto"`` trains on there);
``--as-installed`` keeps glibc's default allocator settings, which users run with, instead of
the benchmarks' stable ones (multi-MB temporaries then cost page faults every step).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import matmul_ceiling, stable_allocator, timed

from scdm.ensemble import EnsembleTrainer, TrainConfig, epoch_orders, init_model, resolve_device
from scdm.masks import MaskSampler


def plain_loop(X, y, masks, config, device):
    """The way one would train these models without scdm: one nn.Module at a time."""
    Xt, yt = torch.as_tensor(X, device=device), torch.as_tensor(y, device=device)
    margins = []
    for m, mask in enumerate(masks):
        (w1, b1), (w2, b2) = init_model([X.shape[1], 64, 1], 0, m)
        net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 64), torch.nn.ReLU(),
                                  torch.nn.Linear(64, 1)).to(device)
        with torch.no_grad():
            for layer, (w, b) in zip((net[0], net[2]), ((w1, b1), (w2, b2)), strict=True):
                layer.weight.copy_(torch.from_numpy(w.T))
                layer.bias.copy_(torch.from_numpy(b))
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        for order in epoch_orders(np.flatnonzero(mask), 0, m, config.epochs):
            order = torch.as_tensor(order, device=device)
            for start in range(0, order.numel(), config.batch_size):
                idx = order[start : start + config.batch_size]
                out = net(torch.index_select(Xt, 0, idx))[:, 0]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    out, yt[idx].float()) + config.weight_decay / 2 * (net[0].weight ** 2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            margins.append((net(Xt)[:, 0] * (2 * yt - 1)).cpu().numpy())
    return np.array(margins)


def heldout_accuracy(margins, masks):
    return float((((margins > 0) & ~masks).sum(1) / (~masks).sum(1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", type=int, default=1024)
    parser.add_argument("--plain", type=int, default=8, help="models for the plain loop")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--as-installed", action="store_true",
                        help="glibc's default allocator settings, as a user's process has")
    args = parser.parse_args()
    if not args.as_installed:
        stable_allocator()
    device = resolve_device(args.device)
    torch.manual_seed(0)

    rng = np.random.default_rng(0)
    n, d = 2000, args.features
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, :5].sum(1) + rng.normal(size=n) > 0).astype(np.int64)
    config = TrainConfig(hidden=(64,), epochs=20, batch_size=128, lr=1e-3)
    sampler = MaskSampler(y, 0.5)
    masks = sampler.sample(np.arange(args.models))

    trainer = EnsembleTrainer(X, y, config, device=device)
    chunk = args.chunk_size or trainer.auto_chunk_size()
    trainer.train(masks[:chunk], np.arange(chunk))  # warm-up
    scdm_s, margins = timed(lambda: np.concatenate([
        trainer.train(masks[i : i + chunk], np.arange(i, min(i + chunk, args.models))).margins
        for i in range(0, args.models, chunk)]))
    plain_s, plain_margins = timed(plain_loop, X, y, masks[: args.plain], config, device)

    steps = config.epochs * int(np.ceil(n * 0.5 / config.batch_size))
    params = d * 64 + 64 + 64 + 1
    flops_per_model = 6 * steps * config.batch_size * params + 2 * n * params
    ceiling = matmul_ceiling(device)
    scdm_rate, plain_rate = args.models / scdm_s, args.plain / plain_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device} ({name}, {torch.get_num_threads()} threads), chunk size {chunk}, "
          f"{d} features, allocator {'as installed' if args.as_installed else 'stable'}")
    print(f"plain one-at-a-time loop : {plain_rate:9.1f} models/s  "
          f"held-out acc {heldout_accuracy(plain_margins, masks[: args.plain]):.4f}")
    print(f"scdm batched trainer     : {scdm_rate:9.1f} models/s  "
          f"held-out acc {heldout_accuracy(margins[: args.plain], masks[: args.plain]):.4f} "
          f"(all {args.models}: {heldout_accuracy(margins, masks):.4f})")
    print(f"max |margin difference| vs plain loop on the same models: "
          f"{np.abs(margins[: args.plain] - plain_margins).max():.2e}")
    print(f"speed-up                 : {scdm_rate / plain_rate:9.1f}x")
    print(f"torch.mm ceiling         : {ceiling / 1e9:9.1f} GFLOP/s; scdm reaches "
          f"{scdm_rate * flops_per_model / 1e9:.1f} GFLOP/s = "
          f"{100 * scdm_rate * flops_per_model / ceiling:.0f}% of it "
          f"({flops_per_model / 1e9:.3f} GFLOP per model, 6·params per sample-step)")


if __name__ == "__main__":
    main()
