"""A label that a nuisance predicts by accident: the setting of group robustness and D3M."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import check_fraction
from .._seeding import check_random_state


def spurious_groups(
    n_obs: int = 400,
    *,
    correlation: float = 0.9,
    n_features: int = 40,
    core_features: int = 5,
    core_effect: float = 0.8,
    site_features: int = 10,
    site_effect: float = 1.5,
    unaffected: float = 0.0,
    random_state: int = 0,
) -> AnnData:
    """Gaussian cells whose label is weakly encoded by biology and strongly by a site.

    Half the cells are ``"disease"``; the ``"disease"`` cells sit at site ``"B"`` and the
    controls at site ``"A"`` with probability ``correlation`` (else the other site). Disease
    shifts ``core_features`` features by ``core_effect`` (the real signal); the site shifts
    ``site_features`` other features by ``site_effect`` (the shortcut). A classifier leans on
    the site and fails on the minority groups (disease at A, control at B): the worst group.

    With ``unaffected > 0``, that share of the disease cells at site B carries no disease
    signal (as when a donor-level label is given to every cell of a donor, affected or not):
    the model can only fit those cells through the site, so they, more than the others, teach
    the shortcut; they are in ``.obs["unaffected"]``.

    Parameters
    ----------
    n_obs
        Cells.
    correlation
        Share of each class at its majority site, in [0.5, 1).
    n_features, core_features, core_effect, site_features, site_effect
        Features in total; the disease signal; the site signal.
    unaffected
        Share of the disease cells at site B without the disease signal, in [0, 1).
    random_state
        Seed.

    Returns
    -------
    AnnData (``.X`` float32) with ``.obs["disease"]``, ``.obs["site"]`` and ``.obs["group"]``
    (``"{disease} | {site}"``, with ``"minority"`` groups named in ``.uns["spurious_groups"]``).
    """
    seed = check_random_state(random_state)
    if not 0.5 <= correlation < 1:
        raise ValueError(f"correlation must lie in [0.5, 1), got {correlation!r}.")
    check_fraction("unaffected", unaffected, "[0, 1)")
    if core_features + site_features > n_features:
        raise ValueError(f"core_features + site_features ({core_features + site_features}) "
                         f"exceed n_features={n_features}.")
    rng = np.random.default_rng(seed)
    disease = rng.permutation(np.arange(n_obs) % 2).astype(bool)
    majority = rng.random(n_obs) < correlation
    site_b = np.where(majority, disease, ~disease)
    X = rng.standard_normal((n_obs, n_features))
    silent = disease & site_b & (rng.random(n_obs) < unaffected)
    X[:, :core_features] += core_effect * (disease & ~silent)[:, None]
    X[:, core_features:core_features + site_features] += site_effect * site_b[:, None]
    labels = np.where(disease, "disease", "control")
    sites = np.where(site_b, "B", "A")
    obs = pd.DataFrame({"disease": pd.Categorical(labels, categories=["control", "disease"]),
                        "site": pd.Categorical(sites, categories=["A", "B"]),
                        "unaffected": silent},
                       index=[f"cell-{i}" for i in range(n_obs)])
    obs["group"] = (obs["disease"].astype(str) + " | " + obs["site"].astype(str)).astype(
        "category")
    adata = AnnData(X=X.astype(np.float32), obs=obs)
    adata.uns["spurious_groups"] = {
        "minority": ["control | B", "disease | A"], "correlation": float(correlation),
        "core_effect": float(core_effect), "site_effect": float(site_effect),
        "unaffected": float(unaffected),
        "random_state": seed}
    return adata
