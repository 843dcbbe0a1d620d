"""CIFAR-10 in its official python format (``cifar-10-batches-py``), without torchvision.

The archive holds five training batches (``data_batch_1`` … ``data_batch_5``), one test batch
(``test_batch``) and ``batches.meta``. Each batch is a pickled dict (written by Python 2, so its
keys are ``bytes``) with ``b"data"``: ``uint8 [10000, 3072]`` (1024 red, then green, then blue
values of a 32 × 32 image, row-major), ``b"labels"``: 10,000 ints in ``0..9``,
``b"filenames"`` and ``b"batch_label"``. ``batches.meta`` holds ``b"label_names"``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
VEHICLES = ("airplane", "automobile", "ship", "truck")
BINARY_CLASSES = ("animal", "vehicle")  # codes 0 and 1 of binary_labels
IMAGE_SHAPE = (3, 32, 32)


@dataclass
class Cifar10:
    """CIFAR-10 as arrays: images ``uint8 [n, 3, 32, 32]`` (channels first), labels ``0..9``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: tuple[str, ...] = CLASSES


def find_cifar10(data_dir: str | os.PathLike) -> Path:
    """The ``cifar-10-batches-py`` folder: ``data_dir`` itself or the folder inside it."""
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir / CIFAR10_FOLDER):
        if (folder / META_FILE).is_file():
            return folder
    raise FileNotFoundError(
        f"no CIFAR-10 python batches in {data_dir} (looked for {META_FILE} there and in "
        f"{CIFAR10_FOLDER}/). Download them with download_cifar10(DIR) (or run.py --download), "
        f"or unpack {CIFAR10_URL} there.")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="bytes")
    # the official files have bytes keys (Python 2 pickles); accept str keys too
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in data.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch {path} is missing; the folder is incomplete. "
                                "Download it again with download_cifar10.")
    batch = _unpickle(path)
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != int(np.prod(IMAGE_SHAPE)) or (
            labels.shape != (data.shape[0],)):
        raise ValueError(f"{path} is not a CIFAR-10 batch: data {data.shape}, labels "
                         f"{labels.shape} (expected [n, 3072] and [n]).")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"{path} has labels outside 0..9.")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def load_cifar10(data_dir: str | os.PathLike) -> Cifar10:
    """Read the official CIFAR-10 python batches from ``data_dir``.

    Returns images as ``uint8 [n, 3, 32, 32]`` (the file's own channel-plane order, so no copy
    is reordered) and labels as ``int64`` class codes (see :data:`CLASSES`).
    """
    folder = find_cifar10(data_dir)
    train = [_read_batch(folder / name) for name in TRAIN_BATCHES]
    test_images, test_labels = _read_batch(folder / TEST_BATCH)
    names = _unpickle(folder / META_FILE).get("label_names", [n.encode() for n in CLASSES])
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return Cifar10(train_images=np.concatenate([images for images, _ in train]),
                   train_labels=np.concatenate([labels for _, labels in train]),
                   test_images=test_images, test_labels=test_labels, label_names=names)


