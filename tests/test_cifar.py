"""CIFAR-10 reference pipeline: loader, ResNet-9 ensembles, image stores and the smoke run."""

import hashlib
import importlib.util
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from scdm.io import load_published, read_datamodels, read_datamodels_pt
from scdm.regression import LassoPath
from scdm.store import ModelStore, StoreMismatchError
from scdm.vision import (
    GroupedResNet9,
    ImageRecipe,
    ResNet9Classifier,
    ResNetConfig,
    ResNetEnsembleTrainer,
    binary_labels,
    create_image_store,
    download_cifar10,
    load_cifar10,
    store_checkpoints,
    synthetic_cifar10,
    trak_scores,
    write_cifar10,
)

pytestmark = pytest.mark.slow  # end to end: CI runs these, the quick default run does not

ROOT = Path(__file__).resolve().parents[1]
TINY = ResNetConfig(width=4, epochs=2, batch_size=25, lr=0.2, lr_peak_epoch=1)


def run_pipeline(argv):
    spec = importlib.util.spec_from_file_location("cifar_run", ROOT / "workflows/cifar10/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.fixture(scope="module")
def data():
    return synthetic_cifar10(n_train=120, n_test=30, random_state=1)


def tiny_recipe(data, random_state=0):
    return ImageRecipe(data.train_images[:60], binary_labels(data.train_labels[:60]),
                       data.test_images[:12], binary_labels(data.test_labels[:12]), 0.5, TINY,
                       random_state)


# ---------------------------------------------------------------------------------- loader
def test_loader_reads_the_official_layout_exactly(tmp_path):
    """A batch written by hand as the official files are: pixel (c, r, x) of image i is byte
    ``1024·c + 32·r + x`` of row i; keys are bytes (Python 2 pickles)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = {}
    for name, n in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 4)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        rows[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, f, protocol=2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_cases_per_batch": 3,
                     b"num_vis": 3072}, f, protocol=2)

    cifar = load_cifar10(tmp_path)  # the parent folder is found too
    assert cifar.train_images.shape == (15, 3, 32, 32) and cifar.train_images.dtype == np.uint8
    assert cifar.test_images.shape == (4, 3, 32, 32) and cifar.label_names == tuple(names)
    first = rows["data_batch_1"][0][0]
    assert cifar.train_images[0, 0, 0, 0] == first[0]
    assert cifar.train_images[0, 1, 2, 5] == first[1024 + 2 * 32 + 5]
    assert cifar.train_images[0, 2, 31, 31] == first[3071]
    np.testing.assert_array_equal(cifar.train_images[12:].reshape(3, -1), rows["data_batch_5"][0])
    expected = np.concatenate([rows[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(cifar.train_labels, expected)
    np.testing.assert_array_equal(cifar.test_labels, rows["test_batch"][1])
    assert load_cifar10(folder).train_images.shape == (15, 3, 32, 32)


def test_binary_mapping_is_vehicles_against_animals():
    np.testing.assert_array_equal(binary_labels(np.arange(10)), [1, 1, 0, 0, 0, 0, 0, 0, 1, 1])


def test_writer_round_trips_and_is_the_official_format(tmp_path, data):
    folder = write_cifar10(tmp_path, data)
    with open(folder / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (24, 3072)
    back = load_cifar10(tmp_path)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))


def test_missing_or_incomplete_data_is_explained(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="download_cifar10"):
        load_cifar10(tmp_path)
    folder = write_cifar10(tmp_path, data)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)


def test_download_checks_the_archive_before_unpacking(tmp_path, data):
    source = write_cifar10(tmp_path / "src", data)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-py")
    url = archive.as_uri()
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    target = tmp_path / "bad"
    with pytest.raises(ValueError, match="MD5"):
        download_cifar10(target, url=url, md5="0" * 32, progress=False)
    assert list(target.iterdir()) == []  # nothing unpacked, no temporary left behind

    folder = download_cifar10(tmp_path / "good", url=url, md5=md5, progress=False)
    np.testing.assert_array_equal(load_cifar10(folder).train_images, data.train_images)
    # already there: nothing is fetched (the address would fail)
    assert download_cifar10(tmp_path / "good", url="file:///nonexistent", md5=md5) == folder
    with pytest.raises(ConnectionError, match="could not download"):
        download_cifar10(tmp_path / "offline", url="file:///nonexistent.tar.gz", md5=md5)


# ---------------------------------------------------------------------------------- models
def test_grouped_network_is_independent_models():
    """k models in one grouped network compute what k separate networks compute, and one
    SGD step moves each exactly as it would alone (the GPU path trains them together)."""
    k, indices = 3, [5, 6, 7]
    # float64, so that the grouped and the separate convolutions' different summation orders
    # (and thread schedules) stay far below the tolerance; seeded inputs
    grouped = GroupedResNet9(k, 2, width=4)
    grouped.initialise(0, indices)
    grouped.double()
    alone = []
    for index in indices:
        net = GroupedResNet9(1, 2, width=4)
        net.initialise(0, [index])
        alone.append(net.double())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3 * k, 32, 32, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 2, (6, k), generator=generator)
    out = grouped(x)
    torch.testing.assert_close(out, torch.cat([n(x[:, 3 * i : 3 * i + 3]) for i, n in
                                               enumerate(alone)], dim=1), rtol=1e-9, atol=1e-11)
    loss = torch.nn.functional.cross_entropy(out.transpose(1, 2), y, reduction="none")
    loss.mean(0).sum().backward()
    for i, net in enumerate(alone):
        torch.nn.functional.cross_entropy(net(x[:, 3 * i : 3 * i + 3])[:, 0], y[:, i]).backward()
        for g, a in zip(grouped.conv_weights(), net.conv_weights(), strict=True):
            rows = a.shape[0]
            torch.testing.assert_close(g.grad[i * rows : (i + 1) * rows], a.grad, rtol=1e-5,
                                       atol=1e-7)


def test_each_model_of_a_group_is_a_plain_classifier():
    """model_state_dicts splits a grouped network into plain ResNet-9s (what TRAK loads)."""
    grouped = GroupedResNet9(3, 2, width=4).double()
    grouped.initialise(0, [0, 1, 2])
    grouped.train()
    x = torch.randn(5, 9, 32, 32, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    grouped(x)  # one training-mode pass: batch-norm running statistics differ per model
    grouped.eval()
    expected = grouped(x)
    for i, state in enumerate(grouped.model_state_dicts()):
        single = ResNet9Classifier(2, width=4).double()
        single.load_state_dict(state)
        single.eval()
        torch.testing.assert_close(single(x[:, 3 * i : 3 * i + 3]), expected[:, i],
                                   rtol=1e-9, atol=1e-11)


def test_the_store_keeps_trak_checkpoints(data, tmp_path):
    """TRAK's checkpoints are the store's models: missing ones are trained and written into
    the store; models the store has are retrained and match its margins; kept parameters give
    back the stored margins; the scores are resumable and need the same checkpoints."""
    recipe = tiny_recipe(data)
    store = create_image_store(tmp_path / "store", recipe, 6)
    from scdm.workers import fill_store

    fill_store(store, recipe, models=(0, 2), progress=False)
    before = np.array(store.field("margins")[:2])
    states = store_checkpoints(store, recipe, [0, 1, 2, 3], device="cpu", progress=False)
    store = ModelStore.open(store.path)
    assert store.completed.tolist() == [True] * 4 + [False] * 2
    np.testing.assert_array_equal(store.field("margins")[:2], before)
    trainer = recipe.trainer("cpu")
    for m, state in enumerate(states):
        assert store.checkpoint_path(m).is_file()
        model = ResNet9Classifier(2, width=4)
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            logits = model(trainer.normalise(recipe.target_images))
            logits = (logits + model(trainer.normalise(recipe.target_images).flip(-1))) / 2
        y = torch.as_tensor(recipe.target_labels)
        margin = logits.gather(1, y.view(-1, 1))[:, 0] - logits.gather(1, (1 - y).view(-1, 1))[:, 0]
        np.testing.assert_allclose(margin.numpy(), store.field("margins")[m], atol=1e-5)
    stamp = store.checkpoint_path(0).stat().st_mtime_ns
    store_checkpoints(store, recipe, [0], device="cpu", progress=False)
    assert store.checkpoint_path(0).stat().st_mtime_ns == stamp  # kept, not retrained
    # a checkpoint of another mask (the store refilled in place) is not handed out
    other = ~np.asarray(store.masks[1])
    store.save_checkpoint(1, states[1], other)
    assert store.load_checkpoint(1) is None and store.load_checkpoint(0) is not None
    store_checkpoints(store, recipe, [1], device="cpu", progress=False)  # retrained, kept again
    assert store.load_checkpoint(1) is not None

    scores = trak_scores(states, recipe, tmp_path / "trak", proj_dim=16, device="cpu",
                         verbose=False)
    assert scores.shape == (60, 12) and np.isfinite(scores).all() and scores.std() > 0
    np.testing.assert_allclose(trak_scores(states, recipe, tmp_path / "trak", proj_dim=16,
                                           device="cpu", verbose=False), scores)
    with pytest.raises(ValueError, match="another checkpoint"):
        trak_scores(states[::-1], recipe, tmp_path / "trak", proj_dim=16, device="cpu",
                    verbose=False)
    with pytest.raises(ValueError, match=r"lie in \[0, 6\)"):
        store_checkpoints(store, recipe, [7], device="cpu")


def test_trainer_is_deterministic_and_independent_of_chunks(data):
    recipe = tiny_recipe(data)
    trainer = recipe.trainer("cpu")
    masks = recipe.sampler().sample(np.arange(3))
    together = trainer.train(masks, np.arange(3))
    apart = [trainer.train(masks[i : i + 1], [i]) for i in range(3)]
    np.testing.assert_array_equal(together.margins, np.concatenate([r.margins for r in apart]))
    again = recipe.trainer("cpu").train(masks[1:2], [1])
    np.testing.assert_array_equal(again.margins, together.margins[1:2])
    assert together.margins.shape == (3, 12) and together.heldout_accuracy.shape == (3,)
    np.testing.assert_allclose(together.heldout_accuracy, (together.margins > 0).mean(1))
    other = tiny_recipe(data, random_state=1).trainer("cpu").train(masks[1:2], [1])
    assert not np.array_equal(other.margins, together.margins[1:2])


def test_grouped_training_matches_models_trained_alone(data):
    """The GPU path (several models per grouped network), run on CPU: the same models up to
    rounding, after a short schedule that has not yet amplified it."""
    recipe = tiny_recipe(data)
    recipe.config = ResNetConfig(width=4, epochs=1, batch_size=15, lr=0.05, lr_peak_epoch=1)
    masks = recipe.sampler().sample(np.arange(3))
    alone = recipe.trainer("cpu").train(masks, np.arange(3))
    trainer = ResNetEnsembleTrainer(recipe.train_images, recipe.train_labels,
                                    recipe.target_images, recipe.target_labels, recipe.config,
                                    device="cpu", models_at_once=3)
    together = trainer.train(masks, np.arange(3))
    np.testing.assert_allclose(together.margins, alone.margins, rtol=1e-4, atol=1e-6)


def test_bad_images_and_masks_are_refused(data):
    y = binary_labels(data.train_labels)
    with pytest.raises(ValueError, match=r"uint8 \[n, 3, H, W\]"):
        ResNetEnsembleTrainer(data.train_images.astype(np.float32), y, data.test_images,
                              binary_labels(data.test_labels), TINY)
    with pytest.raises(ValueError, match="one class only"):
        ResNetEnsembleTrainer(data.train_images, np.ones_like(y), data.test_images,
                              binary_labels(data.test_labels), TINY)
    with pytest.raises(ValueError, match="one class only"):  # before any store is made
        ImageRecipe(data.train_images, np.zeros_like(y), data.test_images,
                    binary_labels(data.test_labels), 0.5, TINY)
    with pytest.raises(ValueError, match="lr_peak_epoch"):
        ResNetConfig(epochs=2, lr_peak_epoch=3)
    trainer = tiny_recipe(data).trainer("cpu")
    masks = np.zeros((2, 60), dtype=bool)
    masks[0, :10], masks[1, :12] = True, True
    with pytest.raises(ValueError, match="balanced masks"):
        trainer.train(masks, [0, 1])


# ---------------------------------------------------------------------------------- stores
def test_image_store_workers_and_fit(data, tmp_path, capsys):
    """An image store is filled by the same workers (scdm train) as any store, resumes, refuses
    another recipe untouched, and scdm fit fits plain (not held-out) datamodels from it."""
    from scdm import cli
    from scdm.workers import fill_store

    recipe = tiny_recipe(data)
    local = create_image_store(tmp_path / "local", recipe, 30)
    fill_store(local, recipe, models=(0, 30), progress=False)
    workers = create_image_store(tmp_path / "workers", recipe, 30)
    assert cli.main(["train", "--store", str(workers.path), "--models", "0:20", "--quiet"]) == 0
    assert cli.main(["train", "--store", str(workers.path), "--models", "10:30", "--quiet"]) == 0
    for field in ("masks", "margins", "heldout_accuracy"):
        np.testing.assert_array_equal(local.field(field), ModelStore.open(workers.path).field(
            field))

    before = (workers.path / "margins.npy").read_bytes()
    with pytest.raises(StoreMismatchError, match="random_state"):
        create_image_store(workers.path, tiny_recipe(data, random_state=9), 30)
    assert (workers.path / "margins.npy").read_bytes() == before

    capsys.readouterr()
    assert cli.main(["fit", "--store", str(workers.path), "--quiet"]) == 0
    assert "validation correlation" in capsys.readouterr().out
    saved = read_datamodels_pt(workers.path / "datamodels.pt")
    assert saved["weight"].shape == (60, 12) and saved["bias"].shape == (12,)


def test_smoke_pipeline_end_to_end(tmp_path):
    out = tmp_path / "smoke"
    summary = run_pipeline(["--smoke", "--out", str(out), "--quiet"])
    for name in ("summary.json", "influencers.png", "embedding_pca.png", "datamodels.pt",
                 "lds.npy", "images.npz", "data/cifar-10-batches-py/data_batch_5"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["training"]["trained_now"] == 200 and summary["device"] == "cpu"
    assert summary["training"]["models_per_second"] > 0
    assert 0.55 < summary["accuracy"]["mean"] <= 1  # chance is 0.5
    assert summary["fit"]["validation_correlation"] > 0.1
    assert np.isfinite(summary["lds"]["mean"]) and np.load(out / "lds.npy").shape == (50,)

    # the store is an ordinary scdm store: scdm.io and scdm.regression read it as it is
    store = ModelStore.open(out / "store")
    assert store.n_completed == 200 and store.masks.shape == (200, 100)
    masks, margins = load_published(out / "store/masks.npy", out / "store/margins.npy")
    assert masks.shape == (200, 100) and margins.shape == (200, 50)
    refit = LassoPath(random_state=0, verbose=False).fit(masks, margins)
    saved = read_datamodels(out / "datamodels.pt")
    assert saved.units == "standardized" and not saved.inferred
    np.testing.assert_allclose(saved.weight, refit.coef_, atol=1e-6)

    # rerunning resumes: nothing is trained again, the same datamodels come out
    again = run_pipeline(["--smoke", "--out", str(out), "--quiet"])
    assert again["training"]["trained_now"] == 0 and again["lds"]["trained_now"] == 0
    np.testing.assert_allclose(read_datamodels(out / "datamodels.pt").weight, saved.weight)


def test_smoke_pipeline_with_trak_and_planted_flips(tmp_path):
    """CIFAR-2 (cat vs dog) as in TRAK's quickstart: datamodels and TRAK from one store, LDS of
    both on the same evaluation models, planted label flips ranked by self-influence."""
    out = tmp_path / "cifar2"
    argv = ["--smoke", "--method", "both", "--n-models", "100", "--flip-fraction", "0.1",
            "--out", str(out), "--quiet"]
    summary = run_pipeline(argv)
    assert summary["task"] == "cifar2" and summary["trak"]["checkpoints"] == 8
    for name in ("trak_scores.npy", "trak_influencers.png", "influencers.png", "lds_trak.npy",
                 "self_influence.npy", "store/checkpoints/model_7.pt"):
        assert (out / name).is_file(), name
    scores = np.load(out / "trak_scores.npy")
    assert scores.shape == (100, 50) and np.isfinite(scores).all()
    assert np.isfinite(summary["trak"]["lds"]["mean"]) and np.isfinite(summary["lds"]["mean"])
    assert -1 <= summary["agreement"]["mean_correlation"] <= 1
    issues = summary["trak"]["label_issues"]
    flipped = np.load(out / "images.npz")["flipped"]
    assert issues["flipped"] == flipped.sum() == 10
    assert issues["auroc_self_influence"] > 0.75  # chance is 0.5
    # the task holds cats and dogs only; the recorded labels carry the planted flips
    train_index = np.load(out / "images.npz")["train_index"]
    classes = load_cifar10(out / "data_cifar2").train_labels[train_index]
    assert set(np.unique(classes)) == {3, 5}
    from scdm.workers import read_recipe

    recorded = read_recipe(out / "store").train_labels  # what the models were trained on
    np.testing.assert_array_equal(recorded, np.where(flipped, classes != 5, classes == 5))
    again = run_pipeline(argv)
    assert again["training"]["trained_now"] == 0
    np.testing.assert_array_equal(np.load(out / "trak_scores.npy"), scores)


def test_pipeline_refuses_bad_settings_before_work(tmp_path):
    with pytest.raises(SystemExit):
        run_pipeline(["--out", str(tmp_path / "x")])  # no --data
    with pytest.raises(ValueError, match="alpha"):
        run_pipeline(["--smoke", "--alpha", "1.5", "--out", str(tmp_path / "y")])
    with pytest.raises(SystemExit, match="n-models"):
        run_pipeline(["--smoke", "--n-models", "5", "--out", str(tmp_path / "z")])
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    with pytest.raises(SystemExit, match="training and"):
        run_pipeline(["--smoke", "--n-train", "100000", "--out", str(tmp_path / "w")])
    with pytest.raises(SystemExit, match="singular"):
        run_pipeline(["--smoke", "--method", "trak", "--proj-dim", "500",
                      "--out", str(tmp_path / "v")])
    with pytest.raises(SystemExit, match="flip-fraction"):
        run_pipeline(["--smoke", "--method", "trak", "--flip-fraction", "0.6",
                      "--out", str(tmp_path / "u")])
    with pytest.raises(SystemExit, match="self-influence"):
        run_pipeline(["--smoke", "--flip-fraction", "0.1", "--out", str(tmp_path / "t")])
    assert not any((tmp_path / name).exists() for name in "vut")
