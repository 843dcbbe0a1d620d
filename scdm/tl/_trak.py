"""``scdm.tl.trak``: TRAK attribution of every cell, a sibling of ``tl.datamodels``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from anndata import AnnData

from .._anndata import AUTO, choose_input, counts_checked, uns_safe
from .._checks import check_int
from .._docs import doc_params
from .._seeding import check_random_state
from .._settings import settings
from ..ensemble import resolve_device
from ..masks import check_alpha
from ..store import ModelStore, hash_arrays
from ..trak._lowrank import ClassFactors, class_embeddings
from ..trak._ondisk import FeatureStore, featurize, strata_cells
from ..workers import Backend, RayBackend, as_backend, embedding_executor, fill_features
from ._cost import TRAK_CHECKPOINTS, TRAK_MAX_OBSP, TRAK_PROJ_DIM, check_cost, trak_cost
from ._embed import embedding_blocks
from ._halves import half_keys
from ._recorded import fold_train_kwds, one_view, recorded_training, train_config
from ._retrain import stored_params
from ._train import train_models

logger = logging.getLogger("scdm")

# chosen on the scenario suite with tl.subgroups' current check (session 20, RESULTS.md "TRAK's
# damping, measured again"): 10 against 1 on raw features (the default input), 63 planted
# classes: right count 76 % vs 62 %, mean ARI 0.77 vs 0.66; 102 null classes whole at both.
# On X_pca even (28 vs 29 of 63, ARI 0.47 both: Gaussian programs worse, Poisson better);
# real data 0.22 vs 0.15 mean ARI; LDS 0.742 vs 0.724. It was 1 when the check had no
# shared-nuisance step and no margin over the null (trak_benchmark.py --sweep, 2026-11-24).
DEFAULT_DAMPING = 10.0

def _tensor_sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``sum(tensors)`` in the same order (bitwise the builtin's), typed as a tensor."""
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


