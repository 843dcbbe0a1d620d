"""``scdm status``: how far a store is, and how fast its workers go."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(sub) -> None:
    status = sub.add_parser("status", help="completed / total models and throughput")
    status.add_argument("--store", required=True)
    status.add_argument("--json", action="store_true")


def execute(args: argparse.Namespace) -> int:
    from ..store import ModelStore
    from ..workers import WORKERS_DIR

    store = ModelStore.open(args.store)
    folder = Path(args.store, WORKERS_DIR)
    beats = ([json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
             if folder.is_dir() else [])
    now = time.time()
    running = [b for b in beats if b["state"] == "running" and now - b["updated"] < 300]
    trained = sum(b["trained"] for b in beats)
    span = (max(b["updated"] for b in beats) - min(b["started"] for b in beats)) if beats else 0
    status = {"store": str(store.path), "completed": store.n_completed, "total": store.n_models,
              "workers_running": len(running), "workers_seen": len(beats),
              "models_per_second": round(trained / span, 2) if span > 0 else None,
              "failed_workers": [f"{b['host']}:{b['pid']}" for b in beats
                                 if b["state"] == "failed"]}
    print(json.dumps(status, indent=2) if args.json else
          f"{status['completed']}/{status['total']} models complete; "
          f"{status['workers_running']} worker(s) running; throughput "
          f"{status['models_per_second'] or '-'} models/s over {len(beats)} worker run(s)")
    return 0
