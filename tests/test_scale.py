"""Scale-out: a real local Ray cluster and CLI workers fill the same store as one local run."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from _helpers import make_adata

import scdm
from scdm.io import read_datamodels_pt
from scdm.store import ModelStore
from scdm.workers import RayBackend

# a real local Ray cluster and real processes: CI runs them, the quick default run does not
pytestmark = [pytest.mark.slow, pytest.mark.ray]

ray = pytest.importorskip("ray")

TRAIN = {"n_models": 600, "random_state": 3}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The store a plain local run fills."""
    scdm.settings.verbosity = 0
    adata = make_adata(n_obs=80)
    path = tmp_path_factory.mktemp("local") / "store"
    scdm.tl.train_models(adata, "disease", store=path, **TRAIN)
    return adata, ModelStore.open(path)


def assert_same_store(a: ModelStore, b: ModelStore) -> None:
    assert a.n_completed == a.n_models == b.n_completed == b.n_models
    for field in ("masks", "margins", "heldout_accuracy"):
        np.testing.assert_array_equal(a.field(field), b.field(field))


def test_ray_backend_fills_the_same_store(cluster, reference, tmp_path):
    adata, local = reference
    scdm.tl.train_models(adata, "disease", store=tmp_path / "ray",
                         backend=RayBackend(task_size=128), **TRAIN)
    assert_same_store(local, ModelStore.open(tmp_path / "ray"))
    assert adata.uns["datamodels"]["n_completed"] == 600


def test_killed_ray_worker_is_retried_and_results_are_identical(cluster, reference, tmp_path):
    adata, local = reference
    path = tmp_path / "ray_killed"
    errors = []

    def run():
        try:
            scdm.tl.train_models(adata, "disease", store=path,
                                 backend=RayBackend(task_size=600, chunk_size=32), **TRAIN)
        except Exception as err:  # surfaced below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and thread.is_alive():
        for beat_file in (path / "workers").glob("*.json") if (path / "workers").is_dir() else ():
            beat = json.loads(beat_file.read_text())
            if beat["state"] == "running" and 0 < beat["trained"] < beat["to_train"]:
                os.kill(beat["pid"], signal.SIGKILL)  # mid-task: some chunks written
                killed = beat
                break
        time.sleep(0.02)
    thread.join(timeout=300)
    assert killed is not None, "no running Ray task was seen to kill"
    assert not errors, errors
    beats = [json.loads(p.read_text()) for p in (path / "workers").glob("*.json")]
    retried = [b for b in beats if b["pid"] != killed["pid"]]
    assert retried and retried[0]["state"] == "done"
    assert retried[0]["to_train"] < 600  # the retry skipped what the killed worker finished
    assert_same_store(local, ModelStore.open(path))


def scdm_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scdm.cli", *args], capture_output=True,
                          text=True, timeout=600, **kwargs)


def test_cli_workers_on_overlapping_ranges(reference, tmp_path):
    adata, local = reference
    adata.write_h5ad(tmp_path / "in.h5ad")
    store = tmp_path / "cli"
    init = scdm_cli("store", "init", str(tmp_path / "in.h5ad"), "--store", str(store),
                    "--label-key", "disease", "--n-models", "600", "--random-state", "3")
    assert init.returncode == 0, init.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "scdm.cli", "train", "--store", str(store),
                                 "--models", models, "--quiet", "--chunk-size", "64"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for models in ("0:400", "200:600")]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
    assert_same_store(local, ModelStore.open(store))
    before = (store / "margins.npy").stat().st_mtime_ns
    third = scdm_cli("train", "--store", str(store))
    assert third.returncode == 0 and "trained 0 models" in third.stdout
    assert (store / "margins.npy").stat().st_mtime_ns == before
    status = scdm_cli("status", "--store", str(store), "--json")
    info = json.loads(status.stdout)
    assert info["completed"] == info["total"] == 600 and info["workers_running"] == 0
    assert info["models_per_second"] > 0
    fit = scdm_cli("fit", "--store", str(store), "--quiet")
    assert fit.returncode == 0, fit.stderr
    assert read_datamodels_pt(store / "datamodels.pt")["weight"].shape == (80, 80)
    # failures exit non-zero, with the reason
    bad = scdm_cli("train", "--store", str(store), "--models", "500:100")
    assert bad.returncode == 2 and "START < STOP" in bad.stderr
    # every store tl.train_models writes carries its recipe; one made from MadryLab's spec
    # (filled by a user's main()) has none
    assert (local.path / "recipe.json").exists()
    spec = ModelStore.from_spec(tmp_path / "spec", {
        "num_models": 10, "schema": {"margins": {"shape": [5], "dtype": "float32"}}})
    no_recipe = scdm_cli("train", "--store", str(spec.path))
    assert no_recipe.returncode == 2 and "no training recipe" in no_recipe.stderr


