"""``scdm.tl.subgroups``: reproducible Leiden clusters of the datamodel embedding, per class."""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from sklearn.metrics import adjusted_rand_score
from tqdm.auto import tqdm

from .. import clustering as _engine
from .._anndata import uns_safe
from .._checks import check_fraction, check_int
from .._seeding import check_random_state
from .._settings import settings
from ..clustering import (
    CONTINUUM_SEPARATION,
    CUT_SLACK,
    DEPTH_AUC,
    FEW_FEATURES,
    INNER_REPRODUCIBILITY,
    MAX_CHECK_POINTS,
    MIN_MARGIN,
    MIN_REPRODUCIBILITY,
    NOISE_DOMINATED,
    REPRODUCING_JACCARD,
    SKEW_BAR,
    ResolutionChoice,
    SharedBoundaries,
    agreed_partition,
    by_size,
    carry_levels,
    carrying_space,
    centre_within,
    check_resolutions,
    check_subsample,
    choose_resolution,
    depth_association,
    detected_depth,
    extend_labels,
    few_zero_inflated,
    fewest_points,
    label_skew,
    leiden_labels,
    match_across_levels,
    merge_continua,
    merge_shared,
    n_substantial,
    near_bars,
    refined_boundaries,
    shared_boundaries,
    take_out_linear,
    zero_share,
)
from ..get import UNASSIGNED, label_key_of, models_input, subgroup_key, training_params
from ._embed import usable_targets
from ._halves import half_embeddings
from ._recorded import one_view, recorded_training
from ._retrain import heldout_performance

# How many times the models tl.second_round trains where tl.subgroups left a class undecided:
# 160 TRAK checkpoints against 40 split 10 of the scenario suite's 13 undecided planted classes
# (6 into the right number) and kept its 17 undecided null classes whole (raw features and
# X_pca, seeds 0-2; issue 28, session 26, workflows/benchmarks/RESULTS.md). Applied to every
# class instead, 160 checkpoints lost rare subtypes found at 40 (session 25).
SECOND_ROUND_FACTOR = 4


class NoisyInputWarning(UserWarning):
    """The models' input is mostly noise (see :func:`scdm.clustering.above_noise`): subtypes
    may be out of the attribution's reach there; PCs of it may not be."""


class ZeroInflatedInputWarning(UserWarning):
    """The models saw few features, often at zero: a split may follow which features are zero
    in a cell (dropout), which the check cannot tell from a subtype."""


class StandardisedComponentsWarning(UserWarning):
    """The models were trained on components (an ``obsm`` representation such as ``X_pca``)
    standardised one by one: on real cells whose classes differ only in cell-type composition,
    splits there followed the cell types the label favours."""


class DatamodelsCompositionWarning(UserWarning):
    """Subgroups of datamodels trained on the features themselves: on real cells whose classes
    differ only in cell-type composition, their splits followed the cell types the label
    favours, where ``tl.trak``'s on the same input did not."""


class PossibleContinuumWarning(UserWarning):
    """Split classes whose weakest boundary separates no more than a flat continuum cut in two
    (:data:`scdm.clustering.CONTINUUM_SEPARATION`): the subgroups may be stages of one
    progression or path of states rather than discrete types."""


class UndecidedSubgroupsWarning(UserWarning):
    """Classes kept whole whose halves find clusters beyond the null but agree under the bar
    (``adata.uns[key_added]["undecided"]``); :func:`scdm.tl.second_round` decides them."""


