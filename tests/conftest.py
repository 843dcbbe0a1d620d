import pytest
from _helpers import make_adata
from anndata import AnnData

import scdm


@pytest.fixture(autouse=True)
def _quiet(tmp_path, monkeypatch):
    monkeypatch.setattr(scdm.settings, "verbosity", 0)
    monkeypatch.setattr(scdm.settings, "store_dir", tmp_path / "scdm_stores")


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