def test_lds_on_ray_equals_local(cluster, planted, tmp_path):
    adata = planted.copy()
    scdm.tl.lds(adata, n_models=40, n_seeds=2, store=tmp_path / "local")
    local = adata.obs["datamodels_lds"].copy()
    scdm.tl.lds(adata, n_models=40, n_seeds=2, store=tmp_path / "ray",
                backend=RayBackend(task_size=32))
    np.testing.assert_array_equal(adata.obs["datamodels_lds"], local)
    assert_same_store(ModelStore.open(tmp_path / "local"), ModelStore.open(tmp_path / "ray"))


def test_trak_on_ray_keeps_its_checkpoints_as_tasks_train_them(cluster, tmp_path):
    """Ray tasks keep each checkpoint's parameters as they train it (``keep_checkpoints``),
    tl.trak on that store then trains nothing again, and its result equals a local run's."""
    adata = make_adata(n_obs=80)
    local = scdm.tl.trak(adata, "disease", n_models=8, store=tmp_path / "local", copy=True)
    scdm.tl.train_models(adata, "disease", n_models=8, min_heldout=0, store=tmp_path / "ray",
                         backend=RayBackend(task_size=4, keep_checkpoints=True),
                         key_added="trak")
    store = ModelStore.open(tmp_path / "ray")
    assert all(store.load_checkpoint(m) is not None for m in range(8))  # kept by the tasks
    stamps = [store.checkpoint_path(m).stat().st_mtime_ns for m in range(8)]
    remote = scdm.tl.trak(adata, "disease", n_models=8, store=tmp_path / "ray", copy=True)
    assert [store.checkpoint_path(m).stat().st_mtime_ns for m in range(8)] == stamps
    np.testing.assert_array_equal(remote.obsm["X_trak"], local.obsm["X_trak"])
    assert_same_store(ModelStore.open(tmp_path / "local"), store)


def test_trak_features_as_ray_tasks_equal_local_ones(cluster, tmp_path):
    """With a RayBackend, tl.trak's checkpoints are featurized as Ray tasks (one checkpoint
    each, from the store's recipe and kept checkpoints) into the store: the same files and the
    same embedding as a local run, bitwise; a second call finds them and runs no task."""
    adata = make_adata(n_obs=80)
    local = scdm.tl.trak(adata, "disease", n_models=8, store=tmp_path / "local", copy=True)
    remote = scdm.tl.trak(adata, "disease", n_models=8, store=tmp_path / "ray", copy=True,
                          train_kwds={"backend": RayBackend(task_size=4)})
    for key in ("X_trak", "X_trak_half1", "X_trak_half2"):
        np.testing.assert_array_equal(remote.obsm[key], local.obsm[key])
    np.testing.assert_array_equal(remote.obsp["trak"], local.obsp["trak"])
    folders = [sorted((tmp_path / where / "trak_features").glob("*/model_*"))
               for where in ("local", "ray")]
    assert len(folders[0]) == len(folders[1]) == 8
    for a, b in zip(*folders, strict=True):
        for name in ("features.npy", "out_to_loss.npy", "sq_norm.npy"):
            np.testing.assert_array_equal(np.load(a / name), np.load(b / name))
    stamps = [(f / "features.npy").stat().st_mtime_ns for f in folders[1]]
    scdm.tl.trak(adata, "disease", n_models=8, store=tmp_path / "ray", copy=True,
                 train_kwds={"backend": RayBackend(task_size=4)})
    assert [(f / "features.npy").stat().st_mtime_ns for f in folders[1]] == stamps


def _holder_of(path) -> int | None:
    """The pid of a process that has ``path`` open (Linux: /proc/<pid>/fd)."""
    target = str(path)
    for proc in os.listdir("/proc"):
        if not proc.isdigit() or int(proc) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{proc}/fd")
            if any(os.readlink(f"/proc/{proc}/fd/{fd}") == target for fd in fds):
                return int(proc)
        except OSError:  # gone, or not ours to read
            continue
    return None


