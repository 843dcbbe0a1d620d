"""``scdm.tl.second_round``: more models where ``tl.subgroups`` left a class undecided."""

from __future__ import annotations

import logging
import time
import warnings

import pandas as pd
from anndata import AnnData

from .._anndata import uns_safe
from .._checks import check_int
from .._docs import doc_params
from ..get import subgroup_key
from ..workers import Backend, as_backend
from ._cost import TRAK_MAX_OBSP
from ._datamodels import datamodels
from ._recorded import recorded_config
from ._subgroups import (
    SECOND_ROUND_FACTOR,
    NoisyInputWarning,
    UndecidedSubgroupsWarning,
    finish_subgroups,
    subgroup_order,
    subgroups,
)
from ._trak import trak

logger = logging.getLogger("scdm")

# fit_datamodels' keywords that its recorded ``fit_params`` hold (its random_state is the
# attribution's own)
_FIT_KEYWORDS = ("heldout", "n_lambdas", "eps", "val_fraction", "tol", "path_tol", "min_rows",
                 "precompute", "memory_budget")


@doc_params
def second_round(
    adata: AnnData,
    *,
    key: str = "trak",
    key_added: str | None = None,
    factor: int = SECOND_ROUND_FACTOR,
    proj_dim: int | None = None,
    backend: str | Backend = "local",
    device: str = "auto",
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Decide the classes :func:`scdm.tl.subgroups` left undecided, with more models.

    A class is undecided when both halves of the models find the same clusters in it,
    separated beyond the check's null by its margin, but the halves agree on where the
    clusters part only at 0.5 or more, under ``min_reproducibility`` (see
    :func:`scdm.tl.subgroups`): the models are too few to decide, and the class was kept
    whole. This trains ``factor`` times the models into the same store (the first ones are
    kept: only the new ones are trained), computes the attribution again under
    ``f"{key}_round2"`` with every recorded setting, and runs :func:`scdm.tl.subgroups`, its
    check unchanged, on the undecided classes only. Their result replaces theirs in
    ``adata.obs[key_added]``; every other class keeps its first-round subgroups, so the extra
    models cost only where the first round found structure it could not decide. Nothing is
    trained when no class is undecided.

    Measured on the scenario suite (TRAK, 40 → 160 checkpoints, raw features and ``X_pca``,
    seeds 0-2, 204 runs; ``workflows/benchmarks/RESULTS.md``, issue 28): 29 runs had an
    undecided class; 10 of the 13 undecided planted classes were split (6 into the right
    number: weak programmes, unequal sizes, mutually exclusive programmes) and all 17
    undecided null classes (graded continua, gradients, heavy-tailed modules) stayed whole.
    Where the first round left a class whole because the attribution does not separate its
    subtypes (rare ones), nothing is undecided and nothing is trained. The second round's
    attribution took about 2-4 times the first's (160 checkpoints from scratch against 40).
    Datamodels (``X_pca``, 15,000 → 60,000 models) left their one undecided class of the
    module generator's 21 runs whole.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.trak` or :func:`scdm.tl.datamodels` and
        :func:`scdm.tl.subgroups` (automatic resolution), with the attribution's store on disk.
    key
        Key of the attribution (``adata.uns[key]``).
    key_added
        Key of the subgroups to decide (default ``f"{key}_subgroup"``).
    factor
        The second round trains ``factor`` times the first round's models (at least 2).
    proj_dim
        TRAK only: the projection of the second round's gradients (default: the first
        round's ``proj_dim``). A larger one keeps more of each gradient and costs more (the
        kernel is cubic in it); the models are the same. On the scenario suite 1,024 instead
        of 512 changed no count among its 17 undecided classes (10 null, kept whole either
        way) and took 2.5-3 times as long (``workflows/benchmarks/RESULTS.md``, issue 28).
    backend
        Where the new models are trained (and, for TRAK, featurized and embedded):
        ``"local"``, ``"ray"`` or a :class:`~scdm.workers.RayBackend`, as ``train_kwds``'s
        ``backend`` of :func:`scdm.tl.trak` / :func:`scdm.tl.datamodels` (a backend is not
        recorded in ``adata.uns``, so the first round's is not known here). The results are
        the same on CPU whichever runs them.
    device
        Where the models are trained and the attribution computed.
    {verbose_copy}

    Returns
    -------
    ``None`` or a copy. Updates ``adata.obs[key_added]`` for the undecided classes and
    ``adata.uns[key_added]``: per such class the second round's evidence as
    ``"second_round"`` in its ``reproducibility`` entry (``n_subgroups`` the final count),
    ``undecided`` the classes still undecided, and ``second_round`` (``key``, ``factor``,
    ``n_models``, ``classes``, ``split``, ``undecided``, ``seconds``). The second round's
    attribution and subgroups stay under ``f"{key}_round2"`` and ``f"{key}_round2_subgroup"``.
    """
    key_added = key_added or subgroup_key(key)
    info = adata.uns.get(key_added)
    if not isinstance(info, dict) or "reproducibility" not in info:
        raise KeyError(f"adata.uns[{key_added!r}] holds no checked subgroups; run "
                       f"scdm.tl.subgroups(adata, key={key!r}) first (with its automatic "
                       "resolution: a fixed one decides nothing).")
    params = dict(info["params"])
    if params["key"] != key:
        raise ValueError(f"adata.uns[{key_added!r}] holds subgroups of {params['key']!r}, not "
                         f"{key!r}; pass key={params['key']!r}.")
    if "second_round" in info:
        raise ValueError(f"adata.uns[{key_added!r}] was decided by a second round already; "
                         f"run scdm.tl.subgroups(adata, key={key!r}) to start again.")
    check_int("factor", factor, 2)
    if proj_dim is not None:
        check_int("proj_dim", proj_dim, 1)
    backend = as_backend(backend)  # a bad one (or Ray missing) fails before anything is done
    attribution = adata.uns.get(key)
    if not isinstance(attribution, dict) or "store" not in attribution:
        raise KeyError(f"adata.uns[{key!r}] holds no attribution with a store; the second "
                       "round trains more models into it (run scdm.tl.trak or "
                       "scdm.tl.datamodels with store=...).")
    if proj_dim is not None and attribution.get("method") != "trak":
        raise ValueError(f"proj_dim is TRAK's projection; adata.uns[{key!r}] holds "
                         "datamodels: leave proj_dim out.")
    pending = [str(c) for c in info.get("undecided", [])]
    adata = adata.copy() if copy else adata
    if not pending:
        logger.info("no class of adata.uns[%r] is undecided: nothing to train", key_added)
        return adata if copy else None

    start = time.perf_counter()
    round2 = f"{key}_round2"
    n_models = factor * int(attribution["n_models"])
    _attribute_again(adata, attribution, round2, n_models, proj_dim=proj_dim, backend=backend,
                     device=device, verbose=verbose)
    with warnings.catch_warnings():
        # what is still undecided is said below, once, as the second round's; the input is
        # the first round's, whose subgroups said so if it is mostly noise
        warnings.simplefilter("ignore", UndecidedSubgroupsWarning)
        warnings.simplefilter("ignore", NoisyInputWarning)
        subgroups(adata, key=round2, label_key=params["label_key"],
                  n_neighbors=int(params["n_neighbors"]),
                  resolutions=list(params["resolutions"]),
                  min_reproducibility=float(params["min_reproducibility"]),
                  n_null=int(params["n_null"]), min_size=int(params["min_size"]),
                  max_points=params.get("max_points"),
                  shared_check=bool(params["shared_check"]), classes=pending, markers=False,
                  device=device, random_state=int(params["random_state"]),
                  key_added=subgroup_key(round2), verbose=verbose)
    second = adata.uns[subgroup_key(round2)]

    labels = adata.obs[params["label_key"]].astype(str).to_numpy()
    names = adata.obs[key_added].astype(str).to_numpy().copy()
    decided = adata.obs[subgroup_key(round2)].astype(str).to_numpy()
    evidence = {cls: dict(value) for cls, value in info["reproducibility"].items()}
    for cls in pending:
        cells = labels == cls
        names[cells] = decided[cells]
        evidence[cls]["second_round"] = dict(second["reproducibility"][cls])
        evidence[cls]["n_subgroups"] = int(second["reproducibility"][cls]["n_subgroups"])
    classes = [str(c) for c in adata.obs[params["label_key"]].astype("category").cat.categories
               if (labels == str(c)).any()]
    order = subgroup_order(names, classes)
    adata.obs[key_added] = pd.Categorical(names, categories=order)
    still = [c for c in pending if c in {str(x) for x in second.get("undecided", [])}]
    info = dict(info)
    info["reproducibility"] = evidence
    info["sizes"] = {str(k): int(v) for k, v in
                     adata.obs[key_added].value_counts().reindex(order).items()}
    info["undecided"] = still
    info["second_round"] = {
        "key": round2, "factor": int(factor), "n_models": n_models, "classes": pending,
        "split": [c for c in pending if evidence[c]["n_subgroups"] > 1],
        "undecided": still, "seconds": time.perf_counter() - start}
    if "trak_params" in adata.uns[round2]:
        info["second_round"]["proj_dim"] = int(adata.uns[round2]["trak_params"]["proj_dim"])
    info.pop("markers", None)  # of the first round's subgroups; made again below
    adata.uns[key_added] = uns_safe(info)
    finish_subgroups(adata, key_added, markers=bool(params.get("markers", True)),
                     n_genes=int(params.get("n_genes", 20)),
                     random_state=int(params["random_state"]))
    if still:
        warnings.warn(f"classes {still} are still undecided after a second round of "
                      f"{n_models} models; they stay one subgroup.", UndecidedSubgroupsWarning,
                      stacklevel=2)
    logger.info("second round: %d models, %d of %d undecided classes split", n_models,
                len(info["second_round"]["split"]), len(pending))
    return adata if copy else None


def _attribute_again(adata: AnnData, attribution: dict, key_added: str, n_models: int, *,
                     proj_dim: int | None, backend: Backend, device: str,
                     verbose: bool | None) -> None:
    """The attribution of ``attribution`` (``adata.uns[key]``) again, with every recorded
    setting but ``n_models`` (and TRAK's ``proj_dim`` where given), into its store, under
    ``key_added``."""
    params = dict(attribution["params"])
    # the recorded model settings: the store's fingerprint matches, so it grows (and refuses,
    # before training, data other than the store's: the fingerprint holds the data's hash)
    train_kwds: dict = {"config": recorded_config(params),
                        "mask_mode": params.get("mask_mode", "balanced"),
                        "scale": bool(params.get("scale", True)), "backend": backend}
    common = {"use_rep": params.get("use_rep"), "layer": params.get("layer"),
              "group_key": params.get("group_key"), "stratify_key": params.get("stratify_key"),
              "alpha": float(params["alpha"]), "n_models": n_models,
              "store": attribution["store"], "device": device,
              "random_state": int(params["random_state"]), "key_added": key_added,
              "verbose": verbose,
              "n_comps": int(attribution["embedding"]["params"]["n_comps"])}
    if attribution.get("method") == "trak":
        settings = attribution["trak_params"]
        trak(adata, params["label_key"], proj_dim=int(proj_dim or settings["proj_dim"]),
             damping=float(settings["damping"]), rank=int(settings["rank"]),
             # attributions of an older scdm did not record max_obsp: tl.trak's default
             max_obsp=int(settings.get("max_obsp", TRAK_MAX_OBSP)), train_kwds=train_kwds,
             **common)
    else:
        train_kwds["min_heldout"] = int(params.get("min_heldout", 20))
        recorded = attribution.get("fit_params", {})
        datamodels(adata, params["label_key"], train_kwds=train_kwds,
                   fit_kwds={k: recorded[k] for k in _FIT_KEYWORDS if k in recorded}, **common)
