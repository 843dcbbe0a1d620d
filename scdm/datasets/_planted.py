"""Synthetic single-cell data with planted disease subtypes and a dominating nuisance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._checks import check_fraction, check_int
from .._seeding import check_random_state


def counts_to_lognorm(counts: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    """``log1p`` of counts scaled to ``target_sum`` per cell (scanpy's normalize_total + log1p)."""
    totals = counts.sum(axis=1, keepdims=True)
    totals[totals == 0] = 1
    return np.log1p(counts / totals * target_sum).astype(np.float32)


def stage_strengths(pseudotime: np.ndarray, n_stages: int) -> np.ndarray:
    """Each cell's strength of each stage's program along a path (``cells × n_stages``): a hat
    function of the pseudotime (in [0, 1]) peaking at ``k / (n_stages - 1)`` and falling to 0
    at the neighbouring peaks, so that a cell's strengths sum to 1."""
    stage = pseudotime[:, None] * (n_stages - 1) - np.arange(n_stages)
    return np.clip(1.0 - np.abs(stage), 0.0, None)


def planted_subtypes(
    n_controls: int = 300,
    n_per_subtype: int | Sequence[int] = 100,
    n_subtypes: int = 3,
    *,
    n_genes: int = 500,
    program_size: int = 10,
    program_effect: float = 1.5,
    program_spread: float = 0.0,
    trajectory: bool = False,
    n_batches: int = 4,
    batch_genes: int = 250,
    batch_effect: float = 1.2,
    gradient_genes: int = 0,
    gradient_effect: float = 1.5,
    base_log_rate: float = 0.5,
    depth_spread: float = 0.2,
    random_state: int = 0,
) -> AnnData:
    """Cells of controls and of a disease made of hidden subtypes, under a strong batch effect.

    Genes have Poisson counts around a gene-specific log-rate. Every subtype ``k`` of the
    disease raises its own gene program (``program_size`` genes, log-rate ``+program_effect``);
    controls express none of them, so a classifier of disease vs control must use all programs,
    one per subtype. A nuisance factor (``batch``, balanced across classes and subtypes) shifts
    ``batch_genes`` genes by ``±batch_effect`` and dominates expression variance, so clustering
    on expression sees batches, not subtypes. ``.X`` is log-normalised (``normalize_total`` to
    1e4, ``log1p``); raw counts are in ``.layers["counts"]``.

    Parameters
    ----------
    n_controls
        Control cells.
    n_per_subtype
        Disease cells of each subtype, or one count per subtype (unequal sizes; then
        ``n_subtypes`` is its length).
    n_subtypes
        Hidden subtypes of the disease (1: a disease without subtypes, the null case).
    n_genes
        Genes in total (programs and batch genes are disjoint subsets).
    program_size, program_effect
        Genes per subtype program and their log-rate increase.
    program_spread
        Graded subtypes: each disease cell expresses its program at ``program_effect · u``
        with ``u`` ~ U(1 − spread, 1 + spread) (``obs["program_strength"]``), so a subtype
        shades into the rest of the class; 0 (default): every cell at full strength. With
        ``n_subtypes=1`` and spread 1, the disease is one program graded from absent to twice
        the effect: a continuum, no discrete subtype (the graded null).
    trajectory
        The programs are stages of one path instead of subtypes: every disease cell has a
        pseudotime ``t`` ~ U(0, 1) (``obs["pseudotime"]``) and expresses program ``k`` at the
        strength of a hat function peaking at ``t = k / (n_subtypes - 1)`` (falling to 0 at
        the neighbouring peaks), so that cells move from the first program through each in
        turn to the last — a differentiation or progression continuum whose ends differ in
        every program. ``obs["subtype"]`` is then one ``"trajectory"`` for the whole disease
        (no discrete subtype: the trajectory null). Needs ``n_subtypes >= 2``.
    n_batches, batch_genes, batch_effect
        The nuisance: batches, genes they shift, and the log-rate shift per batch.
    gradient_genes, gradient_effect
        A continuous nuisance: ``obs["state"]`` ~ U(-1, 1), independent of class and subtype,
        shifts the log-rate of ``gradient_genes`` genes by ``±gradient_effect · state``.
    base_log_rate
        Mean log-rate of a gene (genes vary around it with standard deviation 0.5).
    depth_spread
        Standard deviation of a cell's log size factor (sequencing depth; 0.2 by default).
        Real droplet data spread about 0.4-0.7: at 0.7 the depth is a continuous nuisance of
        every class that normalisation does not remove (low-depth cells have more zeros).
    random_state
        Seed.

    Returns
    -------
    AnnData with ``.obs["disease"]`` (``"control"``/``"disease"``), ``.obs["subtype"]``
    (``"control"`` or ``"subtype-k"``, the ground truth), ``.obs["batch"]``, ``.var["program"]``
    (the subtype a gene marks, or ``"none"``) and ``.var["batch_gene"]``.
    """
    seed = check_random_state(random_state)
    check_fraction("program_spread", program_spread, "[0, 1]")
    if trajectory and program_spread:
        raise ValueError("trajectory and program_spread both grade the programs; pass one.")
    if not depth_spread >= 0:
        raise ValueError(f"depth_spread must be non-negative, got {depth_spread!r}.")
    if isinstance(n_per_subtype, Sequence) or np.ndim(n_per_subtype) == 1:
        sizes = [int(v) for v in n_per_subtype]  # type: ignore[union-attr]
        n_subtypes = len(sizes)
    else:
        sizes = [int(n_per_subtype)] * int(n_subtypes)
    for name, value in (("n_controls", n_controls), ("n_per_subtype", min(sizes, default=0)),
                        ("n_subtypes", n_subtypes), ("n_batches", n_batches)):
        check_int(name, value, 1)
    if trajectory and n_subtypes < 2:
        raise ValueError(f"trajectory needs n_subtypes >= 2 programs along the path, got "
                         f"{n_subtypes}.")
    needed = n_subtypes * program_size + batch_genes + gradient_genes
    if needed > n_genes:
        raise ValueError(
            f"n_subtypes * program_size + batch_genes + gradient_genes = {needed} genes are "
            f"needed but n_genes={n_genes}; raise n_genes or shrink the programs."
        )
    rng = np.random.default_rng(seed)
    n_obs = n_controls + sum(sizes)
    subtype = np.concatenate([np.full(n_controls, -1), np.repeat(np.arange(n_subtypes), sizes)])
    # Batches dealt round-robin within every subtype (and the controls) keep them balanced.
    batch = np.empty(n_obs, dtype=np.int64)
    for k in range(-1, n_subtypes):
        members = np.flatnonzero(subtype == k)
        batch[members] = rng.permutation(np.arange(members.size) % n_batches)

    genes = rng.permutation(n_genes)
    program_genes = genes[: n_subtypes * program_size].reshape(n_subtypes, program_size)
    start = n_subtypes * program_size
    nuisance_genes = genes[start: start + batch_genes]
    gradient_gene_idx = genes[start + batch_genes: start + batch_genes + gradient_genes]

    log_rate = np.broadcast_to(
        base_log_rate + 0.5 * rng.standard_normal(n_genes), (n_obs, n_genes)).copy()
    batch_shift = batch_effect * rng.choice([-1.0, 1.0], size=(n_batches, batch_genes))
    log_rate[:, nuisance_genes] += batch_shift[batch]
    state = rng.uniform(-1.0, 1.0, size=n_obs)
    gradient_loading = gradient_effect * rng.choice([-1.0, 1.0], size=gradient_genes)
    log_rate[:, gradient_gene_idx] += state[:, None] * gradient_loading
    # drawn only when asked, so that the default data stay as they were
    strength = (rng.uniform(1.0 - program_spread, 1.0 + program_spread, size=n_obs)
                if program_spread else np.ones(n_obs))
    strength[subtype < 0] = 0.0
    pseudotime = np.full(n_obs, np.nan)
    if trajectory:  # every disease cell on the path
        rows = np.flatnonzero(subtype >= 0)
        pseudotime[rows] = rng.uniform(0.0, 1.0, size=rows.size)
        path_strength = stage_strengths(pseudotime[rows], n_subtypes)
        for k in range(n_subtypes):
            log_rate[np.ix_(rows, program_genes[k])] += (
                program_effect * path_strength[:, k, None])
    else:
        for k in range(n_subtypes):
            rows = np.flatnonzero(subtype == k)
            log_rate[np.ix_(rows, program_genes[k])] += program_effect * strength[rows, None]
    size_factor = rng.lognormal(0.0, depth_spread, size=(n_obs, 1))
    counts = rng.poisson(np.exp(log_rate) * size_factor).astype(np.float32)

    program = np.full(n_genes, "none", dtype=object)
    for k in range(n_subtypes):
        program[program_genes[k]] = f"subtype-{k}"
    batch_gene = np.zeros(n_genes, dtype=bool)
    batch_gene[nuisance_genes] = True
    obs = pd.DataFrame(
        {
            "disease": pd.Categorical(np.where(subtype < 0, "control", "disease")),
            "subtype": pd.Categorical(
                ["control" if k < 0 else "trajectory" if trajectory else f"subtype-{k}"
                 for k in subtype],
                categories=["control", *(["trajectory"] if trajectory else
                                         [f"subtype-{k}" for k in range(n_subtypes)])]),
            "batch": pd.Categorical([f"batch-{b}" for b in batch]),
            "state": state.astype(np.float32),
            "program_strength": strength.astype(np.float32),
            **({"pseudotime": pseudotime.astype(np.float32)} if trajectory else {}),
        },
        index=[f"cell-{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame({"program": pd.Categorical(program), "batch_gene": batch_gene},
                       index=[f"gene-{g}" for g in range(n_genes)])
    adata = AnnData(X=counts_to_lognorm(counts), obs=obs, var=var)
    adata.layers["counts"] = sparse.csr_matrix(counts)
    adata.uns["planted_subtypes"] = {
        "n_controls": n_controls, "n_per_subtype": sizes, "n_subtypes": n_subtypes,
        "n_genes": n_genes, "program_size": program_size, "program_effect": program_effect,
        "program_spread": program_spread, "trajectory": trajectory,
        "n_batches": n_batches, "batch_genes": batch_genes, "batch_effect": batch_effect,
        "random_state": seed,
    }
    return adata
