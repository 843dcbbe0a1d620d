"""Coming from MadryLab datamodels: their spec, their store layout, their worker contract
(``main(index, logdir)`` returning a dict), their ``datamodels.pt``."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from numpy.lib.format import open_memmap

from scdm import cli
from scdm.io import read_datamodels, train_with_main
from scdm.store import ModelStore, check_madrylab_spec

N_TRAIN, N_MODELS = 40, 300
SPEC = {"num_models": N_MODELS,
        "schema": {"masks": {"shape": [N_TRAIN], "dtype": "bool_"},
                   "margins": {"shape": [N_TRAIN], "dtype": "float16"}}}

# A user's training script as MadryLab's README has it: main(*_, index, logdir) -> dict. The
# "model" is linear in its mask (true weights known), so its datamodels are known too.
USER_MAIN = textwrap.dedent("""
    import sys
    import numpy as np

    N = {n}
    SPARSE = np.random.default_rng(1).random((N, N)) < 0.1
    TRUE = np.random.default_rng(0).normal(size=(N, N)) * SPARSE

    def main(*_, index, logdir, noise=0.5, scale=1.0):
        rng = np.random.default_rng(index)
        mask = rng.random(N) < 0.5
        margins = scale * (mask @ TRUE) + noise * rng.normal(size=N)
        with open(logdir + "/argv.txt", "w") as f:
            f.write(" ".join(sys.argv[1:]))
        return {{"masks": mask, "margins": margins}}

    def bad_shape(*_, index, logdir):
        return {{"masks": np.zeros(N, bool), "margins": np.zeros(N + 1)}}

    def nan_margin(*_, index, logdir):
        out = main(index=index, logdir=logdir)
        out["margins"][3] = np.nan if index == 5 else out["margins"][3]
        return out

    def missing_key(*_, index, logdir):
        return {{"masks": main(index=index, logdir=logdir)["masks"]}}

    def extra_key(*_, index, logdir):
        return {{**main(index=index, logdir=logdir), "_completed": True}}
""").format(n=N_TRAIN)


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "user_train.py"
    path.write_text(USER_MAIN)
    return path


def madrylab_initialize_store(logdir, spec):
    """What MadryLab's ``initialize_store`` does with a spec: one zeroed ``.npy`` per field
    (dtype by numpy attribute name) and ``_completed``, ``num_models`` rows each."""
    schema = {**spec["schema"], "_completed": {"dtype": "bool_", "shape": []}}
    for key, meta in schema.items():
        open_memmap(logdir / f"{key}.npy", mode="w+", dtype=getattr(np, meta["dtype"]),
                    shape=(spec["num_models"], *meta["shape"])).flush()


def madrylab_kv_log(logdir, index, row):
    """What MadryLab's worker does with main()'s dict: each value into its memmap row, then
    ``_completed``."""
    for key, value in {**row, "_completed": 1}.items():
        mm = np.load(logdir / f"{key}.npy", mmap_mode="r+")
        mm[index] = value
        mm.flush()


def madrylab_accepts(spec):
    """MadryLab's ``verify_spec`` rules."""
    assert "num_models" in spec and "schema" in spec and "_completed" not in spec["schema"]
    for entry in spec["schema"].values():
        assert type(entry["shape"]) is list and hasattr(np, entry["dtype"])


