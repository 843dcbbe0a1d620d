"""CIFAR-10 reference pipeline: datamodels of ResNet-9s on binary CIFAR (vehicles vs animals).

Steps, each resumable (stores on disk under ``--out``):

1. read the official python batches from ``--data`` (``--download`` fetches and checks them);
   pick ``--n-train`` training images (a seeded random subset) and the first ``--n-targets``
   test images as targets; labels become 1 = vehicle, 0 = animal;
2. train ``--n-models`` ResNet-9s, each on a balanced ``--alpha`` subset of the training images,
   into an scdm store (``OUT/store``: masks, margins on the targets, accuracy), here or as Ray
   tasks (``--backend ray``); any ``scdm train --store OUT/store --models A:B`` worker can help;
3. fit one LASSO path per target (``scdm.regression.LassoPath``) → ``OUT/datamodels.pt``;
4. train ``--lds-models`` models on fresh subsets (their own seed) → LDS per target;
5. figures: ``influencers.png`` (most positive / negative training images of a few targets)
   and ``embedding_pca.png`` (PCA of the datamodel embeddings, coloured by CIFAR class);
   ``summary.json`` with models/s, accuracy, held-out fit quality and LDS.

    python workflows/cifar10/run.py --data DIR --n-models 10000 --alpha 0.5 --device auto --out DIR
    python workflows/cifar10/run.py --smoke --out /tmp/cifar-smoke      # CPU, generated data

``--smoke`` writes a small generated data set in the official format to ``OUT/data``, reads it
back through the same loader and runs every step with a narrow ResNet-9 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SMOKE = {"n_train": 100, "n_targets": 50, "n_models": 200, "lds_models": 50, "width": 4,
         "epochs": 3, "batch_size": 50, "lr": 0.2, "lr_peak_epoch": 1.0, "device": "cpu"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder with cifar-10-batches-py (or that folder)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the official archive into --data first (MD5-checked)")
    parser.add_argument("--out", required=True, help="output folder (stores, figures, summary)")
    parser.add_argument("--n-models", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="share of the training images each model trains on")
    parser.add_argument("--n-train", type=int, default=10_000,
                        help="training images the masks range over (max 50,000)")
    parser.add_argument("--n-targets", type=int, default=1_000,
                        help="test images whose margins are recorded (max 10,000)")
    parser.add_argument("--lds-models", type=int, default=200,
                        help="evaluation models on fresh subsets (0: skip the LDS)")
    parser.add_argument("--width", type=int, default=64, help="ResNet-9 width (64: original)")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.5, help="peak of the one-cycle schedule")
    parser.add_argument("--lr-peak-epoch", type=float, default=2.0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="threads per CPU worker; part of the recipe (see ResNetConfig)")
    parser.add_argument("--models-at-once", type=int, default=None,
                        help="models per grouped network on a GPU (default 4)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--ray-address", help="Ray cluster to join (default: start one)")
    parser.add_argument("--num-gpus-per-task", type=float, default=0,
                        help="Ray: GPUs per task; 0.5 puts two tasks on each GPU")
    parser.add_argument("--task-size", type=int, default=64, help="Ray: models per task")
    parser.add_argument("--examples", type=int, default=4, help="targets in influencers.png")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="small generated data, narrow network, CPU (about a minute)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.smoke:
        explicit = {a.lstrip("-").split("=")[0].replace("-", "_") for a in (argv or sys.argv[1:])
                    if a.startswith("--")}
        for key, value in SMOKE.items():
            if key not in explicit:
                setattr(args, key, value)
    elif not args.data:
        parser.error("--data DIR is required (or --smoke for generated data).")
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad settings before any data is read or model trained."""
    from scdm.masks import check_alpha

    check_alpha(args.alpha)
    for name in ("n_models", "n_train", "n_targets", "width", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1.")
    if args.lds_models < 0 or (0 < args.lds_models < 3):
        raise SystemExit("--lds-models must be 0 (skip) or at least 3.")
    if args.n_models < 2 * 10:
        raise SystemExit("--n-models must be at least 20 for the LASSO fit to hold out "
                         "validation models.")


def load_data(args: argparse.Namespace, out: Path):
    from scdm.vision import download_cifar10, load_cifar10, synthetic_cifar10, write_cifar10

    if args.smoke:
        data_dir = out / "data"
        if not (data_dir / "cifar-10-batches-py").is_dir():
            write_cifar10(data_dir, synthetic_cifar10(n_train=250, n_test=100,
                                                      random_state=args.random_state))
    else:
        data_dir = Path(args.data)
        if args.download:
            download_cifar10(data_dir, progress=not args.quiet)
    return load_cifar10(data_dir)


def choose_images(data, args: argparse.Namespace):
    """A seeded subset of the training images and the first test images, binary labels."""
    from scdm.vision import binary_labels

    n_train, n_targets = len(data.train_labels), len(data.test_labels)
    if args.n_train > n_train or args.n_targets > n_targets:
        raise SystemExit(f"asked for {args.n_train} training and {args.n_targets} target "
                         f"images; the data has {n_train} and {n_targets}.")
    rng = np.random.default_rng(args.random_state)
    train_index = np.sort(rng.permutation(n_train)[: args.n_train])
    target_index = np.arange(args.n_targets)
    return {"train_index": train_index, "target_index": target_index,
            "train_images": data.train_images[train_index],
            "train_labels": binary_labels(data.train_labels[train_index], data.label_names),
            "train_classes": data.train_labels[train_index],
            "target_images": data.test_images[target_index],
            "target_labels": binary_labels(data.test_labels[target_index], data.label_names),
            "target_classes": data.test_labels[target_index], "label_names": data.label_names}


def train(store, recipe, n_models: int, args: argparse.Namespace, desc: str) -> dict:
    """Fill ``store``'s models; models/s counts the models this call trained."""
    from scdm.workers import LocalBackend, RayBackend, fill_store

    before = store.n_completed
    start = time.perf_counter()
    backend = (LocalBackend(chunk_size=args.models_at_once) if args.backend == "local" else
               RayBackend(address=args.ray_address, num_gpus_per_task=args.num_gpus_per_task,
                          task_size=args.task_size, chunk_size=args.models_at_once))
    fill_store(store, recipe, models=(0, n_models), backend=backend, device=args.device,
               progress=not args.quiet, desc=desc)
    seconds = time.perf_counter() - start
    trained = store.n_completed - before
    return {"models": n_models, "trained_now": trained, "seconds": round(seconds, 2),
            "models_per_second": round(trained / seconds, 3) if trained else None}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_args(args)
    import scdm
    from scdm._seeding import LDS_PURPOSE, derived_seed
    from scdm.ensemble import resolve_device
    from scdm.evaluation import linear_datamodeling_score
    from scdm.io import write_datamodels_pt
    from scdm.regression import LassoPath
    from scdm.store import ModelStore
    from scdm.vision import (
        ImageRecipe,
        ResNetConfig,
        create_image_store,
        embedding_pca,
        influencer_grid,
    )
    from scdm.workers import as_backend

    as_backend(args.backend)  # Ray missing: an error before any work
    scdm.settings.verbosity = 0 if args.quiet else 1
    config = ResNetConfig(width=args.width, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, lr_peak_epoch=args.lr_peak_epoch,
                          cpu_threads=args.cpu_threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = choose_images(load_data(args, out), args)
    np.savez(out / "images.npz", train_index=images["train_index"],
             target_index=images["target_index"])
    recipe = ImageRecipe(images["train_images"], images["train_labels"],
                         images["target_images"], images["target_labels"], args.alpha, config,
                         args.random_state)
    summary: dict = {"device": str(resolve_device(args.device)), "backend": args.backend,
                     "alpha": args.alpha, "n_train": args.n_train, "n_targets": args.n_targets,
                     "config": config.to_dict(), "smoke": args.smoke}

    store = create_image_store(out / "store", recipe, args.n_models)
    summary["training"] = train(store, recipe, args.n_models, args, "ResNet-9 models")
    store = ModelStore.open(store.path)
    accuracy = np.asarray(store.field("heldout_accuracy"), dtype=np.float64)
    summary["accuracy"] = {"mean": float(accuracy.mean()), "sd": float(accuracy.std())}

    start = time.perf_counter()
    lasso = LassoPath(device=args.device, verbose=not args.quiet,
                      random_state=args.random_state).fit(store.masks, store.margins)
    write_datamodels_pt(lasso, out / "datamodels.pt")
    weights = lasso.coef_.T  # targets × training images
    summary["fit"] = {"seconds": round(time.perf_counter() - start, 2),
                      "validation_correlation": float(np.nanmean(lasso.val_corr_)),
                      "nonzero_per_target": float((weights != 0).sum(axis=1).mean())}

    if args.lds_models:
        lds_recipe = recipe.with_random_state(
            derived_seed(args.random_state, LDS_PURPOSE, args.random_state))
        lds_store = create_image_store(out / "lds_store", lds_recipe, args.lds_models)
        timing = train(lds_store, lds_recipe, args.lds_models, args, "LDS models")
        lds_store = ModelStore.open(lds_store.path)
        lds = linear_datamodeling_score(weights, lds_store.masks, lds_store.margins,
                                        rows="targets", intercept=lasso.intercept_)
        np.save(out / "lds.npy", lds)
        summary["lds"] = {"mean": float(np.nanmean(lds)), "models": args.lds_models, **timing}

    names = images["label_names"]
    target_names = [names[c] for c in images["target_classes"]]
    train_names = [names[c] for c in images["train_classes"]]
    examples = np.argsort(-np.abs(weights).sum(axis=1))[: args.examples]
    fig = influencer_grid(weights, images["train_images"], images["target_images"], examples,
                          train_names=train_names, target_names=target_names)
    fig.savefig(out / "influencers.png", dpi=120)
    ax = embedding_pca(weights, images["target_classes"], names)
    ax.figure.savefig(out / "embedding_pca.png", dpi=120, bbox_inches="tight")

    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    train_info = summary["training"]
    rate = train_info["models_per_second"]
    print(f"device {summary['device']} ({args.backend}); {args.n_models} models "
          f"({train_info['trained_now']} trained now"
          + (f", {rate:.2f} models/s" if rate else "") + ")")
    print(f"model accuracy on the {args.n_targets} targets: {accuracy.mean():.3f} "
          f"± {accuracy.std():.3f}")
    print(f"datamodels: validation correlation {summary['fit']['validation_correlation']:.3f}, "
          f"{summary['fit']['nonzero_per_target']:.1f} non-zero weights per target")
    if args.lds_models:
        print(f"LDS on {args.lds_models} fresh models: {summary['lds']['mean']:.3f}")
    print(f"outputs in {out}")
    return summary


if __name__ == "__main__":
    main()
