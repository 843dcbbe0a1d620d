"""``scdm.tl.subgroups``: Leiden clusters of the datamodel embedding, within each class."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._anndata import uns_safe
from .._seeding import check_random_state
from ._embed import label_key_of


def knn_adjacency(rep: np.ndarray, n_neighbors: int) -> sparse.csr_matrix:
    """Symmetric, unweighted exact kNN graph (an edge where either point lists the other).

    Unweighted on purpose: kernel weights need a per-point bandwidth, which is zero (and the
    weights undefined) where several targets share an identical embedding.
    """
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(rep)
    _, neighbors = index.kneighbors(rep)
    rows = np.repeat(np.arange(rep.shape[0]), n_neighbors)
    cols = neighbors[:, 1:].ravel()
    graph = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(rep.shape[0],) * 2)
    graph = graph.maximum(graph.T)
    graph.setdiag(0)
    graph.eliminate_zeros()
    return graph.tocsr()


def _leiden_labels(rep: np.ndarray, *, n_neighbors: int, resolution: float,
                   random_state: int) -> np.ndarray:
    """Leiden (igraph, modularity) on the exact kNN graph, as integer labels ordered by size."""
    import scanpy as sc

    sub = AnnData(np.zeros((rep.shape[0], 0), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sc.tl.leiden(sub, resolution=resolution, flavor="igraph", n_iterations=2,
                     directed=False, random_state=random_state,
                     adjacency=knn_adjacency(rep, n_neighbors))
    # Order clusters by size (largest = 0), ties by first member, so names are stable.
    codes = sub.obs["leiden"].astype(int).to_numpy()
    sizes = np.bincount(codes)
    first = np.array([np.flatnonzero(codes == c)[0] for c in range(sizes.size)])
    order = np.lexsort((first, -sizes))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[codes]


def subgroups(
    adata: AnnData,
    *,
    key: str = "datamodels",
    label_key: str | None = None,
    use_rep: str | None = None,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    classes: list[str] | None = None,
    markers: bool = True,
    n_genes: int = 20,
    random_state: int = 0,
    key_added: str = "datamodels_subgroup",
    copy: bool = False,
) -> AnnData | None:
    """Propose subgroups: Leiden clusters of the datamodel embedding within each class.

    Within each class of the label, a kNN graph is built on the datamodel embedding and
    clustered with Leiden (igraph, seeded). Clusters are named after their class and numbered
    by size, e.g. ``"disease-0"`` is the largest subgroup of ``"disease"``.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.datamodels`.
    key
        Key of the datamodels results (``adata.uns[key]``, ``adata.obsm[f"X_{key}"]``).
    label_key
        Class column; default the one the models were trained on.
    use_rep
        Embedding in ``adata.obsm``; default ``f"X_{key}"``.
    n_neighbors
        Neighbours of the kNN graph (within a class).
    resolution
        Leiden resolution; higher gives more subgroups.
    classes
        Classes to split (default all); the others get one subgroup each.
    markers
        Also rank marker genes of each subgroup against the rest of its class
        (:func:`scdm.tl.subgroup_markers`).
    n_genes
        Marker genes kept per subgroup.
    random_state
        Seed of the kNN graph and Leiden.
    key_added
        ``adata.obs`` column of the subgroups; parameters go to ``adata.uns[key_added]``.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy. Sets categorical ``adata.obs[key_added]`` and ``adata.uns[key_added]``
    (``params``, ``sizes`` and, with ``markers``, a ``markers`` DataFrame).
    """
    label_key = label_key_of(adata, key, label_key)
    use_rep = use_rep or f"X_{key}"
    if use_rep not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{use_rep!r}] not found; run scdm.tl.datamodels(adata, label_key=...) "
            "first (or scdm.tl.embed_datamodels after fit_datamodels)."
        )
    seed = check_random_state(random_state)
    if not resolution > 0:
        raise ValueError(f"resolution must be positive, got {resolution}.")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) \
            or n_neighbors < 2:
        raise ValueError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}.")
    labels = adata.obs[label_key].astype("category")
    all_classes = [str(c) for c in labels.cat.categories if (labels == c).any()]
    chosen = all_classes if classes is None else [str(c) for c in classes]
    unknown = sorted(set(chosen) - set(all_classes))
    if unknown:
        raise ValueError(f"classes {unknown} are not in adata.obs[{label_key!r}] "
                         f"(classes: {all_classes}).")
    counts = labels.astype(str).value_counts()
    too_small = {c: int(counts[c]) for c in chosen if counts[c] <= n_neighbors}
    if too_small:
        raise ValueError(
            f"classes {too_small} have no more samples than n_neighbors={n_neighbors}; lower "
            "n_neighbors or leave those classes out with classes=[...]."
        )

    rep = np.asarray(adata.obsm[use_rep], dtype=np.float32)
    names = np.empty(adata.n_obs, dtype=object)
    label_values = labels.astype(str).to_numpy()
    for cls in all_classes:
        members = np.flatnonzero(label_values == cls)
        if cls in chosen:
            codes = _leiden_labels(rep[members], n_neighbors=n_neighbors, resolution=resolution,
                                   random_state=seed)
        else:
            codes = np.zeros(members.size, dtype=np.int64)
        names[members] = [f"{cls}-{c}" for c in codes]

    adata = adata.copy() if copy else adata
    order = sorted(set(names), key=lambda n: (all_classes.index(n.rsplit("-", 1)[0]),
                                              int(n.rsplit("-", 1)[1])))
    adata.obs[key_added] = pd.Categorical(names, categories=order)
    sizes = adata.obs[key_added].value_counts().reindex(order)
    adata.uns[key_added] = uns_safe({
        "params": {"key": key, "label_key": label_key, "use_rep": use_rep,
                   "n_neighbors": n_neighbors, "resolution": resolution,
                   "classes": chosen, "random_state": seed},
        "sizes": {str(k): int(v) for k, v in sizes.items()},
    })
    if markers:
        subgroup_markers(adata, key=key_added, n_genes=n_genes)
    return adata if copy else None


def subgroup_markers(
    adata: AnnData,
    *,
    key: str = "datamodels_subgroup",
    n_genes: int = 20,
    method: str = "wilcoxon",
    use_raw: bool | None = None,
    layer: str | None = None,
) -> pd.DataFrame:
    """Marker genes of each subgroup against the rest of its class.

    Runs :func:`scanpy.tl.rank_genes_groups` within each class on expression (``.raw`` when
    present, else ``.X``, or ``layer``); subgroups of a single sample, and classes with a
    single subgroup, have no markers.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.subgroups`.
    key
        The subgroup column (``adata.obs[key]``, ``adata.uns[key]``).
    n_genes
        Genes kept per subgroup.
    method, use_raw, layer
        Passed to :func:`scanpy.tl.rank_genes_groups`.

    Returns
    -------
    DataFrame with columns ``class``, ``subgroup``, ``rank``, ``gene``, ``score``,
    ``logfoldchange``, ``pval``, ``pval_adj``; also stored in ``adata.uns[key]["markers"]``.
    """
    import scanpy as sc

    if key not in adata.obs or key not in adata.uns:
        raise KeyError(f"adata.obs[{key!r}] not found; run scdm.tl.subgroups(adata) first.")
    label_key = adata.uns[key]["params"]["label_key"]
    groups = adata.obs[key].astype(str)
    labels = adata.obs[label_key].astype(str)
    frames = []
    for cls in pd.unique(labels):
        in_class = (labels == cls).to_numpy()
        counts = groups[in_class].value_counts()
        testable = [g for g, n in counts.items() if n >= 2]
        if len(counts) < 2 or not testable:
            continue
        sub = adata[in_class].copy()
        sub.obs["_subgroup"] = pd.Categorical(groups[in_class])
        with warnings.catch_warnings():
            # pandas/scanpy version chatter (fragmented frames, future defaults) is not the
            # user's business here.
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=pd.errors.PerformanceWarning)
            sc.tl.rank_genes_groups(sub, "_subgroup", groups=testable, reference="rest",
                                    method=method, use_raw=use_raw, layer=layer,
                                    n_genes=n_genes, key_added="_markers")
            for group in testable:
                df = sc.get.rank_genes_groups_df(sub, group=group, key="_markers")
                df = df.head(n_genes).rename(columns={
                    "names": "gene", "scores": "score", "logfoldchanges": "logfoldchange",
                    "pvals": "pval", "pvals_adj": "pval_adj"})
                df.insert(0, "rank", np.arange(len(df)))
                df.insert(0, "subgroup", group)
                df.insert(0, "class", cls)
                frames.append(df)
    columns = ["class", "subgroup", "rank", "gene", "score", "logfoldchange", "pval", "pval_adj"]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    table = table.reindex(columns=columns)
    for column in ("class", "subgroup", "gene"):
        table[column] = table[column].astype(str)
    adata.uns[key]["markers"] = table
    return table