def test_store_from_their_spec_is_theirs_too(tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    assert cli.main(["store", "init", "--spec", str(spec_file), "--store",
                     str(tmp_path / "s")]) == 0
    store = ModelStore.open(tmp_path / "s")
    assert store.n_models == N_MODELS and store.n_completed == 0
    assert store.schema == {"masks": (np.dtype(bool), (N_TRAIN,)),
                            "margins": (np.dtype(np.float16), (N_TRAIN,))}
    ours = json.loads((tmp_path / "s" / "spec.json").read_text())
    madrylab_accepts(ours)  # our spec.json passes their preprocess_spec
    for name in ("masks", "margins", "_completed"):  # their np.load / kv_read read it
        assert np.load(tmp_path / "s" / f"{name}.npy", mmap_mode="r").shape[0] == N_MODELS
    # the same spec resumes; another one is refused and the store is left as it was
    ModelStore.from_spec(tmp_path / "s", SPEC)
    other = {**SPEC, "schema": {**SPEC["schema"], "margins": {"shape": [7], "dtype": "float32"}}}
    with pytest.raises(ValueError, match="another configuration"):
        ModelStore.from_spec(tmp_path / "s", other)


@pytest.mark.parametrize(("spec", "match"), [
    ({"schema": SPEC["schema"]}, "num_models"),
    ({**SPEC, "num_models": 0}, "positive integer"),
    ({**SPEC, "schema": {"masks": {"shape": [3], "dtype": "boolean"}}}, "unknown dtype"),
    ({**SPEC, "schema": {"masks": {"shape": 3, "dtype": "bool_"}}}, "list of non-negative"),
    ({**SPEC, "schema": {"_completed": {"shape": [], "dtype": "bool_"}}}, "reserved"),
    ({**SPEC, "schema": {"masks": {"dtype": "bool_"}}}, "needs a 'dtype' and a 'shape'"),
])
def test_bad_spec_is_refused_before_anything_is_written(tmp_path, spec, match):
    with pytest.raises(ValueError, match=match):
        check_madrylab_spec(spec)
    with pytest.raises(ValueError, match=match):
        ModelStore.from_spec(tmp_path / "s", spec)
    assert not (tmp_path / "s").exists()


def run_cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "scdm.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_worker_runs_a_user_main_idempotently(tmp_path, user_module, capsys):
    store = ModelStore.from_spec(tmp_path / "s", SPEC)
    # two workers on overlapping ranges, extra arguments after --, MadryLab style
    first = run_cli("worker", "--store", str(store.path), "--main-import",
                    f"{user_module}:main", "--models", "0:200", "--quiet", "--",
                    "--noise", "0.5", "--trainer.multiple=2")
    assert first.returncode == 0, first.stderr
    second = run_cli("worker", "--store", str(store.path), "--main-import", "user_train",
                     "--models", "100:300", "--quiet", "--noise=0.5", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "trained 100 models" in second.stdout
    store = ModelStore.open(store.path)
    assert store.n_completed == N_MODELS
    sys.path.insert(0, str(tmp_path))
    try:
        import user_train
        expected = user_train.main(index=7, logdir=str(tmp_path))
    finally:
        sys.path.remove(str(tmp_path))
    np.testing.assert_array_equal(store.masks[7], expected["masks"])
    np.testing.assert_array_equal(store.margins[7], expected["margins"].astype(np.float16))
    argv = (store.path / "workers" / "7" / "argv.txt").read_text()
    assert argv == "--noise 0.5 --trainer.multiple=2"  # sys.argv as the script expects
    # a rerun trains nothing and rewrites nothing; status sees the workers
    before = (store.path / "margins.npy").read_bytes()
    capsys.readouterr()
    assert cli.main(["worker", "--store", str(store.path), "--main-import", str(user_module),
                     "--quiet"]) == 0
    assert "trained 0 models" in capsys.readouterr().out
    assert (store.path / "margins.npy").read_bytes() == before
    assert cli.main(["status", "--store", str(store.path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["completed"] == N_MODELS and status["workers_seen"] == 3
    # keyword arguments reach main(): a different noise gives different margins on --redo
    train_with_main(store.path, f"{user_module}:main", models=(0, 1), args=["--noise", "0"],
                    redo=True)
    assert not np.array_equal(ModelStore.open(store.path).margins[0],
                              np.frombuffer(before[-store.margins[0].nbytes:], np.float16))


@pytest.mark.parametrize(("func", "match"), [
    ("bad_shape", "field 'margins' has shape"),
    ("nan_margin", "NaN or inf"),
    ("extra_key", "completion flags"),
    ("missing_key", r"missing \['margins'\]"),
    ("missing", "no function 'missing'"),
])
def test_bad_user_main_is_an_error_and_the_store_keeps_its_rows(tmp_path, user_module, func,
                                                                   match, capsys):
    store = ModelStore.from_spec(tmp_path / "s", SPEC)
    train_with_main(store.path, str(user_module), models=(0, 3))
    before = {f: (store.path / f"{f}.npy").read_bytes() for f in ("masks", "margins",
                                                                  "_completed")}
    with pytest.raises((ValueError, TypeError), match=match):
        train_with_main(store.path, f"{user_module}:{func}", models=(0, 10), redo=True)
    if func == "nan_margin":  # models 0-4 of the retry were fine and stay written
        assert ModelStore.open(store.path).completed_indices().tolist() == [0, 1, 2, 3, 4]
    else:
        for name, data in before.items():
            assert (store.path / f"{name}.npy").read_bytes() == data
    assert cli.main(["worker", "--store", str(store.path), "--main-import", str(user_module),
                     "--models", "0:301"]) == 2
    assert "STOP <= 300" in capsys.readouterr().err


def test_a_directory_madrylab_made_opens_without_being_written(tmp_path, user_module):
    logdir = tmp_path / "madry"
    logdir.mkdir()
    (logdir / "spec.json").write_text(json.dumps(SPEC))  # the user's own file, their format
    madrylab_initialize_store(logdir, SPEC)
    rng = np.random.default_rng(0)
    for index in range(0, N_MODELS, 2):  # half the models, their worker's way
        madrylab_kv_log(logdir, index, {"masks": rng.random(N_TRAIN) < 0.5,
                                        "margins": rng.normal(size=N_TRAIN)})
    listing = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in logdir.iterdir()}
    store = ModelStore.open(logdir)  # = ModelStore.from_madrylab(logdir)
    assert store.n_models == N_MODELS and store.n_completed == N_MODELS // 2
    assert store.schema["margins"] == (np.dtype(np.float16), (N_TRAIN,))
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in logdir.iterdir()} == listing
    # scdm worker fills the missing rows of their store with the user's main()
    train_with_main(logdir, str(user_module))
    assert ModelStore.open(logdir).n_completed == N_MODELS
    assert json.loads((logdir / "spec.json").read_text()) == SPEC  # never overwritten
    assert not (logdir / "datamodels.pt").exists()


@pytest.mark.slow
def test_migration_fit_their_store_and_predict_their_way(tmp_path, user_module):
    """A store built as MadryLab's initialize_store + workers build it (bool masks, float16
    margins, some rows incomplete), fitted with ``scdm fit``, loaded with plain ``torch.load``
    and predicted with fast_l1's convention: scdm's own predictions on validation models."""
    logdir = tmp_path / "madry"
    logdir.mkdir()
    madrylab_initialize_store(logdir, SPEC)
    sys.path.insert(0, str(tmp_path))
    try:
        import user_train
        for index in range(N_MODELS):
            if index % 10 != 3:  # every tenth model never finished
                madrylab_kv_log(logdir, index, user_train.main(index=index,
                                                               logdir=str(tmp_path)))
        val = [user_train.main(index=10_000 + i, logdir=str(tmp_path)) for i in range(50)]
    finally:
        sys.path.remove(str(tmp_path))
    out = tmp_path / "dm.pt"
    fit = run_cli("fit", "--store", str(logdir), "--out", str(out), "--allow-incomplete",
                  "--targets-are-training", "no", "--quiet")
    assert fit.returncode == 0, fit.stderr
    assert sorted(p.name for p in logdir.iterdir()) == ["_completed.npy", "margins.npy",
                                                       "masks.npy"]
    data = torch.load(out, weights_only=True)  # plain torch, MadryLab's keys
    assert data["weight"].shape == (N_TRAIN, N_TRAIN) and data["units"] == "standardized"
    masks = np.array([v["masks"] for v in val], dtype=np.float32)
    margins = np.array([v["margins"] for v in val])
    masks_t = torch.from_numpy(masks)  # fast_l1's normalisation, in torch as theirs
    theirs = (((masks_t - data["mean"]) / (data["scale"] + 1e-32)) @ data["weight"]
              + data["bias"]).numpy()
    ours = read_datamodels(out).predict(masks)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
    assert np.corrcoef(ours.ravel(), margins.ravel())[0, 1] > 0.9  # and they predict


def test_fit_target_ranges_merge_to_the_whole_fit(tmp_path, user_module, capsys):
    """fast_l1 users split the targets over jobs; in-sample targets keep their own mask column
    (target t is training sample A + t) and the merged file equals one fit of all targets."""
    store = ModelStore.from_spec(tmp_path / "s", SPEC)
    train_with_main(store.path, str(user_module), models=(0, 280))
    flags = ["--allow-incomplete", "--targets-are-training", "yes", "--quiet", "--val-fraction",
             "0.2"]
    # a store without a recipe must say what its targets are
    assert cli.main(["fit", "--store", str(store.path), "--allow-incomplete", "--quiet"]) == 2
    assert "--targets-are-training" in capsys.readouterr().err
    assert cli.main(["fit", "--store", str(store.path), *flags]) == 0
    parts = []
    for a, b in ((0, 15), (15, 40)):
        assert cli.main(["fit", "--store", str(store.path), "--targets", f"{a}:{b}", *flags]
                        ) == 0
        parts.append(str(store.path / f"datamodels.{a}-{b}.pt"))
    assert cli.main(["fit", "--merge", *parts, "--out", str(tmp_path / "merged.pt")]) == 0
    whole, merged = read_datamodels(store.path / "datamodels.pt"), read_datamodels(
        tmp_path / "merged.pt")
    np.testing.assert_allclose(merged.weight, whole.weight, atol=1e-5)
    np.testing.assert_allclose(merged.self_influence, whole.self_influence, atol=1e-5)
    assert np.diag(merged.weight).max() == 0 and np.abs(merged.self_influence).max() > 0
    # overlapping or incomplete ranges are refused
    assert cli.main(["fit", "--merge", parts[1], "--out", str(tmp_path / "m2.pt")]) == 2
    assert "tile [0, 40)" in capsys.readouterr().err
    assert cli.main(["fit", "--store", str(store.path), "--targets", "30:50", *flags]) == 2
    assert "STOP <= 40" in capsys.readouterr().err


def test_published_rows_and_completed_rows_are_streamed(tmp_path):
    from scdm._memmap import RowSubset
    from scdm.io import load_published
    from scdm.regression import LassoPath

    rng = np.random.default_rng(0)
    masks = rng.random((500, 12)) < 0.5
    margins = (masks @ rng.normal(size=(12, 4))).astype(np.float16)
    np.save(tmp_path / "train_masks.npy", masks)
    np.save(tmp_path / "margins.npy", margins)
    X, Y = load_published(tmp_path / "train_masks.npy", tmp_path / "margins.npy",
                          rows=slice(0, -100))  # leave out the last 100 (evaluation) models
    assert isinstance(X, np.memmap) and X.shape == (400, 12) and Y.shape == (400, 4)
    keep = np.flatnonzero(np.arange(500) % 3 != 0)
    Xs, Ys = load_published(tmp_path / "train_masks.npy", tmp_path / "margins.npy", rows=keep)
    assert isinstance(Xs, RowSubset) and Xs.shape == (keep.size, 12)
    np.testing.assert_array_equal(Xs[5:9], masks[keep[5:9]])
    np.testing.assert_array_equal(np.asarray(Ys), margins[keep])
    settings = {"n_lambdas": 5, "verbose": False}
    streamed = LassoPath(row_chunk_size=50, **settings).fit(Xs, Ys)
    copied = LassoPath(row_chunk_size=50, **settings).fit(masks[keep], margins[keep])
    np.testing.assert_allclose(streamed.coef_, copied.coef_, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="sorted"):
        RowSubset(masks, [3, 1])


def test_stores_written_before_the_madrylab_dtype_names_still_resume(tmp_path):
    schema = {"masks": (np.bool_, (5,)), "margins": (np.float32, (5,))}
    store = ModelStore.create(tmp_path / "s", n_models=4, schema=schema, fingerprint={"a": 1})
    spec = json.loads((tmp_path / "s" / "spec.json").read_text())
    assert spec["schema"]["masks"]["dtype"] == "bool_"
    spec["schema"] = {"masks": {"dtype": "|b1", "shape": [5]},
                      "margins": {"dtype": "<f4", "shape": [5]}}  # as older scdm wrote them
    (tmp_path / "s" / "spec.json").write_text(json.dumps(spec))
    store = ModelStore.create(tmp_path / "s", n_models=6, schema=schema, fingerprint={"a": 1})
    assert store.n_models == 6 and store.schema["masks"] == (np.dtype(bool), (5,))


def test_datamodels_pt_orientation_and_units_are_checked(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((200, 6)) < 0.5
    torch.save({"weight": torch.zeros(6, 3), "bias": torch.zeros(3)}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="does not say its units"):
        read_datamodels(tmp_path / "a.pt")
    assert read_datamodels(tmp_path / "a.pt", units="raw").weight.shape == (6, 3)
    with pytest.raises(ValueError, match="transposed"):
        read_datamodels(tmp_path / "a.pt", masks=masks[:, :3], units="raw")
    with pytest.raises(ValueError, match="no 'mean'/'scale'"):
        read_datamodels(tmp_path / "a.pt", units="standardized")
    back = read_datamodels(tmp_path / "a.pt", units="standardized", masks=masks)
    assert back.units == "standardized" and back.weight.shape == (6, 3)


def test_madrylab_directory_fields_come_from_their_spec_or_the_row_count(tmp_path):
    logdir = tmp_path / "madry"
    logdir.mkdir()
    madrylab_initialize_store(logdir, SPEC)
    np.save(logdir / "notes.npy", np.zeros(3))  # something else the user keeps there
    with pytest.warns(UserWarning, match=r"notes\.npy.*not read as a field"):
        store = ModelStore.from_madrylab(logdir)
    assert sorted(store.fields) == ["margins", "masks"]
    (logdir / "spec.json").write_text(json.dumps(SPEC))  # their spec names the fields
    assert sorted(ModelStore.from_madrylab(logdir).fields) == ["margins", "masks"]
    (logdir / "masks.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks\.npy is missing"):
        ModelStore.from_madrylab(logdir)


def test_fit_asks_what_the_targets_are_only_when_the_widths_allow_both(tmp_path):
    """Margins as wide as the masks may be on the training samples or on as many test
    samples, so a store without a recipe must say; other widths can only be test targets."""
    from scdm.workers._recipes import targets_are_training_samples

    assert targets_are_training_samples(tmp_path, 200, 40) is False
    with pytest.raises(ValueError, match="--targets-are-training"):
        targets_are_training_samples(tmp_path, 40, 40)
    assert targets_are_training_samples(tmp_path, 40, 40, stated=True) is True
    with pytest.raises(ValueError, match="as many margin columns"):
        targets_are_training_samples(tmp_path, 200, 40, stated=True)
