"""TRAK in scdm: choosing its damping and checkpoint count, and TRAK vs datamodels.

Part 1 (``--sweep``): on the scenario suite's generators (Poisson ``P-*``, Gaussian ``G-*``;
planted and null), ``scdm.tl.trak`` at several ``damping`` values and checkpoint counts, then
``scdm.tl.subgroups(key="trak")`` at its defaults (how many subgroups decided by the
reproducibility of the even/odd checkpoint halves). Prints per setting the ARI with the
planted subtypes, the subgroups found, false splits on null classes, and the LDS of the TRAK
scores on 100 fresh subset models.

Part 2 (``--scale N [N ...]``): ``tl.trak`` + ``tl.subgroups`` on N synthetic cells
(``gaussian_subtypes``, 3 subtypes) with wall time, peak RSS (of a fresh process per size) and
ARI; the growth exponent between sizes.

    python workflows/benchmarks/trak_benchmark.py --sweep [--seeds 0 1] [--damping 0 0.1 1 10]
    python workflows/benchmarks/trak_benchmark.py --scale 5000 20000 [--rep raw] [--flips 0.05] \
        [--ray-workers 2 [--kill-one]] [--proj-dim 256]
    python workflows/benchmarks/trak_benchmark.py --vs-traker --scenarios P-3 G-3  # with traker

Part 4 (``--vs-datamodels --cache DIR --scenarios P-3 G-3``): the datamodels of the scenario
suite (its cache) against ``tl.trak`` at 40 checkpoints and at 1,000 (about the datamodels'
wall time), on the same evaluation models: time, LDS, subgroup ARI.

Part 3 (``--vs-traker``): MadryLab ``traker`` (CPU ``BasicProjector``), ``scdm.trak.TRAKer``
(undamped, and ``damping=1``) and ``tl.trak``'s closed-form fast path on the same checkpoints
and ``proj_dim``; LDS of each on fresh subset models and wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import torch
from sklearn.metrics import adjusted_rand_score, roc_auc_score

import scdm
from scdm.tl._cost import estimate_trak

P, G = scdm.datasets.planted_subtypes, scdm.datasets.gaussian_subtypes
SCENARIOS = {
    "P-3": (P, {}),
    "P-5": (P, dict(n_subtypes=5, n_per_subtype=60)),
    "P-unequal": (P, dict(n_per_subtype=[30, 90, 180])),
    "P-null": (P, dict(n_subtypes=1, n_per_subtype=300)),
    "G-3": (G, {}),
    "G-5": (G, dict(classes={"control": [300], "disease": [50] * 5})),
    "G-3class": (G, dict(classes={"control": [200], "A": [100, 100], "B": [200]})),
    "G-null": (G, dict(classes={"control": [300], "disease": [240]})),
    # a known batch given as stratify_key (gradients centred within each class and batch)
    "P-3-stratify": (P, {}),
    "G-3-stratify": (G, {}),
    "P-null-stratify": (P, dict(n_subtypes=1, n_per_subtype=300)),
    "P-small-stratify": (P, dict(n_controls=150, n_per_subtype=75, n_subtypes=2)),
    "P-small": (P, dict(n_controls=150, n_per_subtype=75, n_subtypes=2)),
}


def data(name: str, seed: int):
    generator, arguments = SCENARIOS[name]
    adata = generator(random_state=seed, **arguments)
    sc.pp.pca(adata, n_comps=min(50, adata.n_vars - 1), random_state=seed)
    return adata


def evaluate(adata, key: str = "trak") -> list[dict]:
    scdm.tl.subgroups(adata, key=key, markers=False)
    rows = []
    for cls in adata.obs["disease"].cat.categories:
        members = (adata.obs["disease"] == cls).to_numpy()
        truth = adata.obs["subtype"].astype(str).to_numpy()[members]
        found = adata.obs[f"{key}_subgroup"].astype(str).to_numpy()[members]
        assigned = found != "unassigned"
        rows.append({"class": str(cls), "true_k": len(set(truth)),
                     "found_k": len(set(found[assigned])),
                     "ari": adjusted_rand_score(truth[assigned], found[assigned])})
    return rows


def sweep(args) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenarios:
            for seed in args.seeds:
                adata = data(name, seed)
                for n_models in args.n_models:
                    for damping in args.damping:
                        a = adata.copy()
                        start = time.perf_counter()
                        scdm.tl.trak(a, "disease", use_rep="X_pca", n_models=n_models,
                                     damping=damping, random_state=seed,
                                     stratify_key="batch" if "stratify" in name else None,
                                     store=Path(tmp, f"{name}-{seed}-{n_models}"))
                        seconds = time.perf_counter() - start
                        lds = np.nan
                        if args.lds:
                            scdm.tl.lds(a, key="trak", n_models=100,
                                        store=Path(tmp, f"lds-{name}-{seed}-{n_models}"))
                            lds = a.uns["trak"]["lds"]["mean"]
                        for row in evaluate(a):
                            row.update(scenario=name, seed=seed, n_models=n_models,
                                       damping=damping, seconds=seconds, lds=lds)
                            rows.append(row)
                            print(f"{name:10s} seed {seed} K={n_models:3d} damping "
                                  f"{damping:<5g} {row['class']:>8s}: true {row['true_k']} "
                                  f"found {row['found_k']} ARI {row['ari']:.2f} LDS {lds:.3f} "
                                  f"({seconds:.1f} s)", flush=True)
    table = pd.DataFrame(rows)
    planted = table[table["true_k"] > 1]
    null = table[(table["true_k"] == 1) & table["scenario"].str.contains("null")]
    summary = planted.groupby(["n_models", "damping"]).agg(
        mean_ari=("ari", "mean"), right_k=("found_k", "size"), lds=("lds", "mean"),
        seconds=("seconds", "mean"))
    summary["right_k"] = planted.assign(ok=planted["found_k"] == planted["true_k"]).groupby(
        ["n_models", "damping"])["ok"].sum().astype(int).astype(str) + "/" + summary[
        "right_k"].astype(str)
    summary["null_splits"] = null.assign(split=null["found_k"] > 1).groupby(
        ["n_models", "damping"])["split"].sum().astype(int).astype(str) + "/" + null.groupby(
        ["n_models", "damping"]).size().astype(str)
    print("\n" + summary.to_string(float_format=lambda v: f"{v:.3f}"))


def _holder_of(path: Path) -> int | None:
    """The pid of another process that has ``path`` open (Linux: /proc/<pid>/fd)."""
    for proc in os.listdir("/proc"):
        if not proc.isdigit() or int(proc) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{proc}/fd")
            if any(os.readlink(f"/proc/{proc}/fd/{fd}") == str(path) for fd in fds):
                return int(proc)
        except OSError:  # gone, or not ours to read
            continue
    return None


def _kill_a_writer(folder: Path, stop: threading.Event, record: dict) -> None:
    """Once a checkpoint is complete in ``folder``, SIGKILL the Ray worker that is writing
    another one (its files half written), and note which checkpoints were complete then."""
    while not stop.is_set():
        done = {m.parent.name: m.stat().st_mtime_ns for m in folder.glob("model_*/meta.json")}
        if done:
            for model in sorted(folder.glob("model_*")):
                pid = (None if (model / "meta.json").exists()
                       else _holder_of(model / "features.npy"))
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    record |= {"killed": model.name, "complete_then": done}
                    return
        time.sleep(0.01)


def _ray_peaks(stop: threading.Event, peaks: dict) -> None:
    """Every Ray worker's peak resident memory (VmHWM, bytes) by pid, read until ``stop``."""
    while not stop.is_set():
        for proc in os.listdir("/proc"):
            if not proc.isdigit():
                continue
            try:
                with open(f"/proc/{proc}/cmdline", "rb") as cmd:
                    if not cmd.read().startswith(b"ray::"):
                        continue
                with open(f"/proc/{proc}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peaks[proc] = max(peaks.get(proc, 0), int(line.split()[1]) * 1024)
            except OSError:
                continue
        time.sleep(0.5)


def _ray_embedding(adata, store: Path, seed: int, proj_dim: int, workers: int) -> dict:
    """``tl.trak`` again on the same store with a RayBackend: the models and features are
    found, so only the embedding runs, each checkpoint's share of a pass as a Ray task. Its
    time, the Ray workers' largest peak RSS, and whether the embedding and its halves equal
    the local run's bitwise."""
    import ray

    from scdm.workers import RayBackend

    ray.init(num_cpus=workers, log_to_driver=False, include_dashboard=False)
    stop, peaks = threading.Event(), {}
    watcher = threading.Thread(target=_ray_peaks, args=(stop, peaks))
    watcher.start()
    start = time.perf_counter()
    remote = scdm.tl.trak(adata, "disease", use_rep=adata.uns["trak"]["params"]["use_rep"],
                          proj_dim=proj_dim, random_state=seed, store=store, copy=True,
                          train_kwds={"backend": RayBackend()})
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    ray.shutdown()
    keys = ("X_trak", "X_trak_half1", "X_trak_half2")
    return {"ray_embed_s": seconds, "ray_embed_local_s": adata.uns["trak"]["seconds"]["embed"],
            "ray_embed_peak_gib": max(peaks.values(), default=0) / 2**30,
            "ray_embed_equal": all(np.array_equal(remote.obsm[k], adata.obsm[k],
                                                  equal_nan=True) for k in keys)}


def _ray_features(store: Path, out: Path, adata, workers: int, kill_one: bool = False) -> dict:
    """The same checkpoints featurized again as Ray tasks on ``workers`` local workers: time,
    the largest worker's peak RSS, and whether every file equals the local run's bitwise.
    With ``kill_one``, one worker is killed while it writes a checkpoint: Ray retries that
    task, and the checkpoints complete before the kill must not be written again."""
    import ray

    from scdm.workers import RayBackend, fill_features

    local = next((store / "trak_features").iterdir())
    ids = sorted(int(d.name.split("_")[1]) for d in local.glob("model_*"))
    params = adata.uns["trak"]["trak_params"]
    ray.init(num_cpus=workers, log_to_driver=False, include_dashboard=False)
    stop, record = threading.Event(), {}
    watcher = threading.Thread(target=_kill_a_writer, args=(out / local.name, stop, record))
    if kill_one:
        watcher.start()
    start = time.perf_counter()
    peaks = fill_features(store, out / local.name, ids, n_obs=adata.n_obs,
                          proj_dim=int(params["proj_dim"]), seed=int(params["random_state"]),
                          damping=float(params["damping"]), backend=RayBackend(),
                          progress=False)
    seconds = time.perf_counter() - start
    stop.set()
    if kill_one:
        watcher.join()
    ray.shutdown()
    killed = {}
    if kill_one:
        rewritten = [name for name, stamp in record.get("complete_then", {}).items()
                     if (out / local.name / name / "meta.json").stat().st_mtime_ns != stamp]
        killed = {"killed": record.get("killed"),
                  "complete_at_kill": len(record.get("complete_then", {})),
                  "rewritten_after_kill": rewritten}
    equal = True
    for m in ids:
        for name in ("features.npy", "out_to_loss.npy", "sq_norm.npy"):
            a = np.load(local / f"model_{m}" / name, mmap_mode="r")
            b = np.load(out / local.name / f"model_{m}" / name, mmap_mode="r")
            for i in range(0, a.shape[0], 65536):  # a block at a time: no copy of a file
                equal &= bool(np.array_equal(a[i:i + 65536], b[i:i + 65536]))
    width = adata.obsm["X_pca"].shape[1] if "X_pca" in adata.obsm else adata.n_vars
    estimate = estimate_trak(adata.n_obs, len(ids), proj_dim=int(params["proj_dim"]),
                             n_features=width, ray=True)
    return {"ray_s": seconds, "ray_worker_peak_gib": max(peaks) / 2**30,
            "ray_worker_estimate_gib": estimate.worker_memory_bytes / 2**30,
            "ray_equal": equal, "local_featurize_s": adata.uns["trak"]["seconds"]["featurize"],
            **killed}


def one_scale(n: int, seed: int, rep: str = "pca", flips: float = 0.0,
              ray_workers: int = 0, proj_dim: int = 512, kill_one: bool = False) -> dict:
    """tl.trak + tl.subgroups on n cells, in this process (run fresh per size); ``rep``:
    the models' input, ``pca`` (50 PCs) or ``raw`` (the 80 features, batch on 50 of them,
    as a user who runs no PCA and names no batch). With ``flips``, that share of the cells
    gets the other class's label before training (seeded), and ``tl.label_issues(key="trak")``
    runs after the subgroups: its AUROC on the flipped cells, its time and the peak RSS
    of the whole process. With ``ray_workers``, the checkpoints are featurized again as Ray
    tasks on that many local workers and compared with the local files (``kill_one``: one
    worker SIGKILLed mid-checkpoint), then ``tl.trak`` runs again on the same store with a
    RayBackend (only the embedding left to do, as Ray tasks) and is compared bitwise."""
    per = n // 2 // 3
    adata = G(classes={"control": [n // 2], "disease": [per, per, n // 2 - 2 * per]},
              random_state=seed)
    flipped = np.zeros(n, bool)
    if flips:
        flipped[np.random.default_rng(seed + 1).choice(n, round(flips * n),
                                                          replace=False)] = True
        truth = adata.obs["disease"].astype(str).to_numpy()
        noisy = np.where(flipped, np.where(truth == "disease", "control", "disease"), truth)
        adata.obs["disease"] = pd.Categorical(noisy)
    if rep == "pca":
        sc.pp.pca(adata, n_comps=50, random_state=seed)
    # SCDM_BENCH_SAVE=DIR keeps the store and the result (DIR/scale-N-REP) for a closer look
    save = os.environ.get("SCDM_BENCH_SAVE")
    with (contextlib.nullcontext(str(Path(save, f"scale-{n}-{rep}"))) if save
          else tempfile.TemporaryDirectory()) as tmp:
        start = time.perf_counter()
        scdm.tl.trak(adata, "disease", use_rep="X_pca" if rep == "pca" else None,
                     proj_dim=proj_dim, random_state=seed, store=Path(tmp, "store"))
        trak_s = time.perf_counter() - start
        scdm.tl.subgroups(adata, key="trak", markers=False)
        total = time.perf_counter() - start
        if save:
            adata.write_h5ad(Path(tmp, "result.h5ad"))
        label = (_ray_features(Path(tmp, "store"), Path(tmp, "ray"), adata, ray_workers,
                               kill_one) | _ray_embedding(adata, Path(tmp, "store"), seed,
                                                          proj_dim, ray_workers)
                 if ray_workers else {})
        start = time.perf_counter() - total  # label_issues' clock leaves the Ray run out
        if flips:
            scdm.tl.label_issues(adata, "disease", key="trak", random_state=seed)
            label |= {"label_issues_s": time.perf_counter() - start - total,
                     "label_auroc": roc_auc_score(flipped, adata.obs["label_issue_score"]),
                     "flagged": int(adata.obs["label_issue"].sum()),
                     "flipped": int(flipped.sum())}
    # the disease class as trained (noisy labels), scored on its truly diseased cells
    d = (adata.obs["disease"] == "disease").to_numpy() & ~flipped
    # the controls as trained, without the flipped disease cells (their own, real structure)
    control = (adata.obs["disease"] == "control").to_numpy() & ~flipped
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    evidence = adata.uns["trak_subgroup"]["reproducibility"]
    found = adata.obs["trak_subgroup"][d]
    return {"n": n, "rep": rep, "trak_s": trak_s, "total_s": total, "peak_rss_gib": peak,
            "ari": adjusted_rand_score(adata.obs["subtype"][d], found),
            "ari_batch": adjusted_rand_score(adata.obs["batch"][d], found),
            "shared_removed": sorted(c for c, e in evidence.items() if "shared" in e),
            "found_k": int(adata.obs["trak_subgroup"][d].nunique()),
            "control_k": int(adata.obs["trak_subgroup"][control].nunique()),
            "control_largest": float(adata.obs["trak_subgroup"][control].value_counts(
                normalize=True).iloc[0]),
            "n_checked": int(evidence["disease"]["n_checked"]),
            "seconds": adata.uns["trak"]["seconds"], **label}


def scale(args) -> None:
    results = []
    for n in args.scale:
        out = subprocess.run([sys.executable, __file__, "--one-scale", str(n), "--rep",
                              args.rep, "--flips", str(args.flips), "--ray-workers",
                              str(args.ray_workers), "--proj-dim", str(args.proj_dim)]
                             + (["--kill-one"] if args.kill_one else []),
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(row)
        print(f"n = {n:7d}: tl.trak {row['trak_s']:.1f} s (train {row['seconds']['train']:.1f}"
              f", featurize {row['seconds']['featurize']:.1f}, embed "
              f"{row['seconds']['embed']:.1f}), + subgroups {row['total_s']:.1f} s total, "
              f"peak RSS {row['peak_rss_gib']:.2f} GiB, ARI {row['ari']:.2f} "
              f"({row['found_k']} subgroups for 3, ARI with batch {row['ari_batch']:.2f}; "
              f"control {row['control_k']}, {row['control_largest']:.1%} of its cells in one; "
              f"checked on {row['n_checked']} cells per class; "
              f"a shared partition taken out of {row['shared_removed'] or 'none'}; input "
              f"{row['rep']})", flush=True)
        if args.ray_workers:
            print(f"    Ray: the {row['ray_s']:.1f} s featurizing again on {args.ray_workers} "
                  f"local workers (local: {row['local_featurize_s']:.1f} s, with loading the "
                  f"checkpoints), largest worker peak RSS {row['ray_worker_peak_gib']:.2f} GiB "
                  f"(the cost preview's {row['ray_worker_estimate_gib']:.2f} GiB), "
                  f"bitwise equal to local: {row['ray_equal']}", flush=True)
            print(f"    Ray: tl.trak again on the same store, the embedding as Ray tasks: "
                  f"{row['ray_embed_s']:.1f} s (local embedding {row['ray_embed_local_s']:.1f}"
                  f" s), largest worker peak RSS {row['ray_embed_peak_gib']:.2f} GiB, "
                  f"embedding and halves bitwise equal to local: {row['ray_embed_equal']}",
                  flush=True)
        if "killed" in row:
            print(f"    a Ray worker SIGKILLed while writing {row['killed']} "
                  f"({row['complete_at_kill']} checkpoints complete then; written again after "
                  f"the kill: {row['rewritten_after_kill'] or 'none'})", flush=True)
        if args.flips:
            print(f"    + tl.label_issues(key='trak') {row['label_issues_s']:.1f} s: AUROC "
                  f"{row['label_auroc']:.3f} on {row['flipped']} flipped labels "
                  f"({row['flagged']} flagged); peak RSS above includes it", flush=True)
    for a, b in itertools.pairwise(results):
        exponent = np.log(b["total_s"] / a["total_s"]) / np.log(b["n"] / a["n"])
        print(f"growth {a['n']} → {b['n']}: time ∝ n^{exponent:.2f}")


def _module_from_stacked(params, c: int) -> torch.nn.Module:
    """Checkpoint ``c`` of scdm's stacked two-class MLP as an ``nn.Module`` with two logits
    ``[-z/2, z/2]`` (the margin, logit_y - logit_other, is unchanged)."""
    (w1, b1, w2, b2) = (p[c].detach().cpu() for p in params)
    model = torch.nn.Sequential(torch.nn.Linear(w1.shape[0], w1.shape[1]), torch.nn.ReLU(),
                                torch.nn.Linear(w1.shape[1], 2))
    with torch.no_grad():
        model[0].weight.copy_(w1.T)
        model[0].bias.copy_(b1)
        model[2].weight.copy_(torch.cat([-w2.T / 2, w2.T / 2]))
        model[2].bias.copy_(torch.cat([-b2 / 2, b2 / 2]))
    return model


def _run_traker(make, label: str, case: dict, rows: list) -> np.ndarray:
    """Featurize, finalize and score every cell with the TRAKer that ``make(save_dir)`` builds;
    record its LDS and time."""

    X, y, n = case["X"], case["y"], case["X"].shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        traker = make(tmp)
        for c, ckpt in enumerate(case["checkpoints"]):
            traker.load_checkpoint(ckpt, model_id=c)
            for s in range(0, n, 200):
                traker.featurize((X[s:s + 200], y[s:s + 200]), num_samples=len(X[s:s + 200]))
        traker.finalize_features()
        for c, ckpt in enumerate(case["checkpoints"]):
            traker.start_scoring_checkpoint("all", ckpt, c, n)
            for s in range(0, n, 200):
                traker.score((X[s:s + 200], y[s:s + 200]), num_samples=len(X[s:s + 200]))
        scores = np.asarray(traker.finalize_scores("all"), dtype=np.float64)
        seconds = time.perf_counter() - start
    _record(scores, label, seconds, case, rows)
    return scores


def _record(scores: np.ndarray, label: str, seconds: float, case: dict, rows: list) -> None:
    from scdm.evaluation import linear_datamodeling_score

    lds = linear_datamodeling_score(scores, case["eval_masks"], case["eval_margins"],
                                    rows="train", heldout=True)
    rows.append({"scenario": case["name"], "method": label, "seconds": seconds,
                 "lds": float(np.nanmean(lds))})
    print(f"{case['name']:10s} {label:34s} LDS {np.nanmean(lds):.3f}  {seconds:6.1f} s",
          flush=True)


def vs_traker(args) -> None:
    """scdm.trak.TRAKer and tl.trak's fast path against MadryLab traker (BasicProjector, CPU)
    on the same checkpoints and proj_dim; LDS on fresh subset models."""
    from trak import TRAKer as MadryTRAKer  # pip install --no-deps traker

    from scdm.ensemble import EnsembleTrainer, TrainConfig
    from scdm.masks import MaskSampler

    torch.set_num_threads(2)
    rows = []
    for name in args.scenarios:
        adata = data(name, 0)
        X = torch.tensor(adata.obsm["X_pca"], dtype=torch.float32)
        X = (X - X.mean(0)) / X.std(0)
        y = torch.tensor(adata.obs["disease"].cat.codes.to_numpy(), dtype=torch.long)
        n, K = X.shape[0], args.checkpoints
        trainer = EnsembleTrainer(X, y, TrainConfig(hidden=(64,), epochs=20, batch_size=75),
                                  n_classes=2, device="cpu", random_state=0)
        sampler = MaskSampler(y.numpy(), 0.5, random_state=0)
        params = trainer.train(sampler.sample(np.arange(K)), np.arange(K),
                               keep_params=True).extras["params"]
        eval_masks = MaskSampler(y.numpy(), 0.5, random_state=12345).sample(
            np.arange(args.eval_models))
        case = {"name": name, "X": X, "y": y, "eval_masks": eval_masks,
                "eval_margins": trainer.train(eval_masks, np.arange(args.eval_models)
                                              + 10**6).margins,
                "checkpoints": [_module_from_stacked(params, c).state_dict()
                                for c in range(K)]}
        model = _module_from_stacked(params, 0)
        madry = _run_traker(
            lambda d, m=model, n=n: MadryTRAKer(
                model=m, task="image_classification", train_set_size=n, save_dir=d,
                proj_dim=args.proj_dim, device="cpu", use_half_precision=False,
                logging_level=40), "traker (MadryLab)", case, rows)
        ours = _run_traker(
            lambda d, m=model, n=n: scdm.trak.TRAKer(m, "classification", n, save_dir=d,
                                                     proj_dim=args.proj_dim, device="cpu",
                                                     verbose=False),
            "scdm.trak.TRAKer", case, rows)
        _run_traker(
            lambda d, m=model, n=n: scdm.trak.TRAKer(m, "classification", n, save_dir=d,
                                                     proj_dim=args.proj_dim, device="cpu",
                                                     damping=1.0, verbose=False),
            "scdm.trak.TRAKer damping=1", case, rows)
        corr = np.corrcoef(madry.ravel(), ours.ravel())[0, 1]
        print(f"{name:10s} correlation of traker's and scdm's undamped scores: {corr:.3f}")
        start = time.perf_counter()
        G, Q = scdm.trak.mlp_features(params, X, y, proj_dim=args.proj_dim)
        featurized = time.perf_counter() - start
        for damping, label in ((None, "tl.trak fast path, undamped"),
                               (1.0, "tl.trak fast path, damping=1")):
            t0 = time.perf_counter()
            total = np.zeros((n, n))
            for c in range(K):
                inverse = scdm.trak.inverse_gram(G[c], damping=damping, normalize=False)
                total += (G[c] @ inverse @ G[c].T).numpy()
            scores = total / K * Q.mean(0).numpy()[:, None]
            _record(scores, label, time.perf_counter() - t0 + featurized, case, rows)
    table = pd.DataFrame(rows).pivot(index="method", columns="scenario",
                                     values=["lds", "seconds"])
    print("\n" + table.to_string(float_format=lambda v: f"{v:.3f}"))


def vs_datamodels(args) -> None:
    """Datamodels at their default (~25 models per cell) against TRAK at 40 checkpoints and at
    about the same training compute, on the same data and the same evaluation models."""
    sys.path.insert(0, str(Path(__file__).parent))
    from subgroups import attribution_seconds, trained  # the suite's cache of datamodels

    cache = Path(args.cache)
    for name in args.scenarios:
        adata = trained(name, 0, cache)
        seconds = attribution_seconds(adata)
        scdm.tl.lds(adata, n_models=100, store=cache / f"lds-dm-{name}")
        rows = [("datamodels", int(adata.uns["datamodels"]["n_completed"]), seconds,
                 adata.uns["datamodels"]["lds"]["mean"], *_ari(adata, "datamodels"))]
        for k in args.trak_checkpoints:
            start = time.perf_counter()
            scdm.tl.trak(adata, "disease", use_rep="X_pca", n_models=k,
                         store=cache / f"trak-{name}-{k}", key_added="trak")
            elapsed = time.perf_counter() - start
            scdm.tl.lds(adata, key="trak", n_models=100, store=cache / f"lds-trak-{name}-{k}")
            rows.append(("trak", k, elapsed, adata.uns["trak"]["lds"]["mean"],
                         *_ari(adata, "trak")))
        for method, k, secs, lds, ari, found in rows:
            print(f"{name:8s} {method:10s} {k:6d} models  {secs:7.1f} s  LDS {lds:.3f}  "
                  f"ARI {ari:.2f} ({found} subgroups)", flush=True)


def _ari(adata, key: str) -> tuple[float, int]:
    scdm.tl.subgroups(adata, key=key, markers=False)
    d = (adata.obs["disease"] == "disease").to_numpy()
    found = adata.obs[f"{key}_subgroup"].astype(str).to_numpy()[d]
    truth = adata.obs["subtype"].astype(str).to_numpy()[d]
    keep = found != "unassigned"
    return adjusted_rand_score(truth[keep], found[keep]), len(set(found[keep]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS)[:8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n-models", type=int, nargs="+", default=[40, 100])
    parser.add_argument("--damping", type=float, nargs="+", default=[0.0, 0.01, 0.1, 1.0, 10.0])
    parser.add_argument("--lds", action="store_true", help="also the LDS on 100 fresh models")
    parser.add_argument("--scale", type=int, nargs="+")
    parser.add_argument("--vs-traker", action="store_true",
                        help="against MadryLab traker (pip install --no-deps traker)")
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument("--eval-models", type=int, default=200)
    parser.add_argument("--vs-datamodels", action="store_true",
                        help="against the datamodels of subgroups.py's --cache")
    parser.add_argument("--cache", help="subgroups.py's cache of trained scenarios")
    parser.add_argument("--trak-checkpoints", type=int, nargs="+", default=[40, 1000])
    parser.add_argument("--rep", choices=["pca", "raw"], default="pca",
                        help="--scale: the models' input (50 PCs, or the raw features)")
    parser.add_argument("--flips", type=float, default=0.0,
                        help="--scale: flip this share of labels, then tl.label_issues")
    parser.add_argument("--ray-workers", type=int, default=0,
                        help="--scale: featurize again as Ray tasks on this many workers")
    parser.add_argument("--kill-one", action="store_true",
                        help="--ray-workers: SIGKILL one worker while it writes a checkpoint")
    parser.add_argument("--one-scale", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scdm.settings.verbosity = 0
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    if args.one_scale:
        print(json.dumps(one_scale(args.one_scale, 0, args.rep, args.flips, args.ray_workers,
                                   args.proj_dim, args.kill_one)))
        return
    if args.sweep:
        sweep(args)
    if args.scale:
        scale(args)
    if args.vs_traker:
        vs_traker(args)
    if args.vs_datamodels:
        vs_datamodels(args)


if __name__ == "__main__":
    main()
