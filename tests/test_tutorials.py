"""The tutorials run end to end (at small size)."""

import runpy
from pathlib import Path

import matplotlib
import pytest

pytestmark = pytest.mark.slow  # end to end: CI runs these, the quick default run does not

matplotlib.use("Agg")

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.py"))


def test_all_tutorials_are_collected():
    assert {p.stem for p in TUTORIALS} >= {"planted_subtypes", "pbmc68k", "donors", "is_it_real"}


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCDM_TUTORIAL_SMALL", "1")
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(path), run_name="__main__")
    assert "adata" in namespace
    assert any(column.endswith("_subgroup") for column in namespace["adata"].obs)
    assert "ARI" in capsys.readouterr().out
    if path.stem == "is_it_real":
        # the verdicts the tutorial explains (the same seeds as the suite's rows)
        assert namespace["verdicts"] == {"no subtypes": 1, "a path of states": 1,
                                         "three subtypes": 3}
        path_evidence = namespace["evidence_of"]["a path of states"]
        assert "continuum_merged" in path_evidence and not path_evidence["split"]
        assert namespace["table"].loc["three subtypes", "ARI with the truth"] >= 0.95
