"""report.html: self-contained, complete, and rendered by a real browser (headless Chromium)."""

import base64
import os
import re
import shutil
import subprocess
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from anndata import read_h5ad

import scdm
from scdm._anndata import uns_names

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def reported(planted, tmp_path_factory):
    """The planted pipeline with reproducible subgroups, a one-donor subtype, the confounding
    check, the LDS, and its report."""
    adata = planted.copy()
    truth = adata.obs["subtype"].astype(str).to_numpy()
    donor = np.array([f"d{1 + i % 3}" for i in range(adata.n_obs)], dtype=object)
    donor[truth == "subtype-0"] = "d0"
    donor[truth == "control"] = [f"c{i % 3}" for i in range((truth == "control").sum())]
    adata.obs["donor"] = pd.Categorical(donor)
    folder = tmp_path_factory.mktemp("report")
    scdm.tl.subgroups(adata)
    scdm.tl.subgroup_composition(adata, ["donor", "batch"])
    scdm.tl.lds(adata, n_models=60, store=folder / "lds")
    scdm.tl.validate_subgroups(adata, n_random=5, n_models=4)
    path = scdm.pl.report(adata, folder / "out" / "report.html", figure_dir=folder / "figs",
                          run_info={"input": "planted_subtypes"})
    return adata, path


def _figure_count(page: str) -> int:
    return len(re.findall(r"<img ", page))


@pytest.mark.slow
def test_report_is_self_contained_and_complete(reported, tmp_path):
    adata, path = reported
    page = path.read_text()
    for section in ("overview", "subgroups", "figures", "parameters", "reading", "flags"):
        assert f'id="{section}"' in page
    sizes = adata.uns["datamodels_subgroup"]["sizes"]
    for name in sizes:
        if name != "unassigned":
            assert f'id="subgroup-{name}"' in page
    # the one-donor subtype's card is flagged and the banner says why
    s0 = pd.crosstab(adata.obs["datamodels_subgroup"], adata.obs["subtype"])[
        "subtype-0"].idxmax()
    assert re.search(rf'class="subgroup-card flagged" id="subgroup-{s0}"', page)
    assert "it may be that donor, not a subtype" in page
    assert page.count('class="subgroup-card flagged"') == 1
    # nothing is loaded from elsewhere: no scripts, stylesheets, fonts or remote images
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == _figure_count(page) >= 7
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    written = sorted(p.name for p in (path.parent.parent / "figs").glob("*.png"))
    assert len(written) == len(images) and "composition_donor.png" in written
    assert "reproducibility.png" in written and "lds.png" in written
    assert "validation.png" in written
    tested = adata.uns["datamodels_subgroup"]["validation"]["table"]["status"] == "tested"
    assert page.count("<b>validation</b>: accuracy drop") == int(tested.sum()) > 0
    # a round trip through h5ad gives the same page (but for its time stamp)
    adata.write_h5ad(tmp_path / "a.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = scdm.pl.report(read_h5ad(tmp_path / "a.h5ad"), tmp_path / "again.html",
                               run_info={"input": "planted_subtypes"}).read_text()
    stamp = re.compile(r"<td>written</td><td>[^<]*</td>")
    assert stamp.sub("", again) == stamp.sub("", page)


def test_report_reads_first_names_the_input_and_tabulates_known_types(reported, tmp_path):
    adata, _ = reported
    page = scdm.pl.report(adata, tmp_path / "k.html", known_key="subtype").read_text()
    assert page.index('id="reading"') < page.index('id="overview"') < page.index(
        'id="subgroups"')
    assert "models&#x27; input" in page and "20 PCs of 200 features" in page
    table = page[page.index('id="known"'):]
    assert all(f"<td>{t}</td>" in table for t in adata.obs["subtype"].unique())
    # composition lines only on the cards of classes that were split
    cards = re.findall(r'id="subgroup-(control-\d+)".*?</div>', page, flags=re.S)
    assert cards and all("<b>composition</b>" not in c for c in cards)
    assert "<b>composition</b>" in page
    with pytest.raises(KeyError, match="known_key"):
        scdm.pl.report(adata, tmp_path / "bad.html", known_key="nope")


def test_one_summary_for_the_page_and_the_cli(reported, tmp_path):
    """scdm.get.summary is JSON-ready and holds what the report's overview shows."""
    import json

    adata, _ = reported
    found = scdm.get.summary(adata, known_key="subtype")
    assert json.loads(json.dumps(found)) == found
    assert found["method"] == "datamodels" and found["label_key"] == "disease"
    assert found["use_rep"] == "X_pca" and found["stratify_key"] == "batch"
    assert set(found["seconds"]) == {"train", "fit", "embed"}
    assert found["lds"]["evaluation_models"] == 60
    assert sum(g["size"] for g in found["subgroups"].values()) == adata.n_obs
    assert set(found["subgroup_evidence"]) == {"control", "disease"}
    table = found["subgroups_vs_known"]["table"]
    assert sum(n for cells in table.values() for n in cells.values()) == adata.n_obs
    page = scdm.pl.report(adata, tmp_path / "s.html").read_text()
    median = found["heldout_margin_correlation"]["median"]
    assert f"<b>{median:.3f}</b>held-out margin corr. (median)" in page
    assert f"<b>{found['models_trained']}</b>models trained" in page
    with pytest.raises(KeyError, match=r"run scdm\.tl\.datamodels or scdm\.tl\.trak"):
        scdm.get.summary(adata, "trak")


