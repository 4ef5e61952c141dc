"""torchvision's named datasets from a local root (MNIST-format IDX files written here), and the
clear message when the files are missing and downloading is off. Nothing is downloaded."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from shared.images.errors import DataNotFound
from shared.images.named import canonical_name, load_named
from shared.images.source import ImageSource, load_source


def _write_idx(raw: Path, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return images, labels


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_idx_files_under_a_local_root(tmp_path: Path, name: str) -> None:
    images, labels = _write_idx(tmp_path / name / "raw")
    data = load_named(name, tmp_path, split="test")
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert data.labels.tolist() == labels.tolist()
    assert data.class_names[0] == ("0 - zero" if name == "MNIST" else "T-shirt/top")
    assert load_named(name.lower(), tmp_path / name).images.shape == (20, 1, 28, 28)  # the dataset folder itself


def test_load_source_converts_a_named_set(tmp_path: Path) -> None:
    _write_idx(tmp_path / "MNIST" / "raw")
    source = ImageSource("torchvision", tmp_path, name="MNIST", image_size=32, channels=3)
    result = load_source(source, progress=False)
    assert result.data.images.shape == (20, 3, 32, 32) and result.report.source == "torchvision MNIST"


def test_missing_files_offline_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound, match=r"not found under .*--download.*MNIST/raw"):
        load_named("MNIST", tmp_path, download=False)
    with pytest.raises(DataNotFound, match=r"does not exist.*--download"):
        load_named("CIFAR10", tmp_path / "nowhere", download=False)


def test_names_and_splits_are_checked() -> None:
    assert canonical_name("fashion-mnist") == "FashionMNIST" and canonical_name("cifar100") == "CIFAR100"
    with pytest.raises(ValueError, match="unknown dataset"):
        canonical_name("ImageNet")
    with pytest.raises(ValueError, match="splits"):
        load_named("MNIST", "/nonexistent", split="val")
    with pytest.raises(ValueError, match="splits"):
        ImageSource("torchvision", name="CIFAR10", split="extra")
