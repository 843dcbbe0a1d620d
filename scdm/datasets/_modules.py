"""Count data closer to real cells: programmes spread thinly over many genes, co-expression
modules the label does not depend on, overdispersed counts and a broad batch effect."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._anndata import uns_safe
from .._checks import check_int
from .._seeding import check_random_state
from ._gaussian import lay_out_classes
from ._planted import counts_to_lognorm


def module_subtypes(
    classes: Mapping[str, Sequence[int]] | None = None,
    *,
    n_genes: int = 1000,
    program_genes: int = 150,
    program_effect: float = 0.4,
    class_effect: float = 0.0,
    n_modules: int = 6,
    module_genes: int = 50,
    module_effect: float = 0.6,
    module_shape: float = 4.0,
    n_batches: int = 3,
    batch_effect: float = 0.3,
    dispersion: float = 0.2,
    base_log_rate: float = -1.5,
    random_state: int = 0,
) -> AnnData:
    """Cells whose subtypes differ by programmes spread thinly over many genes.

    The other generators (:func:`planted_subtypes`, :func:`gaussian_subtypes`,
    :func:`exclusive_programs`) mark a subtype by a few genes with a large effect. Real cell
    states differ instead by small shifts of many genes, and real expression carries
    co-expression programmes the label does not depend on (cycling, stress, interferon). This
    generator draws counts that way:

    - genes have log-rates ~ N(``base_log_rate``, 1.2) (most are lowly expressed, so counts
      are sparse), cells a log-normal library size, and counts are negative binomial
      (variance ``μ + dispersion · μ²``);
    - every subtype of every class but the first (the reference, e.g. controls) raises its own
      programme: ``program_genes`` genes drawn from the whole genome (programmes of different
      subtypes may share genes), each shifted by a heavy-tailed amount (exponential, mean
      ``program_effect``; one gene in five goes down);
    - ``class_effect > 0`` adds a programme shared by all subtypes of a class (the class's
      identity, such as monocyte genes for CD14 and CD16 monocytes), so a classifier can tell
      the class without the subtypes;
    - ``n_modules`` co-expression modules of ``module_genes`` genes (disjoint from one another
      and from the programmes) each vary continuously from cell to cell, N(0, 1) × a loading
      (gamma, mean ``module_effect``), in every class alike — structure in expression that
      is not a subtype;
    - the batch (balanced within every subtype) shifts *every* gene's log-rate by
      N(0, ``batch_effect``) and the library size by up to ±30 %.

    ``.X`` is log-normalised (``normalize_total`` to 1e4, ``log1p``); counts are in
    ``.layers["counts"]``.

    Parameters
    ----------
    classes
        Class name → subtype sizes, e.g. ``{"control": [300], "disease": [100, 100, 100]}``
        (the default); a single size is a class without subtypes (the null). The first class is
        the reference and has no programme.
    n_genes
        Genes in total.
    program_genes, program_effect
        Genes per programme and the mean absolute shift of their log-rate.
    class_effect
        Mean absolute shift of a programme shared by every subtype of a non-reference class
        (0: none).
    n_modules, module_genes, module_effect
        Co-expression modules independent of the class: how many, genes in each, and the mean
        loading of a gene on its module's activity.
    module_shape
        Gamma shape of the loadings: 4 (default) keeps them near their mean; 1 (exponential)
        gives a long tail, with which a module's few strongest genes, in cells of high
        activity, swamp the rest of their counts (a 20-fold library): a handful of extreme
        cells in every class, far from all others once normalised, as cells that quality
        control would flag.
    n_batches, batch_effect
        Batches and the standard deviation of their per-gene log-rate shift.
    dispersion
        Negative-binomial overdispersion (0: Poisson).
    base_log_rate
        Mean log-rate of a gene before library size (−1.5: about 70 % zeros).
    random_state
        Seed.

    Returns
    -------
    AnnData with ``.obs["disease"]`` (the class), ``.obs["subtype"]`` (the truth:
    ``"{class}-{k}"``, or the class name for a class without subtypes), ``.obs["batch"]``,
    ``.obsm["modules"]`` (each cell's module activities), ``.var["program"]`` (the programme
    that shifts the gene most, ``"class:{name}"`` for a class programme, or ``"none"``) and
    ``.var["module"]`` (``"module-{m}"`` or ``"none"``).
    """
    seed = check_random_state(random_state)
    classes = dict(classes if classes is not None else
                   {"control": [300], "disease": [100, 100, 100]})
    if len(classes) < 2 or any(len(v) < 1 or min(v) < 1 for v in classes.values()):
        raise ValueError("classes needs at least two classes, each with positive subtype "
                         "sizes, e.g. {'control': [300], 'disease': [100, 100, 100]}.")
    for name, value in (("n_genes", n_genes), ("n_batches", n_batches)):
        check_int(name, value, 1)
    for name, value in (("program_genes", program_genes), ("n_modules", n_modules),
                        ("module_genes", module_genes)):
        check_int(name, value, 0)
    effects = {"program_effect": program_effect, "class_effect": class_effect,
               "module_effect": module_effect, "batch_effect": batch_effect,
               "dispersion": dispersion}
    for name, effect in effects.items():
        if not np.isfinite(effect) or effect < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {effect!r}.")
    if not np.isfinite(module_shape) or module_shape <= 0:
        raise ValueError(f"module_shape must be a finite number > 0, got {module_shape!r}.")
    if n_modules * module_genes + program_genes > n_genes:
        raise ValueError(f"{n_modules} modules of {module_genes} genes and programmes of "
                         f"{program_genes} genes need more than n_genes={n_genes}; raise "
                         "n_genes or shrink the modules or programmes.")
    rng = np.random.default_rng(seed)
    reference = next(iter(classes))
    cls_of, sub_of, batch = lay_out_classes(classes, n_batches, rng)
    n_obs = cls_of.size

    log_rate = np.broadcast_to(rng.normal(base_log_rate, 1.2, size=n_genes),
                               (n_obs, n_genes)).copy()
    # modules take their genes first; programmes are drawn from the rest
    order = rng.permutation(n_genes)
    module_of = np.full(n_genes, "none", dtype=object)
    activity = rng.standard_normal((n_obs, n_modules))
    for m in range(n_modules):
        genes = order[m * module_genes:(m + 1) * module_genes]
        loading = rng.gamma(module_shape, module_effect / module_shape, size=genes.size)
        log_rate[:, genes] += activity[:, [m]] * loading
        module_of[genes] = f"module-{m}"
    pool = order[n_modules * module_genes:]

    program_of = np.full(n_genes, "none", dtype=object)
    strongest = np.zeros(n_genes)

    def raise_programme(rows: np.ndarray, effect: float, name: str) -> None:
        genes = rng.choice(pool, size=program_genes, replace=False)
        shift = rng.exponential(effect, size=program_genes)
        shift[rng.random(program_genes) < 0.2] *= -1
        log_rate[np.ix_(rows, genes)] += shift
        top = np.abs(shift) > strongest[genes]
        program_of[genes[top]] = name
        strongest[genes[top]] = np.abs(shift[top])

    for c in classes:
        if c == reference:
            continue
        if class_effect > 0:
            raise_programme(np.flatnonzero(cls_of == c), class_effect, f"class:{c}")
        if program_effect > 0:  # the subtypes as lay_out_classes named them, in order
            for name in pd.unique(sub_of[cls_of == c]):
                raise_programme(np.flatnonzero(sub_of == name), program_effect, str(name))
    log_rate += rng.normal(0.0, batch_effect, size=(n_batches, n_genes))[batch]
    library = (rng.lognormal(0.0, 0.3, size=n_obs)
               * rng.uniform(0.7, 1.3, size=n_batches)[batch])[:, None]
    mean = np.exp(log_rate) * library
    if dispersion > 0:  # gamma-Poisson: variance mean + dispersion * mean^2
        mean = rng.gamma(1.0 / dispersion, mean * dispersion)
    counts = rng.poisson(mean).astype(np.float32)

    obs = pd.DataFrame({
        "disease": pd.Categorical(cls_of, categories=list(classes)),
        "subtype": pd.Categorical(sub_of, categories=list(pd.unique(sub_of))),
        "batch": pd.Categorical([f"batch-{b}" for b in batch]),
    }, index=[f"cell-{i}" for i in range(n_obs)])
    var = pd.DataFrame({"program": pd.Categorical(program_of),
                        "module": pd.Categorical(module_of)},
                       index=[f"gene-{g}" for g in range(n_genes)])
    adata = AnnData(X=counts_to_lognorm(counts), obs=obs, var=var)
    adata.layers["counts"] = sparse.csr_matrix(counts)
    adata.obsm["modules"] = activity.astype(np.float32)
    adata.uns["module_subtypes"] = uns_safe({
        "classes": {c: [int(v) for v in sizes] for c, sizes in classes.items()},
        "n_genes": n_genes, "program_genes": program_genes, "program_effect": program_effect,
        "class_effect": class_effect, "n_modules": n_modules, "module_genes": module_genes,
        "module_effect": module_effect, "n_batches": n_batches, "batch_effect": batch_effect,
        "dispersion": dispersion, "base_log_rate": base_log_rate, "module_shape": module_shape,
        "random_state": seed})
    return adata