def test_report_bad_input(reported, tmp_path):
    adata, _ = reported
    with pytest.raises(KeyError, match="run scdm"):
        scdm.pl.report(adata, tmp_path / "r.html", key="trak")
    with pytest.raises(KeyError, match="subgroup_key"):
        scdm.pl.report(adata, tmp_path / "r.html", subgroup_key="nope")
    assert not (tmp_path / "r.html").exists()


def _browser() -> str | None:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None and os.environ.get("SCDM_REQUIRE_BROWSER"):
        pytest.fail("SCDM_REQUIRE_BROWSER is set but no Chromium is on PATH (.ci/run installs "
                    "Debian's chromium-headless-shell).")
    return found


def test_report_renders_in_headless_chromium(reported, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no headless Chromium here (apt-get install chromium-headless-shell)")
    _, path = reported
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,4000",
                    path.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (4000, 1200)
    background = np.array([0xF4, 0xF6, 0xF8]) / 255  # the page's background colour
    # it rendered: most of the page is content (sections, text, figures), not background,
    # and the figures' colours are there, not just text on white
    assert (np.abs(pixels - background).sum(-1) > 0.05).mean() > 0.3
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 500
    dom = subprocess.run([browser, *flags, "--dump-dom", path.as_uri()], check=True,
                         capture_output=True, timeout=120, text=True).stdout
    for section in ("overview", "subgroups", "figures", "parameters", "flags"):
        assert f'id="{section}"' in dom
    assert dom.count('class="subgroup-card') >= 3
    assert _figure_count(dom) == _figure_count(path.read_text())
    for name, (width, height) in _image_shapes(path.read_text()).items():  # two classes
        assert width / height <= 4, f"{name} is {width} x {height}"


@pytest.fixture(scope="module")
def ten_classes(tmp_path_factory):
    """Ten classes (names with "/"), TRAK, subgroups, LDS and the report: the layout case."""
    folder = tmp_path_factory.mktemp("ten")
    classes = {"control": [60]} | {f"type/{i}": [30, 30] if i % 3 == 0 else [60]
                                   for i in range(9)}
    adata = scdm.datasets.gaussian_subtypes(classes, n_features=120, random_state=0)
    scdm.tl.trak(adata, "disease", proj_dim=256, store=folder / "trak", random_state=0)
    scdm.tl.subgroups(adata, key="trak", n_neighbors=10, random_state=0)
    scdm.tl.lds(adata, key="trak", n_models=40, store=folder / "lds")
    path = scdm.pl.report(adata, folder / "report.html", key="trak", figure_dir=folder / "figs",
                          known_key="subtype")
    return adata, path


def _image_shapes(page: str) -> dict[str, tuple[int, int]]:
    """Each embedded figure's name and its PNG's width and height (from the IHDR header)."""
    shapes = {}
    for name, data in zip(re.findall(r'<img alt="([^"]*)"', page),
                          re.findall(r'src="data:image/png;base64,([^"]+)"', page),
                          strict=True):
        header = base64.b64decode(data[:64])
        shapes[name] = (int.from_bytes(header[16:20], "big"),
                        int.from_bytes(header[20:24], "big"))
    return shapes


@pytest.mark.slow
def test_report_of_ten_classes_wraps_its_figures_and_renders(ten_classes, tmp_path):
    """At ten classes no figure is a strip of thumbnails (class panels wrap at 4 per row),
    the class names with "/" are written as given, and Chromium renders every card."""
    adata, path = ten_classes
    page = path.read_text()
    shapes = _image_shapes(page)
    assert {"embedding.png", "reproducibility.png", "lds.png"} <= set(shapes)
    for name, (width, height) in shapes.items():
        assert width / height <= 4, f"{name} is {width} x {height}"
    assert all(f"type/{i}" in page for i in range(9))
    assert 'id="known"' in page  # the known-label × subgroup table
    with warnings.catch_warnings():  # "/" in the class names: no h5 key anndata refuses
        warnings.simplefilter("error")
        adata.write_h5ad(tmp_path / "ten.h5ad")
    back = read_h5ad(tmp_path / "ten.h5ad")
    assert set(uns_names(back.uns["trak_subgroup"]["reproducibility"])) == {
        "control", *(f"type/{i}" for i in range(9))}
    cards = page.count('class="subgroup-card')
    assert cards == adata.obs["trak_subgroup"].nunique() >= 10
    browser = _browser()
    if browser is None:
        pytest.skip("no headless Chromium here (apt-get install chromium-headless-shell)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", path.as_uri()], check=True,
                         capture_output=True, timeout=120, text=True).stdout
    assert dom.count('class="subgroup-card') == cards
    assert _figure_count(dom) == len(shapes)
