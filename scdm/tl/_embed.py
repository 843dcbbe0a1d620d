"""``scdm.tl.embed_datamodels``: a low-dimensional view of the datamodel matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from sklearn.utils.extmath import randomized_svd

from .._anndata import uns_safe
from .._checks import check_int
from .._seeding import check_random_state
from ..get import datamodel_matrix, label_key_of


def standardized_columns(W) -> np.ndarray:
    """Each training sample's column of ``W`` centred and scaled to unit variance.

    A training sample that nudges few targets weakly and one that moves many strongly then count
    alike; what is left is *which* targets each training sample moves. Constant columns (a
    sample no target uses) become 0.
    """
    dense = np.asarray(W.toarray() if sparse.issparse(W) else W, dtype=np.float64)
    std = dense.std(axis=0)
    std[std == 0] = np.inf
    return (dense - dense.mean(axis=0)) / std


def _svd_scores(M: np.ndarray, n_comps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``n_comps`` SVD scores ``U·S`` of ``M``, signs fixed (largest |loading| positive)."""
    n_comps = min(n_comps, min(M.shape) - 1) if min(M.shape) > 1 else 0
    if n_comps < 1:
        return np.zeros((M.shape[0], 0)), np.zeros(0)
    U, S, _ = randomized_svd(M, n_comps, n_iter=7, random_state=seed)
    signs = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(U.shape[1])])
    signs[signs == 0] = 1
    return U * signs * S, S


def usable_targets(adata: AnnData, key: str) -> np.ndarray:
    """``adata.obs[f"{key}_ok"]`` (datamodels that are not degenerate), or all True."""
    column = f"{key}_ok"
    if column not in adata.obs:
        return np.ones(adata.n_obs, dtype=bool)
    return adata.obs[column].to_numpy(dtype=bool)


def embedding_blocks(adata: AnnData, label_key: str | None) -> dict[str, np.ndarray]:
    """Members of each class of ``label_key`` (in order of appearance), or one block of all."""
    if label_key is None:
        return {"all": np.arange(adata.n_obs)}
    labels = adata.obs[label_key].astype(str).to_numpy()
    return {str(c): np.flatnonzero(labels == c) for c in pd.unique(labels)}


