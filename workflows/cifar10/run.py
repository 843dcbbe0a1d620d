"""CIFAR-10 reference pipeline: datamodels and TRAK of ResNet-9s on binary CIFAR.

Two binary tasks: ``--task vehicles`` (vehicles vs animals over all ten classes, the
datamodels tutorial's) and ``--task cifar2`` (cat vs dog, TRAK's quickstart; the default of
``--method trak`` and ``both``). Steps, each resumable (stores on disk under ``--out``):

1. read the official python batches from ``--data`` (``--download`` fetches and checks them);
   pick ``--n-train`` training images (a seeded random subset of the task's classes) and the
   first ``--n-targets`` test images of those classes as targets;
2. ``--method datamodels`` (or ``both``): train ``--n-models`` ResNet-9s, each on a balanced
   ``--alpha`` subset of the training images, into an scdm store (``OUT/store``: masks,
   margins on the targets, accuracy), here or as Ray tasks (``--backend ray``); any
   ``scdm train --store OUT/store --models A:B`` worker can help; fit one LASSO path per
   target (``scdm.regression.LassoPath``) → ``OUT/datamodels.pt``;
3. ``--method trak`` (or ``both``): the first ``--checkpoints`` models of the same store are
   TRAK's checkpoints (their parameters kept in ``OUT/store/checkpoints``; a model the store
   already has is retrained from its seed and checked against its margins); every training
   image is featurized and the targets scored with :class:`scdm.trak.TRAKer` (``OUT/trak``,
   one folder per ``--proj-dim`` and ``--damping``) → ``OUT/trak_scores.npy`` (training
   images × targets);
4. train ``--lds-models`` models on fresh subsets (their own seed) → LDS per target of each
   method, on the same evaluation models;
5. figures: ``influencers.png`` / ``trak_influencers.png`` (most positive / negative training
   images of a few targets) and ``embedding_pca.png`` (PCA of the datamodel embeddings);
   ``summary.json`` with models/s, accuracy, held-out fit quality, LDS and timings.

``--flip-fraction F`` flips the labels of a seeded share F of the training images (planted
annotation errors): with TRAK, the training images are also scored against themselves and
ranked by self-influence, and the summary gives the AUROC of finding the flipped ones.

    python workflows/cifar10/run.py --data DIR --n-models 10000 --alpha 0.5 --device auto --out DIR
    python workflows/cifar10/run.py --data DIR --method trak --checkpoints 20 --out DIR
    python workflows/cifar10/run.py --smoke --out /tmp/cifar-smoke      # CPU, generated data
    python workflows/cifar10/run.py --smoke --method both --out /tmp/cifar2-smoke

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
         "epochs": 3, "batch_size": 50, "lr": 0.2, "lr_peak_epoch": 1.0, "device": "cpu",
         "checkpoints": 8, "proj_dim": 64}
# generated images per task: cat vs dog needs more, as it keeps two classes of ten
SMOKE_IMAGES = {"vehicles": {"n_train": 250, "n_test": 100},
                "cifar2": {"n_train": 600, "n_test": 300}}
CIFAR2 = ("cat", "dog")  # TRAK's quickstart task: label 0 = cat, 1 = dog


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder with cifar-10-batches-py (or that folder)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the official archive into --data first (MD5-checked)")
    parser.add_argument("--out", required=True, help="output folder (stores, figures, summary)")
    parser.add_argument("--method", choices=("datamodels", "trak", "both"),
                        default="datamodels")
    parser.add_argument("--task", choices=("vehicles", "cifar2"), default=None,
                        help="vehicles vs animals, or cat vs dog (default: cifar2 with TRAK)")
    parser.add_argument("--n-models", type=int, default=10_000,
                        help="datamodels: models trained on --alpha subsets")
    parser.add_argument("--checkpoints", type=int, default=20,
                        help="TRAK: models whose gradients are used (the store's first ones)")
    parser.add_argument("--proj-dim", type=int, default=2048, help="TRAK: projection dimension")
    parser.add_argument("--damping", type=float, default=None,
                        help="TRAK: ridge relative to the mean diagonal of the gradients' Gram "
                             "matrix (default none: traker's)")
    parser.add_argument("--flip-fraction", type=float, default=0.0,
                        help="flip the labels of this share of the training images (planted "
                             "annotation errors, found by TRAK self-influence)")
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
    if args.task is None:
        args.task = "vehicles" if args.method == "datamodels" else "cifar2"
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
    if args.method != "trak" and args.n_models < 2 * 10:
        raise SystemExit("--n-models must be at least 20 for the LASSO fit to hold out "
                         "validation models.")
    if args.method != "datamodels":
        if args.checkpoints < 1 or args.proj_dim < 1:
            raise SystemExit("--checkpoints and --proj-dim must be at least 1.")
        if args.damping is None and args.proj_dim > args.n_train:
            raise SystemExit(f"--proj-dim {args.proj_dim} exceeds --n-train {args.n_train}: "
                             "undamped TRAK's Gram matrix would be singular. Lower --proj-dim "
                             "or pass --damping (e.g. 0.1).")
    if not 0 <= args.flip_fraction < 0.5:
        raise SystemExit(f"--flip-fraction must lie in [0, 0.5), got {args.flip_fraction}.")
    if args.flip_fraction and args.method == "datamodels":
        raise SystemExit("--flip-fraction ranks the flipped images by TRAK self-influence; use "
                         "--method trak or both.")


def load_data(args: argparse.Namespace, out: Path):
    from scdm.vision import download_cifar10, load_cifar10, synthetic_cifar10, write_cifar10

    if args.smoke:
        data_dir = out / ("data" if args.task == "vehicles" else f"data_{args.task}")
        if not (data_dir / "cifar-10-batches-py").is_dir():
            write_cifar10(data_dir, synthetic_cifar10(**SMOKE_IMAGES[args.task],
                                                      random_state=args.random_state))
    else:
        data_dir = Path(args.data)
        if args.download:
            download_cifar10(data_dir, progress=not args.quiet)
    return load_cifar10(data_dir)


def task_labels(classes: np.ndarray, label_names, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Which images belong to the task, and their binary labels."""
    from scdm.vision import binary_labels

    if task == "vehicles":
        return np.ones(len(classes), bool), binary_labels(classes, label_names)
    codes = [label_names.index(name) for name in CIFAR2]
    keep = np.isin(classes, codes)
    return keep, (np.asarray(classes) == codes[1]).astype(np.int64)