def test_a_killed_feature_worker_redoes_only_its_checkpoint(cluster, tmp_path):
    """A Ray worker killed while it writes a checkpoint's features: Ray retries the task, the
    retry redoes that checkpoint (the others were complete), and every file equals a local
    run's bitwise."""
    from scdm.workers import fill_features

    adata = make_adata(n_obs=20_000, n_vars=20)
    scdm.tl.train_models(adata, "disease", n_models=6, min_heldout=0, store=tmp_path / "s",
                         backend=scdm.workers.LocalBackend(keep_checkpoints=True),
                         key_added="trak", random_state=1)
    settings = {"n_obs": adata.n_obs, "proj_dim": 512, "seed": 1, "damping": 1.0,
                "progress": False}
    errors, killed, finished = [], [], {}

    def run():
        try:
            fill_features(tmp_path / "s", tmp_path / "ray", range(6),
                          backend=RayBackend(max_retries=2), **settings)
        except Exception as err:  # surfaced below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while not killed and thread.is_alive() and time.time() < deadline:
        for folder in sorted((tmp_path / "ray").glob("model_*")):
            if (folder / "meta.json").exists():
                continue
            pid = _holder_of(folder / "features.npy")
            if pid is not None:
                os.kill(pid, signal.SIGKILL)  # mid-checkpoint: its files half written
                killed.append(folder.name)
                finished.update({meta.parent.name: meta.stat().st_mtime_ns
                                 for meta in (tmp_path / "ray").glob("model_*/meta.json")})
                break
        time.sleep(0.005)
    thread.join(timeout=300)
    assert killed, "no feature worker was seen writing to kill"
    assert not errors, errors
    assert killed[0] not in finished
    for name, stamp in finished.items():  # complete before the kill: not computed again
        assert (tmp_path / "ray" / name / "meta.json").stat().st_mtime_ns == stamp
    fill_features(tmp_path / "s", tmp_path / "local", range(6), **settings)
    for m in range(6):
        for name in ("features.npy", "out_to_loss.npy", "sq_norm.npy"):
            np.testing.assert_array_equal(np.load(tmp_path / "ray" / f"model_{m}" / name),
                                          np.load(tmp_path / "local" / f"model_{m}" / name))


def test_image_store_on_ray_equals_local(cluster, tmp_path):
    """Ray tasks read the ResNet-9 recipe from the store (scdm.vision imported on the workers)
    and fill it as one local run does."""
    from scdm.vision import (
        ImageRecipe,
        ResNetConfig,
        binary_labels,
        create_image_store,
        synthetic_cifar10,
    )
    from scdm.workers import fill_store

    data = synthetic_cifar10(n_train=40, n_test=10, random_state=2)
    recipe = ImageRecipe(data.train_images, binary_labels(data.train_labels), data.test_images,
                         binary_labels(data.test_labels), 0.5,
                         ResNetConfig(width=4, epochs=1, batch_size=20, lr_peak_epoch=0.5), 4)
    stores = {}
    for backend in ("local", "ray"):
        stores[backend] = create_image_store(tmp_path / backend, recipe, 8)
        fill_store(stores[backend], recipe, models=(0, 8),
                   backend=RayBackend(task_size=4) if backend == "ray" else backend,
                   progress=False)
    assert_same_store(ModelStore.open(stores["local"].path), ModelStore.open(stores["ray"].path))


def test_user_main_on_ray_equals_local(cluster, tmp_path):
    """MadryLab's worker contract on Ray: the same user main() fills the same rows."""
    from test_madrylab import SPEC, USER_MAIN

    from scdm.io import train_with_main

    script = tmp_path / "user_train.py"
    script.write_text(USER_MAIN)
    local = ModelStore.from_spec(tmp_path / "local", SPEC)
    assert train_with_main(local.path, str(script), models=(0, 60)) == 60
    remote = ModelStore.from_spec(tmp_path / "ray", SPEC)
    assert train_with_main(remote.path, f"{script}:main", models=(0, 60),
                           backend=RayBackend(task_size=16)) == 60
    local, remote = ModelStore.open(local.path), ModelStore.open(remote.path)
    np.testing.assert_array_equal(remote.completed_indices(), np.arange(60))
    for field in ("masks", "margins"):
        np.testing.assert_array_equal(local.field(field), remote.field(field))
    with pytest.raises(ValueError, match="redo"):
        train_with_main(remote.path, str(script), backend="ray", redo=True)


def _mapping(path) -> int | None:
    """The pid of another process that has ``path`` memory-mapped (Linux: /proc/<pid>/maps)."""
    for proc in os.listdir("/proc"):
        if not proc.isdigit() or int(proc) == os.getpid():
            continue
        try:
            with open(f"/proc/{proc}/maps") as maps:
                if str(path) in maps.read():
                    return int(proc)
        except OSError:
            continue
    return None