@one_view
def subgroups(
    adata: AnnData,
    *,
    key: str = "datamodels",
    label_key: str | None = None,
    use_rep: str | None = None,
    n_neighbors: int = 15,
    resolution: float | None = None,
    resolutions: Sequence[float] | None = None,
    min_reproducibility: float = MIN_REPRODUCIBILITY,
    n_null: int = 20,
    min_size: int = 5,
    max_points: int | None = MAX_CHECK_POINTS,
    shared_check: bool = True,
    classes: Sequence[str] | None = None,
    markers: bool = True,
    n_genes: int = 20,
    device: str = "auto",
    random_state: int = 0,
    key_added: str | None = None,
    verbose: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Propose subgroups within each class, only where a split reproduces.

    Within each class of the label, a kNN graph of the datamodel embedding is clustered with
    Leiden (igraph, seeded). Clusters are named after their class and numbered by size, e.g.
    ``"disease-0"`` is the largest subgroup of ``"disease"``.

    How many subgroups, including none, is decided per class by the data (``resolution=None``,
    the default): the datamodels are fitted again on two disjoint halves of the models, both
    halves are clustered at every resolution of a grid, and a resolution counts only if both
    halves find the same number of clusters, their partitions agree (ARI ≥
    ``min_reproducibility``), and each half's clusters are more separated in the other half
    than in every one of ``n_null`` pairs of cluster-free halves with the same signal, noise
    and spread of distances from the centre (:func:`scdm.clustering.null_factors`:
    Gaussian where the data are), by a margin (:data:`scdm.clustering.MIN_MARGIN`, 0.03 on
    separation's 0-1 scale: beating every null pair by a hair happens by chance when a grid of
    resolutions is scanned; on the scenario suite's 273 null and 171 planted class runs the
    margin kept a graded continuum whole, 0.028 above its null, and left the right counts as
    they were). Where the null halves do not split at that resolution at all, that comparison
    says little, so the clusters must also be about as separated as the null halves cut into as
    many clusters at any resolution (at most :data:`scdm.clustering.CUT_SLACK` below; the
    evidence's ``"null_separation_same_k"``, and ``"cut_refused"`` where only this kept a class
    whole). The most reproducible accepted partition (ties to the one with more clusters) gives
    the number of subgroups and the resolution used on the full embedding; where the full
    embedding gives another number there, the nearby resolution whose partition has the agreed
    number and matches the halves' best is used instead (evidence ``"full_resolution"``;
    :func:`scdm.clustering.agreed_partition`), so a subgroup is never reported that the check
    did not accept.

    Where no resolution's partition reproduces whole, the clusters that reproduce on their own
    are checked instead: Leiden cuts a large subtype into pieces before it isolates a rare one
    beside it, and the two halves cut the large one differently, so the whole partition agrees
    poorly while both halves find the rare cluster. A cluster of one half counts where its
    best match in the other is mutual and shares at least
    :data:`scdm.clustering.REPRODUCING_JACCARD` (0.8) of their cells, and the rest of the class
    is one group (:func:`scdm.clustering.reproducing_clusters`). The halves must agree on that
    partition (``min_reproducibility``), and its separation, both sides of a boundary weighed
    alike (weighted by size, a small cluster beside a large one shows little variance between
    them even with a gap), must beat by the margin the best that the null pairs' own
    reproducing clusters reach at any resolution; its shared check weighs both sides alike
    too, and it must pass that check whole (no merge across shared boundaries). Evidence
    ``"reproducing_clusters"`` (and ``"whole_reproducibility"``, the whole partition's
    agreement there). Not where the class is undecided (more models decide the
    whole partition, :func:`scdm.tl.second_round`) and not inside an accepted subgroup, where
    it cut pieces off true subtypes. On the scenario suite it found the rare subtypes of
    ``G-rare`` in 2 of 3 seeds, where nothing was found before, and changed no other class,
    null or planted, raw features or ``X_pca``, nor the real data
    (``workflows/benchmarks/RESULTS.md``). A class with neither stays one subgroup.

    A fixed ``resolution`` skips the check (Leiden always splits a kNN graph, also
    one of pure noise: use it to explore, not to report).

    A split is not proof of discrete types. A class that runs along a path of states (a
    progression, a differentiation path: ``scdm.datasets.planted_subtypes(trajectory=True)``)
    is cut into stages: both halves cut it in the same places, and a flat stretch cut in two
    is cleaner than any cut of the null. So two subgroups of an accepted split are merged
    where nothing thins out between them (:func:`scdm.clustering.merge_continua`): on the
    line through their centres, in each half's own embedding, at least as many cells lie
    where the two meet as near the emptier centre
    (:data:`~scdm.clustering.CONTINUUM_CROWDING`, with at least
    :data:`~scdm.clustering.CROWDING_MIN_CELLS` near it), and the line holds no more of
    their variance than a flat continuum cut in two
    (:data:`~scdm.clustering.CONTINUUM_SEPARATION`, 3/4). What is left is refined again.
    Evidence ``"continuum_merged"`` and a sentence in ``scdm.get.describe_evidence``. On the
    scenario suite this kept 8 of 9 path classes whole (3 before; the ninth shows a valley
    between its pieces) and changed no count of a class with planted subtypes
    (``workflows/benchmarks/RESULTS.md``, session 51). A split kept whose weakest boundary
    (the class's, or an inner split's) puts less of the variance along the line between its
    sides than that flat cut is said to be possibly stages of one continuum: the evidence's
    ``"continuum"``, a :class:`PossibleContinuumWarning` and a sentence in
    ``scdm.get.describe_evidence`` (on the suite, 9–12 of 72 true splits, as trained).
    Where the subgroups' markers rise and fall in turn and cells carry two at once, order
    the cells by a pseudotime before naming the subgroups subtypes: on standardised
    components a path through five programmes kept valleys between its stages (3 of 3 runs
    split).

    Reproducible is not enough: a nuisance that all classes share (batch, donor, sequencing
    run, cell cycle) shifts the models' input of every class alike and splits each class's
    attribution the same way, reproducibly and well separated. So an accepted partition is
    carried to every other class (each of its cells takes the subgroup of its nearest cells
    of this class in the models' input, or on its principal components above noise where
    distances in it are mostly noise: :func:`scdm.clustering.carrying_space`; cells near
    most of the other class, hubs, count for less: :func:`scdm.clustering.carry_vote`) and
    each boundary between two subgroups is measured there, in that class's own halves
    (``shared_check``, see :func:`scdm.clustering.shared_boundaries`). Boundaries that divide
    another class at least half as sharply as their own are a shared nuisance, not a
    subtype: they give the nuisance's levels (each cell takes the level of its nearest cells
    of the class divided most), each level is centred in the halves and the embedding, and
    the check runs once more on what is left. A class whose split is entirely shared, or
    whose second check finds nothing or a shared split again, stays one subgroup, and its
    evidence names the class divided the same way. This needs no batch column.

    Each accepted subgroup (of at least ``max(2 · n_neighbors, 4 · min_size)`` cells) is then
    checked once more on its own cells, in the halves and embedding as the class's check left
    them, with the same scan, null and shared check; an inner split that passes replaces it
    (recorded as ``"split_within"`` in the class's evidence). Subtypes the class's resolution
    merged come apart this way: on the scenario suite it found the right number in 6 more of
    96 planted classes and cut 2 true subtypes in two, with every null class unchanged
    (``workflows/benchmarks/RESULTS.md``). There the halves must agree at
    :data:`scdm.clustering.INNER_REPRODUCIBILITY` (0.8) or ``min_reproducibility``, whichever
    is higher (recorded as ``params["inner_reproducibility"]``).

    Last, with the shared check, a split is refused where one of its subgroups is a place the
    models call this class whatever the label: the other classes' cells carried to it (at
    least :data:`scdm.clustering.SKEW_MIN_CELLS`) are called this class by the models that
    did not train on them far more often than its own cells are called wrongly — its own
    cells' held-out accuracy minus theirs, less the same difference over the whole class, at
    least :data:`scdm.clustering.SKEW_BAR` (:func:`scdm.clustering.label_skew`). That is a
    cell type or state both classes hold in different proportions (case and control samples
    that differ in composition), which the label favours, not a subtype of the label; the
    attributions of such a class can separate the favoured types where the other class's
    cannot, so the shared check alone misses it. The class stays one subgroup and its
    evidence records ``"label_favoured"``. On real cells dealt to two classes by odds set by
    their type it refused 6 of the 8 splits on standardised PCs; on the planted and
    interaction generators it refused none (``workflows/benchmarks/RESULTS.md``).

    Sequencing depth is a nuisance no one names and every class has, and the shared check
    cannot always see it: a low-depth cell's counts show less of a programme, so attribution
    follows depth only in cells that carry one, and a subtype whose programme the other
    classes lack can come apart along it alone. Where the models' input has a floor (counts,
    normalised or scaled: :func:`scdm.clustering.detected_depth`), or was components of a
    ``.X`` that has one (``.X`` read instead), each accepted split, the class's and each inner
    one, is read against the number of features each cell detects; where that alone tells two
    of its subgroups apart (:func:`scdm.clustering.depth_association`, an AUC of
    :data:`scdm.clustering.DEPTH_AUC` or more) depth is taken out of the halves and the
    embedding (a straight line per coordinate, :func:`scdm.clustering.take_out_linear`) and
    the check runs again; its result stands, recorded as ``"depth"`` (or per subgroup
    ``"depth_within"``) in the evidence. A type that depth alone tells apart that well goes
    with the line unless it stands apart beyond it.

    The boundaries of an accepted split are last offered to the models' input
    (:func:`scdm.clustering.refined_boundaries`): each checked cell is predicted out of fold
    by a linear discriminant of the subgroups on the input's first
    :data:`scdm.clustering.REFINE_COMPONENTS` principal components, and the moved partition
    is kept only where the attribution's halves separate it at least as well as the one the
    check accepted. The number of subgroups never changes; Leiden's boundary in a few hundred
    cells is noisy, and on the scenario suite this raised the ARI of 16 classes by more than
    0.02 (the interaction generator's four control subtypes 0.84-0.87 to 0.91-0.95, graded
    subtypes 0.81-0.88 to 0.92-0.95) and lowered 2 by 0.02-0.03 and 2 by 0.01; on
    standardised components (``X_pca``) the halves refused every move (RESULTS.md, session
    46). Recorded as ``"boundaries_refined"`` (cells ``moved``, the separation ``before`` and
    ``after``, ``taken``).

    A split that clears one of its bars by little (:func:`scdm.clustering.near_bars`: under
    twice the margin over the null, agreement within :data:`scdm.clustering.NEAR_AGREEMENT`
    of the bar, or a separation under the null's cuts into as many clusters; the class's
    split or an inner one) is a count one seed's Leiden runs and null draws may pass and the
    next not. Such a class is checked again, whole, at the seeds after ``random_state``
    (:data:`scdm.clustering.CLOSE_SEEDS` in all) and the count most checks give is reported:
    the first seed's partition where it gives that count, else the first seed's that does;
    where no count has a majority, the fewest subgroups. Only accepted splits are checked
    again, so a class kept whole stays whole. On the TRAK suite (``auto``, seeds 0-2, and
    the same attributions at ``random_state`` + 1000) it kept whole the one null class a seed
    had split (of 276 null class runs) and lost one true split, G-unequal seed 0 (3 subgroups
    to 1: its inner split was close, and the three seeds gave 3, 2 and 1); on datamodels of
    20 PCs of 90 control cells 5 of 18 settings of seed and effect split the controls, none
    with it (RESULTS.md, session 47). Recorded as
    ``"close_seeds"`` (``random_states``, ``n_subgroups`` at each, the seed ``taken`` and,
    where the first was outvoted, its figures as ``"first"``).

    With :data:`scdm.clustering.LEIDEN_RUNS` = 5 (default 1 for now) every Leiden partition
    is the best of five runs, so that a count turns less on the seed: on the TRAK suite
    3 of 219 class counts differed between two seeds of this function on the same
    attributions, against 6 with one run; the right count
    where a classifier reaches 0.9 was 59 of 69 at each seed (60 and 58 with one run), mean
    ARI 0.83-0.84 (0.81), every null class whole; it costs 2-3 times the clustering time
    (RESULTS.md, session 48). Measured again with the current null and merges (sessions
    53-54) it kept the right count at 59 of 69 on ``auto`` but split one more path null class,
    and on ``X_pca`` split three more null classes, so 1 stays the default. Recorded as
    ``params["leiden_runs"]``.

    A class left whole is *undecided* when both halves find the same clusters, separated
    beyond every null pair by the margin, but agree only at
    :data:`scdm.clustering.UNDECIDED_FLOOR` (0.5) or more, under ``min_reproducibility``:
    each half holds too few models to agree on where the clusters part. It is reported (the
    class's evidence ``"undecided"``, ``adata.uns[key_added]["undecided"]`` and a
    :class:`UndecidedSubgroupsWarning`), never split; :func:`scdm.tl.second_round` trains
    more models and decides it. A class whose accepted split was merged whole as one
    continuum (below) is decided, not undecided.

    Where the models' input is mostly noise (its components above the noise edge hold under
    :data:`scdm.clustering.NOISE_DOMINATED` of its variance, as in thousands of sparse genes;
    :func:`scdm.clustering.above_noise`), a :class:`NoisyInputWarning` says so: on the
    benchmark's module generator attribution on such genes found no planted subtypes, on
    their PCs it found some (``workflows/benchmarks/RESULTS.md``). The models' default input
    (``use_rep="auto"``) already takes the PCs of such genes, so the warning concerns inputs
    chosen by hand (``use_rep="X"``, a layer). Measured with the shared check, on the
    classes' checked cells.

    Where the models saw fewer than :data:`scdm.clustering.FEW_FEATURES` features with a
    share of their values at the feature's floor (the zeros of counts;
    :func:`scdm.clustering.zero_share`), every split reported carries a caution in its
    evidence (``"zero_inflated_input"``) and a :class:`ZeroInflatedInputWarning` is given:
    the attributions of such inputs group cells by which features are zero, reproducibly,
    and the check splits null classes on them (ten genes of sparse counts: a class without
    subtypes split in 4 of 6 runs, twenty genes in none of 6;
    ``workflows/benchmarks/narrow_inputs.py``).
    Measured with the shared check.

    Where the models were trained on an ``obsm`` representation standardised one by one
    (``use_rep="X_pca"`` with the default ``scale=True``), every split reported carries a
    caution (``"standardised_components"``) and a :class:`StandardisedComponentsWarning`: on
    real cells under a label that differs between classes only in cell-type composition, the
    attributions of such components separate only the types a class's label favours, the
    shared check cannot find the type boundary in the other class, and 8 of 30 such classes
    were split; the label-favoured check (above) refuses 6 of them, 2 of 30 stay split (none
    of 30 on the genes, ``use_rep="auto"``; ``subgroups.py --scenarios 'R-null-*'``).
    Datamodels trained on the genes failed the same nulls where ``tl.trak`` passed them (4 of
    22 classes split before the label-favoured check, three along cell types, which come out
    whole with it; the fourth a residue of a shared split): their splits carry
    ``"datamodels_composition"`` and a :class:`DatamodelsCompositionWarning`; confirm them with
    ``tl.trak`` on the same input.

    Observations with a degenerate datamodel (``adata.obs[f"{key}_ok"]`` False) are left out
    and labelled ``"unassigned"``, as are the members of clusters smaller than ``min_size``.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.datamodels`.
    key
        Key of the datamodels results (``adata.uns[key]``, ``adata.obsm[f"X_{key}"]``).
    label_key
        Class column; default the one the models were trained on.
    use_rep
        Embedding in ``adata.obsm`` (default ``f"X_{key}"``); another one needs ``resolution``
        (the halves are embedded like ``f"X_{key}"``).
    n_neighbors
        Neighbours of the kNN graph (within a class).
    resolution
        ``None``: chosen per class by reproducibility (above). A number: Leiden at that
        resolution in every class, no check.
    resolutions
        The grid scanned when ``resolution=None`` (default
        :data:`scdm.clustering.DEFAULT_RESOLUTIONS`, 0.05-2).
    min_reproducibility
        Smallest ARI between the halves' partitions that counts as a reproducible split
        (:data:`scdm.clustering.MIN_REPRODUCIBILITY`, 0.75: each half holds half the models,
        so true subtypes reproduce at 0.75-0.8 where the full fit separates them; the null and
        the shared check, not this bar, keep structureless classes whole — on the scenario
        suite 0.75 split none of 285 null class runs, 0.7 one).
    n_null
        Null pairs per class; the smallest p-value is ``1 / (n_null + 1)``, which must not
        exceed 0.05.
    min_size
        Clusters smaller than this are no subgroup: their cells are ``"unassigned"`` (and
        they do not count when the halves' partitions are compared).
    max_points
        A class with more usable cells than this is checked on a uniform random subsample of
        ``max_points`` of them (seeded by ``random_state``), which bounds the cost of the
        check (Leiden on the halves and the null pairs) whatever the class size; the
        subsample is then clustered in the full embedding at the chosen resolution and every
        other cell of the class takes the subgroup most of its ``n_neighbors`` nearest
        subsample cells have. Subgroups too rare to leave ``min_size`` cells in the subsample
        cannot be found this way. ``None`` checks and clusters every class whole.
    shared_check
        The checks for nuisances no column names (above): carry each accepted partition to
        the other classes and take out the boundaries that divide them too, refuse splits
        along types the label favours, and check a split again with sequencing depth taken
        out where depth alone tells two of its subgroups apart. ``False`` keeps partitions a
        nuisance, a state common to all classes, a difference in composition or sequencing
        depth makes.
    classes
        Classes to split (default all); the others get one subgroup each.
    markers
        Also rank marker genes of each subgroup against the rest of its class
        (:func:`scdm.tl.subgroup_markers`).
    n_genes
        Marker genes kept per subgroup.
    device
        Where the halves are fitted (``"auto"``, ``"cpu"``, ``"cuda"``).
    random_state
        Seed of Leiden and the null draws.
    key_added
        ``adata.obs`` column of the subgroups (default ``f"{key}_subgroup"``); parameters and
        evidence go to ``adata.uns[key_added]``.
    verbose
        Progress bars (default: ``scdm.settings.verbosity >= 1``).
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy. Sets categorical ``adata.obs[key_added]`` and ``adata.uns[key_added]``
    with ``params``, ``sizes``, per class ``reproducibility`` (``split``, the resolution, the
    reproducibility, the separation, the null's maximum separation, the p-value,
    ``n_cells``, ``n_checked`` (cells the check ran on) and ``n_subgroups``; without a split,
    the most reproducible resolution's figures; where a reproducible split divided another
    class too, ``shared`` with that split's figures, the classes it divides and the
    separation there, and the figures above are those of the check run again without it;
    where a split ran along sequencing depth, ``depth`` with its ``auc`` and
    ``n_subgroups_before``, and the figures are those of the check with depth taken out;
    ``depth_within`` likewise per subgroup checked again on its own; for every split
    ``boundaries_refined``, see above), the whole scan per
    class (of the check that decided) as a table in ``reproducibility_scan``, the undecided
    classes in ``undecided`` (each with its best undecided row as ``undecided`` in its
    evidence), ``input_noise`` (``share_above_noise``, ``noise_dominated``, ``n_features``,
    ``zero_share``, ``few_zero_inflated``; with the shared check), with ``markers`` a
    ``markers`` DataFrame and, when the models were trained with a ``group_key`` or
    ``stratify_key``, the confounding check of :func:`scdm.tl.subgroup_composition` on them
    (``composition``).
    The halves' embeddings are cached in ``adata.obsm[f"X_{key}_half1"]`` and
    ``[f"X_{key}_half2"]``.
    """
    label_key = label_key_of(adata, key, label_key)
    key_added = key_added or subgroup_key(key)
    automatic = resolution is None
    if use_rep is not None and use_rep != f"X_{key}" and automatic:
        raise ValueError(f"use_rep={use_rep!r} needs a fixed resolution=: the reproducibility "
                         f"check clusters halves embedded like 'X_{key}'.")
    use_rep = use_rep or f"X_{key}"
    if use_rep not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{use_rep!r}] not found; run scdm.tl.datamodels(adata, label_key=...) "
            "first (or scdm.tl.embed_datamodels after fit_datamodels)."
        )
    seed = check_random_state(random_state)
    if resolution is not None and not resolution > 0:
        raise ValueError(f"resolution must be positive, got {resolution}.")
    grid = check_resolutions(resolutions)
    check_fraction("min_reproducibility", min_reproducibility, "(0, 1]")
    check_int("n_null", n_null, 19, " (p-values down to 0.05)")
    check_int("min_size", min_size, 1)
    check_int("n_neighbors", n_neighbors, 2)
    if max_points is not None and (isinstance(max_points, bool) or not isinstance(
            max_points, (int, np.integer)) or max_points < 2 * n_neighbors):
        raise ValueError(f"max_points must be None or an integer >= 2 * n_neighbors = "
                         f"{2 * n_neighbors} (the halves of a checked subsample need a kNN "
                         f"graph each), got {max_points!r}.")
    labels = adata.obs[label_key].astype("category")
    all_classes = [str(c) for c in labels.cat.categories if (labels == c).any()]
    chosen = all_classes if classes is None else [str(c) for c in classes]
    unknown = sorted(set(chosen) - set(all_classes))
    if unknown:
        raise ValueError(f"classes {unknown} are not in adata.obs[{label_key!r}] "
                         f"(classes: {all_classes}).")
    ok = usable_targets(adata, key)
    label_values = labels.astype(str).to_numpy()
    # a kNN graph needs more points than neighbours; two halves' partitions need a few more
    smallest = fewest_points(n_neighbors, halves=automatic)
    counts = {c: int((ok & (label_values == c)).sum()) for c in chosen}
    too_small = {c: n for c, n in counts.items() if n < smallest}
    if too_small:
        raise ValueError(
            f"classes {too_small} have fewer than {smallest} usable datamodels, too few to "
            f"split with n_neighbors={n_neighbors}"
            + (" and check the split on two halves" if automatic else "")
            + "; lower n_neighbors or leave those classes out with classes=[...].")

    adata = adata.copy() if copy else adata  # before the halves, which are cached in adata
    rep = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    # float64 once: every class (and the shared check) indexes its cells out of them
    halves = (tuple(np.asarray(h, dtype=np.float64) for h in half_embeddings(
        adata, key, device=device, verbose=verbose)) if automatic else None)
    checked_of = {}  # the cells each class is checked on (a subsample of a large class)
    for index, cls in enumerate(all_classes):
        members = np.flatnonzero((label_values == cls) & ok)
        sub = check_subsample(members.size, max_points, seed, index) if automatic else None
        checked_of[cls] = (members, sub, members if sub is None else members[sub])
    others, input_noise = (_other_classes(adata, key, halves, checked_of)
                           if automatic and shared_check and len(all_classes) > 1
                           else (None, None))
    depth = _cells_depth(adata, key) if automatic and shared_check else None
    # each cell's held-out accuracy, for the label-favoured check: read from the store at the
    # first split it has to measure
    accuracy = None
    model_inputs = None  # the models' input, read at the first split to refine
    # what every split of this run is cautioned with, by the models' input (none without the
    # shared check's measure of it)
    cautions: dict[str, dict] = {}
    if input_noise is not None:
        if input_noise["few_zero_inflated"]:
            cautions["zero_inflated_input"] = {k: input_noise[k] for k in ("n_features",
                                                                           "zero_share")}
        use_rep = training_params(adata, key).get("use_rep")
        if input_noise["standardised_components"]:
            cautions["standardised_components"] = {"use_rep": use_rep}
        elif adata.uns[key].get("method") != "trak":
            cautions["datamodels_composition"] = {"method": "datamodels",
                                                  "use_rep": use_rep or "X"}
    check = {"n_neighbors": n_neighbors, "resolutions": grid,
             "min_reproducibility": min_reproducibility, "n_null": n_null,
             "min_margin": MIN_MARGIN, "cut_slack": CUT_SLACK, "min_size": min_size,
             "min_jaccard": REPRODUCING_JACCARD, "random_state": seed}

    scanned: dict[str, ResolutionChoice] = {}  # a class checked again rescans nothing new

    def check_class(cls: str, within: dict[str, np.ndarray], seed: int = seed) -> _ClassCheck:
        nonlocal accuracy, model_inputs
        assert halves is not None  # automatic
        members, sub, checked = checked_of[cls]
        check_at = {**check, "random_state": seed}
        elsewhere = {} if others is None else {
            c: v for c, v in others.items() if c != cls and len(v[0]) >= 2 * min_size}
        inputs = None if others is None else others[cls][0]
        result = _checked_split(
            halves[0][checked], halves[1][checked], rep[members], sub, inputs, elsewhere,
            check_at, within, scanned, None if depth is None else depth[members])
        found, class_rep, choice, shared = (result.found, result.rep, result.choice,
                                            result.shared)
        met = result.met_shared
        inner: dict[str, dict] = {}
        along_depth: dict[str, dict] = {}
        if found is not None:
            found, inner, met_inner, along_depth = _split_within(
                found, result.halves, class_rep if sub is None else class_rep[sub],
                inputs, elsewhere, check_at, within, scanned,
                None if depth is None else depth[checked])
            met = met or met_inner
        favoured = None
        if found is not None and inputs is not None and elsewhere:
            if accuracy is None:
                accuracy = _heldout_accuracy(adata, key)
            favoured = _label_favoured(
                found, inputs, accuracy[checked],
                np.vstack([v[0] for v in elsewhere.values()]),
                np.concatenate([accuracy[checked_of[c][2]] for c in elsewhere]),
                n_neighbors=n_neighbors, min_size=min_size)
            if favoured is not None:
                found, inner = None, {}
        refined = None

        def refine(labels: np.ndarray) -> np.ndarray:
            nonlocal model_inputs, refined
            if _engine.REFINE_COMPONENTS <= 0:
                return labels
            if model_inputs is None:
                model_inputs = recorded_training(adata, key).inputs.X
            moved, refined = refined_boundaries(
                np.asarray(model_inputs[checked]), labels, halves[0][checked],
                halves[1][checked], random_state=seed,
                n_components=_engine.REFINE_COMPONENTS)
            return by_size(moved)

        if found is not None:
            found = refine(found)
        # subgroups with nothing thinning out between them are one continuum; what is left is
        # refined again, as the moves were made for the pieces merged away (not again: a
        # graded class cut into 4 and merged into 3 kept them, 0.22 lower ARI; merged before
        # the first refinement, its close seeds gave 3, 1 and 2: RESULTS.md, session 51)
        merged: list[dict] = []
        if found is not None and _engine.CONTINUUM_CROWDING is not None:
            before = n_substantial(found, min_size)
            # the module's values at call time, as recorded in params
            found, merged = merge_continua(
                found, halves[0][checked], halves[1][checked], min_size=min_size,
                crowding=_engine.CONTINUUM_CROWDING, min_cells=_engine.CROWDING_MIN_CELLS,
                window=_engine.GAP_WINDOW)
            if merged and n_substantial(found, min_size) < 2:
                found, inner, refined = None, {}, None  # no boundary is left to have moved
            elif merged:
                found = refine(found)
        summary = choice.summary()
        if found is None and summary["split"]:  # accepted, then found shared again
            summary = _as_unsplit(summary)
        entry = {**summary, "n_cells": int(members.size), "n_checked": int(checked.size)}
        if shared is not None:
            entry["shared"] = shared
        if inner:
            entry["split_within"] = inner
        if result.depth is not None:
            entry["depth"] = result.depth
        if along_depth and found is not None:
            entry["depth_within"] = along_depth
        if favoured is not None:
            entry["label_favoured"] = favoured
        if refined is not None:
            entry["boundaries_refined"] = refined
        if merged:
            # numbered in the order merged, as split_within: h5ad holds no list of dicts
            entry["continuum_merged"] = {"n_subgroups_before": before, "merges": {
                str(i + 1): merge for i, merge in enumerate(merged)}}
        return _ClassCheck(found, class_rep, choice, entry, met)

    def decided(cls: str, within: dict[str, np.ndarray]) -> _ClassCheck:
        """check_class, and where its split is close to its bars, at the seeds after the
        run's too: the count most of them give (_voted)."""
        first = check_class(cls, within)
        if (first.found is None or _engine.CLOSE_SEEDS < 2
                or not _close_split(first.entry, check)):
            return first
        return _voted([first] + [check_class(cls, within, seed + i)
                                 for i in range(1, _engine.CLOSE_SEEDS)],
                      [seed + i for i in range(_engine.CLOSE_SEEDS)], min_size)

    checks = {cls: decided(cls, {}) for cls in tqdm(
        [c for c in all_classes if c in chosen] if automatic else [], desc="subgroups",
        unit="class", disable=not settings.progress(verbose))}
    # A boundary that divided another class only through that class's own subgroups is not a
    # shared nuisance: check such classes again with the other classes' accepted subgroups
    # known (scdm.clustering.shared_boundaries, `within`). Only what the first pass accepted
    # is used, so the outcome does not depend on the order of the classes.
    split_first = {c: r.found for c, r in checks.items()
                   if r.found is not None and n_substantial(r.found, min_size) > 1}
    again_for = [c for c, r in checks.items() if r.met_shared and set(split_first) - {c}]
    for cls in tqdm(again_for, desc="subgroups, shared boundaries again", unit="class",
                    disable=not settings.progress(verbose)):
        first = checks[cls]
        within = {c: f for c, f in split_first.items() if c != cls}
        again = decided(cls, within)
        if not _same_partition(first.found, again.found):
            again.entry["shared_within"] = {
                "subgroups_of": sorted(within),
                "n_subgroups_before": 1 if first.found is None else n_substantial(
                    first.found, min_size)}
            checks[cls] = again

    names = np.full(adata.n_obs, UNASSIGNED, dtype=object)
    evidence, scans, undecided = {}, {}, []
    for cls in all_classes:
        members, sub, _ = checked_of[cls]
        codes = np.zeros(members.size, dtype=np.int64)
        if cls in checks:  # automatic
            result = checks[cls]
            choice = result.choice
            evidence[cls] = result.entry
            scans[cls] = choice.table
            if result.found is not None:
                codes = result.found
                if sub is not None:  # the subsample's subgroups, extended to the class
                    codes = extend_labels(result.class_rep, sub, codes, n_neighbors)
        elif cls in chosen and resolution is not None:
            codes = leiden_labels(rep[members], n_neighbors=n_neighbors,
                                  resolutions=[resolution], random_state=seed)[0]
        big = np.bincount(codes)[codes] >= min(min_size, members.size)
        if cls in evidence:
            evidence[cls]["n_subgroups"] = n_substantial(codes, min_size)
            if evidence[cls]["n_subgroups"] > 1:
                evidence[cls].update({k: dict(v) for k, v in cautions.items()})
                if (flat := weakest_boundary(evidence[cls])) is not None:
                    evidence[cls]["continuum"] = flat
            # kept whole (no split accepted, or one that left a single cluster): is it
            # undecided rather than structureless? Not where an accepted split was merged
            # whole as one continuum: the class is decided, and more models cut the same
            # continuum more sharply (a path class merged at round one came out of the second
            # in three stages; RESULTS.md, session 52)
            if (evidence[cls]["n_subgroups"] < 2 and "continuum_merged" not in evidence[cls]
                    and (pending := choice.undecided()) is not None):
                evidence[cls]["undecided"] = pending
                undecided.append(cls)
        # clusters are numbered by size, so the substantial ones keep 0..k-1
        names[members[big]] = [f"{cls}-{c}" for c in codes[big]]

    order = subgroup_order(names, all_classes)
    adata.obs[key_added] = pd.Categorical(names, categories=order)
    sizes = adata.obs[key_added].value_counts().reindex(order)
    info: dict[str, Any] = {
        "params": {"key": key, "label_key": label_key, "use_rep": use_rep,
                   "n_neighbors": n_neighbors, "resolution": resolution,
                   "resolutions": list(grid), "min_reproducibility": min_reproducibility,
                   "inner_reproducibility": inner_check(check)["min_reproducibility"],
                   "n_null": n_null, "min_margin": MIN_MARGIN, "cut_slack": CUT_SLACK,
                   "min_jaccard": REPRODUCING_JACCARD, "min_size": min_size,
                   "close_seeds": _engine.CLOSE_SEEDS, "leiden_runs": _engine.LEIDEN_RUNS,
                   "continuum_separation": CONTINUUM_SEPARATION,
                   "continuum_crowding": _engine.CONTINUUM_CROWDING,
                   "crowding_min_cells": _engine.CROWDING_MIN_CELLS,
                   "gap_window": _engine.GAP_WINDOW,
                   "refine_components": _engine.REFINE_COMPONENTS,
                   "max_points": max_points,
                   "shared_check": shared_check, "classes": chosen,
                   "markers": markers, "n_genes": n_genes, "random_state": seed,
                   # the nuisance the models were balanced on, for the evidence's advice
                   "stratify_key": training_params(adata, key).get("stratify_key")},
        "sizes": {str(k): int(v) for k, v in sizes.items()},
    }
    if automatic:
        info["reproducibility"] = evidence
        info["reproducibility_scan"] = scans
        info["undecided"] = undecided
    if input_noise is not None:
        info["input_noise"] = input_noise
    adata.uns[key_added] = uns_safe(info)
    finish_subgroups(adata, key_added, markers=markers, n_genes=n_genes, random_state=seed)
    if input_noise is not None and input_noise["noise_dominated"]:
        warnings.warn(
            f"the models' input ({models_input(adata, adata.uns[key])}) is mostly noise: its "
            f"components above the noise edge hold {input_noise['share_above_noise']:.0%} of "
            f"its variance (under {NOISE_DOMINATED:.0%}). On data like this (the benchmark's "
            f"module generator, 1,000 sparse log-normalised genes: 8-9 %) TRAK on the genes found "
            f"the planted subtypes in none of 15 classes (datamodels in none of 2), on their "
            f"PCs in 8; a class kept whole here may not be structureless. Train the "
            f"attribution on PCs: use_rep='auto' (the default) does for an input like this, "
            f"or sc.pp.pca, then use_rep='X_pca'. Evidence: "
            f"adata.uns[{key_added!r}]['input_noise'].", NoisyInputWarning, stacklevel=3)
    def split_with(caution: str) -> list[str]:
        return [c for c, e in evidence.items() if caution in e]

    if cautioned := split_with("zero_inflated_input"):
        narrow = cautions["zero_inflated_input"]
        warnings.warn(
            f"classes {cautioned} were split, but the models saw only "
            f"{narrow['n_features']} features, {narrow['zero_share']:.0%} of their "
            f"values at zero (the feature's floor). Attributions of so few zero-inflated "
            f"features group cells by which of them are zero in a cell, and the check cannot "
            f"tell such groups from subtypes: with ten genes of sparse counts it split a class "
            f"without subtypes in 4 of 6 runs, with {FEW_FEATURES} in none of 6. Confirm the "
            f"subgroups on more features (all genes, use_rep='auto') before reporting them. "
            f"Evidence: adata.uns[{key_added!r}]['reproducibility'][class]"
            f"['zero_inflated_input'].", ZeroInflatedInputWarning, stacklevel=3)
    if components := split_with("standardised_components"):
        rep_name = cautions["standardised_components"]["use_rep"]
        warnings.warn(
            f"classes {components} were split, but the models were trained on components "
            f"({rep_name!r}) standardised one by one. On real cells under a label that differs "
            f"between the classes only in cell-type composition (pbmc68k, CBMC, Zeisel: "
            f"workflows/benchmarks/subgroups.py --scenarios 'R-null-*'), such splits followed "
            f"the cell types the label favours in 8 of 30 classes (tl.trak; 2 once the "
            f"label-favoured check refused those it could measure), and in none of 30 with "
            f"tl.trak's models trained on the genes (use_rep='auto'). Run tl.trak with "
            f"use_rep='auto' and report only the subgroups both runs find. Evidence: "
            f"adata.uns[{key_added!r}]['reproducibility'][class]['standardised_components'].",
            StandardisedComponentsWarning, stacklevel=3)
    if composition := split_with("datamodels_composition"):
        warnings.warn(
            f"classes {composition} were split by datamodels. On real cells under a label they "
            f"do not carry (pbmc68k, CBMC, Zeisel dealt to two classes by a coin, or by odds "
            f"set by the cell type: workflows/benchmarks/subgroups.py --method datamodels "
            f"--scenarios 'R-null-*'), datamodels trained on the genes split 4 of 22 classes "
            f"(three along cell types, whole with the label-favoured check), where "
            f"tl.trak on the genes split none of 30. Run tl.trak "
            f"on the same input and report only the subgroups both find. Evidence: "
            f"adata.uns[{key_added!r}]['reproducibility'][class]['datamodels_composition'].",
            DatamodelsCompositionWarning, stacklevel=3)
    if continua := split_with("continuum"):
        weakest = ", ".join(f"{c} {evidence[c]['continuum']['separation']:.2f}"
                            for c in continua)
        warnings.warn(
            f"classes {continua} were split, but their weakest boundary puts no more of the "
            f"variance along the line between its sides ({weakest}) than a flat continuum cut "
            f"in two ({CONTINUUM_SEPARATION:g}): the subgroups may be stages of one "
            f"progression or path of states, not discrete types (cells still thin out where "
            f"they meet, or subgroups that do not were merged already). On the scenario "
            f"suite (workflows/benchmarks/subgroups.py) this was said of 9–12 of 72 true splits "
            f"(weak, rare, unequal or graded subtypes) and, on standardised components, of 2 "
            f"of the 3 splits of a disease along a path through five programmes that were left "
            f"after merging. Order the cells by a pseudotime (e.g. sc.tl.dpt) "
            f"and follow the subgroups' markers along it before calling them subtypes. "
            f"Evidence: adata.uns[{key_added!r}]['reproducibility'][class]['continuum'].",
            PossibleContinuumWarning, stacklevel=3)
    if undecided:
        # three decimals: rounded to two, an agreement just under the bar reads as the bar
        agree = sorted(f"{evidence[c]['undecided']['reproducibility']:.3f}" for c in undecided)
        warnings.warn(
            f"classes {undecided} stay one subgroup, undecided: both halves of the models "
            f"find clusters there, separated beyond the null, but place them differently "
            f"(agreement {'-'.join(dict.fromkeys([agree[0], agree[-1]]))} < min_reproducibility="
            f"{min_reproducibility}). More models may decide: scdm.tl.second_round(adata, "
            f"key={key!r}) trains {SECOND_ROUND_FACTOR}x the models and checks those classes "
            f"again. Evidence: adata.uns[{key_added!r}]['reproducibility'][class]['undecided'].",
            UndecidedSubgroupsWarning, stacklevel=3)  # past one_view's wrapper
    return adata if copy else None


def weakest_boundary(entry: Mapping[str, Any]) -> dict | None:
    """The weakest boundary of a class's accepted split (evidence ``entry``: the class's
    partition and each accepted inner split) where it separates no more than a flat continuum
    cut in two (:data:`scdm.clustering.CONTINUUM_SEPARATION`), as ``{"separation", "bar",
    "where"}`` (``"class"``, or ``"inner split k"``: the ``k``-th of ``"split_within"``);
    ``None`` where every boundary is beyond it. A split accepted on clusters that reproduce
    on their own has its separation with both sides weighed alike: a flat stretch cut in two
    reaches 3/4 on that scale too (at its middle; less cut off-centre)."""
    seps = []
    if entry.get("split"):
        seps.append((float(entry["separation"]), "class"))
    seps += [(float(w["separation"]), f"inner split {name}")
             for name, w in (entry.get("split_within") or {}).items() if w.get("split")]
    if not seps:
        return None
    separation, where = min(seps)
    if separation >= CONTINUUM_SEPARATION:
        return None
    return {"separation": separation, "bar": CONTINUUM_SEPARATION, "where": where}


def subgroup_order(names: np.ndarray, classes: Sequence[str]) -> list[str]:
    """The subgroup names in order: by class, then by number (size), unassigned last."""
    def order_key(name: str) -> tuple[int, int]:
        if name == UNASSIGNED:
            return (len(classes), 0)
        cls, number = name.rsplit("-", 1)
        return (list(classes).index(cls), int(number))

    return sorted(set(names), key=order_key)


def finish_subgroups(adata: AnnData, key_added: str, *, markers: bool, n_genes: int,
                     random_state: int) -> None:
    """What follows a partition into subgroups: their marker genes and, where the models
    knew of donors or batches, the confounding check."""
    if markers:
        subgroup_markers(adata, key=key_added, n_genes=n_genes)
    from ._composition import covariates_of, subgroup_composition  # it imports UNASSIGNED

    if covariates_of(adata, key_added):  # the donors and batches the models knew of
        subgroup_composition(adata, key=key_added, random_state=random_state)


@dataclass
class _ClassCheck:
    """One class's checked split: the partition of its checked cells (``None``: no split),
    the class's embedding it was found in, the scan that decided, its evidence, and whether
    any boundary met on the way divided another class too (a second look may then find it
    private, :func:`scdm.clustering.shared_boundaries`' ``within``)."""

    found: np.ndarray | None
    class_rep: np.ndarray
    choice: ResolutionChoice
    entry: dict
    met_shared: bool


def _close_split(entry: Mapping[str, Any], check: Mapping[str, Any]) -> bool:
    """Whether a class's accepted split, or an inner split of it, clears a bar by little
    (:func:`scdm.clustering.near_bars`, each with its own agreement bar)."""
    if not entry.get("split"):
        return False
    if near_bars(entry, min_margin=check["min_margin"],
                 min_reproducibility=check["min_reproducibility"]):
        return True
    inner = inner_check(dict(check))["min_reproducibility"]
    return any(near_bars(w, min_margin=check["min_margin"], min_reproducibility=inner)
               for w in (entry.get("split_within") or {}).values())


def _voted(results: Sequence[_ClassCheck], seeds: Sequence[int], min_size: int
           ) -> _ClassCheck:
    """Of one class checked at several seeds (the run's first), the count more than half of
    them give, the first seed's partition where it gives it, else the first that does; where
    no count has a majority, the fewest subgroups. Recorded in the evidence as
    ``"close_seeds"``. A split close to its bars is one Leiden seed may pass and the next
    not: on the cached suite a null class was split so at one of the two seeds tried
    (RESULTS.md, session 47)."""
    counts = [1 if r.found is None else n_substantial(r.found, min_size) for r in results]
    tally = {k: counts.count(k) for k in counts}
    best = max(tally.values())
    majority = max(tally, key=tally.__getitem__) if 2 * best > len(counts) else min(counts)
    taken = counts.index(majority)
    result = results[taken]
    entry = dict(result.entry)
    entry["close_seeds"] = {"random_states": [int(s) for s in seeds], "n_subgroups": counts,
                            "taken": int(seeds[taken])}
    if taken:  # another seed's split: its own evidence, said to be another seed's
        entry["close_seeds"]["first"] = {k: v for k, v in results[0].entry.items()
                                         if not isinstance(v, dict)}
    return _ClassCheck(result.found, result.class_rep, result.choice, entry,
                       any(r.met_shared for r in results))


def _same_partition(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(adjusted_rand_score(a, b) == 1.0)


def _scan(h1: np.ndarray, h2: np.ndarray, check: dict[str, Any], memo: dict | None
          ) -> ResolutionChoice:
    """:func:`scdm.clustering.choose_resolution` of two halves, remembered in ``memo`` by
    their content: checked again with the other classes' subgroups known, a class scans the
    same halves (its nulls are most of the check's time) unless its nuisance levels changed.
    A copy is returned, as the caller records on it where the full embedding was cut."""
    if memo is None:
        return choose_resolution(h1, h2, **check)
    digest = hashlib.blake2b(digest_size=16)
    # and by the bars: an inner check scans with its own (_split_within)
    digest.update(repr(sorted(check.items())).encode())
    for half in (h1, h2):
        digest.update(np.ascontiguousarray(half).tobytes())
        digest.update(repr(half.shape).encode())
    key = digest.hexdigest()
    if key not in memo:
        memo[key] = choose_resolution(h1, h2, **check)
    return copy.copy(memo[key])


class _Split(NamedTuple):
    """One class's (or subgroup's) checked split: the partition of its checked cells
    (``None``: no split), the class's embedding it was found in (centred within a shared
    nuisance's levels, or with sequencing depth taken out, where either was), the scan that
    decided, the shared split's evidence, if any, the checked cells' halves as the scan saw
    them (taken out likewise), whether a boundary was found shared, and where a first split
    ran along sequencing depth, its figures (:func:`_checked_split`)."""

    found: np.ndarray | None
    rep: np.ndarray
    choice: ResolutionChoice
    shared: dict | None
    halves: tuple[np.ndarray, np.ndarray]
    met_shared: bool
    depth: dict | None = None
    judged: np.ndarray | None = None


def _checked_split(h1: np.ndarray, h2: np.ndarray, rep: np.ndarray, sub: np.ndarray | None,
                   inputs: np.ndarray | None, elsewhere: dict, check: dict[str, Any],
                   within: dict[str, np.ndarray] | None = None, memo: dict | None = None,
                   depth: np.ndarray | None = None) -> _Split:
    """One class's checked split (:class:`_Split`). ``within``: the other classes' accepted
    subgroups, passed on to :func:`scdm.clustering.shared_boundaries`; ``memo``: scans
    already made (:func:`_scan`).

    ``h1``/``h2`` are the checked cells' halves, ``rep`` the class's embedding (``sub`` the
    checked cells among the class, ``None`` for all), ``inputs`` the checked cells' models'
    input and ``elsewhere`` what :func:`scdm.clustering.shared_boundaries` carries the split
    to (empty: no shared check). ``depth``: each cell of ``rep``'s log number of detected
    features (:func:`scdm.clustering.detected_depth`; ``None``: no depth check). Where it
    alone tells two subgroups of the split apart (:data:`scdm.clustering.DEPTH_AUC`), the
    split may be a cut along sequencing depth, which changes how much of a programme a cell's
    counts show: depth is taken out of the halves and the embedding (a straight line per
    coordinate) and the check runs again on what is left, whose result stands.
    """
    first = _split_once(h1, h2, rep, sub, inputs, elsewhere, check, within, memo)
    partition = first.found if first.found is not None else first.judged
    if depth is None or partition is None:
        return first
    min_size = check["min_size"]
    checked_depth = depth if sub is None else depth[sub]
    association = depth_association(partition, checked_depth, min_size)
    if association < DEPTH_AUC:
        return first
    if first.found is None:
        # Refused as shared: depth is a nuisance every class has. Said, not checked again
        # with depth taken out: on log counts not normalised per cell, what a straight line
        # leaves of depth split null classes there (RESULTS.md, session 40)
        assert first.shared is not None  # judged is set only where boundaries were shared
        return first._replace(shared={**first.shared, "depth_auc": association})
    # one line over the class's cells: read within the subgroups instead, it came mostly from
    # those whose programme does not show depth and missed the cut (RESULTS.md, session 38)
    again = _split_once(take_out_linear(h1, checked_depth), take_out_linear(h2, checked_depth),
                        take_out_linear(rep, depth), sub, inputs, elsewhere, check, within,
                        memo)
    return again._replace(met_shared=first.met_shared or again.met_shared, depth={
        "auc": association, "n_subgroups_before": n_substantial(partition, min_size),
        "bar": DEPTH_AUC})


def _split_once(h1: np.ndarray, h2: np.ndarray, rep: np.ndarray, sub: np.ndarray | None,
                inputs: np.ndarray | None, elsewhere: dict, check: dict[str, Any],
                within: dict[str, np.ndarray] | None, memo: dict | None) -> _Split:
    """:func:`_checked_split` without the depth check: the scan, the shared check and, where
    boundaries are shared, the check again with the nuisance's levels taken out."""
    n_neighbors, min_size, seed = check["n_neighbors"], check["min_size"], check["random_state"]

    def cluster(points: np.ndarray, choice: ResolutionChoice) -> np.ndarray | None:
        if choice.resolution is None:
            return None
        # the number of clusters the halves agreed on, not another one the full embedding
        # happens to give at their resolution (the evidence says where it was found)
        labels, choice.full_resolution = agreed_partition(
            points if sub is None else points[sub], choice, n_neighbors=n_neighbors,
            min_size=min_size, random_state=seed)
        return labels

    choice = _scan(h1, h2, check, memo)
    found = cluster(rep, choice)
    if found is None or not elsewhere or inputs is None:
        return _Split(found, rep, choice, None, (h1, h2), False)
    bounds = shared_boundaries(found, inputs, (h1, h2), elsewhere, n_neighbors=n_neighbors,
                               min_size=min_size, within=within,
                               balanced=choice.reproducing is not None)
    if not bounds.shared.any():
        return _Split(found, rep, choice, None, (h1, h2), False)
    # the shared boundaries run between levels of a nuisance: take the levels out of the
    # halves and the embedding, and check what is left
    shared = _shared_evidence(choice, bounds, found, min_size)
    judged = found
    levels = bounds.levels
    assert levels is not None  # set wherever a boundary is shared
    if np.unique(levels).size < 2:
        if choice.reproducing is not None:
            # accepted on its clusters, not as a whole partition: what a merge would leave
            # was never judged, and on Zeisel's astrocytes it was a cut across the types
            # (RESULTS.md, session 39), so such a split must pass whole
            shared["on_their_own"] = True
            return _Split(None, rep, choice, shared, (h1, h2), True, judged=judged)
        # a private cluster links the two sides of the shared boundaries, so they outline no
        # levels to take out: merge across them and keep what is private
        merged = merge_shared(found, bounds.shared)
        shared["merged"] = True
        return _Split(merged if n_substantial(merged, min_size) > 1 else None, rep, choice,
                      shared, (h1, h2), True, judged=judged)
    h1, h2 = centre_within(h1, levels), centre_within(h2, levels)
    choice = _scan(h1, h2, check, memo)
    rep = centre_within(rep, levels if sub is None else extend_labels(rep, sub, levels,
                                                                      n_neighbors))
    found = cluster(rep, choice)
    if found is not None:
        # the nuisance's interaction with the biology can leave group × level clusters: join
        # the copies of one group across levels
        matched = match_across_levels(found, rep if sub is None else rep[sub], levels)
        if matched.max() < found.max():
            shared["matched_across_levels"] = int(found.max() - matched.max())
        found = matched if n_substantial(matched, min_size) > 1 else None
    if found is not None:
        # measured in the other classes with the nuisance taken out of them too
        again = shared_boundaries(found, inputs, (h1, h2),
                                  carry_levels(levels, inputs, elsewhere, n_neighbors,
                                               bounds.carried_by),
                                  n_neighbors=n_neighbors, min_size=min_size, within=within,
                                  balanced=choice.reproducing is not None)
        if again.shared.any():
            shared["shared_again"] = again.summary()
            found = None
    return _Split(found, rep, choice, shared, (h1, h2), True, judged=judged)


def inner_check(check: dict[str, Any]) -> dict[str, Any]:
    """The check an accepted subgroup's cells get (:func:`_split_within`): whole partitions
    only, and the halves agreeing at :data:`scdm.clustering.INNER_REPRODUCIBILITY` at least.
    Each subgroup is scanned again, a further chance for a cut the halves half agree on: at
    the class's 0.75 the 80-cell subtype of G-3-stratify seed 0 was halved at 0.757, and on
    the suite (TRAK on ``auto`` and ``X_pca``, datamodels on the module generator's PCs) and
    the real data no true subtype came apart inside a subgroup under 0.8 (RESULTS.md,
    session 42). Inside a subgroup, clusters accepted on their own (each with the rest of its
    cells as one group) cut pieces off true subtypes (G-2-unequal, G-3-stratify; session 39),
    as the remainder of a merged shared split did (issue 27)."""
    return {**check, "min_jaccard": None,
            "min_reproducibility": max(check["min_reproducibility"], INNER_REPRODUCIBILITY)}


def _split_within(found: np.ndarray, halves: tuple[np.ndarray, np.ndarray], rep: np.ndarray,
                  inputs: np.ndarray | None, elsewhere: dict, check: dict[str, Any],
                  within: dict[str, np.ndarray] | None = None, memo: dict | None = None,
                  depth: np.ndarray | None = None
                  ) -> tuple[np.ndarray, dict, bool, dict]:
    """One level more: each accepted subgroup (of enough cells for two halves' graphs) checked
    again on its own cells — the class's halves and embedding as its check left them (a shared
    nuisance taken out), the same scan, null and shared check — and replaced by its inner
    split where one is accepted. Returns the partition (numbered by size), per subgroup split
    again its scan's figures, whether a shared boundary was met, and per subgroup whose first
    inner split ran along sequencing depth the depth check's figures (``depth``: the cells' log
    detected features, as :func:`_checked_split` takes). Subtypes merged at the class's
    resolution come apart here; a subgroup searched in halves that still held the nuisance was
    cut by it."""
    n_neighbors, min_size = check["n_neighbors"], check["min_size"]
    whole_only = inner_check(check)
    out, next_code = found.copy(), int(found.max()) + 1
    inner: dict[str, dict] = {}
    along_depth: dict[str, dict] = {}
    met = False
    for code in np.unique(found):
        cells = np.flatnonzero(found == code)
        if cells.size < max(fewest_points(n_neighbors, halves=True), 4 * min_size):
            continue
        result = _checked_split(
            halves[0][cells], halves[1][cells], rep[cells], None,
            None if inputs is None else inputs[cells], elsewhere, whole_only, within, memo,
            None if depth is None else depth[cells])
        split, choice, shared = result.found, result.choice, result.shared
        met = met or result.met_shared
        # Where the split's shared boundaries outlined no nuisance levels, the class's check
        # merges across them and keeps what is private; that remainder was never checked
        # against the null itself, and inside a subgroup of tens of cells it cut true
        # subtypes in three (RESULTS.md, issue 27), so an inner split must pass whole.
        count = 0 if split is None else n_substantial(split, min_size)
        refused = count < 2 or bool(shared is not None and shared.get("merged"))
        if result.depth is not None:  # what the subgroup became, with depth taken out
            along_depth[str(len(along_depth) + 1)] = {
                **result.depth, "n_cells": int(cells.size),
                "n_subgroups": 1 if refused else count}
        if refused or split is None:
            continue
        inner[str(len(inner) + 1)] = {**choice.summary(), "n_cells": int(cells.size),
                                      "n_subgroups": count}
        for part in np.unique(split)[1:]:
            out[cells[split == part]] = next_code
            next_code += 1
    # numbered by size again, as every partition here
    return by_size(out), inner, met, along_depth


def _other_classes(adata: AnnData, key: str, halves, checked_of: dict
                   ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], dict]:
    """Per class, its checked cells' models' input (as the models see it, or on its
    components above noise where distances in it are mostly noise:
    :func:`scdm.clustering.carrying_space` of every class's checked cells together) and half
    embeddings: what a partition of another class is carried to; and how much of that
    input's variance stands above noise (``share_above_noise``, ``noise_dominated``), how
    many features it has and how often they sit at their floor (``n_features``,
    ``zero_share``, ``few_zero_inflated``: :func:`scdm.clustering.few_zero_inflated`)."""
    inputs = recorded_training(adata, key).inputs.X
    cells = [checked for _, _, checked in checked_of.values()]
    measured = np.asarray(inputs[np.concatenate(cells)], dtype=np.float64)
    space, share, dominated = carrying_space(measured, return_share=True)
    zeros = zero_share(measured)
    bounds = np.cumsum([0, *(c.size for c in cells)])
    return ({cls: (space[bounds[i]:bounds[i + 1]], halves[0][checked], halves[1][checked])
             for i, (cls, (_, _, checked)) in enumerate(checked_of.items())},
            {"share_above_noise": share, "noise_dominated": dominated,
             "n_features": int(measured.shape[1]), "zero_share": zeros,
             "few_zero_inflated": few_zero_inflated(measured.shape[1], zeros),
             "standardised_components": standardised_components(training_params(adata, key))})


def standardised_components(params: Mapping[str, Any]) -> bool:
    """Whether models with these recorded parameters were trained on an ``obsm``
    representation (components: ``X_pca``, a latent space) standardised one by one."""
    return params.get("use_rep") not in (None, "X") and bool(params.get("scale", True))


def _shared_evidence(choice: ResolutionChoice, bounds: SharedBoundaries, found: np.ndarray,
                     min_size: int) -> dict:
    """The figures of a split whose boundaries divide other classes too."""
    first = choice.summary()
    return {"resolution": first["resolution"], "reproducibility": first["reproducibility"],
            "separation": first["separation"], "p_value": first["p_value"],
            "n_subgroups": n_substantial(found, min_size), **bounds.summary()}


def _heldout_accuracy(adata: AnnData, key: str) -> np.ndarray:
    """Each cell's accuracy over the stored models that did not train on it (NaN where every
    model did)."""
    accuracy, _, held = heldout_performance(recorded_training(adata, key).store)
    return np.where(held > 0, accuracy, np.nan)


def _label_favoured(found: np.ndarray, inputs: np.ndarray, accuracy: np.ndarray,
                    other_inputs: np.ndarray, other_accuracy: np.ndarray, *, n_neighbors: int,
                    min_size: int) -> dict | None:
    """Where a subgroup of a split is a region the label favours rather than a subtype
    (:func:`scdm.clustering.label_skew` at least :data:`scdm.clustering.SKEW_BAR`): the most
    skewed subgroup's figures, for the evidence; ``None`` where none is."""
    skew, own, theirs, reached = label_skew(found, inputs, accuracy, other_inputs,
                                            other_accuracy, n_neighbors=n_neighbors)
    sizes = np.bincount(found, minlength=skew.size)
    skew = np.where(sizes >= min_size, skew, np.nan)
    favoured = np.nan_to_num(skew, nan=-np.inf) >= SKEW_BAR
    if not favoured.any():
        return None
    worst = int(np.nanargmax(skew))
    return {"n_subgroups": n_substantial(found, min_size), "n_cells": int(sizes[worst]),
            "skew": float(skew[worst]), "accuracy_here": float(own[worst]),
            "accuracy_carried": float(theirs[worst]), "n_carried": int(reached[worst]),
            "n_favoured": int(favoured.sum()), "bar": SKEW_BAR}


def _as_unsplit(summary: dict) -> dict:
    """An accepted split's figures, reported as the best of a class left whole."""
    return {"split": False, "best_resolution": summary["resolution"],
            "best_reproducibility": summary["reproducibility"],
            "separation": summary["separation"],
            "null_separation_max": summary["null_separation_max"],
            "p_value": summary["p_value"],
            **({"margin": summary["margin"]} if "margin" in summary else {})}


def _cells_depth(adata: AnnData, key: str) -> np.ndarray | None:
    """Each cell's log number of detected features (:func:`scdm.clustering.detected_depth`):
    of the models' input where it has a floor (counts), else, where the models trained on
    components (an obsm key, which training takes with no layer), of ``.X``, which they were
    computed from: components have no floor, but depth runs through them as through the
    features (PCs of normalised counts follow it at Spearman 0.83-0.91 in the planted
    generator at a 10-fold depth spread; RESULTS.md, session 41)."""
    training = recorded_training(adata, key)
    depth = detected_depth(training.inputs.X)
    if (depth is None and training.params.get("use_rep") not in (None, "X")
            and adata.X is not None):
        depth = detected_depth(adata.X)
    return depth


def _expression(adata: AnnData, use_raw: bool | None, layer: str | None):
    """The matrix and gene names that :func:`scanpy.tl.rank_genes_groups` ranks."""
    if layer is not None:
        return adata.layers[layer], adata.var_names
    if use_raw or (use_raw is None and adata.raw is not None):
        return adata.raw.X, adata.raw.var_names
    return adata.X, adata.var_names


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
    ``logfoldchange`` (NaN unless the expression is non-negative, i.e. log-normalised),
    ``mean_difference`` (mean in the subgroup minus the rest of its class, any input),
    ``pval``, ``pval_adj``; also stored in ``adata.uns[key]["markers"]``. Cells labelled
    ``"unassigned"`` take no part.
    """
    import scanpy as sc

    if key not in adata.obs or key not in adata.uns:
        raise KeyError(f"adata.obs[{key!r}] not found; run scdm.tl.subgroups(adata) first.")
    label_key = adata.uns[key]["params"]["label_key"]
    groups = adata.obs[key].astype(str)
    labels = adata.obs[label_key].astype(str)
    expression, gene_names = _expression(adata, use_raw, layer)
    # log fold changes assume log-normalised counts; on scaled or signed data they are
    # undefined (scanpy takes log2 of negative numbers), so they are left NaN there
    log_scale = (expression.data if sparse.issparse(expression) else expression).min() >= 0
    frames = []
    for cls in pd.unique(labels):
        in_class = ((labels == cls) & (groups != UNASSIGNED)).to_numpy()
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
            if not log_scale:
                warnings.simplefilter("ignore", category=RuntimeWarning)
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
                if not log_scale:
                    df["logfoldchange"] = np.nan
                cells = np.flatnonzero(in_class)
                inside = (groups[in_class] == group).to_numpy()
                genes = gene_names.get_indexer(df["gene"])
                part = expression[cells][:, genes]
                part = np.asarray(part.toarray() if sparse.issparse(part) else part)
                df["mean_difference"] = part[inside].mean(0) - part[~inside].mean(0)
                frames.append(df)
    columns = ["class", "subgroup", "rank", "gene", "score", "logfoldchange", "mean_difference",
               "pval", "pval_adj"]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    table = table.reindex(columns=columns)
    for column in ("class", "subgroup", "gene"):
        table[column] = table[column].astype(str)
    adata.uns[key]["markers"] = table
    return table
