"""Small data the tests make themselves (imported as ``from _helpers import ...``)."""

import numpy as np
import pandas as pd
from anndata import AnnData


def make_adata(n_obs: int = 60, n_vars: int = 8, seed: int = 0, n_donors: int | None = None
               ) -> AnnData:
    """Two classes separable on the first feature; optional donors nested in the classes."""
    rng = np.random.default_rng(seed)
    y = np.repeat(["control", "disease"], n_obs // 2)
    X = rng.normal(size=(n_obs, n_vars)).astype(np.float32)
    X[:, 0] += np.where(y == "disease", 1.5, -1.5)
    obs = pd.DataFrame({"disease": pd.Categorical(y)}, index=[f"cell{i}" for i in range(n_obs)])
    if n_donors:
        per_class = n_donors // 2
        donor = np.concatenate([
            np.arange(n_obs // 2) % per_class, per_class + np.arange(n_obs // 2) % per_class])
        obs["donor"] = pd.Categorical([f"d{d}" for d in donor])
    return AnnData(X=X, obs=obs)
