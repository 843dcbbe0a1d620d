"""Choosing the models before paying for them: ``scdm.tl.signal_to_noise``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from anndata import AnnData
from tqdm.auto import tqdm

from .._anndata import AUTO, choose_input
from .._seeding import SNR_PURPOSE, check_random_state, derived_seed
from .._settings import settings
from ..ensemble import EnsembleTrainer, TrainConfig, resolve_device
from ..evaluation import signal_to_noise as _snr
from ..masks import MaskMode
from ..workers import RepeatedMasks
from ._recorded import check_n_models, training_parts


def signal_to_noise(
    adata: AnnData,
    label_key: str,
    *,
    use_rep: str | None = AUTO,
    layer: str | None = None,
    group_key: str | None = None,
    stratify_key: str | None = None,
    alpha: float = 0.5,
    n_masks: int = 32,
    n_seeds: int = 4,
    mask_mode: MaskMode = "balanced",
    config: TrainConfig | Mapping[str, Any] | None = None,
    scale: bool = True,
    device: str = "auto",
    chunk_size: int | None = None,
    random_state: int = 0,
    verbose: bool | None = None,
) -> dict:
    """How much of a margin is the training subset, and how much the seed?

    Trains ``n_seeds`` models on each of ``n_masks`` subsets (the arguments are those of
    :func:`scdm.tl.train_models`; ``chunk_size``: models trained at once). A datamodel can
    only learn the part of a margin that moves with the subset; the part that moves with the
    initialisation and data order is noise to it. Compare settings (``alpha``, and ``config``'s
    ``weight_decay``, ``hidden``, ``epochs``) by the median
    signal-to-noise ratio, among those with an acceptable held-out accuracy — the criterion
    the datamodel-subgroups study used to pick α and model size. Nothing is written to
    ``adata`` (PCs that ``use_rep="auto"`` needs are computed on a copy).

    Returns
    -------
    dict with ``"median_snr"``, ``"median_signal"``, ``"median_noise"``,
    ``"mean_heldout_accuracy"``, per-target ``"snr"``/``"signal"``/``"noise"`` arrays (held-out
    subsets only) and the ``"params"`` compared.
    """
    n_masks = check_n_models(n_masks)
    n_seeds = check_n_models(n_seeds)
    if n_seeds < 2 or n_masks < 4:
        raise ValueError("signal_to_noise needs n_seeds >= 2 and n_masks >= 4 (noise is the "
                         "variance across seeds, signal the variance across subsets).")
    seed = check_random_state(random_state)
    choice = choose_input(adata, label_key, use_rep, layer, scale=scale, random_state=seed)
    if choice.compute_pcs:
        adata = adata.copy()
        choice.apply(adata, seed)
    inputs, sampler, config = training_parts(
        adata, label_key, use_rep=choice.use_rep, layer=layer, group_key=group_key,
        stratify_key=stratify_key, alpha=alpha, mask_mode=mask_mode, config=config,
        scale=scale, random_state=derived_seed(seed, SNR_PURPOSE))
    trainer = EnsembleTrainer(inputs.X, inputs.y, config, n_classes=len(inputs.classes),
                              device=resolve_device(device), random_state=sampler.random_state)
    chunk = int(chunk_size or trainer.auto_chunk_size())
    total = n_masks * n_seeds
    masks = RepeatedMasks(sampler, n_seeds).sample(np.arange(total))
    margins = np.empty((total, adata.n_obs), dtype=np.float32)
    accuracy = np.empty(total, dtype=np.float32)
    with tqdm(total=total, desc="signal-to-noise models", unit="model",
              disable=not settings.progress(verbose)) as bar:
        for start in range(0, total, chunk):
            idx = np.arange(start, min(start + chunk, total))
            result = trainer.train(masks[idx], idx)
            margins[idx], accuracy[idx] = result.margins, result.heldout_accuracy
            bar.update(idx.size)
    out = _snr(margins.reshape(n_masks, n_seeds, -1), masks[::n_seeds])
    out["mean_heldout_accuracy"] = float(np.nanmean(accuracy))
    out["params"] = {"alpha": sampler.alpha, "n_masks": n_masks, "n_seeds": n_seeds,
                     "use_rep": choice.use_rep, **config.to_dict()}
    return out
