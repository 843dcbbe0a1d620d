"""``scdm worker``: one idempotent worker running a user's ``main(index, logdir)``
(MadryLab's contract) for a range of a store's models, here or on Ray."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    worker = sub.add_parser(
        "worker", help="one idempotent worker running a user's main(index, logdir) (MadryLab's "
        "contract) for a range of models",
        description="Calls MODULE:FUNC(index=i, logdir=STORE/workers/i) for every incomplete "
        "model i in --models and writes the dict it returns (checked against the store's "
        "schema), then the model's completion flag. Arguments after -- (and unknown --flags, "
        "as with MadryLab's worker) go to the user's script: in sys.argv, and as keywords "
        "where main takes them.")
    worker.add_argument("--store", required=True)
    worker.add_argument("--main-import", required=True,
                        help="MODULE[:FUNC] importable from here, or path/to/file.py[:FUNC]; "
                        "FUNC defaults to main")
    worker.add_argument("--models", default=":", help="START:STOP (default: all)")
    worker.add_argument("--redo", action="store_true", help="also retrain completed models")
    worker.add_argument("--backend", choices=("local", "ray"), default="local")
    worker.add_argument("--task-size", type=int, default=64, help="models per Ray task")
    worker.add_argument("--ray-address", default=None)
    worker.add_argument("--num-cpus-per-task", type=float, default=1)
    worker.add_argument("--num-gpus-per-task", type=float, default=0)
    worker.add_argument("--quiet", action="store_true")


def execute(args: argparse.Namespace) -> int:
    from ..io import train_with_main
    from ..store import ModelStore
    from ..workers import RayBackend, parse_range

    store = ModelStore.open(args.store)
    start, stop = parse_range(args.models, store.n_models)
    backend = "local" if args.backend == "local" else RayBackend(
        address=args.ray_address, num_cpus_per_task=args.num_cpus_per_task,
        num_gpus_per_task=args.num_gpus_per_task, task_size=args.task_size)
    trained = train_with_main(args.store, args.main_import, models=(start, stop),
                              args=args.main_args, backend=backend, redo=args.redo,
                              progress=not args.quiet)
    store = ModelStore.open(args.store)
    print(f"trained {trained} models of [{start}, {stop}) with {args.main_import}; store "
          f"{store.n_completed}/{store.n_models} complete")
    return 0
