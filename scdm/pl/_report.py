"""``scdm.pl.report``: one self-contained HTML page of an attribution analysis."""

from __future__ import annotations

import base64
import datetime as _dt
import io
import re
from collections.abc import Callable, Mapping
from functools import partial
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._anndata import uns_names
from ..get import (
    UNASSIGNED,
    composition_flags,
    describe_evidence,
    describe_flag,
    format_number,
    known_table,
    models_input,
    summary,
    training_params,
)
from ..get import subgroup_key as get_subgroup_key

_STYLE = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;color:#1d2329;
background:#f4f6f8;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px}
header{background:#24425e;color:#fff;padding:20px 24px}
header h1{margin:0 0 4px;font-size:24px}header p{margin:0;opacity:.85}
section{background:#fff;border-radius:8px;padding:16px 20px;margin:0 0 18px;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
h2{margin-top:0;font-size:19px;border-bottom:1px solid #dde3e8;padding-bottom:6px}
h3{font-size:16px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #dde3e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef2f5}
.numbers{display:flex;flex-wrap:wrap;gap:10px}
.number{background:#eef2f5;border-radius:6px;padding:8px 12px;min-width:140px}
.number b{display:block;font-size:20px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.subgroup-card{border:1px solid #c9d3db;border-radius:8px;padding:10px 12px;
flex:1 1 290px;max-width:340px;background:#fbfcfd}
.subgroup-card.flagged{border:2px solid #b3261e;background:#fff6f5}
.subgroup-card h4{margin:0 0 6px;font-size:15px}
.flag{color:#b3261e;font-weight:bold}
.note{color:#4a5560;font-size:13px}
.banner{background:#fff6f5;border-left:5px solid #b3261e;padding:8px 12px;margin:8px 0}
.ok{background:#f1f8f2;border-left:5px solid #2e7d32;padding:8px 12px;margin:8px 0}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #dde3e8}
figcaption{font-size:13px;color:#4a5560}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


def _png(draw: Callable[[], object]) -> str:
    """Base64 PNG of the figure that ``draw`` makes (then closed)."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        draw()
        fig = plt.gcf()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:  # close what was drawn here, and only that (a notebook's own figures stay)
        for number in set(plt.get_fignums()) - before:
            plt.close(number)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(rows: list[tuple], header: tuple | None = None) -> str:
    head = ("<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table>{head}{body}</table>"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        return "-" if not np.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def _figures(adata: AnnData, key: str, subgroup_key: str | None
             ) -> list[tuple[str, str, Callable[[], Any]]]:
    """(file name, caption, draw function) of every figure the results allow."""
    from . import (
        composition,
        embedding,
        influencers,
        lds,
        markers,
        path,
        reproducibility,
        similarity,
        validation,
    )

    info = adata.uns.get(key, {})
    groups = adata.uns.get(subgroup_key, {}) if subgroup_key else {}
    sub_key = subgroup_key or ""  # the figures that use it exist only with a subgroup key
    figures: list[tuple[str, str, Callable[[], Any]]] = []
    if f"X_{key}" in adata.obsm:
        color = [c for c in (subgroup_key, info.get("params", {}).get("label_key"))
                 if c and c in adata.obs][:1]
        figures.append(("embedding.png", "The attribution embedding of each class (its own "
                        "coordinates; the first two of its components), coloured by "
                        "subgroup.",
                        lambda: embedding(adata, key=key, basis=key, color=color,
                                          show=False)))
        if f"X_{key}_umap" in adata.obsm:  # added beside the components, not instead
            figures.append(("embedding_umap.png", "The same embedding laid out by UMAP, each "
                            "class on its own (UMAP can draw clusters more separated than "
                            "they are; the subgroups are what the colours say).",
                            lambda: embedding(adata, key=key, basis=f"{key}_umap",
                                              color=color, show=False)))
    if groups.get("reproducibility_scan"):
        figures.append(("reproducibility.png", "How many subgroups: agreement (ARI) of the "
                        "partitions found on two independent halves of the models at each "
                        "Leiden resolution (numbers: clusters in each half). Filled points "
                        "reproduce and are more separated than cluster-free null halves.",
                        lambda: reproducibility(adata, key=sub_key, show=False)))
    marker_table = groups.get("markers")
    if marker_table is not None and len(marker_table):
        figures.append(("markers.png", "Top marker genes of each subgroup within its class.",
                        lambda: markers(adata, key=sub_key, show=False)))
    for covariate in groups.get("composition_params", {}).get("keys", []):
        if covariate in adata.obs:
            figures.append((f"composition_{_slug(covariate)}.png",
                            f"Make-up of each subgroup by {covariate} (flagged subgroups in "
                            "red).", partial(composition, adata, covariate, key=sub_key,
                                             show=False)))
    if key in adata.obsp and f"X_{key}" in adata.obsm:
        figures.append(("similarity.png", "Attribution similarity (cosine of embedding rows) "
                        "ordered by subgroup: blocks are cells that rely on the same training "
                        "cells.", lambda: similarity(adata, key=key, show=False)))
    target = _typical_target(adata, key, subgroup_key)
    if target is not None:
        figures.append(("influencers.png", f"One datamodel: the training cells that move the "
                        f"prediction of {adata.obs_names[target]} (from the largest subgroup) "
                        "most, up and down.",
                        lambda: influencers(adata, target, key=key, show=False)))
        if "path" in info:
            figures.append(("path.png", f"The regularisation path of "
                            f"{adata.obs_names[target]}'s datamodel and the λ chosen on "
                            "validation models.", lambda: path(adata, target, key=key,
                                                               show=False)))
    if "lds" in info:
        figures.append(("lds.png", "Counterfactual check: the LDS of every cell by class "
                        "(first panel); for three cells, margins of fresh evaluation models "
                        "as the attribution predicts them vs as trained; and the model-count "
                        "curve.", lambda: lds(adata, key=key, show=False)))
    if "validation" in groups:
        figures.append(("validation.png", "Retraining without each subgroup vs without equally "
                        "coherent comparison sets.", lambda: validation(
                            adata, subgroup_key=sub_key, show=False)))
    return figures


def _typical_target(adata: AnnData, key: str, subgroup_key: str | None) -> int | None:
    """The first usable cell of the largest subgroup (of the first class): a typical
    datamodel to show."""
    if key not in adata.obsp:
        return None
    ok = adata.obs[f"{key}_ok"].to_numpy(dtype=bool) if f"{key}_ok" in adata.obs else \
        np.ones(adata.n_obs, dtype=bool)
    if subgroup_key is not None:
        names = adata.obs[subgroup_key].astype(str).to_numpy()
        sizes = uns_names(adata.uns[subgroup_key].get("sizes"))
        for name in sorted((g for g in sizes if g != UNASSIGNED), key=lambda g: -sizes[g]):
            members = np.flatnonzero((names == name) & ok)
            if members.size:
                return int(members[0])
    usable = np.flatnonzero(ok)
    return int(usable[0]) if usable.size else None


def _overview(adata: AnnData, key: str, label_key: str | None, n_flags: int) -> str:
    info = adata.uns.get(key, {})
    # the numbers scdm run's summary.json holds, from the same accessor
    found = summary(adata, key) if isinstance(info, Mapping) and "params" in info else {}
    numbers: list[tuple[str, Any]] = [("cells", adata.n_obs),
                                      ("models' input", models_input(adata, info, why=True))]
    if "models_trained" in found:
        numbers += [("models trained", found["models_trained"]),
                    ("held-out accuracy", _fmt(found["mean_heldout_accuracy"]))]
    if "heldout_margin_correlation" in found:
        numbers.append(("held-out margin corr. (median)",
                        _fmt(found["heldout_margin_correlation"]["median"])))
    if "lds" in found:
        numbers.append(("LDS (mean)", _fmt(found["lds"]["mean"])))
    if "degenerate_datamodels" in found:
        numbers.append(("degenerate datamodels", found["degenerate_datamodels"]))
    numbers.append(("composition flags", n_flags))
    cells = "".join(f'<div class="number"><b>{escape(str(v))}</b>{escape(name)}</div>'
                    for name, v in numbers)
    parts = [f'<div class="numbers">{cells}</div>']
    if label_key and label_key in adata.obs:
        counts = adata.obs[label_key].value_counts()
        parts.append(f"<h3>Label <code>{escape(label_key)}</code></h3>" + _table(
            [(str(k), int(v)) for k, v in counts.items()], ("class", "cells")))
    curve = info.get("model_curve")
    if curve is not None:
        rows = list(zip(np.asarray(curve["n_models"]).tolist(),
                        [_fmt(float(v)) for v in curve["mean_corr"]],
                        [_fmt(float(v)) for v in curve["mean_lds"]], strict=True))
        parts.append("<h3>Enough models?</h3>" + _table(
            rows, ("models", "held-out corr.", "mean LDS")) + f'<p class="note">'
            f'{escape(str(curve["recommendation"]))}</p>')
    return "".join(parts)


def _parameters(adata: AnnData, key: str, subgroup_key: str | None) -> str:
    parts = []
    for name in (key, subgroup_key):
        params = training_params(adata, name) if name else {}
        if params:
            rows = [(k, _fmt(v) if not isinstance(v, (list, np.ndarray)) else
                     ", ".join(map(str, np.asarray(v).ravel().tolist())))
                    for k, v in sorted(params.items())]  # h5ad does not keep key order
            parts.append(f"<h3><code>{escape(str(name))}</code></h3>" + _table(
                rows, ("parameter", "value")))
    fit = adata.uns.get(key, {}).get("fit_params")
    if isinstance(fit, Mapping) and fit:
        parts.append("<h3>fit</h3>" + _table([(k, _fmt(v)) for k, v in sorted(fit.items())
                                              if not isinstance(v, (Mapping, np.ndarray))],
                                             ("parameter", "value")))
    return "".join(parts) or '<p class="note">No parameters recorded.</p>'


def _subgroup_card(adata: AnnData, subgroup_key: str, name: str, size: int,
                   n_markers: int, composition_lines: bool = True) -> str:
    groups = adata.uns[subgroup_key]
    parts = []
    table = groups.get("markers")
    if table is not None and len(table):
        top = table[table["subgroup"].astype(str) == name].sort_values("rank").head(n_markers)
        if len(top):
            parts.append("<b>markers</b>: " + ", ".join(
                f"{escape(str(g))} ({_fmt(float(d), 2)})" for g, d in
                zip(top["gene"], top["mean_difference"], strict=True))
                + '<br><span class="note">(mean difference to the rest of the class)</span>')
    validation = groups.get("validation", {}).get("table")
    if validation is not None and name in validation.index:
        row = validation.loc[name]
        if row.get("status") == "tested":
            parts.append(
                f"<b>validation</b>: accuracy drop {_fmt(float(row['accuracy_drop']), 2)} vs "
                f"{_fmt(float(row['random_accuracy_drop']), 2)} for comparison sets, q = "
                f"{_fmt(float(row['q_value']), 2)} (margin q = "
                f"{_fmt(float(row['q_value_margin']), 2)})")
        else:
            parts.append(f"<b>validation</b>: {escape(str(row.get('status')))}")
    composition = groups.get("composition") if composition_lines else None
    flagged = False
    if composition is not None and len(composition):
        rows = composition[composition["subgroup"].astype(str) == name]
        lines = []
        for _, row in rows.iterrows():
            flag = str(row["flag"])
            flagged |= flag in ("dominated", "shifted")
            if row["kind"] == "numeric":
                what = (f"mean {format_number(row['mean'])} (class "
                        f"{format_number(row['class_mean'])}; a cell "
                        f"of the subgroup has the higher value in "
                        f"{float(row['auc']):.0%} of pairs with the rest)")
            else:
                what = (f"{_fmt(float(row['dominant_fraction']) * 100, 3)}% "
                        f"{escape(str(row['dominant']))} (class "
                        f"{_fmt(float(row['class_fraction']) * 100, 3)}%); from "
                        f"{int(row['n_levels'])} levels, as evenly as "
                        f"{_fmt(float(row['effective_levels']), 2)} equal ones would be")
            verdict = (f' <span class="flag">{escape(flag)}</span>' if flag else "")
            lines.append(f"{escape(str(row['covariate']))}: {what}, q = "
                         f"{_fmt(float(row['q_value']), 2)}{verdict}")
        if lines:
            parts.append("<b>composition</b>:<br>" + "<br>".join(lines))
    css = "subgroup-card flagged" if flagged else "subgroup-card"
    return (f'<div class="{css}" id="subgroup-{_slug(name)}"><h4>{escape(name)} '
            f"<small>({size} cells)</small></h4>" + "<br>".join(parts) + "</div>")


def _classes(adata: AnnData, subgroup_key: str | None, label_key: str | None,
             n_markers: int) -> str:
    if subgroup_key is None or subgroup_key not in adata.obs:
        return ('<p class="note">No subgroups computed: run scdm.tl.subgroups(adata).</p>')
    groups = adata.uns[subgroup_key]
    sizes = uns_names(groups.get("sizes"))
    evidence = uns_names(groups.get("reproducibility"))
    labels = adata.obs[label_key].astype(str) if label_key in adata.obs else None
    names = adata.obs[subgroup_key].astype(str)
    parts = []
    classes = (pd.unique(labels) if labels is not None else ["all"])
    for cls in classes:
        in_class = (labels == cls) if labels is not None else pd.Series(True, index=names.index)
        members = [g for g in sizes if g != UNASSIGNED and (names[in_class] == g).any()]
        sentence = (describe_evidence(evidence[cls], groups.get("params")) if cls in evidence
                    else "")
        text = (sentence[:1].upper() + sentence[1:] + "." if cls in evidence else
                f"{len(members)} subgroup(s) at a fixed resolution (not checked for "
                "reproducibility).")
        # a class left whole has nothing to compare its one subgroup's make-up with
        cards = "".join(_subgroup_card(adata, subgroup_key, g, int(sizes[g]), n_markers,
                                       composition_lines=len(members) > 1)
                        for g in members)
        unassigned = int(((names == UNASSIGNED) & in_class).sum())
        extra = (f'<p class="note">{unassigned} cells unassigned (degenerate datamodels or '
                 "clusters too small).</p>" if unassigned else "")
        parts.append(f'<article class="class-card" id="class-{_slug(cls)}"><h3>Class '
                     f"{escape(str(cls))} ({int(in_class.sum())} cells)</h3><p>{escape(text)}"
                     f'</p>{extra}<div class="cards">{cards}</div></article>')
    return "".join(parts)


def report(
    adata: AnnData,
    path: str | Path,
    *,
    key: str = "datamodels",
    subgroup_key: str | None = None,
    title: str | None = None,
    run_info: Mapping[str, object] | None = None,
    n_markers: int = 6,
    figure_dir: str | Path | None = None,
    known_key: str | None = None,
) -> Path:
    """Write one self-contained HTML page of an attribution analysis.

    The page holds the run's numbers (cells, models, held-out accuracy and correlation, LDS,
    whether more models would help), the label, the parameters, each class's subgroups as
    cards (size, markers, validation and composition with their flags, why the class has as
    many subgroups as it has) and every figure the results allow, embedded as PNG. It needs
    nothing else to open: no scripts, fonts or files from elsewhere, so it can be mailed,
    archived or attached to a lab notebook.

    Parameters
    ----------
    adata
        AnnData after :func:`scdm.tl.datamodels` (subgroups, LDS, validation optional).
    path
        The HTML file to write (its folder is created).
    key
        Key of the attribution results.
    subgroup_key
        Subgroup column (default ``f"{key}_subgroup"`` when present).
    title
        Page title (default "scdm: <key> on <n> cells").
    run_info
        Extra lines for the header table (e.g. input file, stage times), name → value.
    n_markers
        Marker genes listed per subgroup card.
    figure_dir
        Also write each figure there as a PNG (``scdm run`` does).
    known_key
        An obs column of known annotations (e.g. finer cell types): the page adds a table of
        how the subgroups divide them.

    Returns
    -------
    The path written.
    """
    from .. import __version__

    if key not in adata.uns or not isinstance(adata.uns[key], Mapping):
        raise KeyError(f"adata.uns[{key!r}] not found; run scdm.tl.datamodels(adata, "
                       "label_key=...) first.")
    default = get_subgroup_key(key)
    subgroup_key = subgroup_key or (default if default in adata.obs else None)
    if subgroup_key is not None and (subgroup_key not in adata.obs
                                     or subgroup_key not in adata.uns):
        raise KeyError(f"subgroup_key={subgroup_key!r} has no results; run "
                       "scdm.tl.subgroups(adata) first.")
    label_key = training_params(adata, key).get("label_key")
    if known_key is not None and known_key not in adata.obs:
        raise KeyError(f"known_key={known_key!r} is not a column of adata.obs.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = title or f"scdm: {key} on {adata.n_obs} cells"

    flags = composition_flags(adata, subgroup_key) if subgroup_key else pd.DataFrame()
    if len(flags):
        banner = ('<div class="banner" id="flags"><b>Check before reporting a subtype</b> '
                  "(a flag is a question to answer, not a verdict):<ul>"
                  + "".join(f"<li>{escape(describe_flag(row))}</li>"
                            for _, row in flags.iterrows()) + "</ul></div>")
    elif subgroup_key and "composition" in adata.uns.get(subgroup_key, {}):
        checked = ", ".join(adata.uns[subgroup_key]["composition_params"]["keys"])
        banner = (f'<div class="ok" id="flags">No subgroup is dominated by or shifted in '
                  f"{escape(checked)}.</div>")
    else:
        banner = ('<div class="note" id="flags">No confounding check was run (no group_key or '
                  "stratify_key; see scdm.tl.subgroup_composition).</div>")

    figure_dir = Path(figure_dir) if figure_dir is not None else None
    if figure_dir is not None:
        figure_dir.mkdir(parents=True, exist_ok=True)
    blocks = []
    for name, caption, draw in _figures(adata, key, subgroup_key):
        data = _png(draw)
        if figure_dir is not None:
            (figure_dir / name).write_bytes(base64.b64decode(data))
        blocks.append(f'<figure id="figure-{_slug(name[:-4])}"><img alt="{escape(name)}" '
                      f'src="data:image/png;base64,{data}"><figcaption>{escape(caption)}'
                      "</figcaption></figure>")

    known = ""
    if known_key is not None and subgroup_key is not None:
        table = known_table(adata, subgroup_key, known_key)
        known = (f'<h3 id="known">Subgroups and the known <code>{escape(known_key)}</code>'
                 "</h3>" + _table([(str(i), *map(int, r)) for i, r in table.iterrows()],
                                  (known_key, *map(str, table.columns))))
    info_rows = [("scdm", __version__),
                 ("written", _dt.datetime.now().strftime("%Y-%m-%d %H:%M"))]
    info_rows += [(str(k), str(v)) for k, v in (run_info or {}).items()]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{_STYLE}</style></head>
<body><header><h1>{escape(title)}</h1><p>Data attribution: which training cells each
cell's prediction relies on, and the subgroups of cells that rely on the same ones.</p></header>
<main>
<section id="reading"><h2>How to read this page</h2>
<p>A subgroup is proposed only where a partition of the attribution embedding is found again,
from scratch, on two independent halves of the trained models, and is more separated than
the same analysis finds in structureless (Gaussian) data of the same signal and noise; a class
where no partition passes is one subgroup. A reproducible subgroup is a statement about what
the classifiers rely on, not yet about biology: check its markers, its make-up (a subgroup
that is one donor or batch is flagged below) and, with scdm.tl.validate_subgroups, whether
leaving it out changes predictions more than leaving out an equally coherent set of cells.</p>
<p>"Beat all 20 null pairs" is the strongest evidence 20 null pairs can give (p &le; 1/21); the
margin says by how much the separation exceeded the most separated null, so a margin near 0
is a narrow win. The embedding figures show two of the embedding's components: subgroups that
overlap there can be apart in the others.</p>
</section>
<section id="overview"><h2>Overview</h2>{_table(info_rows)}
{_overview(adata, key, label_key, len(flags))}</section>
<section id="subgroups"><h2>Subgroups</h2>{banner}
{_classes(adata, subgroup_key, label_key, n_markers)}{known}</section>
<section id="figures"><h2>Figures</h2>{"".join(blocks)}</section>
<section id="parameters"><h2>Parameters</h2>{_parameters(adata, key, subgroup_key)}</section>
</main></body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
