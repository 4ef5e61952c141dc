"""The decoded-image cache returns identical arrays, is invalidated by a changed file or setting,
and never trusts a corrupted entry."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.images.cache import ImageCache, default_cache_dir
from shared.images.source import ImageSource, load_source


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _load(source: ImageSource, cache: Path):
    return load_source(source, progress=False, cache_dir=cache)


def test_second_load_is_a_hit_with_identical_arrays(tmp_path: Path) -> None:
    root, cache = _folder(tmp_path / "data"), tmp_path / "cache"
    source = ImageSource("image-folder", root, image_size=16, channels=3)
    first, second = _load(source, cache), _load(source, cache)
    assert (first.report.cache, second.report.cache) == ("miss", "hit")
    assert torch.equal(first.data.images, second.data.images)
    assert torch.equal(first.data.labels, second.data.labels) and first.files == second.files
    uncached = load_source(source, progress=False, cache=False)
    assert uncached.report.cache == "off" and torch.equal(uncached.data.images, first.data.images)
    entry = Path(second.report.cache_file)
    assert entry.parent == cache and stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_changed_file_or_settings_give_a_new_entry(tmp_path: Path) -> None:
    root, cache = _folder(tmp_path / "data"), tmp_path / "cache"
    source = ImageSource("image-folder", root, image_size=16, channels=3)
    first = _load(source, cache)
    Image.new("RGB", (30, 20), (1, 2, 3)).save(root / "a" / "0.png")
    st = os.stat(root / "a" / "0.png")
    os.utime(root / "a" / "0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed = _load(source, cache)
    assert changed.report.cache == "miss" and changed.report.cache_file != first.report.cache_file
    assert changed.data.images[0, :, 8, 8].tolist() == [1, 2, 3]
    for other in (
        ImageSource("image-folder", root, image_size=8, channels=3),
        ImageSource("image-folder", root, image_size=16, channels=1),
        ImageSource("image-folder", root, image_size=16, channels=3, resize="pad"),
    ):
        assert _load(other, cache).report.cache == "miss"
    assert len(list(cache.glob("*.npz"))) == 5


def test_content_check_ignores_mtime_but_sees_bytes(tmp_path: Path) -> None:
    root, cache = _folder(tmp_path / "data"), tmp_path / "cache"
    source = ImageSource("image-folder", root, image_size=16, channels=3, cache_check="content")
    assert _load(source, cache).report.cache == "miss"
    os.utime(root / "b" / "1.png", ns=(0, 0))
    assert _load(source, cache).report.cache == "hit"
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "b" / "1.png")
    assert _load(source, cache).report.cache == "miss"


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "forged"])
def test_corrupted_entry_is_rebuilt_not_trusted(tmp_path: Path, damage: str) -> None:
    root, cache = _folder(tmp_path / "data"), tmp_path / "cache"
    source = ImageSource("image-folder", root, image_size=16, channels=1)
    good = _load(source, cache)
    entry = Path(good.report.cache_file)
    blob = bytearray(entry.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":  # one pixel byte inside the stored images array (npz is uncompressed)
        blob[blob.find(b"NUMPY") + 200] ^= 0xFF
    elif damage == "garbage":
        blob = bytearray(b"not a zip file")
    if damage == "forged":  # a well-formed entry whose pixels no longer match its digest
        with np.load(entry) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["images"][0, 0, 0, 0] ^= 0xFF
        with open(entry, "wb") as fh:
            np.savez(fh, **arrays)
    else:
        entry.write_bytes(bytes(blob))
    rebuilt = _load(source, cache)
    assert rebuilt.report.cache == "rebuilt"
    assert torch.equal(rebuilt.data.images, good.data.images)
    assert _load(source, cache).report.cache == "hit"


def test_default_cache_dir_follows_the_data_cache_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DPDISTILL_DATA_CACHE", str(tmp_path / "dc"))
    assert default_cache_dir() == tmp_path / "dc" / "images"
    monkeypatch.delenv("DPDISTILL_DATA_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "dpdistill" / "images"
    assert ImageCache().folder == default_cache_dir()


def test_a_file_replaced_with_its_old_timestamp_and_size_is_decoded_again(tmp_path: Path) -> None:
    """``cp -p`` / ``rsync -a`` / an unzip keep mtime: an export corrected in place (same size, same mtime)
    must not be served from the old entry (ctime and the inode change; they cannot be set back)."""
    root, cache = _folder(tmp_path / "data"), tmp_path / "cache"
    target = root / "a" / "0.png"
    Image.new("RGB", (30, 20), (1, 1, 1)).save(target, compress_level=0)  # stored: the size is the pixels'
    source = ImageSource("image-folder", root, image_size=16, channels=3)
    first = _load(source, cache)
    old = os.stat(target)
    replacement = tmp_path / "new.png"
    Image.new("RGB", (30, 20), (7, 7, 7)).save(replacement, compress_level=0)
    assert replacement.stat().st_size == old.st_size  # a same-size correction
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, target)
    assert (os.stat(target).st_size, os.stat(target).st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    again = _load(source, cache)
    assert again.report.cache == "miss" and again.report.cache_file != first.report.cache_file
    assert again.data.images[0, :, 8, 8].tolist() == [7, 7, 7]
