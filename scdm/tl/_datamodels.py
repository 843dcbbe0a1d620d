"""``scdm.tl.datamodels``: train, fit and embed in one call."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anndata import AnnData

from .._anndata import AUTO, choose_input, counts_checked
from .._docs import doc_params
from .._seeding import check_random_state
from ..masks import check_alpha
from ._cost import check_datamodels_cost
from ._embed import embed_datamodels
from ._fit import fit_datamodels
from ._recorded import fold_train_kwds, one_view, train_config
from ._train import train_models


@one_view
@doc_params
def datamodels(
    adata: AnnData,
    label_key: str,
    *,
    use_rep: str | None = AUTO,
    layer: str | None = None,
    group_key: str | None = None,
    stratify_key: str | None = None,
    alpha: float = 0.5,
    n_models: int | None = None,
    store: str | Path | None = None,
    n_comps: int = 10,
    device: str = "auto",
    random_state: int = 0,
    key_added: str = "datamodels",
    train_kwds: Mapping[str, Any] | None = None,
    fit_kwds: Mapping[str, Any] | None = None,
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Datamodels of every observation: train models on random subsets, fit, embed.

    Runs :func:`scdm.tl.train_models` (``n_models`` small classifiers of ``label_key``, each on
    a random ``alpha`` fraction of the observations, margins stored on disk),
    :func:`scdm.tl.fit_datamodels` (per observation, a LASSO from training masks to its
    held-out margins: which training samples move its prediction) and
    :func:`scdm.tl.embed_datamodels` (a low-dimensional embedding of those weight vectors).
    Follow with :func:`scdm.tl.subgroups` and :func:`scdm.pl.embedding`.

    The store is resumable: rerunning the same call after an interruption continues where it
    stopped, and a larger ``n_models`` extends it.

    Parameters
    ----------
    {training_inputs}
    n_models
        Number of models. Default ~25 per observation (or group), at least 1,000 (logged).
    store
        Store directory; default a per-configuration directory under
        ``scdm.settings.store_dir``.
    n_comps
        Dimensions of the embedding ``adata.obsm[f"X_{key_added}"]`` (computed per class, see
        :func:`scdm.tl.embed_datamodels`).
    {device}
    random_state
        Seed of masks, model initialisations, data orders, validation split and SVD.
    key_added
        Key of all results (see Returns).
    {train_kwds}
    fit_kwds
        More arguments of :func:`scdm.tl.fit_datamodels` (``n_lambdas``, ``val_fraction``, ...).
    {verbose_copy}

    Before training, the disk, memory and CPU time of the whole run are estimated and logged;
    a run beyond ``scdm.settings.max_memory``, the free disk or ``scdm.settings.max_hours`` is
    refused with the alternatives (``scdm.tl.trak`` and its estimate among them).

    Returns
    -------
    ``None`` or a copy, with

    - ``adata.obsp[key_added]``: the datamodel matrix ``W`` (row = target, column = training
      sample, raw margin units; CSR when sparse),
    - ``adata.obsm[f"X_{key_added}"]``: the embedding,
    - ``adata.obs[f"{key_added}_corr"]``: held-out correlation of predicted and actual margins,
    - ``adata.uns[key_added]``: store path, ``params``, per-target ``lambda``, summary metrics
      and ``"seconds"`` (``"train"``, ``"fit"``, ``"embed"``: what each step took).
    """
    fit_kwds = dict(fit_kwds or {})
    reserved = {"adata", "label_key", "key", "key_added", "copy", "store", "device",
                "random_state", "verbose"}
    for name, kwds in (("train_kwds", dict(train_kwds or {})), ("fit_kwds", fit_kwds)):
        if clash := sorted(set(kwds) & reserved):
            raise TypeError(f"{name} must not set {clash}; pass them to datamodels directly.")
    train_kwds = fold_train_kwds(train_kwds)
    config = train_config(train_kwds.get("config"),
                          n_train=round(check_alpha(alpha) * adata.n_obs))
    seed = check_random_state(random_state)
    choice = choose_input(adata, label_key, use_rep, layer, scale=train_kwds.get("scale", True),
                          random_state=seed)
    check_datamodels_cost(adata, label_key=label_key, n_features=choice.width(adata),
                          group_key=group_key, n_models=n_models, alpha=alpha, config=config,
                          device=device, store=store)
    adata = adata.copy() if copy else adata
    start = time.perf_counter()
    choice.apply(adata, seed)
    with counts_checked():  # by choose_input above: not read, tested and warned of twice
        train_models(adata, label_key, use_rep=choice.use_rep, layer=layer, group_key=group_key,
                     stratify_key=stratify_key, alpha=alpha, n_models=n_models, store=store,
                     device=device, random_state=random_state, key_added=key_added,
                     verbose=verbose, **train_kwds)
    choice.record(adata, key_added)
    trained = time.perf_counter()
    fit_datamodels(adata, key=key_added, device=device, random_state=random_state,
                   verbose=verbose, **fit_kwds)
    fitted = time.perf_counter()
    embed_datamodels(adata, key=key_added, n_comps=n_comps, random_state=random_state)
    # as tl.trak records its stages: what each took in this call (a resumed store trains less)
    adata.uns[key_added]["seconds"] = {"train": trained - start, "fit": fitted - trained,
                                       "embed": time.perf_counter() - fitted}
    return adata if copy else None
