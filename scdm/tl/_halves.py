"""Datamodels of two disjoint halves of the models, embedded like the full fit.

:func:`scdm.tl.subgroups` decides how many subgroups a class has by whether a split reproduces
across independent halves of the models (see :mod:`scdm.clustering`). The halves are fitted
with the recorded fit settings and embedded with the recorded embedding settings, and cached
in ``adata.obsm`` so that reclustering does not refit.
"""

from __future__ import annotations

import logging

import numpy as np
from anndata import AnnData

from .._anndata import uns_safe
from .._memmap import read_rows
from ..store import fingerprint_differences
from ._embed import embed_blocks, embedding_blocks, usable_targets
from ._fit import models_needed, solve_datamodels
from ._recorded import recorded_training

logger = logging.getLogger("scdm")


def half_keys(key: str) -> tuple[str, str]:
    """``adata.obsm`` keys of the two halves' embeddings."""
    return f"X_{key}_half1", f"X_{key}_half2"


def half_embeddings(adata: AnnData, key: str = "datamodels", *, device: str = "auto",
                    verbose: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the datamodels fitted on the even- and odd-numbered completed models.

    Masks are drawn independently per model, so the two halves are independent replicates of
    the experiment. Cached in ``adata.obsm`` (:func:`half_keys`) with the fit and embedding
    settings they were made with in ``adata.uns[key]["halves"]``; a later call with the same
    settings reuses them.
    """
    info = adata.uns.get(key)
    if isinstance(info, dict) and info.get("method") == "trak":
        # tl.trak embeds its even- and odd-numbered checkpoints itself
        keys = half_keys(key)
        if not all(k in adata.obsm for k in keys):
            raise KeyError(f"adata.obsm has no {keys}; rerun scdm.tl.trak(adata, ..., "
                           f"key_added={key!r}), which makes them.")
        return adata.obsm[keys[0]], adata.obsm[keys[1]]
    if not isinstance(info, dict) or "fit_params" not in info or "embedding" not in info:
        raise KeyError(f"adata.uns[{key!r}] holds no fitted and embedded datamodels; run "
                       "scdm.tl.datamodels (or fit_datamodels and embed_datamodels) first, or "
                       "pass resolution= to cluster without the reproducibility check.")
    fit_params = dict(info["fit_params"])
    embed_params = dict(info["embedding"]["params"])
    settings = {"fit_params": fit_params, "embedding": embed_params}
    keys = half_keys(key)
    cached = info.get("halves", {}).get("params")
    if cached is not None and all(k in adata.obsm for k in keys) and not fingerprint_differences(
            cached, uns_safe(settings)):
        return adata.obsm[keys[0]], adata.obsm[keys[1]]

    store = recorded_training(adata, key).store
    completed = store.completed_indices()[: int(fit_params["n_models_used"])]
    per_half = completed.size // 2
    needed = models_needed(fit_params, adata.uns[key]["params"]["alpha"])
    if per_half < 1.5 * needed:
        raise ValueError(
            f"{completed.size} models are too few to split into two halves whose datamodels "
            f"can be fitted (each half needs about {int(np.ceil(1.5 * needed))} models); train "
            "more models (n_models), or pass resolution= to cluster without the "
            "reproducibility check.")
    label_key = embed_params.get("label_key") if embed_params.get("within_class", True) else None
    blocks = embedding_blocks(adata, label_key)
    ok = usable_targets(adata, key)
    halves = []
    for h, rows in enumerate((completed[0::2], completed[1::2])):
        logger.info("fitting the datamodels of half %d of the models (%d)", h + 1, rows.size)
        model = solve_datamodels(read_rows(store.masks, rows), read_rows(store.margins, rows),
                                 {**fit_params, "n_models_used": int(rows.size)},
                                 device=device, verbose=verbose)
        embedding, _ = embed_blocks(model.coef_.T, blocks, ok=ok,
                                    n_comps=int(embed_params["n_comps"]),
                                    standardize=bool(embed_params["standardize"]),
                                    within_class=label_key is not None,
                                    seed=int(embed_params["random_state"]))
        halves.append(embedding)
    for name, embedding in zip(keys, halves, strict=True):
        adata.obsm[name] = embedding
    info = dict(adata.uns[key])
    info["halves"] = {"params": settings, "obsm": list(keys),
                      "n_models": [int(completed[0::2].size), int(completed[1::2].size)]}
    adata.uns[key] = uns_safe(info)
    return halves[0], halves[1]