def binary_labels(labels: np.ndarray, label_names: tuple[str, ...] = CLASSES) -> np.ndarray:
    """CIFAR-10 classes → the binary task of the datamodels tutorial: 1 = vehicle, 0 = animal."""
    vehicle_codes = [label_names.index(name) for name in VEHICLES]
    return np.isin(np.asarray(labels), vehicle_codes).astype(np.int64)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_cifar10(data_dir: str | os.PathLike, *, url: str = CIFAR10_URL,
                     md5: str = CIFAR10_MD5, progress: bool = True) -> Path:
    """Fetch and unpack the official archive into ``data_dir`` unless it is already there.

    The archive is checked against ``md5`` before anything is unpacked; a mismatch raises and
    leaves ``data_dir`` as it was. Returns the ``cifar-10-batches-py`` folder.
    """
    from tqdm.auto import tqdm

    data_dir = Path(data_dir)
    try:
        return find_cifar10(data_dir)
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            with urllib.request.urlopen(url) as response, open(archive, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10",
                          disable=not progress) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
        except OSError as error:
            raise ConnectionError(
                f"could not download {url} ({error}). On a machine without internet, copy "
                f"the archive's {CIFAR10_FOLDER}/ folder into {data_dir} instead.") from error
        found = _md5(archive)
        if found != md5:
            raise ValueError(f"the download from {url} has MD5 {found}, expected {md5}: it is "
                             f"corrupt or not CIFAR-10. Nothing was unpacked into {data_dir}.")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(archive, "r:gz") as tar:
            _extract_safely(tar, unpacked)
        source = find_cifar10(unpacked)
        target = data_dir / CIFAR10_FOLDER
        shutil.move(str(source), str(target))
    return target


def _extract_safely(tar: tarfile.TarFile, destination: Path) -> None:
    """Unpack regular files and folders only, never outside ``destination``."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        tar.extractall(destination, filter="data")
        return
    root = destination.resolve()
    for member in tar.getmembers():
        target = (destination / member.name).resolve()
        if not (member.isfile() or member.isdir()) or root not in (target, *target.parents):
            raise ValueError(f"refusing to unpack {member.name!r} from the archive.")
    tar.extractall(destination)


def write_cifar10(data_dir: str | os.PathLike, data: Cifar10) -> Path:
    """Write images and labels as ``cifar-10-batches-py`` (five training batches, one test
    batch, ``batches.meta``), byte for byte in the official format. Returns the folder."""
    folder = Path(data_dir) / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(data.train_labels)), len(TRAIN_BATCHES))
    batches = [(name, data.train_images[idx], data.train_labels[idx],
                f"training batch {i + 1} of 5") for i, (name, idx) in
               enumerate(zip(TRAIN_BATCHES, parts, strict=True))]
    batches.append((TEST_BATCH, data.test_images, data.test_labels, "testing batch 1 of 1"))
    for name, images, labels, batch_label in batches:
        batch = {b"batch_label": batch_label.encode(),
                 b"labels": [int(v) for v in labels],
                 b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(labels), -1),
                 b"filenames": [f"{name}_{i:05d}.png".encode() for i in range(len(labels))]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {b"num_cases_per_batch": len(parts[0]),
            b"label_names": [n.encode() for n in data.label_names], b"num_vis": 3072}
    with open(folder / META_FILE, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


def synthetic_cifar10(n_train: int = 500, n_test: int = 100, *, noise: float = 40.0,
                      random_state: int = 0) -> Cifar10:
    """Small CIFAR-10-shaped data with learnable classes, for tests and smoke runs.

    Each class has a mean colour and an oriented stripe pattern; every image adds its own
    brightness and pixel noise, and is mirrored at random (so flip augmentation is harmless).
    Labels cycle through the ten classes, so every class is present.
    """
    rng = np.random.default_rng(random_state)
    colours = rng.uniform(60, 196, size=(len(CLASSES), 3))
    grid = np.arange(32)
    angles = np.linspace(0, np.pi, len(CLASSES), endpoint=False)
    patterns = np.stack([np.sin((np.cos(a) * grid[None, :] + np.sin(a) * grid[:, None]) / 2.5)
                         for a in angles])

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % len(CLASSES)
        rng.shuffle(labels)
        images = colours[labels][:, :, None, None] + 40 * patterns[labels][:, None]
        images = images + rng.normal(0, 25, size=(n, 1, 1, 1))
        images = images + rng.normal(0, noise, size=(n, *IMAGE_SHAPE))
        flip = rng.random(n) < 0.5
        images[flip] = images[flip][..., ::-1]
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    train_images, train_labels = make(n_train)
    test_images, test_labels = make(n_test)
    return Cifar10(train_images, train_labels, test_images, test_labels)
