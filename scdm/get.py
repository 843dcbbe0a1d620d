"""Reading results out of AnnData: the one accessor layer that ``tl``, ``pl`` and the CLI use
(like ``scanpy.get``), so that no layer reaches into another's private modules.

Default keys derive from the attribution key: the subgroups of ``key`` are
``subgroup_key(key) == f"{key}_subgroup"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._anndata import uns_names, uns_safe
from .store import ModelStore

# the subgroup of cells whose datamodel is degenerate (never a subgroup of its own)
UNASSIGNED = "unassigned"


def subgroup_key(key: str = "datamodels") -> str:
    """The ``.obs`` column of the subgroups of attribution ``key``."""
    return f"{key}_subgroup"


def datamodel_matrix(adata: AnnData, key: str = "datamodels") -> np.ndarray | sparse.spmatrix:
    """``adata.obsp[key]``, or an error that says which call computes it."""
    if key not in adata.obsp:
        raise KeyError(
            f"adata.obsp[{key!r}] not found; run scdm.tl.datamodels(adata, label_key=...) first "
            f"(or scdm.tl.fit_datamodels after train_models). obsp keys: "
            f"{list(adata.obsp.keys()) or 'none'}."
        )
    return adata.obsp[key]


def training_params(adata: AnnData, key: str) -> Mapping:
    """The recorded parameters of the attribution ``key`` (``adata.uns[key]["params"]``); empty
    where there is none (an embedding of the user's own, clustered at a fixed resolution)."""
    info = adata.uns.get(key)
    params = info.get("params") if isinstance(info, Mapping) else None
    return params if isinstance(params, Mapping) else {}


def label_key_of(adata: AnnData, key: str, label_key: str | None) -> str:
    """``label_key`` if given (checked), else the label the models of ``key`` were trained on."""
    if label_key is not None:
        if label_key not in adata.obs:
            raise KeyError(f"label_key={label_key!r} is not a column of adata.obs.")
        return label_key
    params = training_params(adata, key)
    if "label_key" not in params:
        raise KeyError(
            f"adata.uns[{key!r}]['params'] has no label_key; run scdm.tl.datamodels(adata, "
            "label_key=...) first, or pass label_key=."
        )
    return params["label_key"]


def datamodel_weights(adata: AnnData, key: str = "datamodels") -> tuple[Any, np.ndarray, dict]:
    """``W`` (row = target), the intercepts and the fit parameters of fitted datamodels."""
    info = adata.uns.get(key)
    if key not in adata.obsp or not isinstance(info, dict) or "intercept" not in info:
        raise KeyError(f"no fitted datamodels under key {key!r}; run scdm.tl.datamodels or "
                       "scdm.tl.fit_datamodels first.")
    return (adata.obsp[key], np.asarray(info["intercept"], dtype=np.float64),
            info.get("fit_params", {}))  # TRAK's matrix has no fit


def evaluation_models(store: ModelStore, n_masks: int, n_seeds: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Masks (one per subset) and seed-averaged margins of an evaluation store."""
    rows = n_masks * n_seeds
    masks = np.asarray(store.masks[:rows:n_seeds])
    margins = np.asarray(store.margins[:rows], dtype=np.float64)
    return masks, margins.reshape(n_masks, n_seeds, -1).mean(axis=1)


def lds_models(adata: AnnData, key: str = "datamodels") -> tuple[np.ndarray, np.ndarray]:
    """Masks and (seed-averaged) margins of the evaluation models ``tl.lds`` trained for
    ``key``."""
    info = adata.uns.get(key, {})
    if not isinstance(info, dict) or "lds" not in info:
        raise KeyError(f"adata.uns[{key!r}] has no LDS; run scdm.tl.lds(adata, key={key!r}) "
                       "first.")
    params = info["lds"]["params"]
    return evaluation_models(ModelStore.open(info["lds"]["store"]), int(params["n_models"]),
                             int(params["n_seeds"]))


def _null_pairs(e: dict) -> str:
    """The separation's p-value in words: how many of the null pairs it beat. ``p = 1/21``
    read as "borderline"; it is the smallest value 20 null pairs allow."""
    p, n = e.get("p_value"), e.get("n_null")
    if n is None or p is None or not np.isfinite(p):
        return f"p = {p:.3f}" if p is not None and np.isfinite(p) else "p not computed"
    n = int(n)
    beaten = n + 1 - round(float(p) * (n + 1))
    if beaten == n:
        return f"beat all {n} null pairs: p ≤ 1/{n + 1}, the smallest {n} pairs allow"
    return f"beat {beaten} of {n} null pairs: p = {p:.2f}"


def models_input(adata: AnnData, info: Mapping, *, why: bool = False) -> str:
    """What the models trained on, in words: "50 PCs of 765 features", not the 765 alone;
    ``why``: with the reason where ``use_rep="auto"`` chose it."""
    params = info.get("params", {}) if isinstance(info, Mapping) else {}
    use_rep, layer = params.get("use_rep"), params.get("layer")
    features = f"{adata.n_vars:,} features"
    if use_rep and use_rep in adata.obsm:
        dims = np.shape(adata.obsm[use_rep])[1]
        text = f"{dims} PCs of {features}" if use_rep == "X_pca" else f"{dims} dims of {use_rep}"
    else:
        text = f"{features} (layer {layer})" if layer else features
    choice = params.get("input_choice")
    if why and isinstance(choice, Mapping) and "share_above_noise" in choice:
        share = f"{choice['share_above_noise']:.0%} of its variance above the noise edge"
        text += (f" (use_rep='auto': .X is mostly noise, {share})" if choice["noise_dominated"]
                 else f" (use_rep='auto': .X stands clear of noise, {share})")
    counts = params.get("unnormalised_counts")
    if why and isinstance(counts, Mapping):
        text += (f"; caution: {counts['form']} not normalised per cell (totals "
                 f"{counts['depth_ratio']:.1f}-fold apart), so attribution follows sequencing "
                 "depth: normalise (sc.pp.normalize_total, sc.pp.log1p) and train again")
    return text


def _near_bar(e: Mapping, bars: Mapping | None) -> str:
    """For an accepted split that clears a bar by little (:func:`scdm.clustering.near_bars`):
    said, since another seed or device may not give the same count. On one H200 the bundled
    run's myeloid class split in 5 at 0.04 over the null where the CPU run's models gave 0.018
    (under the 0.03 margin) and 3 subgroups (RESULTS.md, "On a GPU")."""
    from .clustering import MIN_MARGIN, MIN_REPRODUCIBILITY, near_bars

    bars = bars or {}
    min_margin = float(bars.get("min_margin", MIN_MARGIN))
    min_reproducibility = float(bars.get("min_reproducibility", MIN_REPRODUCIBILITY))
    near = near_bars(e, min_margin=min_margin, min_reproducibility=min_reproducibility)
    close = []
    if "margin" in near:
        close.append(f"margin {near['margin']:.2f} where {min_margin:g} is required")
    if "agreement" in near:
        close.append(f"agreement {near['agreement']:.2f} where {min_reproducibility:g} is "
                     "required")
    if "same_k" in near:
        # within the slack (clustering.CUT_SLACK), as unequal true subtypes are, but a null
        # class's cut was found there too (RESULTS.md, session 30)
        # as many decimals as it takes to show the difference (0.605 under 0.612, not 0.61
        # under 0.61)
        same_k = near["same_k"]
        digits = 2 if f"{e['separation']:.2f}" != f"{same_k:.2f}" else 3
        close.append(f"separation {e['separation']:.{digits}f} under the {same_k:.{digits}f} "
                     "of null halves cut into as many clusters")
    if not close:
        return ""
    return (" (close to the bar: " + ", ".join(close) + "; another seed or device may give "
            "another count, and the scan in uns[key + '_subgroup']['reproducibility_scan'] "
            "lists the alternatives)")


def _continuum_cut(e: Mapping, bars: Mapping | None) -> str:
    """For a class kept whole whose most reproducible split beat the null at its resolution
    but was less separated than the null cut into as many clusters (``cut_refused``): said."""
    from .clustering import CUT_SLACK

    cut = e.get("cut_refused")
    if not cut or e.get("split"):
        return ""
    slack = float((bars or {}).get("cut_slack", CUT_SLACK))
    return (f"the halves agree on {cut['n_clusters']} clusters (ARI "
            f"{cut['reproducibility']:.2f} at resolution {cut['resolution']:g}) beyond the null "
            f"there ({cut['separation']:.2f} vs at most {cut['null_separation_max']:.2f}), but "
            f"less separated than cluster-free null halves cut into as many "
            f"({cut['null_separation_same_k']:.2f}, {slack:g} allowed below): a cut through a "
            "continuum, not separate groups")


def _along_depth(e: Mapping) -> str:
    """What the depth check did to a class's split and inside its subgroups, said (empty
    where it did nothing)."""
    said = []
    if first := e.get("depth"):
        said.append(f"a first split into {first['n_subgroups_before']} ran along sequencing "
                    "depth (the number of features each cell detected tells two of its "
                    f"subgroups apart at AUC {first['auc']:.2f}), so the check ran again with "
                    "depth taken out, and this is what it found")
    for w in (e.get("depth_within") or {}).values():
        said.append(f"a subgroup of {w['n_cells']} cells came apart into "
                    f"{w['n_subgroups_before']} along sequencing depth (AUC {w['auc']:.2f}); "
                    + ("with depth taken out it stayed whole" if w["n_subgroups"] < 2 else
                       f"with depth taken out, into {w['n_subgroups']}"))
    if not said:
        return ""
    text = "; ".join(said)
    return f". {text[0].upper()}{text[1:]} (shared_check=False keeps such splits)"


def _on_their_own(e: Mapping) -> str:
    """For a split accepted on the clusters that reproduce on their own
    (:func:`scdm.clustering.reproducing_clusters`): which agreement and separation those are."""
    if "reproducing_clusters" not in e:
        return ""
    n = int(e["reproducing_clusters"])
    which = ("cluster that reproduces on its own" if n == 1
             else "clusters that reproduce on their own")
    return (f"; counted on the {n} {which} (matched in the other half at Jaccard ≥ "
            f"{e['min_jaccard']:g}; the halves' whole partitions agree there at "
            f"{e['whole_reproducibility']:.2f}), the rest of the cells one group and each side "
            "of a boundary weighed alike")


def describe_evidence(e: dict, bars: Mapping | None = None) -> str:
    """One sentence for a class's entry of ``uns[key]["reproducibility"]``: why it has the
    subgroups it has (used by ``scdm run``'s summary and the report). ``bars``: the run's
    ``params`` (``min_margin``, ``min_reproducibility``; default the library's), against which
    a split that clears a bar by less than the margin is called close to it."""
    # a second round's own entry says what its depth check did
    return _describe(e, bars) + ("" if e.get("second_round") else _along_depth(e)
                                 + _refined(e) + _merged(e) + _voted(e) + _continuum(e))


def _continuum(e: Mapping) -> str:
    """Where a split's weakest boundary separates no more than a flat continuum cut in two
    (``tl.subgroups``' ``"continuum"`` caution), said; empty elsewhere."""
    c = e.get("continuum")
    if not c or e.get("n_subgroups", 2) < 2:
        return ""
    where = "" if c["where"] == "class" else " (inside one of its first subgroups, split again)"
    return (f". Its weakest boundary{where} puts {c['separation']:.2f} of the variance along "
            f"the line between its sides, no more than a flat continuum cut in two "
            f"({c['bar']:g}): the subgroups may be stages of one progression or path of "
            "states, not discrete types; order the cells by a pseudotime and follow the "
            "markers along it before calling them subtypes")


def _thin_nowhere(e: Mapping) -> str:
    """Where ``tl.subgroups`` merged subgroups between which nothing thins out
    (:func:`scdm.clustering.merge_continua`), what it measured; empty elsewhere."""
    from .clustering import CONTINUUM_SEPARATION

    c = e.get("continuum_merged")
    if not c:
        return ""
    merges = [c["merges"][k] for k in sorted(c["merges"], key=int)]  # "1", "2": as merged
    counts = ", ".join(f"{m['at_boundary']} cells against {m['at_centre']}" for m in merges)
    seps = ", ".join(f"{m['separation']:.2f}" for m in merges)
    k = c["n_subgroups_before"]
    which = ("the two subgroups first found" if k == 2 else
             f"two of the {k} subgroups first found" if len(merges) == 1
             else f"some of the {k} subgroups first found")
    return (f"nothing thins out between {which}: where they meet lie {counts} near the "
            "emptier centre (both halves counted), and the line between them holds "
            f"{seps} of their variance, no more than a flat continuum cut in two "
            f"({CONTINUUM_SEPARATION:g}). Merged ({len(merges)} "
            f"{'boundary' if len(merges) == 1 else 'boundaries'}): a path of states or a "
            "progression may run through the class, not discrete types; order its cells by a "
            "pseudotime (e.g. sc.tl.dpt) to follow it")


def _merged(e: Mapping) -> str:
    """For a split that kept two or more subgroups after some were merged as one continuum:
    said; empty elsewhere (a class merged whole is said by :func:`_describe`)."""
    if not e.get("continuum_merged") or not e.get("split"):
        return ""
    return ". Then " + _thin_nowhere(e)


def _voted(e: Mapping) -> str:
    """Where a split close to its bars was checked at more seeds (``tl.subgroups``,
    :data:`scdm.clustering.CLOSE_SEEDS`), what each gave and which was reported; empty
    elsewhere."""
    v = e.get("close_seeds")
    if not v:
        return ""
    counts = ", ".join(f"{k} at {s}" for k, s in zip(v["n_subgroups"], v["random_states"],
                                                      strict=True))
    k = v["n_subgroups"][v["random_states"].index(v["taken"])]
    agreed = sum(c == k for c in v["n_subgroups"])
    how = (f"{agreed} of {len(v['n_subgroups'])} give {k}" if 2 * agreed > len(v["n_subgroups"])
           else f"no count has a majority, so the fewest, {k}")
    return (f". The first split was close to its bars, so the class was checked at "
            f"{len(v['random_states'])} seeds (subgroups: {counts}); {how}, reported"
            + (f" as seed {v['taken']} found {'them' if k > 1 else 'it'}"
               if v["taken"] != v["random_states"][0] else ""))


def _refined(e: Mapping) -> str:
    """Where the models' input moved the split's boundaries
    (:func:`scdm.clustering.refined_boundaries`), said; empty elsewhere."""
    r = e.get("boundaries_refined")
    if not r or not r.get("taken"):  # a move is taken only in a split of 2+ subgroups
        return ""
    return (f". {r['moved']} cells changed subgroup by a discriminant of the models' input, "
            "kept because the attribution's halves separate the subgroups at least as well "
            f"so ({r['before']:.2f} before, {r['after']:.2f} after)")


def _describe(e: dict, bars: Mapping | None) -> str:
    if e.get("second_round"):
        first = e.get("undecided") or {}
        return ("undecided by the first models (their halves found "
                f"{first.get('n_clusters', '?')} clusters beyond the null but agreed only at "
                f"{first.get('reproducibility', float('nan')):.3f}); decided by a second round "
                "with more models (tl.second_round): "
                + describe_evidence({k: v for k, v in e["second_round"].items()
                                     if k != "undecided"}, bars)
                + (". Still undecided after it" if e["second_round"].get("undecided") else ""))
    checked = ""
    if "n_checked" in e and "n_cells" in e and e["n_checked"] < e["n_cells"]:
        checked = (f"; checked on a random {e['n_checked']:,} of its {e['n_cells']:,} cells, "
                   "the others assigned by their nearest checked cells")
    shared = e.get("shared")
    removed = ""
    if shared:
        where = " and ".join(map(str, shared["shared_with"]))
        removed = (f"a first split into {shared['n_subgroups']} reproduced (ARI "
                   f"{shared['reproducibility']:.2f}) but {shared['n_shared']} of its "
                   f"{shared['n_boundaries']} boundaries divide class {where} the same way "
                   f"(separation up to {shared['max_separation_elsewhere']:.2f} there): "
                   + ("a nuisance every class has: it runs along sequencing depth (the number "
                      "of features each cell detected tells two of its subgroups apart at AUC "
                      f"{shared['depth_auc']:.2f}), not a subtype" if "depth_auc" in shared
                      else "likely a nuisance the classes share, such as batch, donor or cell "
                      "cycle, not a subtype"))
    if e.get("split") and e.get("n_subgroups", 2) < 2:
        # accepted on the halves, but the embedding of all the models gave one cluster there
        # and at the resolutions around it (clustering.agreed_partition): nothing to report
        return (f"one subgroup; the halves of the models agreed on a split (ARI "
                f"{e['reproducibility']:.2f} at resolution {e['resolution']:g}, separation "
                f"{e['separation']:.2f} vs at most {e['null_separation_max']:.2f} in null "
                "halves), but on the embedding of all the models it leaves a single cluster of "
                f"substantial size, so none is reported{checked}")
    if e.get("split"):
        text = (f"{e['n_subgroups']} subgroups; two halves of the models agree on them (ARI "
                f"{e['reproducibility']:.2f} at resolution {e['resolution']:g}{_on_their_own(e)}) "
                f"and they are more separated than in cluster-free null halves "
                f"({e['separation']:.2f} vs at "
                f"most {e['null_separation_max']:.2f}, a margin of "
                f"{e['separation'] - e['null_separation_max']:.2f}; {_null_pairs(e)})"
                f"{_near_bar(e, bars)}{checked}")
        within = e.get("split_within") or {}
        if within:
            # inner splits have their own agreement bar (tl.subgroups, inner_check)
            inner_bars = dict(bars or {})
            if "inner_reproducibility" in inner_bars:
                inner_bars["min_reproducibility"] = inner_bars["inner_reproducibility"]
            text += ("; " + " and ".join(
                f"a subgroup of {w['n_cells']} cells came apart into {w['n_subgroups']} when "
                f"checked again on its own (ARI {w['reproducibility']:.2f}, separation "
                f"{w['separation']:.2f} vs at most {w['null_separation_max']:.2f}"
                f"{_on_their_own(w)})"
                f"{_near_bar(w, inner_bars)}"
                for w in within.values()))
        if narrow := e.get("zero_inflated_input"):
            text += (f". Caution: the models saw only {narrow['n_features']} features, "
                     f"{narrow['zero_share']:.0%} of their values at zero (the feature's "
                     "floor); on so few zero-inflated features attributions group cells by "
                     "which of them are zero, and null classes were split so: confirm on more "
                     "features (all genes, use_rep='auto')")
        if comp := e.get("standardised_components"):
            text += (f". Caution: the models were trained on components ({comp['use_rep']!r}) "
                     "standardised one by one; on real cells whose classes differ only in "
                     "cell-type composition, splits there followed the cell types the label "
                     "favours: confirm with tl.trak on the genes (use_rep='auto')")
        if "datamodels_composition" in e:
            text += (". Caution: on real cells under a label they do not carry (a coin, or "
                     "odds set by the cell type), datamodels on the genes split 4 of 22 "
                     "classes (3 along cell types, whole with the label-favoured check), "
                     "tl.trak on the genes none of 30: confirm with tl.trak")
        if again := e.get("shared_within"):
            where = " and ".join(map(str, again["subgroups_of"]))
            text += (f". Checked again once the subgroups of class {where} were known: "
                     f"boundaries that divided class {where} did so only through its own "
                     "subgroups (programmes both classes carry, in other combinations), not "
                     "across them as a nuisance the classes share does (without them: "
                     f"{again['n_subgroups_before']} subgroups)")
        if shared and shared.get("merged"):
            return text + (f". Merged across the shared boundaries of a first split: "
                           f"{removed}")
        joined = (f"; {shared['matched_across_levels']} more clusters were copies of these "
                  "subgroups in other levels of that nuisance and were joined to them"
                  if shared and shared.get("matched_across_levels") else "")
        return text + (f". Found after taking out a shared partition: {removed}{joined}"
                       if shared else "")
    # a miss is the check's safe failure, but it must not read as "shown to be homogeneous"
    pending = e.get("undecided")
    if pending:
        checked += (f". Undecided: both halves find {pending['n_clusters']} clusters separated "
                    f"beyond the null ({pending['separation']:.2f} vs at most "
                    f"{pending['null_separation_max']:.2f}) but agree only at "
                    f"{pending['reproducibility']:.3f} (resolution {pending['resolution']:g}); "
                    "more models may decide (scdm.tl.second_round)")
    if e.get("continuum_merged"):
        first = f"{removed}; then " if shared else ""
        return (f"one subgroup; {first}the halves of the models agreed on a split (ARI "
                f"{e['best_reproducibility']:.2f} at resolution {e['best_resolution']:g}, "
                f"separation {e['separation']:.2f} vs at most {e['null_separation_max']:.2f} "
                f"in null halves), but {_thin_nowhere(e)}{checked}")
    if favoured := e.get("label_favoured"):
        first = f"{removed}; then " if shared else ""
        return (f"one subgroup; {first}a split into {favoured['n_subgroups']} passed the "
                "check, but the models call the other classes' cells found among one of its "
                f"subgroups ({favoured['n_cells']} cells) this class too: held-out accuracy "
                f"{favoured['accuracy_carried']:.2f} for the {favoured['n_carried']} carried "
                f"there against {favoured['accuracy_here']:.2f} for its own, "
                f"{favoured['skew']:.2f} beyond the class as a whole (bar "
                f"{favoured['bar']:.2f}). A cell type or state both classes hold, which the "
                f"label favours: not a subtype of the label{checked}. shared_check=False keeps "
                "such splits")
    if shared:
        again = ("; merged across those boundaries, nothing private is left"
                 if shared.get("merged") else
                 "; it was accepted on the clusters that reproduce on their own, and such a "
                 "split must pass this check whole" if shared.get("on_their_own") else
                 "; the split found without it divides them too" if "shared_again" in shared
                 else f"; without it, {cut}" if (cut := _continuum_cut(e, bars))
                 else "; without it no split reproduces and beats the null")
        named = (bars or {}).get("stratify_key")
        if "depth_auc" in shared:
            advice = ("Where the counts were not normalised per cell, normalise them "
                      "(sc.pp.normalize_total, then sc.pp.log1p) and train again; or pass")
        elif named:
            advice = (f"It is not the stratify_key {named!r} the models were trained with "
                      "(centred already): where another nuisance is known, train with one "
                      "stratify_key column combining both, or")
        else:
            advice = "Give a known batch as stratify_key when training, or"
        return (f"one subgroup; {removed}{again}{checked}. {advice} shared_check=False to keep "
                "such splits")
    if cut := _continuum_cut(e, bars):
        return (f"one subgroup; {cut}{checked}. Not proof of one population: a graded "
                "programme or another continuum may run through it")
    return (f"one subgroup; no split both reproduces and beats the null by the required "
            f"margin (best ARI between halves {e['best_reproducibility']:.2f} at resolution "
            f"{e['best_resolution']:g}; its separation {e['separation']:.2f} vs at most "
            f"{e['null_separation_max']:.2f} in null halves, {_null_pairs(e)}){checked}. Not "
            "proof of one population: on planted data, classes with a subtype of ~10 % of "
            "their cells or with weak programs were often left whole")


def composition_flags(adata: AnnData, key: str = "datamodels_subgroup") -> pd.DataFrame:
    """The flagged rows of ``adata.uns[key]["composition"]`` (empty when none or not run)."""
    table = adata.uns.get(key, {}).get("composition")
    if table is None or len(table) == 0:
        return pd.DataFrame(columns=["class", "subgroup", "covariate", "flag"])
    return table[table["flag"].astype(str) != ""]


def describe_flag(row) -> str:
    """One sentence for a flagged row, e.g. for a summary or a report."""
    if row["flag"] == "dominated":
        return (f"{row['subgroup']}: {row['dominant_fraction']:.0%} of its cells are "
                f"{row['covariate']} {row['dominant']} (vs {row['class_fraction']:.0%} of the "
                f"class; q = {row['q_value']:.2g}) — it may be that {row['covariate']}, "
                "not a subtype")
    if row["flag"] == "imbalanced":
        return (f"{row['subgroup']}: its {row['covariate']} make-up differs from the rest of "
                f"its class (total variation {row['imbalance']:.2f}, q = {row['q_value']:.2g}); "
                f"its cells come from {row['n_levels']} {row['covariate']} levels, as evenly "
                f"as {row['effective_levels']:.1f} equally sized levels would be")
    return (f"{row['subgroup']}: {row['covariate']} is shifted against the rest of its class "
            f"(mean {format_number(row['mean'])} vs {format_number(row['class_mean'])} in the "
            "class; a cell of "
            f"the subgroup has the higher value in {row['auc']:.0%} of pairs with the rest, "
            f"AUC {row['auc']:.2f}; q = {row['q_value']:.2g})")


def known_table(adata: AnnData, subgroup_key: str, known_key: str) -> pd.DataFrame:
    """Cells of each known annotation (rows, e.g. finer cell types) in each subgroup
    (columns), non-empty rows and columns only: how the subgroups divide what is known."""
    table = pd.crosstab(adata.obs[known_key].astype(str), adata.obs[subgroup_key].astype(str))
    return table.loc[table.sum(1) > 0, table.sum(0) > 0]


def format_number(x) -> str:
    """A number for people: 3,012 rather than 3.01e+03."""
    x = float(x)
    if not np.isfinite(x):
        return str(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _subgroup_table(adata: AnnData, groups: str, n_markers: int) -> dict:
    markers = adata.uns[groups].get("markers")
    table = {}
    for name, size in uns_names(adata.uns[groups].get("sizes")).items():
        top = ([] if markers is None else markers[markers["subgroup"].astype(str) == name]
               .sort_values("rank")["gene"].head(n_markers))
        table[name] = {"size": int(size), "top_markers": [str(g) for g in top]}
    return table


def summary(adata: AnnData, key: str = "datamodels", *, known_key: str | None = None,
            n_markers: int = 5) -> dict[str, Any]:
    """What a datamodels or TRAK analysis of ``adata`` found, as plain numbers and strings
    (JSON-ready): the one summary ``scdm run`` writes (``summary.json``, ``summary.txt``) and
    :func:`scdm.pl.report` shows.

    Holds the training (method, label, classes, input, models, held-out accuracy, the tool's
    ``seconds`` per step), the fit (held-out margin correlation, weights per target, degenerate
    datamodels), the subgroups of ``subgroup_key(key)`` if computed (sizes and top markers,
    the reproducibility evidence per class, composition flags in words), the LDS and the
    model-count curve if computed, and with ``known_key`` how the subgroups divide a known
    annotation (cells per subgroup and known label).
    """
    info = adata.uns.get(key)
    if not isinstance(info, dict) or "params" not in info:
        raise KeyError(f"adata.uns[{key!r}] holds no attribution; run scdm.tl.datamodels or "
                       "scdm.tl.trak first.")
    params = info["params"]
    label_key = params["label_key"]
    out: dict[str, Any] = {
        "method": str(info.get("method", "datamodels")),
        "label_key": label_key,
        "classes": {str(k): int(v) for k, v in adata.obs[label_key].value_counts().items()},
        "use_rep": params.get("use_rep"),
        # what use_rep="auto" measured and chose (plain types: uns read back holds numpy's)
        "input_choice": uns_safe(dict(params.get("input_choice") or {})) or None,
        # counts not normalised per cell, as tl.trak / train_models warned
        "unnormalised_counts": uns_safe(dict(params.get("unnormalised_counts") or {})) or None,
        "group_key": params.get("group_key"),
        "stratify_key": params.get("stratify_key"),
    }
    # weights given without a store of their own (e.g. made elsewhere) have no training record
    if "store" in info:
        out["store"] = str(info["store"])
    if "n_completed" in info:
        out["models_trained"] = int(info["n_completed"])
        out["mean_heldout_accuracy"] = float(info["mean_heldout_accuracy"])
    if "seconds" in info:
        out["seconds"] = {k: round(float(v), 1) for k, v in info["seconds"].items()}
    if f"{key}_ok" in adata.obs:
        out["degenerate_datamodels"] = int((~adata.obs[f"{key}_ok"]).sum())
    if f"{key}_corr" in adata.obs:
        corr = adata.obs[f"{key}_corr"]
        out["heldout_margin_correlation"] = {
            "mean": float(corr.mean()), "median": float(corr.median()), "min": float(corr.min())}
        out["mean_nonzero_weights_per_target"] = float(info["summary"]["mean_nonzero_weights"])
    if "trak_params" in info:
        out["trak"] = dict(info["trak_params"])
    groups = subgroup_key(key)
    if groups in adata.uns:
        out["subgroups"] = _subgroup_table(adata, groups, n_markers)
        out["subgroup_evidence"] = {k: dict(v) for k, v in uns_names(
            adata.uns[groups].get("reproducibility")).items()}
        out["composition_flags"] = [describe_flag(row) for _, row in
                                    composition_flags(adata, groups).iterrows()]
        if known_key is not None:
            known = known_table(adata, groups, known_key)
            out["subgroups_vs_known"] = {
                "known_key": known_key,
                "table": {str(group): {str(cell): int(n) for cell, n in counts.items() if n}
                          for group, counts in known.T.iterrows()}}
    if "lds" in info:
        out["lds"] = {"mean": float(info["lds"]["mean"]), "median": float(info["lds"]["median"]),
                      "evaluation_models": int(info["lds"]["params"]["n_models"])}
    if "model_curve" in info:
        curve = info["model_curve"]
        out["model_curve"] = {
            "n_models": [int(n) for n in curve["n_models"]],
            "mean_heldout_correlation": [round(float(c), 4) if np.isfinite(c) else None
                                         for c in curve["mean_corr"]],
            "mean_lds": [round(float(c), 4) for c in curve["mean_lds"]],
            "recommendation": str(curve["recommendation"])}
    return out