def choose_images(data, args: argparse.Namespace):
    """A seeded subset of the task's training images and its first test images; binary
    labels, of which a seeded ``--flip-fraction`` of the training ones are flipped."""
    train_pool, train_labels = task_labels(data.train_labels, data.label_names, args.task)
    test_pool, test_labels = task_labels(data.test_labels, data.label_names, args.task)
    train_pool, test_pool = np.flatnonzero(train_pool), np.flatnonzero(test_pool)
    if args.n_train > train_pool.size or args.n_targets > test_pool.size:
        raise SystemExit(f"asked for {args.n_train} training and {args.n_targets} target "
                         f"images; the data has {train_pool.size} and {test_pool.size} of "
                         f"task {args.task!r}.")
    rng = np.random.default_rng(args.random_state)
    train_index = np.sort(train_pool[rng.permutation(train_pool.size)[: args.n_train]])
    target_index = test_pool[: args.n_targets]
    labels = train_labels[train_index]
    flipped = np.zeros(args.n_train, bool)
    if args.flip_fraction:
        flip_rng = np.random.default_rng([args.random_state, 7])  # not the subset's stream
        flipped[flip_rng.permutation(args.n_train)[: round(args.flip_fraction * args.n_train)]] \
            = True
        labels = np.where(flipped, 1 - labels, labels)
    return {"train_index": train_index, "target_index": target_index, "flipped": flipped,
            "train_images": data.train_images[train_index], "train_labels": labels,
            "train_classes": data.train_labels[train_index],
            "target_images": data.test_images[target_index],
            "target_labels": test_labels[target_index],
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


def fit_datamodels(store, args: argparse.Namespace, out: Path) -> tuple[dict, object]:
    """One LASSO path per target over the store's models → ``OUT/datamodels.pt``."""
    from scdm.io import write_datamodels_pt
    from scdm.regression import LassoPath

    start = time.perf_counter()
    lasso = LassoPath(device=args.device, verbose=not args.quiet,
                      random_state=args.random_state).fit(store.masks, store.margins)
    write_datamodels_pt(lasso, out / "datamodels.pt")
    weights = lasso.coef_.T  # targets × training images
    return {"seconds": round(time.perf_counter() - start, 2),
            "validation_correlation": float(np.nanmean(lasso.val_corr_)),
            "nonzero_per_target": float((weights != 0).sum(axis=1).mean())}, lasso


def run_trak(store, recipe, images: dict, args: argparse.Namespace, out: Path) -> tuple[dict, dict]:
    """TRAK scores of the targets from the store's first ``--checkpoints`` models; with
    planted flips, also the self-influence of every training image. Returns (summary, arrays)."""
    from sklearn.metrics import roc_auc_score

    from scdm.vision import store_checkpoints, trak_scores, trak_self_influence

    start = time.perf_counter()
    checkpoints = store_checkpoints(store, recipe, range(args.checkpoints), device=args.device,
                                    progress=not args.quiet)
    trained = time.perf_counter()
    options = {"proj_dim": args.proj_dim, "damping": args.damping, "device": args.device,
               "projector_seed": args.random_state, "verbose": not args.quiet}
    # one save_dir per projection and ridge: features of other settings are kept, not mixed
    save_dir = out / "trak" / f"proj{args.proj_dim}-damping{args.damping}"
    scores = trak_scores(checkpoints, recipe, save_dir, **options)
    np.save(out / "trak_scores.npy", scores)
    summary = {"checkpoints": args.checkpoints, "proj_dim": args.proj_dim,
               "damping": args.damping, "checkpoint_seconds": round(trained - start, 2),
               "seconds": round(time.perf_counter() - trained, 2)}
    arrays = {"scores": scores}
    if args.flip_fraction:
        # each training image's score on itself: a mislabeled image is one the models must
        # memorise, so its own gradient dominates its margin (TRAK's data cleaning)
        self_influence = trak_self_influence(checkpoints, recipe, save_dir, **options)
        np.save(out / "self_influence.npy", self_influence)
        flipped = images["flipped"]
        summary["label_issues"] = {
            "flipped": int(flipped.sum()),
            "auroc_self_influence": float(roc_auc_score(flipped, self_influence)),
            "precision_at_flipped": float(flipped[np.argsort(-self_influence)[: flipped.sum()]]
                                          .mean())}
        arrays["self_influence"] = self_influence
    return summary, arrays


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_args(args)
    import scdm
    from scdm._seeding import LDS_PURPOSE, derived_seed
    from scdm.ensemble import resolve_device
    from scdm.evaluation import linear_datamodeling_score
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
             target_index=images["target_index"], flipped=images["flipped"])
    recipe = ImageRecipe(images["train_images"], images["train_labels"],
                         images["target_images"], images["target_labels"], args.alpha, config,
                         args.random_state)
    use_datamodels, use_trak = args.method != "trak", args.method != "datamodels"
    summary: dict = {"device": str(resolve_device(args.device)), "backend": args.backend,
                     "method": args.method, "task": args.task, "alpha": args.alpha,
                     "n_train": args.n_train, "n_targets": args.n_targets,
                     "config": config.to_dict(), "smoke": args.smoke}

    n_models = max(args.n_models if use_datamodels else 0, args.checkpoints if use_trak else 0)
    store = create_image_store(out / "store", recipe, n_models)
    weights: dict[str, np.ndarray] = {}  # method → targets × training images
    intercepts: dict[str, np.ndarray | None] = {}
    if use_datamodels:
        summary["training"] = train(store, recipe, args.n_models, args, "ResNet-9 models")
        store = ModelStore.open(store.path)
        summary["fit"], lasso = fit_datamodels(store, args, out)
        weights["datamodels"], intercepts["datamodels"] = lasso.coef_.T, lasso.intercept_
    if use_trak:
        summary["trak"], trak = run_trak(store, recipe, images, args, out)
        weights["trak"], intercepts["trak"] = trak["scores"].T, None
        store = ModelStore.open(store.path)
    done = store.completed
    accuracy = np.asarray(store.field("heldout_accuracy"), dtype=np.float64)[done]
    summary["accuracy"] = {"mean": float(accuracy.mean()), "sd": float(accuracy.std())}
    if len(weights) == 2:  # how far the two attributions agree, target by target
        a, b = weights["datamodels"], weights["trak"]
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        corr = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                           np.finfo(float).tiny)
        summary["agreement"] = {"mean_correlation": float(corr.mean())}

    if args.lds_models:
        lds_recipe = recipe.with_random_state(
            derived_seed(args.random_state, LDS_PURPOSE, args.random_state))
        lds_store = create_image_store(out / "lds_store", lds_recipe, args.lds_models)
        timing = train(lds_store, lds_recipe, args.lds_models, args, "LDS models")
        lds_store = ModelStore.open(lds_store.path)
        for method, w in weights.items():
            lds = linear_datamodeling_score(w, lds_store.masks, lds_store.margins,
                                            rows="targets", intercept=intercepts[method])
            np.save(out / ("lds.npy" if method == "datamodels" else f"lds_{method}.npy"), lds)
            entry = {"mean": float(np.nanmean(lds)), "models": args.lds_models, **timing}
            if method == "datamodels":
                summary["lds"] = entry
            else:
                summary[method]["lds"] = entry

    names = images["label_names"]
    target_names = [names[c] for c in images["target_classes"]]
    train_names = [names[c] + ("*" if f else "") for c, f in
                   zip(images["train_classes"], images["flipped"], strict=True)]
    for method, w in weights.items():
        examples = np.argsort(-np.abs(w).sum(axis=1))[: args.examples]
        fig = influencer_grid(w, images["train_images"], images["target_images"], examples,
                              train_names=train_names, target_names=target_names)
        fig.savefig(out / ("influencers.png" if method == "datamodels" else
                           f"{method}_influencers.png"), dpi=120)
    if use_datamodels:
        ax = embedding_pca(weights["datamodels"], images["target_classes"], names)
        ax.figure.savefig(out / "embedding_pca.png", dpi=120, bbox_inches="tight")

    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, args, out)
    return summary