def embed_blocks(W, blocks: dict[str, np.ndarray], *, ok: np.ndarray, n_comps: int,
                 standardize: bool, within_class: bool, seed: int
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per block of targets, the SVD scores of their rows of ``W`` (the block's own columns
    when ``within_class``, else all columns), columns standardised first if asked.

    Targets that are not ``ok`` (degenerate datamodels) take no part and get NaN coordinates.
    """
    if sparse.issparse(W):
        W = W.tocsr()
    embedding = np.full((W.shape[0], n_comps), np.nan, dtype=np.float32)
    singular_values = {}
    for name, members in blocks.items():
        rows = members[ok[members]]
        # only this block is made dense (float64 for the standardisation), never all of W
        block = W[rows][:, members] if within_class else W[rows]
        block = np.asarray(block.toarray() if sparse.issparse(block) else block,
                           dtype=np.float64)
        M = standardized_columns(block) if standardize else block
        scores, S = _svd_scores(M, n_comps, seed)
        embedding[rows] = 0.0
        embedding[rows, : scores.shape[1]] = scores
        singular_values[name] = S.astype(np.float32)
    return embedding, singular_values


def embed_datamodels(
    adata: AnnData,
    *,
    key: str = "datamodels",
    n_comps: int = 10,
    standardize: bool = True,
    within_class: bool = True,
    label_key: str | None = None,
    random_state: int = 0,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Embed the datamodels: truncated SVD of the datamodel matrix ``W`` (row = target).

    Two targets end up close when they rely on the same training samples in the same direction.

    With ``within_class`` (the default) each class is embedded on its own, from the block of
    ``W`` whose targets *and* training samples belong to that class: a subtype of a disease is
    the set of diseased samples that rely on each other. The other blocks add noise and a
    class-wide direction (every diseased target leans on every diseased training sample) that
    swamp the subtype structure. Coordinates are then comparable within a class only, which
    is all :func:`scdm.tl.subgroups` uses. With ``standardize`` each training sample's column
    is centred and scaled to unit variance first, so the embedding reflects *which* targets a
    training sample moves rather than how strongly.

    On planted subtypes the per-class, standardised, 10-component embedding recovered them
    where one standardised SVD of the whole of ``W`` did not, and 30 components made Leiden
    less stable (``workflows/benchmarks/subgroups.py``; figures in RESULTS.md).

    Parameters
    ----------
    adata
        AnnData with ``adata.obsp[key]`` from :func:`scdm.tl.fit_datamodels`.
    key
        The datamodel matrix in ``adata.obsp``.
    n_comps
        Number of components (per class; fewer for a class with few samples).
    standardize
        Centre and scale each column of ``W`` before the SVD.
    within_class
        Embed each class from its own block of ``W`` (see above); ``False`` embeds all rows
        against all columns at once.
    label_key
        Class column; default the one the models were trained on (``adata.uns[key]``).
    random_state
        Seed of the randomized SVD.
    key_added
        ``adata.obsm`` key of the embedding; default ``f"X_{key}"``.
    copy
        Return a copy instead of writing into ``adata``.

    Degenerate datamodels (``adata.obs[f"{key}_ok"]`` False, see
    :func:`scdm.tl.fit_datamodels`) are left out and get NaN coordinates.

    Returns
    -------
    ``None`` or a copy. Sets ``adata.obsm[key_added]`` (n_obs × n_comps) and
    ``adata.uns[key]["embedding"]`` (``params`` and per block ``singular_values``).
    """
    W = datamodel_matrix(adata, key)
    seed = check_random_state(random_state)
    check_int("n_comps", n_comps, 1)
    if adata.n_obs < 2:
        raise ValueError("embedding needs at least 2 observations.")
    n_comps = int(min(n_comps, adata.n_obs - 1))
    key_added = key_added or f"X_{key}"
    if within_class:
        label_key = label_key_of(adata, key, label_key)
    blocks = embedding_blocks(adata, label_key if within_class else None)
    adata = adata.copy() if copy else adata

    ok = usable_targets(adata, key)
    embedding, singular_values = embed_blocks(W, blocks, ok=ok, n_comps=n_comps,
                                              standardize=standardize,
                                              within_class=within_class, seed=seed)
    adata.obsm[key_added] = embedding

    info = dict(adata.uns.get(key, {}))
    info["embedding"] = {
        "params": {"n_comps": n_comps, "standardize": standardize,
                   "within_class": within_class, "label_key": label_key,
                   "random_state": seed, "key_added": key_added},
        "singular_values": singular_values,
    }
    adata.uns[key] = uns_safe(info)
    return adata if copy else None


def umap(
    adata: AnnData,
    *,
    key: str = "datamodels",
    use_rep: str | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.5,
    random_state: int = 0,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """A two-dimensional UMAP of the attribution embedding, computed within each class.

    The embedding (:func:`scdm.tl.embed_datamodels`) is per class, so its UMAP is too: each
    class is laid out on its own, for one panel per class in :func:`scdm.pl.embedding`.
    Like any UMAP it draws clusters more separated than they are and can draw apparent
    clusters in structureless data; whether a split is real is what
    :func:`scdm.tl.subgroups` decides (the colours), not the layout. Needs ``umap-learn`` (a
    scanpy dependency); the first call in a process compiles it (~10 s).

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.datamodels`.
    key
        Key of the attribution results (label in ``adata.uns[key]["params"]``).
    use_rep
        The embedding to lay out (default ``f"X_{key}"``).
    n_neighbors, min_dist
        Passed to ``umap.UMAP`` (``n_neighbors`` is capped below a class's size).
    random_state
        Seed of the layout.
    key_added
        ``adata.obsm`` key of the layout (default ``f"X_{key}_umap"``).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy. Sets ``adata.obsm[key_added]`` (n_obs × 2; NaN for degenerate
    datamodels) and ``adata.uns[key]["umap"]["params"]``.
    """
    import warnings

    with warnings.catch_warnings():
        # umap-learn announces at import that its optional TensorFlow part is unavailable
        warnings.simplefilter("ignore", ImportWarning)
        from umap import UMAP

    seed = check_random_state(random_state)
    use_rep = use_rep or f"X_{key}"
    if use_rep not in adata.obsm:
        raise KeyError(f"adata.obsm[{use_rep!r}] not found; run scdm.tl.datamodels(adata, "
                       "label_key=...) first (or scdm.tl.embed_datamodels).")
    check_int("n_neighbors", n_neighbors, 2)
    label_key = label_key_of(adata, key, None)
    key_added = key_added or f"X_{key}_umap"
    rep = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    ok = usable_targets(adata, key) & np.isfinite(rep).all(axis=1)
    small = {cls: int(ok[members].sum()) for cls, members in
             embedding_blocks(adata, label_key).items() if ok[members].sum() < 4}
    if small:
        raise ValueError(f"classes {small} have fewer than 4 usable datamodels, too few for a "
                         "UMAP layout.")
    layout = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
    for members in embedding_blocks(adata, label_key).values():
        rows = members[ok[members]]
        reducer = UMAP(n_neighbors=int(min(n_neighbors, rows.size - 1)), min_dist=min_dist,
                       random_state=seed, n_jobs=1)
        with warnings.catch_warnings():
            # a fixed seed already implies one thread; umap says so on every call
            warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
            layout[rows] = reducer.fit_transform(rep[rows])
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = layout
    info = dict(adata.uns.get(key, {}))
    info["umap"] = {"params": {"use_rep": use_rep, "n_neighbors": n_neighbors,
                               "min_dist": min_dist, "random_state": seed,
                               "key_added": key_added}}
    adata.uns[key] = uns_safe(info)
    return adata if copy else None
