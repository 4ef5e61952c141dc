"""One source description loads every kind; sets whose class names differ or are permuted are refused."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.images import ClassMismatchError, ImageSource, check_same_classes, load_source, load_sources_matching
from shared.images.image_set import ImageSet
from shared.images.npz import save_npz
from tests.conftest import random_image_set


def _folder(root: Path, classes: tuple[str, ...], size: tuple[int, int] = (40, 30)) -> Path:
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", size, (40 * i + j, 10, 200)).save(root / name / f"{j}.png")
    return root


def test_every_file_kind_through_load_source(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f", ("b", "a"))
    (tmp_path / "m.csv").write_text("path,label,patient_id\nf/a/0.png,a,7\nf/b/1.png,b,8\n")
    folder = load_source(
        ImageSource("image-folder", root, image_size=24, channels=3), progress=False, cache_dir=tmp_path / "c"
    )
    assert folder.data.images.shape == (4, 3, 24, 24) and folder.data.class_names == ("a", "b")
    assert "image-folder" in folder.report.summary() and "a: 2, b: 2" in folder.report.summary()
    csv = load_source(
        ImageSource("csv", tmp_path / "m.csv", image_size=24, channels=1), progress=False, cache_dir=tmp_path / "c"
    )
    assert csv.data.images.shape == (2, 1, 24, 24) and csv.columns["patient_id"] == ("7", "8")


def test_npz_kind_keeps_or_converts(tmp_path: Path) -> None:
    data = random_image_set(8, seed=0, num_classes=2, size=16)
    save_npz(tmp_path / "d.npz", data)
    same = load_source(ImageSource("npz", tmp_path / "d.npz"), progress=False)
    assert torch.equal(same.data.images, data.images) and same.data.class_names == data.class_names
    bigger = load_source(ImageSource("npz", tmp_path / "d.npz", image_size=32, channels=3), progress=False)
    assert bigger.data.images.shape == (8, 3, 32, 32)
    with pytest.raises(ClassMismatchError, match="different order"):
        load_source(ImageSource("npz", tmp_path / "d.npz", classes=("class1", "class0")), progress=False)
    np.savez(tmp_path / "plain.npz", images=data.images.numpy(), labels=data.labels.numpy())
    named = load_source(ImageSource("npz", tmp_path / "plain.npz", classes=("cat", "dog")), progress=False)
    assert named.data.class_names == ("cat", "dog")


def test_fashion_mnist_kind_from_a_user_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DPDISTILL_DATA_CACHE", str(tmp_path / "cache"))
    idx = tmp_path / "idx"
    idx.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        (idx / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 10, 28, 28) + images.tobytes())
        (idx / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 10) + bytes(range(10)))
    result = load_source(ImageSource("fashion-mnist", idx, split="test", image_size=64, channels=3), progress=False)
    assert result.data.images.shape == (10, 3, 64, 64) and result.data.class_names[9] == "Ankle boot"


def test_class_mismatch_is_refused_never_permuted(tmp_path: Path) -> None:
    a = ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ("cat", "dog"))
    check_same_classes(a, ("cat", "dog"))
    with pytest.raises(ClassMismatchError, match=r"different order \(label 0 is 'cat' in the private set but 'dog'"):
        check_same_classes(a, ("dog", "cat"), names=("private set", "public set"))
    with pytest.raises(ClassMismatchError, match=r"only in the second set: \['bird'\]"):
        check_same_classes(a, ("cat", "dog", "bird"))
    with pytest.raises(ClassMismatchError, match=r"only in the first set: \['dog'\]"):
        check_same_classes(a, ("cat", "Dog"))
    private = _folder(tmp_path / "private", ("normal", "tumour"))
    public = _folder(tmp_path / "public", ("normal", "tumour", "other"))
    sources = [ImageSource("image-folder", p, image_size=8, channels=1) for p in (private, public)]
    with pytest.raises(ClassMismatchError, match="'other'"):
        load_sources_matching(sources, progress=False, cache_dir=tmp_path / "c")
    fixed = [ImageSource("image-folder", private, image_size=8, channels=1, classes=("tumour", "normal"))] * 2
    assert len(load_sources_matching(fixed, progress=False, cache_dir=tmp_path / "c")) == 2


def test_source_descriptions_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown image source kind"):
        ImageSource("dicom-folder", "x")
    with pytest.raises(ValueError, match="needs image_size and channels"):
        ImageSource("image-folder", "x")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        ImageSource("npz", "x", channels=4)
    with pytest.raises(ValueError, match="resize policy"):
        ImageSource("npz", "x", resize="stretch")
    with pytest.raises(ValueError, match="needs a dataset name"):
        ImageSource("torchvision")
    with pytest.raises(ValueError, match="MedMNIST split"):
        ImageSource("medmnist", "x", split="validation")
    assert ImageSource("csv", "m.csv", image_size=8, channels=1, classes=["a"]).classes == ("a",)
