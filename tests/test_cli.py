import json

import anndata as ad
import pytest
from _helpers import make_adata

from scdm.cli import main
from scdm.cli._summary import summary_lines
from scdm.datasets import pbmc68k_lineage

pytestmark = pytest.mark.slow  # end to end: CI runs these, the quick default run does not


def test_run_on_bundled_data_writes_its_outputs(tmp_path):
    assert main(["run", "--n-models", "1200", "--quiet", "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["label_key"] == "lineage" and summary["models_trained"] == 1200
    assert summary["classes"] == {"myeloid": 369, "other": 331}
    assert summary["heldout_margin_correlation"]["mean"] > 0.2
    assert "models trained: 1200" in (tmp_path / "o" / "summary.txt").read_text()
    result = ad.read_h5ad(tmp_path / "o" / "adata.h5ad")
    assert result.obsp["datamodels"].shape == (700, 700)
    assert "datamodels_subgroup" in result.obs and "X_datamodels" in result.obsm
    assert summary["lds"]["mean"] > 0.1 and summary["lds"]["evaluation_models"] == 200
    curve = summary["model_curve"]
    assert curve["n_models"] == [600, 1200] and curve["mean_lds"][-1] > curve[
        "mean_lds"][0]
    assert "enough models?" in (tmp_path / "o" / "summary.txt").read_text()
    assert "datamodels_lds" in result.obs
    split = any(e["split"] for e in summary["subgroup_evidence"].values())
    for name in ("embedding", "similarity", "influencers", "path", "lds", "reproducibility",
                 "composition_phase", "composition_n_counts") + (("markers",) if split else ()):
        assert (tmp_path / "o" / f"{name}.png").stat().st_size > 1000
    page = (tmp_path / "o" / "report.html").read_text()
    assert summary["outputs"]["report"] == str(tmp_path / "o" / "report.html")
    assert 'id="subgroups"' in page and page.count("<img ") == len(summary["outputs"][
        "figures"])
    # the bundled data's QC columns are checked; every flag is in the summary and the page
    text = (tmp_path / "o" / "summary.txt").read_text()
    assert "confounding check on phase, n_counts, percent_mito" in text
    assert all(line in text for line in summary["composition_flags"])
    assert list(summary["seconds"]) == ["train models", "fit datamodels", "subgroups",
                                        "evaluation (LDS, model-count curve)",
                                        "write adata.h5ad and report.html"]
    groups = summary["subgroups"]
    assert sum(g["size"] for g in groups.values()) == 700
    assert all(name.startswith(("myeloid-", "other-")) or name == "unassigned"
               for name in groups)
    assert "subgroups (size: top markers):" in (tmp_path / "o" / "summary.txt").read_text()
    known = summary["subgroups_vs_known"]
    assert known["known_key"] == "bulk_labels" and set(known["table"]) == set(groups)
    assert "subgroups and the known 'bulk_labels' (cells):" in text
    assert 'id="known"' in page and "CD14+ Monocyte" in page
    # how to read the page comes first
    assert page.index('id="reading"') < page.index('id="overview"')
    assert "50 PCs of 765 features" in page
    assert pbmc68k_lineage().obs["lineage"].cat.categories.tolist() == ["myeloid", "other"]


def test_run_on_an_input_file_and_bad_label(tmp_path, capsys):
    path = tmp_path / "in.h5ad"
    make_adata(n_obs=40).write_h5ad(path)
    assert main(["run", str(path), "--label-key", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "--label-key 'nope' is not a column" in capsys.readouterr().err
    assert main(["run", str(path), "--label-key", "disease", "--covariates", "donor",
                 "--n-neighbors", "5", "--out", str(tmp_path / "o")]) == 2
    assert "--covariates ['donor']" in capsys.readouterr().err
    assert not (tmp_path / "o" / "store").exists()  # refused before any training
    # 20 cells per class are too few for 15 neighbours in each half's graph: refused, with
    # the fix in the message
    assert main(["run", str(path), "--label-key", "disease", "--n-models", "600", "--quiet",
                 "--lds-models", "0", "--out", str(tmp_path / "o")]) == 2
    assert "use --n-neighbors 10 or lower" in capsys.readouterr().err
    assert main(["run", str(path), "--label-key", "disease", "--n-models", "600", "--quiet",
                 "--lds-models", "0", "--n-neighbors", "5", "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert "lds" not in summary and not (tmp_path / "o" / "lds.png").exists()
    assert "models' input: 8 features (use_rep='auto': .X stands clear of noise" in (
        tmp_path / "o" / "summary.txt").read_text()


def test_run_on_genes_that_are_mostly_noise_trains_on_their_pcs(tmp_path):
    """The default --use-rep (auto) on 1,000 sparse genes: the models train on their PCs and
    the summary says so and why; --use-rep X keeps the genes."""
    from scdm.datasets import module_subtypes

    path = tmp_path / "genes.h5ad"
    module_subtypes({"control": [60], "disease": [30, 30]}, random_state=0).write_h5ad(path)
    for flag, expected in (([], "models' input: 50 PCs of 1,000 features (use_rep='auto': "
                                ".X is mostly noise"),
                           (["--use-rep", "X"], "models' input: 1,000 features\n")):
        out = tmp_path / f"o{len(flag)}"
        assert main(["run", str(path), "--label-key", "disease", "--method", "trak",
                     "--lds-models", "0", "--n-neighbors", "5", "--quiet", *flag,
                     "--out", str(out)]) == 0
        assert expected in (out / "summary.txt").read_text()
    assert "X_pca" in ad.read_h5ad(tmp_path / "o0" / "adata.h5ad").obsm
    auto = json.loads((tmp_path / "o0" / "summary.json").read_text())
    assert auto["use_rep"] == "X_pca" and auto["input_choice"]["pcs"] == "computed"
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["input_choice"] is None


def test_run_with_trak_writes_the_same_outputs(tmp_path):
    out = tmp_path / "o"
    assert main(["run", "--method", "trak", "--lds-models", "60", "--quiet", "--out",
                 str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "trak" and summary["models_trained"] == 40
    assert summary["trak"]["damping"] == 10.0
    assert summary["model_curve"]["n_models"] == [10, 20, 40]  # checkpoints
    assert summary["lds"]["mean"] > 0.3
    result = ad.read_h5ad(out / "adata.h5ad")
    assert "trak_subgroup" in result.obs and "X_trak" in result.obsm
    # the bundled myeloid cells split (monocytes vs dendritic cells) by TRAK as well
    assert summary["subgroup_evidence"]["myeloid"]["split"]
    text = (out / "summary.txt").read_text()
    assert text.startswith("scdm trak on") and "TRAK from 40 checkpoints" in text
    page = (out / "report.html").read_text()
    assert 'id="subgroup-myeloid-0"' in page and "<script" not in page
    # a class left undecided: the summary tells a CLI user the flag that decides it, and
    # says nothing of it once a second round has run
    assert "undecided:" not in text and not len(result.uns["trak_subgroup"]["undecided"])
    result.uns["trak_subgroup"]["undecided"] = ["other"]
    lines = summary_lines(result, summary, checked=[])
    assert "  undecided: other; run again with --second-round 4 to train 4x the models and " \
           "decide" in lines
    result.uns["trak_subgroup"]["second_round"] = {"factor": 4}
    assert not any("--second-round" in line for line in summary_lines(result, summary,
                                                                       checked=[]))


def test_run_refuses_bad_input_before_any_work(tmp_path, capsys):
    """Each bad input exits 2 with the flag's name (and what would work) before the estimate,
    the out folder or any training."""
    path = tmp_path / "in.h5ad"
    make_adata(n_obs=40).write_h5ad(path)
    out = tmp_path / "o"
    cases = [
        (["--label-key", "nope"], "--label-key 'nope' is not a column of the input's obs "
         "(columns: disease)"),
        (["--label-key", "disease", "--use-rep", "X_umap"], "--use-rep 'X_umap' is not in"),
        (["--label-key", "disease", "--group-key", "donor"], "--group-key 'donor'"),
        (["--label-key", "disease", "--stratify-key", "batch"], "--stratify-key 'batch'"),
        (["--label-key", "disease", "--covariates", "phase"], "--covariates ['phase']"),
        (["--label-key", "disease", "--alpha", "1.5"], "--alpha must lie"),
        (["--label-key", "disease", "--method", "trak", "--n-models", "2"],
         "--n-models must be at least 4"),
        (["--label-key", "disease", "--n-neighbors", "1"], "--n-neighbors must be at least 2"),
        (["--label-key", "disease", "--second-round", "1"], "--second-round must be 0 (off)"),
        (["--label-key", "disease", "--second-round", "4", "--resolution", "1"],
         "a fixed --resolution has no check"),
        (["--label-key", "disease"], "use --n-neighbors 10 or lower"),
        (["--label-key", "disease", "--resolution", "1", "--n-neighbors", "25"],
         "use --n-neighbors 19 or lower"),
        ([], "--label-key is required"),
    ]
    for flags, expected in cases:
        assert main(["run", str(path), *flags, "--out", str(out)]) == 2, flags
        printed = capsys.readouterr()
        assert expected in printed.err, (flags, printed.err)
        assert "Traceback" not in printed.err and "estimated" not in printed.out
        assert not out.exists()
    assert main(["run", str(tmp_path / "missing.h5ad"), "--label-key", "disease", "--out",
                 str(out)]) == 2
    assert "missing.h5ad does not exist" in capsys.readouterr().err and not out.exists()
    a_file = tmp_path / "results"
    a_file.write_text("kept")
    assert main(["run", str(path), "--label-key", "disease", "--n-neighbors", "5", "--out",
                 str(a_file)]) == 2
    assert "--out" in capsys.readouterr().err and a_file.read_text() == "kept"
    # a file higher up the path: refused before any work, not a bare error from mkdir
    assert main(["run", str(path), "--label-key", "disease", "--n-neighbors", "5", "--out",
                 str(a_file / "pbmc")]) == 2
    printed = capsys.readouterr()
    assert f"{a_file} is a file, not a directory" in printed.err, printed.err
    assert "Traceback" not in printed.err and "estimated" not in printed.out
    assert main(["run", str(path), "--label-key", "disease", "--n-neighbors", "5", "--store",
                 str(a_file / "store"), "--out", str(out)]) == 2
    assert f"--store {a_file / 'store'} cannot be made" in capsys.readouterr().err
    assert a_file.read_text() == "kept" and not out.exists()
