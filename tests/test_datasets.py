"""The owner's data formats load the same images; missing or bad data gives a clear error."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.datasets import split_auxiliary
from shared.images.errors import DataNotFound
from shared.images.fashion_mnist import FASHION_MNIST_FILES, fashion_mnist_root, load_fashion_mnist
from shared.images.folder import load_folder
from shared.images.npz import load_npz, save_npz
from shared.images.resize import TargetFormat
from tests.conftest import random_image_set


def _write_idx(folder: Path, n: int, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        blobs = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                (folder / name).write_bytes(blob)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_a_user_folder(tmp_path: Path, monkeypatch, gz: bool) -> None:
    monkeypatch.setenv("DPDISTILL_DATA_CACHE", str(tmp_path / "cache"))
    images, labels = _write_idx(tmp_path / "idx", 30, gz)
    data = load_fashion_mnist(train=True, root=tmp_path / "idx")
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert torch.equal(data.labels, torch.from_numpy(labels).long())
    assert data.class_names[0] == "T-shirt/top"


def test_missing_data_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DPDISTILL_DATA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataNotFound, match="does not exist"):
        fashion_mnist_root(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFound, match="IDX"):
        fashion_mnist_root(tmp_path / "empty")


def test_image_folder_and_npz_hold_the_same_images(tmp_path: Path) -> None:
    data = random_image_set(12, seed=3, num_classes=3, size=28)
    for i, (img, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = tmp_path / "folder" / data.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{i:03d}.png")
    from_folder = load_folder(tmp_path / "folder", TargetFormat(28, 1), progress=False).data
    save_npz(tmp_path / "d.npz", data)
    from_npz = load_npz(tmp_path / "d.npz")
    assert from_folder.class_names == from_npz.class_names == data.class_names
    assert sorted(from_folder.images.flatten().tolist()) == sorted(data.images.flatten().tolist())
    assert torch.equal(from_npz.images, data.images)


def test_bad_npz_is_refused_clearly(tmp_path: Path) -> None:
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 28, 28), np.float32), labels=np.zeros(2))
    with pytest.raises(ValueError, match="uint8"):
        load_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="labels"):
        load_npz(tmp_path / "nolabels.npz")


def test_auxiliary_split_is_fixed_balanced_and_disjoint() -> None:
    data = random_image_set(200, seed=4, num_classes=10)
    aux, rest = split_auxiliary(data, 5)
    assert aux.labels.bincount().tolist() == [5] * 10
    assert len(aux) + len(rest) == 200
    again, _ = split_auxiliary(data, 5)
    assert torch.equal(aux.images, again.images)
    assert not set(map(bytes, aux.images.numpy())) & set(map(bytes, rest.images.numpy()))
    assert FASHION_MNIST_FILES[0].startswith("train")
