"""MedMNIST npz files: single-label gray and RGB sets at 28 and 64 px, splits, names; multi-label refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.images.errors import ImageSourceError
from shared.images.medmnist import load_medmnist
from shared.images.source import ImageSource, load_source


def _medmnist(path: Path, size: int, rgb: bool, label_columns: int = 1, classes: int = 4) -> dict:
    rng = np.random.default_rng(size)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        shape = (n, size, size, 3) if rgb else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = (np.arange(n) % classes)[:, None] if label_columns == 1 else rng.integers(0, 2, (n, label_columns))
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    arrays["test_labels"][:] = np.minimum(arrays["test_labels"], classes - 2)  # a class absent from one split
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("rgb", [False, True])
def test_single_label_sets_load_at_native_size(tmp_path: Path, size: int, rgb: bool) -> None:
    arrays = _medmnist(tmp_path / "m.npz", size, rgb)
    for split in ("train", "val", "test"):
        data = load_medmnist(tmp_path / "m.npz", split)
        expected = arrays[f"{split}_images"]
        expected = expected.transpose(0, 3, 1, 2) if rgb else expected[:, None]
        assert np.array_equal(data.images.numpy(), expected)
        assert data.labels.tolist() == arrays[f"{split}_labels"][:, 0].tolist()
        assert data.class_names == ("0", "1", "2", "3")  # every split: classes counted over the whole file


def test_class_names_and_conversion_through_load_source(tmp_path: Path) -> None:
    _medmnist(tmp_path / "blood.npz", 28, rgb=True)
    names = ("basophil", "eosinophil", "erythroblast", "ig")
    result = load_source(
        ImageSource("medmnist", tmp_path / "blood.npz", image_size=64, channels=1, classes=names, split="val"),
        progress=False,
    )
    assert result.data.class_names == names and result.data.images.shape == (4, 1, 64, 64)
    with pytest.raises(ImageSourceError, match="only 2 class names"):
        load_medmnist(tmp_path / "blood.npz", classes=("a", "b"))


def test_multi_label_set_is_refused(tmp_path: Path) -> None:
    _medmnist(tmp_path / "chest.npz", 28, rgb=False, label_columns=14)
    with pytest.raises(ImageSourceError, match="14 label columns.*multi-label"):
        load_medmnist(tmp_path / "chest.npz")


def test_bad_files_and_splits(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ImageSourceError, match=r"lacks \['train_images', 'train_labels'\]"):
        load_medmnist(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="split"):
        load_medmnist(tmp_path / "x.npz", "validation")
