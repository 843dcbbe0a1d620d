"""``summary.txt``: the lines of ``scdm.get.summary`` for people."""

from __future__ import annotations

import inspect
from pathlib import Path

TRAK_STAGE = "TRAK (checkpoints, projected gradients, embedding)"


def _known_lines(adata, summary: dict) -> list[str]:
    from ..get import known_table, subgroup_key

    known_key = summary["subgroups_vs_known"]["known_key"]
    known = known_table(adata, subgroup_key(summary["method"]), known_key)
    width = max(len(str(c)) for c in known.index)
    lines = [f"subgroups and the known {known_key!r} (cells):",
             "  " + " " * width + "  " + "  ".join(str(g) for g in known.columns)]
    lines += ["  " + f"{cell:<{width}}  " + "  ".join(
        f"{int(n):>{len(str(g))}}" for g, n in zip(known.columns, row, strict=True))
        for cell, row in known.iterrows()]
    return lines


def summary_lines(adata, summary: dict, *, checked: list[str]) -> list[str]:
    """The summary of a run (``scdm run``'s ``summary.json``) as the lines of summary.txt;
    ``checked``: the columns the subgroups' make-up was checked against."""
    from ..get import describe_evidence, models_input, subgroup_key
    from ..tl import second_round

    seconds, key = summary["seconds"], summary["method"]
    lines = [
        f"scdm {key} on {summary['input']}",
        f"label {summary['label_key']!r}: " + ", ".join(
            f"{k} ({v})" for k, v in summary["classes"].items()),
        f"models' input: {models_input(adata, adata.uns[key], why=True)}",
    ]
    if key == "trak":
        trak = summary["trak"]
        lines.append(
            f"TRAK from {summary['models_trained']} checkpoints (mean held-out accuracy "
            f"{summary['mean_heldout_accuracy']:.3f}), proj_dim {trak['proj_dim']}, damping "
            f"{trak['damping']:g}, in {seconds[TRAK_STAGE]} s")
    else:
        corr = summary["heldout_margin_correlation"]
        lines += [
            f"models trained: {summary['models_trained']} (mean held-out accuracy "
            f"{summary['mean_heldout_accuracy']:.3f}) in {seconds['train models']} s",
            f"datamodels fitted in {seconds['fit datamodels']} s; held-out margin "
            f"correlation mean {corr['mean']:.3f}, median {corr['median']:.3f}"]
    if "lds" in summary:
        lines.append(
            f"LDS on {summary['lds']['evaluation_models']} new models: mean "
            f"{summary['lds']['mean']:.3f}, median {summary['lds']['median']:.3f}")
    if "model_curve" in summary:
        curve = summary["model_curve"]
        lines += [
            "models vs mean LDS: " + ", ".join(
                f"{n}: {v:.3f}" for n, v in zip(curve["n_models"], curve["mean_lds"],
                                                strict=True)),
            f"enough models? {curve['recommendation']}",
        ]
    if summary.get("degenerate_datamodels"):
        lines.append(f"degenerate datamodels (left out, subgroup 'unassigned'): "
                     f"{summary['degenerate_datamodels']}")
    if summary["subgroup_evidence"]:
        lines.append("how many subgroups:")
        groups = adata.uns.get(subgroup_key(key), {})
        lines += [f"  {cls}: {describe_evidence(e, groups.get('params'))}"
                  for cls, e in summary["subgroup_evidence"].items()]
        if len(groups.get("undecided", [])) and "second_round" not in groups:
            # the evidence names the Python call; a CLI user's way is the flag, at the
            # library's own factor
            factor = inspect.signature(second_round).parameters["factor"].default
            lines.append(f"  undecided: {', '.join(map(str, groups['undecided']))}; run "
                         f"again with --second-round {factor} to train {factor}x the models "
                         "and decide")
    if checked:
        flags = summary["composition_flags"]
        lines.append(f"confounding check on {', '.join(checked)}: " + (
            f"{len(flags)} flag(s) (a question to answer, not a verdict):" if flags
            else "no subgroup is dominated by or shifted in them"))
        lines += [f"  {text}" for text in flags]
    lines.append("subgroups (size: top markers):")
    for name, group in summary["subgroups"].items():
        lines.append(f"  {name} ({group['size']}): {', '.join(group['top_markers']) or '-'}")
    if "subgroups_vs_known" in summary:
        lines += _known_lines(adata, summary)
    outputs = summary["outputs"]
    out = Path(outputs["adata"]).parent
    lines.append(f"report (one page, opens offline): {outputs['report']}")
    lines.append(f"results: {outputs['adata']} (obsm/obs/uns {key!r}, obs "
                 f"{subgroup_key(key)!r}); figures ({len(outputs['figures'])} PNG) in {out}")
    return lines
