import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numpy.lib.format import open_memmap

from scdm.store import ModelStore, StoreMismatchError

SCHEMA = {"masks": (bool, (10,)), "margins": (np.float32, (10,)),
          "heldout_accuracy": (np.float32, ())}


def rows(idx, seed=0):
    rng = np.random.default_rng(seed)
    idx = np.asarray(idx)
    return {"masks": rng.random((idx.size, 10)) < 0.5,
            "margins": rng.normal(size=(idx.size, 10)).astype(np.float32),
            "heldout_accuracy": rng.random(idx.size).astype(np.float32)}


def test_write_marks_complete_and_reads_back(tmp_path):
    store = ModelStore.create(tmp_path / "s", n_models=6, schema=SCHEMA, fingerprint={"a": 1})
    data = rows([4, 1, 2])
    store.write([4, 1, 2], **data)
    assert store.completed.tolist() == [False, True, True, False, True, False]
    assert store.incomplete_indices().tolist() == [0, 3, 5]
    reopened = ModelStore.open(tmp_path / "s")
    np.testing.assert_array_equal(reopened.masks[[4, 1, 2]], data["masks"])
    np.testing.assert_array_equal(reopened.margins[[4, 1, 2]], data["margins"])
    view = reopened.obs_view("margins")
    assert view.shape == (10, 3)
    np.testing.assert_array_equal(view[:, 0], data["margins"][1])  # models 1, 2, 4 in order
    np.testing.assert_array_equal(np.asarray(view), data["margins"][[1, 2, 0]].T)
    # MadryLab-style files: plain .npy arrays
    assert np.load(tmp_path / "s" / "masks.npy").shape == (6, 10)


def test_write_refuses_wrong_fields_and_shapes(tmp_path):
    store = ModelStore.create(tmp_path / "s", n_models=3, schema=SCHEMA)
    data = rows([0])
    with pytest.raises(ValueError, match="missing"):
        store.write([0], masks=data["masks"], margins=data["margins"])
    with pytest.raises(ValueError, match="expected shape"):
        store.write([0, 1], **data)
    assert store.n_completed == 0
    with pytest.raises(PermissionError):
        ModelStore.open(tmp_path / "s").write([0], **data)


def test_other_fingerprint_is_refused_and_store_untouched(tmp_path):
    store = ModelStore.create(tmp_path / "s", n_models=4, schema=SCHEMA,
                              fingerprint={"alpha": 0.5, "seed": 0})
    store.write([0, 1], **rows([0, 1]))
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    with pytest.raises(StoreMismatchError, match=r"alpha: store has 0.5, this call has 0.3"):
        ModelStore.create(tmp_path / "s", n_models=8, schema=SCHEMA,
                          fingerprint={"alpha": 0.3, "seed": 0})
    after = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    assert before == after


def test_same_fingerprint_resumes_and_extends_without_rewriting(tmp_path):
    store = ModelStore.create(tmp_path / "s", n_models=4, schema=SCHEMA, fingerprint={"k": [1]})
    data = rows([0, 3])
    store.write([0, 3], **data)
    grown = ModelStore.create(tmp_path / "s", n_models=9, schema=SCHEMA, fingerprint={"k": (1,)})
    assert grown.n_models == 9 and grown.completed.tolist() == [True, False, False, True] + [
        False] * 5
    np.testing.assert_array_equal(grown.margins[[0, 3]], data["margins"])
    grown.write([8], **rows([8], seed=1))
    assert np.load(tmp_path / "s" / "margins.npy").shape == (9, 10)
    assert ModelStore.open(tmp_path / "s").n_completed == 3


def test_never_writes_into_a_foreign_directory(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an scdm store"):
        ModelStore.create(tmp_path / "data", n_models=2, schema=SCHEMA)
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"
    ModelStore.create(tmp_path / "s", n_models=2, schema=SCHEMA)
    with pytest.raises(FileExistsError, match="resume=True"):
        ModelStore.create(tmp_path / "s", n_models=2, schema=SCHEMA, resume=False)


def test_reads_a_madrylab_directory(tmp_path):
    d = tmp_path / "madry"
    d.mkdir()
    masks = open_memmap(d / "masks.npy", mode="w+", dtype=bool, shape=(5, 7))
    margins = open_memmap(d / "margins.npy", mode="w+", dtype=np.float32, shape=(5, 3))
    done = open_memmap(d / "_completed.npy", mode="w+", dtype=bool, shape=(5,))
    masks[:] = np.eye(5, 7, dtype=bool)
    margins[:] = np.arange(15, dtype=np.float32).reshape(5, 3)
    done[[0, 2]] = True
    del masks, margins, done
    store = ModelStore.from_madrylab(d)
    assert store.n_models == 5 and store.completed_indices().tolist() == [0, 2]
    assert store.obs_view("margins").shape == (3, 2)
    np.testing.assert_array_equal(store.margins[2], [6, 7, 8])


WORKER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import SCHEMA, rows
    from scdm.store import ModelStore
    store = ModelStore.create({path!r}, n_models=400, schema=SCHEMA, fingerprint={{"x": 1}})
    start, stop = int(sys.argv[1]), int(sys.argv[2])
    for m in range(start, stop):
        store.write([m], **rows([m], seed=m))
""")


@pytest.mark.slow
def test_concurrent_writers_on_disjoint_rows(tmp_path):
    script = WORKER.format(tests=str(__import__("pathlib").Path(__file__).parent),
                           path=str(tmp_path / "s"))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(a), str(b)])
             for a, b in [(0, 200), (200, 400)]]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = ModelStore.open(tmp_path / "s")
    assert store.n_completed == 400
    for m in (0, 199, 200, 399):
        np.testing.assert_array_equal(store.margins[m], rows([m], seed=m)["margins"][0])
