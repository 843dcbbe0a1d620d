"""``scdm fit``: a store's datamodels → ``datamodels.pt`` (fast_l1's convention), for all
targets or a range; ``--merge`` joins the ranges."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ._common import tl_default

# scdm fit's settings are tl.fit_datamodels' (their defaults exist once) and LassoPath's
SOLVER = ("n_lambdas", "eps", "val_fraction", "tol", "path_tol", "min_rows", "precompute",
          "memory_budget", "random_state")


def add_parser(sub) -> None:
    fit = sub.add_parser("fit", help="fit a store's datamodels → datamodels.pt (fast_l1's "
                         "convention; λ chosen on held-out models where the targets are the "
                         "training samples)")
    fit.add_argument("--store", help="store directory (scdm's, or one MadryLab's "
                     "initialize_store and workers wrote)")
    fit.add_argument("--out", help="default STORE/datamodels.pt (STORE/datamodels.A-B.pt "
                     "with --targets)")
    fit.add_argument("--targets", help="START:STOP: fit only these targets (split the work "
                     "like fast_l1's target_start_ind/target_end_ind; join with --merge)")
    fit.add_argument("--merge", nargs="+", metavar="FILE", help="join the --targets outputs "
                     "of one store into --out")
    fit.add_argument("--targets-are-training", choices=("auto", "yes", "no"), default="auto",
                     help="whether target j is training sample j (margins on the training "
                     "samples themselves); auto: as the store's recipe says (a store without "
                     "one must say)")
    fit.add_argument("--heldout", action="store_true", help="fit each in-sample target only "
                     "on the models that did not train on it")
    fit.add_argument("--n-lambdas", type=int, help="λ values on the path (fast_l1's k)")
    fit.add_argument("--eps", type=float, help="λ_min / λ_max")
    fit.add_argument("--val-fraction", type=float, help="share of models that choose λ")
    fit.add_argument("--val-rows", help="START:STOP: these models (store indices) choose λ "
                     "instead (fast_l1's num_train/num_val)")
    fit.add_argument("--tol", type=float, help="duality-gap tolerance at the chosen λ")
    fit.add_argument("--min-rows", type=int, help="fewest models a target may be fitted on")
    fit.add_argument("--device", default="auto")
    fit.add_argument("--allow-incomplete", action="store_true")
    fit.add_argument("--quiet", action="store_true")


def _merge(args: argparse.Namespace) -> int:
    from ..io import merge_datamodels_pt

    if args.out is None:
        raise ValueError("scdm fit --merge needs --out FILE.")
    out = merge_datamodels_pt(args.merge, args.out)
    print(f"merged {len(args.merge)} files into {out}")
    return 0


def execute(args: argparse.Namespace) -> int:
    if args.merge:
        return _merge(args)
    if args.store is None:
        raise ValueError("scdm fit needs --store (or --merge FILE ... --out FILE).")
    from pathlib import Path

    from .._memmap import RowSubset
    from ..io import write_datamodels_pt
    from ..regression import LassoPath, fit_datamodels_path
    from ..store import ModelStore
    from ..workers import parse_range, targets_are_training_samples

    store = ModelStore.open(args.store)
    completed = store.completed_indices()
    if completed.size < store.n_models and not args.allow_incomplete:
        raise ValueError(f"the store has {completed.size} of {store.n_models} models complete; "
                         "finish it with scdm train, or pass --allow-incomplete.")
    for name in ("masks", "margins"):
        if name not in store.fields:
            raise ValueError(f"the store has no {name!r} field (fields: {store.fields}); scdm "
                             "fit regresses margins on masks.")
    n_targets = store.margins.shape[1]
    t0, t1 = parse_range(args.targets, n_targets, "--targets") if args.targets else (
        0, n_targets)
    in_sample = targets_are_training_samples(
        args.store, store.masks.shape[1], n_targets,
        {"auto": None, "yes": True, "no": False}[args.targets_are_training])
    given = {name: getattr(args, name, None) for name in SOLVER}
    params: dict[str, Any] = {
        name: tl_default("fit_datamodels", name) if value is None else value
        for name, value in given.items()}
    model = LassoPath(**params, device=args.device, verbose=not args.quiet)
    if args.val_rows:  # a range of the store's model indices, as fast_l1's num_train/num_val
        v0, v1 = parse_range(args.val_rows, store.n_models, "--val-rows")
        model.set_params(val_rows=np.flatnonzero((completed >= v0) & (completed < v1)))
    # completed rows and the target range are read from the files in chunks, never copied
    X = store.masks if completed.size == store.n_models else RowSubset(store.masks, completed)
    margins = store.margins if (t0, t1) == (0, n_targets) else store.margins[:, t0:t1]
    Y = margins if completed.size == store.n_models else RowSubset(margins, completed)
    model = fit_datamodels_path(model, X, Y, targets_are_training=in_sample,
                                heldout=args.heldout, target_offset=t0 if in_sample else None)
    default = "datamodels.pt" if (t0, t1) == (0, n_targets) else f"datamodels.{t0}-{t1}.pt"
    out = Path(args.out) if args.out else Path(args.store) / default
    write_datamodels_pt(model, out, extra={"target_start": t0, "target_stop": t1,
                                           "n_targets_total": n_targets})
    print(f"datamodels of targets [{t0}, {t1}) from {X.shape[0]} models written to {out}; "
          f"mean {'held-out' if in_sample else 'validation'} correlation "
          f"{float(np.nanmean(model.val_corr_)):.3f}")
    return 0