@one_view
@doc_params
def trak(
    adata: AnnData,
    label_key: str,
    *,
    use_rep: str | None = AUTO,
    layer: str | None = None,
    group_key: str | None = None,
    stratify_key: str | None = None,
    n_models: int = TRAK_CHECKPOINTS,
    alpha: float = 0.5,
    proj_dim: int = TRAK_PROJ_DIM,
    damping: float = DEFAULT_DAMPING,
    n_comps: int = 10,
    rank: int = 256,
    max_obsp: int = TRAK_MAX_OBSP,
    train_kwds: Mapping | None = None,
    store: str | Path | None = None,
    device: str = "auto",
    random_state: int = 0,
    key_added: str = "trak",
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """TRAK attribution of every observation, embedded per class like datamodels.

    Trains ``n_models`` classifiers (checkpoints) on random ``alpha``-subsets exactly as
    :func:`scdm.tl.train_models` does (same store, recipe and resumability), computes every
    observation's gradient of its margin for every checkpoint in closed form, projected to
    ``proj_dim`` (the projection of :func:`scdm.trak.mlp_features`; the checkpoints'
    parameters are kept in the store, ``STORE/checkpoints``, as they are trained, so each is
    trained once and a later call reuses them), and the attribution of training cell ``i`` to
    cell ``j``,
    ``τ(j, i) = mean_c g_c(j)ᵀ (G_cᵀG_c + λ_c I)⁻¹ g_c(i) · q̄_i`` (Park et al. 2023) with
    ``λ_c = damping · mean(diag(G_cᵀG_c))``. The per-class embedding is that of the
    attribution rows with centred and scaled columns (as :func:`scdm.tl.embed_datamodels`),
    computed from the low-rank factors: the ``n × n`` matrix is never formed for the
    embedding, and is stored only when ``n_obs <= max_obsp``.

    The features are computed checkpoint by checkpoint in row blocks and written to the store
    (``STORE/trak_features``, float32, ``n × proj_dim`` per checkpoint: 8 GB for 100,000 cells
    at the defaults); each class is then embedded from its rows, read one checkpoint at a time.
    Memory therefore grows with the largest class, not with ``n × checkpoints × proj_dim``; the
    cost estimate logged first states the disk and memory, and refuses what will not fit. A
    run stopped part-way resumes at the first checkpoint it had not finished, and later tools
    (:func:`scdm.tl.lds`, :func:`scdm.pl.influencers`, ...) read the same features.

    ``damping`` is the knob that matters for subgroups: undamped (``0``, MadryLab ``traker``'s
    default) the inverse whitens away the directions that groups of cells share; very large it
    becomes plain gradient similarity. The default was chosen by measurement (RESULTS.md).

    A batch shifts the inputs of its cells, and with them their gradients: TRAK's geometry
    carries batch structure that balanced masks keep out of datamodels. Name a known batch as
    ``stratify_key``: the gradients are then centred within each (class, batch) cell before
    everything else (subtypes are balanced across batches, so their signal stays).

    The even- and odd-numbered checkpoints give two independent half-size TRAK embeddings
    (``obsm[f"X_{key_added}_half1"]``, ``[..._half2]``), so :func:`scdm.tl.subgroups` with
    ``key=key_added`` decides how many subgroups reproduce exactly as for datamodels.

    With ``train_kwds=dict(backend=RayBackend(...))`` everything that scales with the cells
    runs as Ray tasks: the checkpoints' training, their features (one task per checkpoint) and
    every pass of the embedding's randomized SVD (one task per checkpoint, summed here in a
    fixed order). The store must be on a filesystem the workers see. The result equals a
    local run's bitwise on CPU.

    Parameters
    ----------
    {training_inputs}
    store, random_state
        As in :func:`scdm.tl.train_models`.
    {device}
    n_models
        Checkpoints (classifiers). Each half gets ``n_models // 2``. More checkpoints make
        the halves that :func:`scdm.tl.subgroups` checks a split on agree more: on classes
        of 300 cells, 160 instead of 40 found weakly separated subtypes the default misses
        (2 of 3 seeds against none) and lost two rare-subtype runs to chance, at 4.5 times
        the time (``workflows/benchmarks/RESULTS.md``, session 25). So more are trained only
        where :func:`scdm.tl.subgroups` leaves a class undecided:
        :func:`scdm.tl.second_round`.
    proj_dim
        Dimension of the projected gradients.
    damping
        Ridge relative to the mean diagonal of each checkpoint's ``GᵀG``.
    n_comps
        Components of the embedding.
    rank
        Components of the class's factor matrix kept for the embedding (exact when the
        class has fewer than ``2 * rank`` cells).
    max_obsp
        Store the ``n × n`` attribution matrix in ``adata.obsp[key_added]`` (rows = targets,
        like datamodels; for :func:`scdm.pl.influencers`, :func:`scdm.tl.lds`) only up to this
        many observations.
    {train_kwds}
    key_added
        Key of the results.
    {verbose_copy}

    Returns
    -------
    ``None`` or a copy. Sets ``adata.obsm[f"X_{key_added}"]`` and its halves,
    ``adata.obs[f"{key_added}_ok"]``, ``adata.uns[key_added]`` (training ``params``, the
    store, ``method="trak"``, ``trak_params``, ``self_influence``, ``embedding``, ``halves``,
    timings) and, for small data, ``adata.obsp[key_added]``.
    """
    train_kwds = fold_train_kwds(train_kwds)
    # each checkpoint's parameters kept as it is trained: TRAK needs them, and training them
    # again later would double the first call's training
    train_kwds["backend"] = dataclasses.replace(as_backend(train_kwds.get("backend", "local")),
                                                keep_checkpoints=True)
    check_int("n_models", n_models, 4, " (two halves of at least 2 checkpoints)")
    check_int("proj_dim", proj_dim, 1)
    if not damping >= 0:
        raise ValueError(f"damping must be non-negative, got {damping!r}.")
    check_int("n_comps", n_comps, 1)
    check_int("rank", rank, 1)
    seed = check_random_state(random_state)
    dev = resolve_device(device)
    config = train_config(train_kwds.get("config"),
                          n_train=round(check_alpha(alpha) * adata.n_obs))
    choice = choose_input(adata, label_key, use_rep, layer, scale=train_kwds.get("scale", True),
                          random_state=seed)
    check_cost(trak_cost(adata, label_key=label_key, n_features=choice.width(adata),
                         n_models=n_models, proj_dim=int(proj_dim), max_obsp=max_obsp,
                         rank=int(rank), alpha=alpha, config=config, device=dev.type,
                         ray=isinstance(train_kwds["backend"], RayBackend)),
               store=store,
               alternatives="Lower proj_dim or n_models, or max_obsp (the n × n matrix); the "
                            "features are kept in the store: give store= a folder on a disk "
                            "with more room.")
    adata = adata.copy() if copy else adata
    progress = settings.progress(verbose)

    start = time.perf_counter()
    choice.apply(adata, seed)
    with counts_checked():  # by choose_input above: not read, tested and warned of twice
        train_models(adata, label_key, use_rep=choice.use_rep, layer=layer, group_key=group_key,
                     stratify_key=stratify_key, alpha=alpha, n_models=n_models, store=store,
                     device=device, min_heldout=0, random_state=seed, key_added=key_added,
                     verbose=verbose, **train_kwds)
    choice.record(adata, key_added)
    trained = time.perf_counter()
    features = checkpoint_features(adata, key_added, proj_dim=int(proj_dim), damping=damping,
                                   device=device, progress=progress,
                                   backend=train_kwds["backend"])
    featurized = time.perf_counter()
    Q = features.out_to_loss().astype(np.float64)
    q = Q.mean(0)
    sq_norm = features.sq_norm()
    finite = np.isfinite(q) & np.isfinite(sq_norm).all(0)
    self_influence = sq_norm.mean(0) * q
    A = features.feature_maps()  # read a class's rows at a time, never all of them

    blocks = embedding_blocks(adata, label_key)
    embeddings = {name: np.full((adata.n_obs, n_comps), np.nan, dtype=np.float32)
                  for name in ("full", "half1", "half2")}
    # each half from its own checkpoints only, out-to-loss terms included, so that the two
    # halves are independent replicates
    parts = {"full": (A, q), "half1": (A[0::2], Q[0::2].mean(0)),
             "half2": (A[1::2], Q[1::2].mean(0))}
    paths = [features.folder(m) / "features.npy" for m in features.model_ids]
    paths_of = {"full": paths, "half1": paths[0::2], "half2": paths[1::2]}
    groups = [members[finite[members]] for members in blocks.values()]
    for name, (factors, weights) in parts.items():
        # with Ray, each checkpoint's share of a pass is a task (summed here in order: the
        # same numbers on CPU); the tasks memory-map the features from the store
        executor = embedding_executor(paths_of[name], backend=train_kwds["backend"],
                                      device=device)
        # all classes in one set of reads of the features (on disk, the reads are the cost)
        for rows, embedding in zip(groups, class_embeddings(
                factors, groups, weights, n_comps=n_comps, rank=rank, seed=seed, device=dev,
                progress=progress, desc=f"TRAK embedding ({name})", executor=executor),
                strict=True):
            embeddings[name][rows] = embedding
    embedded = time.perf_counter()

    adata.obsm[f"X_{key_added}"] = embeddings["full"]
    for name, obsm_key in zip(("half1", "half2"), half_keys(key_added), strict=True):
        adata.obsm[obsm_key] = embeddings[name]
    adata.obs[f"{key_added}_ok"] = finite
    if adata.n_obs <= max_obsp:
        factors = torch.cat(features.load(dev), dim=1) / np.sqrt(len(A))
        W = (factors @ factors.T).cpu().numpy() * q[None, :]
        adata.obsp[key_added] = W.astype(np.float32)
    elif key_added in adata.obsp:
        del adata.obsp[key_added]
    info = dict(adata.uns[key_added])
    info.update({
        "method": "trak",
        "trak_params": {"n_checkpoints": len(A), "proj_dim": int(proj_dim),
                        "damping": float(damping), "rank": int(rank),
                        "max_obsp": int(max_obsp),
                        "projection": "kronecker-rademacher", "random_state": seed},
        "self_influence": self_influence.astype(np.float32),
        "intercept": np.zeros(adata.n_obs, dtype=np.float32),
        "embedding": {"params": {"n_comps": int(n_comps), "standardize": True,
                                 "within_class": True, "label_key": label_key,
                                 "random_state": seed, "key_added": f"X_{key_added}"}},
        "halves": {"obsm": list(half_keys(key_added)),
                   "n_models": [len(parts["half1"][0]), len(parts["half2"][0])]},
        "seconds": {"train": trained - start, "featurize": featurized - trained,
                    "embed": embedded - featurized},
    })
    adata.uns[key_added] = uns_safe(info)
    logger.info("TRAK on %d cells from %d checkpoints: %.1f s", adata.n_obs, len(A),
                embedded - start)
    return adata if copy else None


def checkpoint_features(adata: AnnData, key: str, *, proj_dim: int, damping: float,
                        device: str = "auto", progress: bool = False,
                        backend: Backend | None = None) -> FeatureStore:
    """The TRAK features of ``adata.uns[key]``'s checkpoints, on disk: per checkpoint
    ``G_c (G_cᵀG_c + λ_c I)^(-1/2)`` (``n × proj_dim``), the out-to-loss terms and the rows'
    squared norms (:class:`scdm.trak._ondisk.FeatureStore`).

    The checkpoints are the store's first ``n_models`` models; their parameters are kept in the
    store (:func:`stored_params`: retrained from their seeds the first time, bitwise the same
    on CPU, tested, and checked against the stored margins). The features are kept in the
    store too (``STORE/trak_features/<digest>``, keyed by everything that made them, as
    traker's saver keeps them per experiment), so tl.lds, tl.model_count_curve, pl.influencers
    and tl.influence_removal after tl.trak compute no gradients again, and a run stopped
    part-way resumes from the last complete checkpoint. Nothing of size ``n × checkpoints ×
    proj_dim`` is held in memory: each checkpoint is computed in row blocks and written out.
    With a :class:`scdm.workers.RayBackend`, the checkpoints are featurized as Ray tasks (the
    store must be on a filesystem the workers see), with the same numbers.
    """
    training = recorded_training(adata, key)
    seed = int(training.params["random_state"])
    completed = training.store.completed_indices()
    # a store grown by an earlier, larger call keeps its models; this result uses the first
    # n_models checkpoints it asked for (its halves, cost estimate and record say so)
    completed = completed[completed < int(training.params["n_models"])]
    trainer = training.trainer(seed, device)
    _, params = stored_params(training, trainer, completed)
    digest = _factors_digest(training.inputs.data_hash, params, completed, proj_dim=proj_dim,
                             damping=damping, seed=seed)
    features = FeatureStore(_features_root(training.store, digest), n_obs=adata.n_obs,
                            proj_dim=proj_dim, model_ids=completed)
    if not features.missing():
        logger.info("TRAK features read from %s", features.root)
        return features
    # A known nuisance (stratify_key) shifts the inputs, and with them every gradient of a
    # batch: centred within each (class, batch) cell, the gradients keep what varies within
    # batches (subtypes are balanced across them) and lose the batch means, as balanced masks
    # do for datamodels.
    if isinstance(backend, RayBackend):  # tasks read the store's recipe and checkpoints
        fill_features(training.store.path, features.root, features.missing(),
                      n_obs=adata.n_obs, proj_dim=proj_dim, seed=seed, damping=damping,
                      backend=backend, device=device, progress=progress)
    else:
        featurize(features, params, trainer.X, trainer.y, seed=seed, damping=damping,
                  cells=strata_cells(training.inputs.y, training.inputs.strata),
                  progress=progress)
    return features


def checkpoint_factors(adata: AnnData, key: str, *, proj_dim: int, damping: float,
                       device: str = "auto", progress: bool = False
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """:func:`checkpoint_features` read into memory: the per-checkpoint factors (``n ×
    proj_dim`` tensors on ``device``) and the out-to-loss terms ``[K, n]``, for tools that
    form ``n × n`` anyway."""
    features = checkpoint_features(adata, key, proj_dim=proj_dim, damping=damping,
                                   device=device, progress=progress)
    dev = resolve_device(device)
    return features.load(dev), torch.from_numpy(features.out_to_loss()).to(dev)


# Kept per store, keyed by everything that made them; other settings (proj_dim, damping) get
# their own folder, and only the newest few are kept.
FACTORS_DIR = "trak_features"
FACTORS_KEPT = 4


def _factors_digest(data_hash: str, params: list[torch.Tensor], models: np.ndarray, *,
                    proj_dim: int, damping: float, seed: int) -> str:
    """What the factors depend on: the models' inputs, the checkpoints' parameters themselves
    (a refilled or edited checkpoint changes them), the projection and the damping."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"data": data_hash, "models": [int(m) for m in models],
                         "proj_dim": int(proj_dim), "damping": float(damping),
                         "seed": int(seed), "version": 2}, sort_keys=True).encode())
    h.update(hash_arrays(*(p.detach().cpu().numpy() for p in params)).encode())
    return h.hexdigest()


def _features_root(store: ModelStore, digest: str) -> Path:
    """Where this setting's features go: in the store, the oldest other settings' removed;
    a temporary folder (removed at exit) when the store cannot be written to."""
    folder = store.path / FACTORS_DIR
    root = folder / digest
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.utime(root)  # the newest setting, whatever the file system's atime policy
        others = sorted((d for d in folder.iterdir() if d != root),
                        key=lambda d: d.stat().st_mtime_ns, reverse=True)
        for old in others[FACTORS_KEPT - 1:]:  # earlier settings, and the format before 2
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        return root
    except OSError as error:  # a read-only store: correct, only slower next time
        warnings.warn(f"could not keep the TRAK features in the store ({error}); they go to "
                      "a temporary folder and are computed again on the next call.",
                      RuntimeWarning, stacklevel=3)
        return Path(_scratch_folder()) / digest


def _scratch_folder() -> str:
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = tempfile.TemporaryDirectory(prefix="scdm-trak-")
    return _SCRATCH.name


_SCRATCH: tempfile.TemporaryDirectory | None = None


def trak_predictions(A: list[torch.Tensor] | list[np.ndarray], q: np.ndarray,
                     masks: np.ndarray) -> np.ndarray:
    """Margins that TRAK scores predict for models trained on ``masks`` (``E × n``):
    ``Σ_i mask_i τ(j, i)`` for every target ``j``, from the factors (no ``n × n`` matrix):
    tensors, or the store's memory maps (read in row blocks)."""
    weights = np.asarray(masks, dtype=np.float32) * q[None, :].astype(np.float32)
    if not isinstance(A[0], torch.Tensor):  # mean_c W a_c a_cᵀ = (A Aᵀ Wᵀ)ᵀ, A = [a_c] / √K
        factors = ClassFactors(A, np.arange(A[0].shape[0]))
        pred = factors.matmul(factors.rmatmul(torch.as_tensor(weights.T))).T
        return pred.numpy().astype(np.float64)
    tensors = [torch.as_tensor(a) for a in A]
    W = torch.as_tensor(weights, device=tensors[0].device)
    pred = _tensor_sum([(W @ a) @ a.T for a in tensors]) / len(tensors)
    return pred.cpu().numpy().astype(np.float64)


def trak_factor_settings(adata: AnnData, key: str) -> dict:
    """The settings a TRAK result was made with (to rebuild its factors)."""
    info = adata.uns.get(key, {})
    if info.get("method") != "trak":
        raise KeyError(f"adata.uns[{key!r}] holds no TRAK result; run scdm.tl.trak first.")
    return dict(info["trak_params"])
