import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import scdm


@pytest.fixture(autouse=True)
def _quiet(tmp_path, monkeypatch):
    monkeypatch.setattr(scdm.settings, "verbosity", 0)
    monkeypatch.setattr(scdm.settings, "store_dir", tmp_path / "scdm_stores")


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


@pytest.fixture
def adata() -> AnnData:
    return make_adata()


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """Two planted disease subtypes under a 4-batch effect, after scdm.tl.datamodels.

    Shared by the workflow and evaluation tests (training it takes ~25 s); tests copy it.
    """
    import scanpy as sc

    scdm.settings.verbosity = 0
    adata = scdm.datasets.planted_subtypes(n_controls=80, n_per_subtype=40, n_subtypes=2,
                                           n_genes=200, batch_genes=100, random_state=0)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    store = tmp_path_factory.mktemp("store") / "planted"
    scdm.tl.datamodels(adata, "disease", use_rep="X_pca", stratify_key="batch", store=store)
    return adata
