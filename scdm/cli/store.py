"""``scdm store init``: a store that workers fill (``scdm train`` for the built-in recipe,
``scdm worker`` for a user's ``main()``)."""

from __future__ import annotations

import argparse

from ._common import fill_defaults


def add_parser(sub) -> None:
    store_cmd = sub.add_parser("store", help="create a store for workers")
    store_sub = store_cmd.add_subparsers(dest="store_command", required=True)
    init = store_sub.add_parser("init", help="write a store and its training recipe from .h5ad, "
                                "or an empty store from MadryLab's spec.json (--spec)")
    init.add_argument("input", nargs="?", help=".h5ad file (not with --spec)")
    init.add_argument("--store", required=True, help="store directory (shared filesystem)")
    init.add_argument("--spec", help="MadryLab spec.json ({num_models, schema}): a store for "
                      "scdm worker --main-import (a user's training function)")
    init.add_argument("--label-key")
    init.add_argument("--use-rep", help="default: tl.train_models' (auto)")
    init.add_argument("--group-key")
    init.add_argument("--stratify-key")
    init.add_argument("--alpha", type=float, default=None,
                      help="default: tl.train_models'")
    init.add_argument("--n-models", type=int, default=None)
    init.add_argument("--hidden", default=None, help="hidden widths, e.g. 64 or 128,64; '' = "
                      "logistic regression (default: scdm.ensemble.TrainConfig's)")
    init.add_argument("--epochs", type=int, default=None, help="default: TrainConfig's")
    init.add_argument("--weight-decay", type=float, default=None,
                      help="default: TrainConfig's")
    init.add_argument("--random-state", type=int, default=0)


def _from_spec(args: argparse.Namespace) -> int:
    from ..store import ModelStore

    if args.input is not None:
        raise ValueError("--spec makes a store for a user's main(); it takes no .h5ad INPUT.")
    store = ModelStore.from_spec(args.store, args.spec)
    print(f"store {store.path}: {store.n_completed}/{store.n_models} models complete, fields "
          f"{store.fields}. Fill it with: scdm worker --store {store.path} --main-import "
          "MODULE[:FUNC] --models START:STOP [-- ARGS]")
    return 0


def execute(args: argparse.Namespace) -> int:
    if args.spec is not None:
        return _from_spec(args)
    if args.input is None or args.label_key is None:
        raise ValueError("scdm store init needs an .h5ad INPUT and --label-key (a built-in "
                         "recipe), or --spec spec.json (MadryLab's spec; fill it with scdm "
                         "worker --main-import).")
    import anndata as ad

    import scdm

    from ..store import ModelStore

    fill_defaults(args, (("alpha", "train_models", "alpha"),
                         ("use_rep", "train_models", "use_rep")))
    adata = ad.read_h5ad(args.input)
    # only what was given: the rest takes TrainConfig's defaults (they exist once)
    model = {name: value for name, value in (
        ("hidden", None if args.hidden is None else tuple(
            int(h) for h in args.hidden.split(",") if h)),
        ("epochs", args.epochs), ("weight_decay", args.weight_decay)) if value is not None}
    # the store and its recipe, no model trained: workers train ranges of it
    scdm.tl.train_models(adata, args.label_key, use_rep=args.use_rep, group_key=args.group_key,
                         stratify_key=args.stratify_key, alpha=args.alpha,
                         n_models=args.n_models, store=args.store, config=model,
                         model_range=(0, 0), random_state=args.random_state)
    store = ModelStore.open(adata.uns["datamodels"]["store"])
    print(f"store {store.path}: {store.n_completed}/{store.n_models} models complete. Train "
          f"ranges with: scdm train --store {store.path} --models START:STOP")
    return 0
