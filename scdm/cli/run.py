"""``scdm run``: datamodels or TRAK of an .h5ad file (or the bundled data) end to end, with the
subgroups, their checks, the evaluation, a report and a summary. It only adapts: every step is
a ``scdm.tl`` call, every default is the library's, and the summary is ``scdm.get.summary``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path

from .._checks import check_fraction
from ._common import Stages, check_folder, columns, fill_defaults, library_messages
from ._summary import summary_lines

# tl's parameter names in messages raised after the checks below, as `scdm run`'s flags
RUN_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "label_key", "use_rep", "group_key", "stratify_key", "n_models", "n_neighbors", "alpha",
    "resolution", "random_state")}
DEFAULTS = (("alpha", "datamodels", "alpha"), ("n_neighbors", "subgroups", "n_neighbors"),
            ("lds_models", "lds", "n_models"))


def as_flags(message: str) -> str:
    """A library message with its parameter names written as this command's flags."""
    return re.sub(r"\b(" + "|".join(RUN_FLAGS) + r")\b(=\s?)?",
                  lambda m: RUN_FLAGS[m.group(1)] + (" " if m.group(2) else ""), message)


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="datamodels and subgroups of an .h5ad file, with figures",
                         description="With no INPUT, runs on scanpy's bundled pbmc68k_reduced "
                         "with label 'lineage' (myeloid vs other) on X_pca.")
    run.add_argument("input", nargs="?", help=".h5ad file (default: bundled pbmc68k_reduced)")
    run.add_argument("--label-key", help="obs column with the class to predict")
    run.add_argument("--use-rep", help="obsm key to train on (e.g. X_pca), or X for .X; "
                     "default auto: .X, or its PCs where .X is mostly noise")
    run.add_argument("--group-key", help="obs column of donors kept in/out together")
    run.add_argument("--stratify-key", help="obs column of a nuisance (batch) held fixed "
                     "across masks")
    run.add_argument("--method", choices=("datamodels", "trak"), default="datamodels",
                     help="attribution: datamodels (thousands of models, exact) or trak "
                     "(checkpoints and projected gradients; for large data)")
    run.add_argument("--alpha", type=float, default=None,
                     help="fraction each model trains on (default: tl.datamodels')")
    run.add_argument("--n-models", type=int, default=None,
                     help="default: tl.datamodels' (~25 per sample) or tl.trak's checkpoints")
    run.add_argument("--n-neighbors", type=int, default=None,
                     help="kNN of the subgroup graph (default: tl.subgroups')")
    run.add_argument("--resolution", type=float, default=None,
                     help="fixed Leiden resolution (default: chosen per class by "
                     "reproducibility across halves of the models; no split without one)")
    run.add_argument("--second-round", type=int, default=0, metavar="FACTOR",
                     help="where the check leaves a class undecided (clusters beyond the "
                     "null that the halves place differently), train FACTOR x the models and "
                     "decide it (tl.second_round); default 0: only report such classes")
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


def check(args: argparse.Namespace, adata, label_key: str, use_rep: str | None,
          covariates: list[str]) -> None:
    """Every input checked before the estimate, the out folder or any training; each message
    names the flag and what would work."""
    check_folder("--out", Path(args.out))
    if args.store:
        check_folder("--store", Path(args.store))
    if label_key not in adata.obs:
        raise KeyError(f"--label-key {label_key!r} is not a column of the input's obs "
                       f"(columns: {columns(adata.obs.columns)}).")
    counts = adata.obs[label_key].value_counts()
    counts = counts[counts > 0]
    if counts.size < 2:
        raise ValueError(f"--label-key {label_key!r} has {counts.size} class; the models need "
                         "at least two.")
    if use_rep not in (None, "X", "auto") and use_rep not in adata.obsm:
        raise KeyError(f"--use-rep {use_rep!r} is not in the input's obsm (keys: "
                       f"{columns(adata.obsm.keys()) or 'none'}); leave it out (auto) or give "
                       "X for .X.")
    for flag, column in (("--group-key", args.group_key), ("--stratify-key", args.stratify_key),
                         ("--known-key", args.known_key)):
        if column is not None and column not in adata.obs:
            raise KeyError(f"{flag} {column!r} is not a column of the input's obs (columns: "
                           f"{columns(adata.obs.columns)}).")
    unknown = [c for c in covariates if c not in adata.obs]
    if unknown:
        raise KeyError(f"--covariates {unknown} are not columns of the input's obs (columns: "
                       f"{columns(adata.obs.columns)}).")
    check_fraction("--alpha", args.alpha)
    fewest = 4 if args.method == "trak" else 1
    if args.n_models is not None and args.n_models < fewest:
        raise ValueError(f"--n-models must be at least {fewest} with --method {args.method}, "
                         f"got {args.n_models}.")
    if args.lds_models < 0:
        raise ValueError(f"--lds-models must be 0 (no evaluation) or more, got "
                         f"{args.lds_models}.")
    if args.n_neighbors < 2:
        raise ValueError(f"--n-neighbors must be at least 2, got {args.n_neighbors}.")
    if args.second_round == 1 or args.second_round < 0:
        raise ValueError(f"--second-round must be 0 (off) or a factor of at least 2, got "
                         f"{args.second_round}.")
    if args.second_round and args.resolution is not None:
        raise ValueError("--second-round decides what the automatic check leaves undecided; "
                         "a fixed resolution has no check: leave one of them out.")
    # tl.subgroups' rule: a kNN graph in each half of a class (automatic resolution)
    from ..clustering import fewest_points, most_neighbors

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


