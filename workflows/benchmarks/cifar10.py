"""ResNet-9 models per second on binary CIFAR: grouped networks, mixed precision, plain loop.

Every row trains the same models (same masks, initialisations, data orders and flips) with
``scdm.vision.ResNetEnsembleTrainer`` and reports models/s, training images/s and the models'
accuracy on the targets:

- ``plain``: one float32 model at a time with all CPU threads — what a hand-written PyTorch
  loop does (the reference for the ratios);
- ``recipe``: the defaults (CUDA: bfloat16 autocast + channels-last, ``models_at_once`` models
  per grouped network; CPU: one model at a time on ``cpu_threads=1``, reproducible across
  workers);
- ``grouped k``: ``k`` models per grouped network (on CPU too, to show why CPU does not group).

Without ``--data`` the images are generated (``scdm.vision.synthetic_cifar10``, same shapes):
speed does not depend on pixel values, accuracy does, so quote accuracy from ``--data`` runs.

    python workflows/benchmarks/cifar10.py [--device auto] [--data DIR] [--group-sizes 1,2,4,8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import stable_allocator

from scdm.ensemble import resolve_device
from scdm.masks import MaskSampler
from scdm.vision import (
    ResNetConfig,
    ResNetEnsembleTrainer,
    binary_labels,
    load_cifar10,
    synthetic_cifar10,
)


def measure(images, config: ResNetConfig, device, n_models: int, models_at_once: int | None,
            alpha: float) -> dict:
    trainer = ResNetEnsembleTrainer(*images, config, device=device,
                                    models_at_once=models_at_once)
    masks = MaskSampler(images[1], alpha, random_state=0).sample(np.arange(n_models))
    trainer.train(masks[:1], [0])  # warm-up: kernels, allocator
    chunk = models_at_once or (n_models if device.type == "cuda" else 1)
    start = time.perf_counter()
    accuracy = []
    for a in range(0, n_models, chunk):
        result = trainer.train(masks[a : a + chunk], np.arange(a, min(a + chunk, n_models)))
        accuracy.append(result.heldout_accuracy)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    seen = n_models * int(masks[0].sum()) * config.epochs
    return {"models/s": n_models / seconds, "images/s": seen / seconds,
            "accuracy": float(np.concatenate(accuracy).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", help="cifar-10-batches-py folder (default: generated images)")
    parser.add_argument("--n-train", type=int, default=None,
                        help="training images (default: 10,000 on CUDA, 1,000 on CPU)")
    parser.add_argument("--n-targets", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--width", type=int, default=None, help="default: 64 CUDA, 16 CPU")
    parser.add_argument("--epochs", type=int, default=None, help="default: 16 CUDA, 4 CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 512 / 100")
    parser.add_argument("--models", type=int, default=None,
                        help="models per row (default: 8 on CUDA, 4 on CPU)")
    parser.add_argument("--group-sizes", default=None, help="default: 2,4,8 CUDA; 2,4 CPU")
    args = parser.parse_args()
    stable_allocator()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    n_train = args.n_train or (10_000 if cuda else 1_000)
    width = args.width or (64 if cuda else 16)
    epochs = args.epochs or (16 if cuda else 4)
    batch = args.batch_size or (512 if cuda else 100)
    n_models = args.models or (8 if cuda else 4)
    groups = [int(k) for k in (args.group_sizes or ("2,4,8" if cuda else "2,4")).split(",")]

    data = load_cifar10(args.data) if args.data else synthetic_cifar10(
        n_train=n_train, n_test=args.n_targets, random_state=0)
    images = (data.train_images[:n_train], binary_labels(data.train_labels[:n_train]),
              data.test_images[: args.n_targets], binary_labels(data.test_labels[: args.n_targets]))
    config = ResNetConfig(width=width, epochs=epochs, batch_size=batch,
                          lr_peak_epoch=min(2.0, epochs / 4))
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; {'CIFAR-10' if args.data else 'generated'} images, {n_train} "
          f"training × α={args.alpha}, {args.n_targets} targets; ResNet-9 width {width}, "
          f"{epochs} epochs, batch {batch}; {n_models} models per row")

    plain = ResNetConfig(**{**config.to_dict(), "mixed_precision": False, "cpu_threads": None})
    rows = {"plain (fp32, 1 at a time)": measure(images, plain, device, n_models, 1, args.alpha)}
    rows["recipe defaults"] = measure(images, config, device, n_models, None, args.alpha)
    grouped = config if cuda else plain
    for k in groups:
        rows[f"grouped {k}"] = measure(images, grouped, device, max(n_models, k), k, args.alpha)
    reference = rows["plain (fp32, 1 at a time)"]["models/s"]
    print(f"{'':28s} {'models/s':>9s} {'images/s':>9s} {'× plain':>8s} {'accuracy':>9s}")
    for label, row in rows.items():
        print(f"{label:28s} {row['models/s']:9.3f} {row['images/s']:9.0f} "
              f"{row['models/s'] / reference:8.2f} {row['accuracy']:9.3f}")


if __name__ == "__main__":
    main()
