"""``scdm train``: one idempotent worker training a range of a store's models from its
recipe."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    train = sub.add_parser("train", help="one idempotent worker: train a range of models")
    train.add_argument("--store", required=True)
    train.add_argument("--models", default=":", help="START:STOP (default: all)")
    train.add_argument("--device", default="auto")
    train.add_argument("--chunk-size", type=int, default=None)
    train.add_argument("--quiet", action="store_true")


def execute(args: argparse.Namespace) -> int:
    from ..store import ModelStore
    from ..workers import parse_range, run_worker

    store = ModelStore.open(args.store)
    start, stop = parse_range(args.models, store.n_models)
    trained = run_worker(args.store, start, stop, device=args.device,
                         chunk_size=args.chunk_size, progress=not args.quiet)
    store = ModelStore.open(args.store)
    print(f"trained {trained} models of [{start}, {stop}); store {store.n_completed}/"
          f"{store.n_models} complete")
    return 0