def _inputs(args: argparse.Namespace):
    """The AnnData and what to run on it: the given file, or the bundled data's defaults."""
    import anndata as ad

    from ..datasets import PBMC68K_COVARIATES, pbmc68k_lineage

    if args.input is None:
        adata, source = pbmc68k_lineage(), "scanpy.datasets.pbmc68k_reduced (bundled)"
        label_key, use_rep = args.label_key or "lineage", args.use_rep or "X_pca"
    else:
        if args.label_key is None:
            raise ValueError("--label-key is required with an input file (the obs column "
                             "with the class to predict).")
        if not Path(args.input).is_file():
            raise FileNotFoundError(f"the input {args.input} does not exist or is not a file "
                                    "(an .h5ad file).")
        adata, source = ad.read_h5ad(args.input), str(args.input)
        label_key, use_rep = args.label_key, args.use_rep or "auto"
    covariates = [c for c in (args.covariates.split(",") if args.covariates is not None
                              else PBMC68K_COVARIATES if args.input is None else ()) if c]
    known_key = args.known_key or ("bulk_labels" if args.input is None else None)
    return adata, source, label_key, use_rep, covariates, known_key


def execute(args: argparse.Namespace) -> int:
    import scdm

    fill_defaults(args, DEFAULTS)
    scdm.settings.verbosity = 0 if args.quiet else 1
    adata, source, label_key, use_rep, covariates, known_key = _inputs(args)
    check(args, adata, label_key, use_rep, covariates)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = args.method  # "datamodels" or "trak": the key of every result
    groups = scdm.get.subgroup_key(key)
    common = {"use_rep": use_rep, "group_key": args.group_key,
              "stratify_key": args.stratify_key, "alpha": args.alpha,
              "store": Path(args.store) if args.store else out / "store",
              "device": args.device, "random_state": args.random_state}
    if args.n_models is not None:  # otherwise the tool's own default
        common["n_models"] = args.n_models
    stages = Stages(quiet=args.quiet)
    checked = list(dict.fromkeys(
        [c for c in (args.group_key, args.stratify_key) if c] + covariates))
    # the tools log their estimate before any work, the defaults they choose and their scores
    with library_messages(not args.quiet):
        if key == "trak":
            with stages("TRAK (checkpoints, projected gradients, embedding)"):
                scdm.tl.trak(adata, label_key, **common)
        else:
            with stages("datamodels (train, fit, embed)"):
                scdm.tl.datamodels(adata, label_key, **common)
            tool = adata.uns[key]["seconds"]
            stages.split("datamodels (train, fit, embed)",
                         {"train models": tool["train"],
                          "fit datamodels": tool["fit"] + tool["embed"]})
        with stages("subgroups"):
            with warnings.catch_warnings():
                if args.second_round:  # undecided classes are decided next, not left to the user
                    warnings.simplefilter("ignore", scdm.tl.UndecidedSubgroupsWarning)
                scdm.tl.subgroups(adata, key=key, n_neighbors=args.n_neighbors,
                                  resolution=args.resolution, random_state=args.random_state)
            second = 0.0
            if args.second_round and len(adata.uns[groups].get("undecided", [])):
                second = time.perf_counter()
                scdm.tl.second_round(adata, key=key, factor=args.second_round,
                                     device=args.device)
                second = time.perf_counter() - second
            if checked:
                scdm.tl.subgroup_composition(adata, checked, key=groups,
                                             random_state=args.random_state)
            if args.umap:
                scdm.tl.umap(adata, key=key, random_state=args.random_state)
        if second:  # its own line in the stages: the extra models' cost
            stages.split("subgroups", {"subgroups": stages.seconds["subgroups"] - second,
                                       f"second round ({args.second_round}x the models where "
                                       "undecided)": second})
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
    found = scdm.get.summary(adata, key, known_key=known_key)
    summary = {"method": found["method"], "input": source, **found,
               "seconds": {name: round(t, 1) for name, t in stages.seconds.items()},
               "outputs": {"adata": str(out / "adata.h5ad"), "report": str(report),
                           "figures": sorted(str(p) for p in out.glob("*.png"))}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = "\n".join(summary_lines(adata, summary, checked=checked))
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0