def print_summary(summary: dict, args: argparse.Namespace, out: Path) -> None:
    print(f"device {summary['device']} ({args.backend}); task {args.task}, {args.n_train} "
          f"training images, {args.n_targets} targets")
    print(f"model accuracy on the targets: {summary['accuracy']['mean']:.3f} "
          f"± {summary['accuracy']['sd']:.3f}")
    if "training" in summary:
        info = summary["training"]
        rate = info["models_per_second"]
        print(f"datamodels: {args.n_models} models ({info['trained_now']} trained now"
              + (f", {rate:.2f} models/s" if rate else "") + "), validation correlation "
              f"{summary['fit']['validation_correlation']:.3f}, "
              f"{summary['fit']['nonzero_per_target']:.1f} non-zero weights per target")
    if "trak" in summary:
        info = summary["trak"]
        print(f"TRAK: {info['checkpoints']} checkpoints ({info['checkpoint_seconds']:.1f} s), "
              f"proj_dim {info['proj_dim']}, scores in {info['seconds']:.1f} s")
        if "label_issues" in info:
            issues = info["label_issues"]
            print(f"planted flips: {issues['flipped']}; self-influence AUROC "
                  f"{issues['auroc_self_influence']:.3f}, precision at the flipped count "
                  f"{issues['precision_at_flipped']:.3f}")
    if "agreement" in summary:
        print(f"datamodels vs TRAK, mean per-target correlation: "
              f"{summary['agreement']['mean_correlation']:.3f}")
    if args.lds_models:
        for name, entry in (("datamodels", summary.get("lds")),
                            ("TRAK", summary.get("trak", {}).get("lds"))):
            if entry:
                print(f"LDS of {name} on {args.lds_models} fresh models: {entry['mean']:.3f}")
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