def test_embedding_passes_as_ray_tasks_equal_local_ones_and_survive_a_killed_worker(
        cluster, tmp_path):
    """Each checkpoint's share of the TRAK embedding's passes as a Ray task that memory-maps
    its features (two blocks of rows, three interleaved classes): the range, its singular
    vectors and values equal the local computation bitwise, also when a worker is killed in
    the middle of a pass (Ray retries the task; it writes nothing)."""
    from scdm.trak._lowrank import BLOCK_ROWS, randomized_left_classes
    from scdm.workers import RayCheckpointProducts

    rng = np.random.default_rng(0)
    n, k, K = BLOCK_ROWS + 4_000, 8, 4
    paths = []
    for c in range(K):
        paths.append(tmp_path / f"features_{c}.npy")
        np.save(paths[-1], rng.normal(size=(n, k)).astype(np.float32))
    factors = [np.load(p, mmap_mode="r") for p in paths]
    owner = rng.integers(0, 4, n)  # class 3: cells of no class
    groups = [np.flatnonzero(owner == g) for g in range(3)]
    local = randomized_left_classes(factors, groups, 4, seed=3)

    executor = RayCheckpointProducts(paths, max_retries=3)
    assert len(randomized_left_classes(factors, groups, 4, seed=3, executor=executor)) == 3
    assert len(executor.peaks) == (4 + 2) * K  # every share of every pass was a task

    killed = []

    def kill():
        deadline = time.time() + 60
        while not killed and time.time() < deadline:
            pid = _mapping(paths[1].resolve())
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.002)

    thread = threading.Thread(target=kill)
    thread.start()
    remote = randomized_left_classes(factors, groups, 4, seed=3,
                                     executor=RayCheckpointProducts(paths, max_retries=3))
    thread.join()
    assert killed, "no Ray worker was seen reading checkpoint 1's features"
    for (q0, u0, s0), (q1, u1, s1) in zip(local, remote, strict=True):
        np.testing.assert_array_equal(q0.numpy(), q1.numpy())
        np.testing.assert_array_equal(u0, u1)
        np.testing.assert_array_equal(s0, s1)


def test_trak_embedding_on_ray_equals_local(cluster, tmp_path):
    """tl.trak with a RayBackend and classes on the randomized path (rank 8): the embedding
    and its halves equal a local run's bitwise."""
    adata = make_adata(n_obs=80)
    local = scdm.tl.trak(adata, "disease", n_models=8, rank=8, store=tmp_path / "local",
                         copy=True)
    remote = scdm.tl.trak(adata, "disease", n_models=8, rank=8, store=tmp_path / "ray",
                          copy=True, train_kwds={"backend": RayBackend(task_size=4)})
    for key in ("X_trak", "X_trak_half1", "X_trak_half2"):
        np.testing.assert_array_equal(remote.obsm[key], local.obsm[key])


def test_second_round_on_ray_equals_a_local_one(cluster, tmp_path):
    """tl.second_round(backend=RayBackend) trains and featurizes the new checkpoints as Ray
    tasks into the grown store: the same store, attribution and subgroups as a local one."""
    import shutil
    import warnings

    import scanpy as sc

    adata = scdm.datasets.planted_subtypes(n_controls=120, n_per_subtype=60, n_subtypes=2,
                                           n_genes=200, batch_genes=100, program_effect=1.2,
                                           random_state=0)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    scdm.tl.trak(adata, "disease", use_rep="X_pca", store=tmp_path / "local")
    with pytest.warns(scdm.tl.UndecidedSubgroupsWarning):  # a bar over the halves' agreement
        scdm.tl.subgroups(adata, key="trak", min_reproducibility=0.99, markers=False)
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    remote = adata.copy()
    remote.uns["trak"]["store"] = str(tmp_path / "ray")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scdm.tl.UndecidedSubgroupsWarning)
        scdm.tl.second_round(adata, key="trak", factor=2)
        scdm.tl.second_round(remote, key="trak", factor=2,
                             backend=RayBackend(task_size=8))
    assert_same_store(ModelStore.open(tmp_path / "local"), ModelStore.open(tmp_path / "ray"))
    for key in ("X_trak_round2", "X_trak_round2_half1", "X_trak_round2_half2"):
        np.testing.assert_array_equal(remote.obsm[key], adata.obsm[key])
    np.testing.assert_array_equal(remote.obs["trak_subgroup"], adata.obs["trak_subgroup"])
    # the second round's features (all 80 checkpoints) were written by the Ray tasks
    assert sorted(len(list(d.glob("model_*"))) for d in (
        tmp_path / "ray" / "trak_features").iterdir()) == [40, 80]
