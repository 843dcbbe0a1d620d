"""Command line: ``scdm run`` — datamodels end to end on an .h5ad (or bundled data) — and the
scheduler-friendly pieces ``scdm store init``, ``scdm train``, ``scdm worker`` (a user's own
``main(index, logdir)``, MadryLab's contract), ``scdm fit``, ``scdm status``."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._anndata import uns_names

MYELOID = ("CD14+ Monocyte", "Dendritic")
# obs columns of pbmc68k_reduced a reviewer would check a subgroup against: cell-cycle phase,
# library size and mitochondrial fraction (it has no donors or batches)
BUNDLED_COVARIATES = ("phase", "n_counts", "percent_mito")


class Stages:
    """Times the stages of a run and says when each starts and ends."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if not self.quiet:
            print(f"[{len(self.seconds) + 1}] {name} ...", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        if not self.quiet:
            print(f"[{len(self.seconds)}] {name}: {self.seconds[name]:.1f} s", flush=True)


def bundled_pbmc():
    """scanpy's bundled pbmc68k_reduced with the binary label ``lineage``.

    ``lineage`` is ``"myeloid"`` for CD14+ monocytes and dendritic cells and ``"other"`` for
    the lymphoid and progenitor cells; datamodels of the myeloid class should separate the two
    myeloid cell types that the label lumps together.
    """
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    adata.obs["lineage"] = np.where(adata.obs["bulk_labels"].isin(MYELOID), "myeloid", "other")
    adata.obs["lineage"] = adata.obs["lineage"].astype("category")
    return adata


def _tl_default(func_name: str, parameter: str):
    """The default of a ``scdm.tl`` function's parameter: the CLI restates none of them."""
    import inspect

    import scdm

    return inspect.signature(getattr(scdm.tl, func_name)).parameters[parameter].default


def _fill_defaults(args: argparse.Namespace) -> None:
    """Options left unset take the defaults of the ``tl`` functions they are passed to."""
    for option, func, parameter in (("alpha", "train_models", "alpha"),
                                    ("n_neighbors", "subgroups", "n_neighbors"),
                                    ("lds_models", "lds", "n_models")):
        if getattr(args, option, "absent") is None:
            setattr(args, option, _tl_default(func, parameter))


def _columns(names) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")


def _check_run(args: argparse.Namespace, adata, label_key: str, use_rep: str | None,
               covariates: list[str]) -> None:
    """Every input of ``scdm run`` checked before the estimate, the out folder or any
    training; each message names the flag and what would work."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory (created if missing).")
    if label_key not in adata.obs:
        raise KeyError(f"--label-key {label_key!r} is not a column of the input's obs "
                       f"(columns: {_columns(adata.obs.columns)}).")
    counts = adata.obs[label_key].value_counts()
    counts = counts[counts > 0]
    if counts.size < 2:
        raise ValueError(f"--label-key {label_key!r} has {counts.size} class; the models need "
                         "at least two.")
    if use_rep is not None and use_rep not in adata.obsm:
        raise KeyError(f"--use-rep {use_rep!r} is not in the input's obsm (keys: "
                       f"{_columns(adata.obsm.keys()) or 'none'}); leave it out to train on .X.")
    for flag, column in (("--group-key", args.group_key), ("--stratify-key", args.stratify_key),
                         ("--known-key", args.known_key)):
        if column is not None and column not in adata.obs:
            raise KeyError(f"{flag} {column!r} is not a column of the input's obs (columns: "
                           f"{_columns(adata.obs.columns)}).")
    unknown = [c for c in covariates if c not in adata.obs]
    if unknown:
        raise KeyError(f"--covariates {unknown} are not columns of the input's obs (columns: "
                       f"{_columns(adata.obs.columns)}).")
    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha must lie strictly between 0 and 1, got {args.alpha}.")
    fewest = 4 if args.method == "trak" else 1
    if args.n_models is not None and args.n_models < fewest:
        raise ValueError(f"--n-models must be at least {fewest} with --method {args.method}, "
                         f"got {args.n_models}.")
    if args.lds_models < 0:
        raise ValueError(f"--lds-models must be 0 (no evaluation) or more, got "
                         f"{args.lds_models}.")
    if args.n_neighbors < 2:
        raise ValueError(f"--n-neighbors must be at least 2, got {args.n_neighbors}.")
    # tl.subgroups' rule: a kNN graph in each half of a class (automatic resolution)
    from .clustering import fewest_points, most_neighbors

    halves = args.resolution is None
    smallest = fewest_points(args.n_neighbors, halves)
    small = counts[counts < smallest]
    if small.size:
        fits = most_neighbors(int(small.min()), halves)
        fix = (f"use --n-neighbors {fits} or lower" if fits >= 2 else
               "leave those classes out of the input")
        raise ValueError(
            f"classes {small.to_dict()} have fewer than {smallest} cells, too few to check "
            f"subgroups with --n-neighbors {args.n_neighbors}"
            + (" on two halves" if halves else "") + f"; {fix}.")


# tl's parameter names in messages raised after the checks above, as `scdm run`'s flags
RUN_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "label_key", "use_rep", "group_key", "stratify_key", "n_models", "n_neighbors", "alpha",
    "resolution", "random_state")}


def _as_flags(message: str) -> str:
    import re

    return re.sub(r"\b(" + "|".join(RUN_FLAGS) + r")\b(=\s?)?",
                  lambda m: RUN_FLAGS[m.group(1)] + (" " if m.group(2) else ""), message)


def _run(args: argparse.Namespace) -> int:
    import anndata as ad

    import scdm
    from scdm.get import composition_flags, describe_flag, subgroup_key

    scdm.settings.verbosity = 0 if args.quiet else 1
    if args.input is None:
        adata = bundled_pbmc()
        label_key = args.label_key or "lineage"
        use_rep = args.use_rep or "X_pca"
        source = "scanpy.datasets.pbmc68k_reduced (bundled)"
    else:
        if args.label_key is None:
            raise ValueError("--label-key is required with an input file (the obs column "
                             "with the class to predict).")
        if not Path(args.input).is_file():
            raise FileNotFoundError(f"the input {args.input} does not exist or is not a file "
                                    "(an .h5ad file).")
        adata = ad.read_h5ad(args.input)
        label_key, use_rep, source = args.label_key, args.use_rep, str(args.input)
    covariates = [c for c in (args.covariates.split(",") if args.covariates is not None
                              else BUNDLED_COVARIATES if args.input is None else ()) if c]
    known_key = args.known_key or ("bulk_labels" if args.input is None else None)
    _check_run(args, adata, label_key, use_rep, covariates)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Path(args.store) if args.store else out / "store"
    from scdm.tl._cost import TRAK_CHECKPOINTS, check_datamodels_cost, trak_cost
    from scdm.tl._recorded import train_config

    key = args.method  # "datamodels" or "trak": the key of every result
    groups = subgroup_key(key)
    config = train_config(None, n_train=round(args.alpha * adata.n_obs))
    shape = {"label_key": label_key, "use_rep": use_rep, "alpha": args.alpha,
             "config": config, "device": args.device}
    if key == "trak":  # shown here; tl.trak checks it against the limits before any work
        estimate = trak_cost(adata, n_models=args.n_models or TRAK_CHECKPOINTS, **shape)
    else:
        estimate = check_datamodels_cost(adata, group_key=args.group_key,
                                         n_models=args.n_models, store=store, **shape)
    if not args.quiet:
        # subgroups, the evaluation and the report come after: a fifth of the bundled run
        print(f"estimated for training and fitting (most of the run): {estimate.describe()}",
              flush=True)
    stages = Stages(quiet=args.quiet)
    if key == "trak":
        with stages("TRAK (checkpoints, projected gradients, embedding)"):
            scdm.tl.trak(adata, label_key, use_rep=use_rep, group_key=args.group_key,
                         stratify_key=args.stratify_key, alpha=args.alpha,
                         n_models=args.n_models or TRAK_CHECKPOINTS, store=store,
                         device=args.device, random_state=args.random_state)
    else:
        with stages("train models"):
            scdm.tl.train_models(adata, label_key, use_rep=use_rep, group_key=args.group_key,
                                 stratify_key=args.stratify_key, alpha=args.alpha,
                                 n_models=args.n_models, store=store, device=args.device,
                                 random_state=args.random_state)
        with stages("fit datamodels"):
            scdm.tl.fit_datamodels(adata, device=args.device, random_state=args.random_state)
            scdm.tl.embed_datamodels(adata, random_state=args.random_state)
    with stages("subgroups"):
        scdm.tl.subgroups(adata, key=key, n_neighbors=args.n_neighbors,
                          resolution=args.resolution, random_state=args.random_state)
        checked = list(dict.fromkeys(
            [c for c in (args.group_key, args.stratify_key) if c] + covariates))
        if checked:
            scdm.tl.subgroup_composition(adata, checked, key=groups,
                                         random_state=args.random_state)
        if args.umap:
            scdm.tl.umap(adata, key=key, random_state=args.random_state)
    if args.lds_models:
        with stages("evaluation (LDS, model-count curve)"):
            scdm.tl.lds(adata, key=key, n_models=args.lds_models, store=out / "lds_store",
                        device=args.device, random_state=args.random_state)
            # datamodels: refits on subsets of the models; TRAK: the first m checkpoints
            scdm.tl.model_count_curve(adata, key=key, device=args.device)
    with stages("write adata.h5ad and report.html"):
        import matplotlib

        matplotlib.use("Agg")  # figures go to files; no display needed
        adata.write_h5ad(out / "adata.h5ad")
        report = scdm.pl.report(
            adata, out / "report.html", key=key, figure_dir=out, known_key=known_key,
            title=f"scdm: {key} of {label_key!r}",
            run_info={"input": source, "command": "scdm " + " ".join(sys.argv[1:]),
                      **{f"{name} (s)": round(t, 1) for name, t in stages.seconds.items()}})
    figures = sorted(str(p) for p in out.glob("*.png"))

    info = adata.uns[key]
    corr = adata.obs[f"{key}_corr"] if f"{key}_corr" in adata.obs else None
    flags = composition_flags(adata, groups)
    summary = {
        "method": key,
        "input": source,
        "label_key": label_key,
        "classes": {str(k): int(v) for k, v in adata.obs[label_key].value_counts().items()},
        "use_rep": use_rep,
        "group_key": args.group_key,
        "stratify_key": args.stratify_key,
        "store": info["store"],
        "models_trained": int(info["n_completed"]),
        "mean_heldout_accuracy": float(info["mean_heldout_accuracy"]),
        "subgroups": _subgroup_summary(adata, groups),
        "subgroup_evidence": {k: dict(v) for k, v in uns_names(adata.uns[groups].get(
            "reproducibility")).items()},
        "degenerate_datamodels": int((~adata.obs[f"{key}_ok"]).sum()),
        "composition_flags": [describe_flag(row) for _, row in flags.iterrows()],
        "seconds": {name: round(t, 1) for name, t in stages.seconds.items()},
        "outputs": {"adata": str(out / "adata.h5ad"), "report": str(report),
                    "figures": figures},
    }
    if corr is not None:
        summary["heldout_margin_correlation"] = {
            "mean": float(corr.mean()), "median": float(corr.median()), "min": float(corr.min())}
        summary["mean_nonzero_weights_per_target"] = info["summary"]["mean_nonzero_weights"]
    if key == "trak":
        summary["trak"] = dict(info["trak_params"])
    if args.lds_models:
        summary["lds"] = {"mean": info["lds"]["mean"], "median": info["lds"]["median"],
                          "evaluation_models": args.lds_models}
        curve = info["model_curve"]
        summary["model_curve"] = {
            "n_models": [int(n) for n in curve["n_models"]],
            "mean_heldout_correlation": [round(float(c), 4) if np.isfinite(c) else None
                                         for c in curve["mean_corr"]],
            "mean_lds": [round(float(c), 4) for c in curve["mean_lds"]],
            "recommendation": str(curve["recommendation"])}
    if known_key is not None:
        # e.g. the bundled label lumps cell types together: how the subgroups divide them
        from scdm.get import known_table

        known = known_table(adata, groups, known_key)
        summary["subgroups_vs_known"] = {
            "known_key": known_key,
            "table": {str(group): {str(cell): int(n) for cell, n in counts.items() if n}
                      for group, counts in known.T.iterrows()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"scdm {key} on {source}",
        f"label {label_key!r}: " + ", ".join(f"{k} ({v})" for k, v in summary["classes"].items()),
    ]
    if key == "trak":
        lines.append(
            f"TRAK from {summary['models_trained']} checkpoints (mean held-out accuracy "
            f"{summary['mean_heldout_accuracy']:.3f}), proj_dim {info['trak_params']['proj_dim']},"
            f" damping {info['trak_params']['damping']:g}, in "
            f"{summary['seconds']['TRAK (checkpoints, projected gradients, embedding)']} s")
    else:
        lines += [
            f"models trained: {summary['models_trained']} (mean held-out accuracy "
            f"{summary['mean_heldout_accuracy']:.3f}) in {summary['seconds']['train models']} s",
            f"datamodels fitted in {summary['seconds']['fit datamodels']} s; held-out margin "
            f"correlation mean {adata.obs[f'{key}_corr'].mean():.3f}, median "
            f"{adata.obs[f'{key}_corr'].median():.3f}"]
    if args.lds_models:
        lines.append(
            f"LDS on {args.lds_models} new models: mean {summary['lds']['mean']:.3f}, median "
            f"{summary['lds']['median']:.3f}")
    if "model_curve" in summary:
        lines += [
            "models vs mean LDS: " + ", ".join(
                f"{n}: {v:.3f}" for n, v in zip(summary["model_curve"]["n_models"],
                                                summary["model_curve"]["mean_lds"], strict=True)),
            f"enough models? {summary['model_curve']['recommendation']}",
        ]
    if summary["degenerate_datamodels"]:
        lines.append(f"degenerate datamodels (left out, subgroup 'unassigned'): "
                     f"{summary['degenerate_datamodels']}")
    if summary["subgroup_evidence"]:
        lines.append("how many subgroups:")
        lines += _evidence_lines(adata, groups)
    if checked:
        lines.append(f"confounding check on {', '.join(checked)}: " + (
            f"{len(flags)} flag(s) (a question to answer, not a verdict):" if len(flags)
            else "no subgroup is dominated by or shifted in them"))
        lines += [f"  {text}" for text in summary["composition_flags"]]
    lines.append("subgroups (size: top markers):")
    for name, group in summary["subgroups"].items():
        markers = ", ".join(group["top_markers"]) or "-"
        lines.append(f"  {name} ({group['size']}): {markers}")
    if known_key is not None:
        width = max(len(str(c)) for c in known.index)
        lines.append(f"subgroups and the known {known_key!r} (cells):")
        lines.append("  " + " " * width + "  " + "  ".join(str(g) for g in known.columns))
        lines += ["  " + f"{cell:<{width}}  " + "  ".join(
            f"{int(n):>{len(str(g))}}" for g, n in zip(known.columns, row, strict=True))
            for cell, row in known.iterrows()]
    lines.append(f"report (one page, opens offline): {report}")
    lines.append(f"results: {out / 'adata.h5ad'} (obsm/obs/uns {key!r}, obs {groups!r}); "
                 f"figures ({len(figures)} PNG) in {out}")
    text = "\n".join(lines)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0


def _subgroup_summary(adata, groups: str, n_markers: int = 5) -> dict:
    markers = adata.uns[groups]["markers"]
    summary = {}
    for name, size in uns_names(adata.uns[groups]["sizes"]).items():
        top = markers[markers["subgroup"] == name].sort_values("rank")["gene"].head(n_markers)
        summary[name] = {"size": int(size), "top_markers": [str(g) for g in top]}
    return summary


def _evidence_lines(adata, groups: str) -> list[str]:
    """Per class, why it has the subgroups it has (the reproducibility check)."""
    from .get import describe_evidence

    return [f"  {cls}: {describe_evidence(e)}"
            for cls, e in uns_names(adata.uns[groups].get("reproducibility")).items()]


def _store_init(args: argparse.Namespace) -> int:
    if args.spec is not None:
        return _store_from_spec(args)
    if args.input is None or args.label_key is None:
        raise ValueError("scdm store init needs an .h5ad INPUT and --label-key (a built-in "
                         "recipe), or --spec spec.json (MadryLab's spec; fill it with scdm "
                         "worker --main-import).")
    import anndata as ad

    from .tl._recorded import create_training_store, default_n_models, training_parts
    from .workers import MLPRecipe

    adata = ad.read_h5ad(args.input)
    # only what was given: the rest takes TrainConfig's defaults (they exist once)
    model = {name: value for name, value in (
        ("hidden", None if args.hidden is None else tuple(
            int(h) for h in args.hidden.split(",") if h)),
        ("epochs", args.epochs), ("weight_decay", args.weight_decay)) if value is not None}
    inputs, sampler, config = training_parts(
        adata, args.label_key, use_rep=args.use_rep, layer=None, group_key=args.group_key,
        stratify_key=args.stratify_key, alpha=args.alpha, mask_mode="balanced",
        config=model,
        scale=True, random_state=args.random_state)
    n_models = args.n_models or default_n_models(sampler.n_units)
    store = create_training_store(
        adata, inputs, sampler, config, label_key=args.label_key, group_key=args.group_key,
        stratify_key=args.stratify_key, mask_mode="balanced", scale=True, n_models=n_models,
        min_heldout=20, store=args.store, key_added="datamodels",
        recipe=MLPRecipe.from_inputs(inputs, config, alpha=sampler.alpha, mask_mode="balanced",
                                  random_state=sampler.random_state))
    print(f"store {store.path}: {store.n_completed}/{store.n_models} models complete. Train "
          f"ranges with: scdm train --store {store.path} --models START:STOP")
    return 0


def _store_from_spec(args: argparse.Namespace) -> int:
    from .store import ModelStore

    if args.input is not None:
        raise ValueError("--spec makes a store for a user's main(); it takes no .h5ad INPUT.")
    store = ModelStore.from_spec(args.store, args.spec)
    print(f"store {store.path}: {store.n_completed}/{store.n_models} models complete, fields "
          f"{store.fields}. Fill it with: scdm worker --store {store.path} --main-import "
          "MODULE[:FUNC] --models START:STOP [-- ARGS]")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from .io import train_with_main
    from .store import ModelStore
    from .workers import RayBackend, parse_range

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


def _train(args: argparse.Namespace) -> int:
    from .store import ModelStore
    from .workers import parse_range, run_worker

    store = ModelStore.open(args.store)
    start, stop = parse_range(args.models, store.n_models)
    trained = run_worker(args.store, start, stop, device=args.device,
                         chunk_size=args.chunk_size, progress=not args.quiet)
    store = ModelStore.open(args.store)
    print(f"trained {trained} models of [{start}, {stop}); store {store.n_completed}/"
          f"{store.n_models} complete")
    return 0


def _fit_defaults() -> dict:
    """``scdm fit``'s defaults are ``tl.fit_datamodels``' (they exist once)."""
    return {name: _tl_default("fit_datamodels", name) for name in (
        "n_lambdas", "eps", "val_fraction", "tol", "path_tol", "min_rows", "precompute",
        "memory_budget", "random_state")}


def _fit(args: argparse.Namespace) -> int:
    if args.merge:
        return _fit_merge(args)
    if args.store is None:
        raise ValueError("scdm fit needs --store (or --merge FILE ... --out FILE).")
    from ._memmap import RowSubset
    from .io import write_datamodels_pt
    from .regression import fit_datamodels_path
    from .store import ModelStore
    from .tl._fit import lasso_for
    from .workers import parse_range, targets_are_training_samples

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
    params = _fit_defaults()
    params.update({k: v for k, v in (("n_lambdas", args.n_lambdas), ("eps", args.eps),
                                     ("val_fraction", args.val_fraction), ("tol", args.tol),
                                     ("min_rows", args.min_rows)) if v is not None})
    model = lasso_for(params, device=args.device, verbose=not args.quiet)
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


def _fit_merge(args: argparse.Namespace) -> int:
    """Join ``scdm fit --targets A:B`` outputs along the targets into one file."""
    import torch

    from .io import read_datamodels_pt

    if args.out is None:
        raise ValueError("scdm fit --merge needs --out FILE.")
    parts = sorted((read_datamodels_pt(f) for f in args.merge),
                   key=lambda d: int(d.get("target_start", 0)))
    for f, d in zip(args.merge, parts, strict=True):
        if "target_start" not in d:
            raise ValueError(f"{f} has no target range; merge files written by scdm fit "
                             "--targets A:B.")
    first = parts[0]
    total = int(first["n_targets_total"])
    ranges = [(int(d["target_start"]), int(d["target_stop"])) for d in parts]
    if ranges[0][0] != 0 or ranges[-1][1] != total or any(
            a[1] != b[0] for a, b in itertools.pairwise(ranges)):
        raise ValueError(f"the files cover target ranges {ranges}; they must tile [0, {total}) "
                         "without gaps or overlaps.")
    for d in parts[1:]:
        if d.get("units") != first.get("units") or d["weight"].shape[0] != first[
                "weight"].shape[0] or int(d["n_targets_total"]) != total:
            raise ValueError("the files come from different stores or conventions (units, "
                             "training samples or target count differ).")
        if "mean" in first and not np.allclose(d["mean"], first["mean"]):
            raise ValueError("the files were fitted on different models (mask statistics "
                             "differ); fit every range on the same store and models.")
    data: dict[str, Any] = {
        key: torch.from_numpy(np.concatenate([d[key] for d in parts], axis=-1))
            for key in ("weight", "bias", "lam", "self_influence") if key in first}
    data.update({key: torch.from_numpy(first[key]) for key in ("mean", "scale") if key in first})
    data.update({"units": first.get("units"), "target_start": 0, "target_stop": total,
                 "n_targets_total": total})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in data.items() if v is not None}, args.out)
    print(f"merged {len(parts)} files ({total} targets) into {args.out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from .store import ModelStore
    from .workers import WORKERS_DIR

    store = ModelStore.open(args.store)
    beats = [json.loads(p.read_text()) for p in sorted(Path(args.store, WORKERS_DIR).glob(
        "*.json"))] if Path(args.store, WORKERS_DIR).is_dir() else []
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scdm", description="single-cell datamodels")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="datamodels and subgroups of an .h5ad file, with figures",
                         description="With no INPUT, runs on scanpy's bundled pbmc68k_reduced "
                         "with label 'lineage' (myeloid vs other) on X_pca.")
    run.add_argument("input", nargs="?", help=".h5ad file (default: bundled pbmc68k_reduced)")
    run.add_argument("--label-key", help="obs column with the class to predict")
    run.add_argument("--use-rep", help="obsm key to train on (e.g. X_pca); default .X")
    run.add_argument("--group-key", help="obs column of donors kept in/out together")
    run.add_argument("--stratify-key", help="obs column of a nuisance (batch) held fixed "
                     "across masks")
    run.add_argument("--method", choices=("datamodels", "trak"), default="datamodels",
                     help="attribution: datamodels (thousands of models, exact) or trak (40 "
                     "checkpoints, projected gradients; for large data)")
    run.add_argument("--alpha", type=float, default=None,
                     help="fraction each model trains on (default: tl.train_models')")
    run.add_argument("--n-models", type=int, default=None,
                     help="default: ~25 per sample (datamodels), 40 checkpoints (trak)")
    run.add_argument("--n-neighbors", type=int, default=None,
                     help="kNN of the subgroup graph (default: tl.subgroups')")
    run.add_argument("--resolution", type=float, default=None,
                     help="fixed Leiden resolution (default: chosen per class by "
                     "reproducibility across halves of the models; no split without one)")
    run.add_argument("--covariates", default=None,
                     help="comma-separated obs columns to check each subgroup's make-up "
                     "against (donor, batch, QC metrics), besides --group-key and "
                     "--stratify-key; default for the bundled data: phase,n_counts,"
                     "percent_mito")
    run.add_argument("--known-key", help="obs column of known annotations (e.g. finer cell "
                     "types) to tabulate against the subgroups in the report and summary "
                     "(default for the bundled data: bulk_labels)")
    run.add_argument("--umap", action="store_true",
                     help="also lay out each class's embedding with UMAP: an added figure "
                     "(embedding_umap.png) beside the components (~10 s more)")
    run.add_argument("--lds-models", type=int, default=None,
                     help="evaluation models for the LDS and the model-count curve (0: skip)")
    run.add_argument("--store", help="store directory (default OUT/store)")
    run.add_argument("--device", default="auto")
    run.add_argument("--random-state", type=int, default=0)
    run.add_argument("--out", required=True, help="output directory")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    store_cmd = sub.add_parser("store", help="create a store for workers")
    store_sub = store_cmd.add_subparsers(dest="store_command", required=True)
    init = store_sub.add_parser("init", help="write a store and its training recipe from .h5ad, "
                                "or an empty store from MadryLab's spec.json (--spec)")
    init.add_argument("input", nargs="?", help=".h5ad file (not with --spec)")
    init.add_argument("--store", required=True, help="store directory (shared filesystem)")
    init.add_argument("--spec", help="MadryLab spec.json ({num_models, schema}): a store for "
                      "scdm worker --main-import (a user's training function)")
    init.add_argument("--label-key")
    init.add_argument("--use-rep")
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
    train = sub.add_parser("train", help="one idempotent worker: train a range of models")
    train.add_argument("--store", required=True)
    train.add_argument("--models", default=":", help="START:STOP (default: all)")
    train.add_argument("--device", default="auto")
    train.add_argument("--chunk-size", type=int, default=None)
    train.add_argument("--quiet", action="store_true")
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
    status = sub.add_parser("status", help="completed / total models and throughput")
    status.add_argument("--store", required=True)
    status.add_argument("--json", action="store_true")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args, unknown = parser.parse_known_args(argv)
    if (unknown or extra) and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join([*unknown, *extra])} (arguments for "
                     "a user's script go to scdm worker)")
    args.main_args = [*unknown, *extra]  # for the user's main() (scdm worker)
    if args.command in ("run", "store"):
        _fill_defaults(args)
    commands = {"run": _run, "store": _store_init, "train": _train, "worker": _worker,
                "fit": _fit, "status": _status}
    try:
        return commands[args.command](args)
    except (KeyError, ValueError, TypeError, FileNotFoundError, ImportError,
            MemoryError) as err:
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        if args.command == "run":
            message = _as_flags(message)
        print(f"scdm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
