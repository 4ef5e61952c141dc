"""Class folders: any depth, hidden and non-image entries ignored and counted, empty class refused,
natural class order or an explicit list, at any size and channel count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.images.errors import DataNotFound, ImageDecodeError, ImageSourceError
from shared.images.folder import load_folder, scan_image_folder
from shared.images.policy import ReadPolicy
from shared.images.resize import TargetFormat
from shared.images.source import ImageSource, load_source


def _png(path: Path, value: int, size: tuple[int, int] = (10, 10), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value // 2, 0)).save(path)


def test_hidden_and_non_image_entries_are_ignored_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _png(root / "cat" / "a.png", 10)
    _png(root / "cat" / "patient1" / "study" / "b.JPG", 20)  # any depth, any extension case
    _png(root / "dog" / "c.tif", 30)
    _png(root / "dog" / ".hidden.png", 1)
    _png(root / "dog" / ".ipynb_checkpoints" / "d.png", 1)
    _png(root / "__MACOSX" / "cat" / "._a.png", 1)
    _png(root / ".git" / "x.png", 1)
    (root / "dog" / ".DS_Store").write_bytes(b"\0")
    (root / "dog" / "Thumbs.db").write_bytes(b"\0")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("top-level file")
    listing = scan_image_folder(root)
    assert listing.class_names == ("cat", "dog")
    assert [f.name for f in listing.files] == ["a.png", "b.JPG", "c.tif"]
    assert listing.labels == (0, 0, 1)
    # .hidden.png, .ipynb_checkpoints/, __MACOSX/, .git/, .DS_Store, Thumbs.db, notes.txt, README.md
    assert len(listing.ignored) == 8
    result = load_folder(root, TargetFormat(8, 1), progress=False)
    assert result.report.ignored == 8 and "dog/notes.txt" in result.report.ignored_examples
    assert result.data.images.shape == (3, 1, 8, 8)
    assert result.data.images[:, 0, 4, 4].tolist() == [10, 20, 30]
    assert result.files[1].endswith("b.JPG")
    assert "8 hidden or non-image entries ignored" in result.report.summary()


def test_empty_class_folder_is_refused_naming_it(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "x.png", 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("nothing")
    with pytest.raises(ImageSourceError, match=r"class folder .*b holds no images \(1 other entries ignored\)"):
        scan_image_folder(tmp_path)


def test_missing_root_and_root_without_classes(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound, match="does not exist"):
        scan_image_folder(tmp_path / "nowhere")
    _png(tmp_path / "loose.png", 1)
    with pytest.raises(ImageSourceError, match="no class folders"):
        scan_image_folder(tmp_path)


def test_classes_sort_naturally(tmp_path: Path) -> None:
    for name in ["10", "2", "1", "class10", "class2", "Class3"]:
        _png(tmp_path / name / "x.png", 1)
    for name in ["img10.png", "img2.png", "img1.png"]:
        _png(tmp_path / "2" / name, 1)
    listing = scan_image_folder(tmp_path)
    assert listing.class_names == ("1", "2", "10", "class2", "Class3", "class10")
    assert [f.name for f in listing.files if f.parent.name == "2"] == ["img1.png", "img2.png", "img10.png", "x.png"]


def test_explicit_class_list_sets_the_order_and_must_match(tmp_path: Path) -> None:
    for name in ["normal", "pneumonia"]:
        _png(tmp_path / name / "x.png", 1)
    assert scan_image_folder(tmp_path, ["pneumonia", "normal"]).class_names == ("pneumonia", "normal")
    with pytest.raises(ImageSourceError, match="'pneumonia' not in the given classes"):
        scan_image_folder(tmp_path, ["normal"])
    with pytest.raises(ImageSourceError, match="'covid' have no class folder"):
        scan_image_folder(tmp_path, ["normal", "pneumonia", "covid"])
    with pytest.raises(ImageSourceError, match="more than once"):
        scan_image_folder(tmp_path, ["normal", "normal", "pneumonia"])


def test_corrupt_file_names_it_or_is_skipped_when_asked(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "good.png", 5)
    _png(tmp_path / "a" / "good2.png", 6)
    (tmp_path / "a" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ImageDecodeError, match=r"bad\.png"):
        load_folder(tmp_path, TargetFormat(4, 1), progress=False)
    result = load_folder(tmp_path, TargetFormat(4, 1), progress=False, reading=ReadPolicy("skip", max_skipped=0.5))
    assert len(result.data) == 2 and result.report.skipped[0][0].endswith("bad.png")
    assert "1 unreadable files skipped" in result.report.summary()


def test_a_folder_loads_at_any_size_and_channel_count(tmp_path: Path) -> None:
    _png(tmp_path / "x" / "a.png", 200, size=(100, 50), mode="RGB")
    _png(tmp_path / "y" / "b.png", 100, size=(50, 100), mode="RGB")
    default = load_folder(tmp_path, TargetFormat(28, 1), progress=False).data
    assert default.images.shape == (2, 1, 28, 28) and default.class_names == ("x", "y")
    rgb = load_folder(tmp_path, TargetFormat(64, 3), progress=False).data
    assert rgb.images.shape == (2, 3, 64, 64)
    assert rgb.images[0, :, 32, 32].tolist() == [200, 100, 0]
    padded = load_folder(tmp_path, TargetFormat(64, 3, "pad"), progress=False).data
    assert padded.images[0, :, 0, 32].tolist() == [0, 0, 0]  # letterbox band above the wide image
    source = ImageSource("image-folder", tmp_path, image_size=32, channels=3)
    routed = load_source(source, progress=False, cache=False).data
    assert routed.images.shape == (2, 3, 32, 32)
    with pytest.raises(DataNotFound, match="does not exist"):
        load_folder(tmp_path / "missing", TargetFormat(28, 1), progress=False)


def test_rgb_folder_to_gray_uses_luma(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 3), dtype=np.uint8)
    arr[...] = (255, 0, 0)
    (tmp_path / "r").mkdir()
    Image.fromarray(arr).save(tmp_path / "r" / "red.png")
    gray = load_folder(tmp_path, TargetFormat(4, 1), progress=False).data
    assert int(gray.images.max()) == 76 and int(gray.images.min()) == 76


@pytest.mark.parametrize("link", ["symlink", "hardlink", "linked folder in another class"])
def test_one_file_reached_twice_is_refused_naming_both(tmp_path: Path, link: str) -> None:
    """A file listed twice would be two records (two patients, with patients by file), each moving a release
    by C: symbolic and hard links, and a folder linked into another class, are refused with both paths."""
    root = tmp_path / "export"
    _png(root / "a" / "p1" / "x.png", 10)
    _png(root / "b" / "y.png", 200)
    if link == "symlink":
        (root / "b" / "x-again.png").symlink_to(root / "a" / "p1" / "x.png")
    elif link == "hardlink":
        (root / "a" / "x-hard.png").hardlink_to(root / "a" / "p1" / "x.png")
    else:
        (root / "b" / "p1-link").symlink_to(root / "a" / "p1", target_is_directory=True)
    with pytest.raises(ImageSourceError, match=r"\.png is the same file as .*x\.png \(a link"):
        scan_image_folder(root)


def test_stretching_values_near_the_float64_limits_keeps_their_order() -> None:
    """hi - lo overflowed to infinity, and every pixel became 0."""
    from shared.images.pixels import stretch_to_uint8

    assert stretch_to_uint8(np.array([-1e308, 0.0, 1e308])).tolist() == [0, 128, 255]
