"""One description of where images come from (``ImageSource``) and one way to load it (``load_source``).

Kinds: ``image-folder`` (class folders), ``csv`` (manifest), ``npz`` (this project's npz),
``medmnist`` (MedMNIST npz), ``torchvision`` (a named torchvision dataset) and ``fashion-mnist``
(the project's Fashion-MNIST lookup: user folder, Debian package, cache, download). File kinds
(``image-folder``, ``csv``) need ``image_size`` and ``channels``; array kinds keep their native size
or channels where those are None. ``split`` chooses train/val/test for array kinds and is ignored by
file kinds (a folder or CSV is one split). ``classes`` fixes the class order: for folders and CSVs
it must match the classes found exactly; for MedMNIST and name-less npz files it names the labels;
for sets that carry names (torchvision, Fashion-MNIST, npz with ``class_names``) it must equal them.

Normalisation constants are never computed here from the loaded (possibly private) pixels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.identifiers import distinct_identifiers
from shared.images.cache import CACHE_CHECKS, ImageCache
from shared.images.classes import check_same_classes
from shared.images.errors import DataNotFound
from shared.images.fashion_mnist import load_fashion_mnist
from shared.images.folder import load_folder
from shared.images.image_set import ImageSet
from shared.images.manifest import load_manifest
from shared.images.medmnist import MEDMNIST_SPLITS, load_medmnist
from shared.images.named import NAMED_DATASETS, load_named, splits_of
from shared.images.npz import load_npz
from shared.images.policy import DEFAULT_RESIZE, ReadPolicy
from shared.images.report import LoadResult, report_for
from shared.images.resize import TargetFormat, check_resize_policy, convert_array_images

SOURCE_KINDS = ("image-folder", "csv", "npz", "medmnist", "torchvision", "fashion-mnist")
FILE_KINDS = ("image-folder", "csv")


@dataclass(frozen=True)
class ImageSource:
    kind: str
    path: str | Path | None = None
    image_size: int | None = None  # None: native size (array kinds only)
    channels: int | None = None  # 1 or 3; None: native (array kinds only)
    resize: str = DEFAULT_RESIZE  # crop | pad (shared.images.policy)
    classes: tuple[str, ...] | None = None
    split: str = "train"  # train | val | test (| extra for SVHN)
    name: str | None = None  # torchvision dataset name
    download: bool = False  # torchvision / fashion-mnist: fetch when missing (needs internet)
    reading: ReadPolicy = ReadPolicy()  # file kinds: unreadable files (refuse or skip) and volumes (slices)
    cache_check: str = "stat"  # file kinds: cache keyed by file stat, or by content hash

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"unknown image source kind {self.kind!r}; use one of {', '.join(SOURCE_KINDS)}")
        if self.classes is not None:
            object.__setattr__(self, "classes", distinct_identifiers(self.classes, "the classes list"))
        if not isinstance(self.reading, ReadPolicy):
            raise ValueError(f"reading must be a ReadPolicy, got {self.reading!r}")
        check_resize_policy(self.resize)
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.cache_check not in CACHE_CHECKS:
            raise ValueError(f"cache_check must be one of {CACHE_CHECKS}, got {self.cache_check!r}")
        if self.kind in FILE_KINDS:
            if self.image_size is None or self.channels is None:
                raise ValueError(f"a {self.kind} source needs image_size and channels (its files vary in both)")
            if self.path is None:
                raise ValueError(f"a {self.kind} source needs a path")
        if self.kind in ("npz", "medmnist") and self.path is None:
            raise ValueError(f"a {self.kind} source needs a path")
        if self.kind == "torchvision":
            if not self.name:
                raise ValueError(f"a torchvision source needs a dataset name ({', '.join(NAMED_DATASETS)})")
            if self.split not in splits_of(self.name):
                raise ValueError(f"{self.name} has splits {splits_of(self.name)}, not {self.split!r}")
        if self.kind == "medmnist" and self.split not in MEDMNIST_SPLITS:
            raise ValueError(f"MedMNIST split must be one of {MEDMNIST_SPLITS}, got {self.split!r}")
        if self.kind == "fashion-mnist" and self.split not in ("train", "test"):
            raise ValueError(f"Fashion-MNIST has splits train and test, not {self.split!r}")

    def target(self) -> TargetFormat | None:
        """The output format of file kinds (None for array kinds, which may keep native properties)."""
        if self.image_size is None or self.channels is None:
            return None
        return TargetFormat(self.image_size, self.channels, self.resize)

    def describe(self) -> str:
        what = self.name if self.kind == "torchvision" else self.path
        return f"{self.kind} {what}" if what is not None else self.kind


def _array_set(source: ImageSource) -> tuple[ImageSet, bool]:
    """The set of an array kind at native size, and whether its file carries its own class names."""
    if source.kind == "npz":
        if not Path(source.path).is_file():
            raise DataNotFound(f"file {source.path} does not exist")
        with np.load(source.path, allow_pickle=False) as npz:
            named = "class_names" in npz.files
        data = load_npz(source.path)
        if not named and source.classes is not None:
            if len(source.classes) < data.num_classes:
                raise ValueError(
                    f"{source.path}: labels go up to {data.num_classes - 1} but only "
                    f"{len(source.classes)} class names were given"
                )
            data = ImageSet(data.images, data.labels, source.classes)
        return data, named
    if source.kind == "medmnist":
        return load_medmnist(source.path, source.split, source.classes), False
    if source.kind == "torchvision":
        return load_named(source.name, source.path, source.split, source.download), True
    return load_fashion_mnist(train=source.split == "train", root=source.path, download=source.download), True


def load_source(
    source: ImageSource, progress: bool = True, cache_dir: str | Path | None = None, *, cache: bool = True
) -> LoadResult:
    """Load ``source`` as an ``ImageSet`` with its report (``LoadResult``).

    File kinds go through the decoded-image cache in ``cache_dir`` (default
    ``shared.images.cache.default_cache_dir()``) unless ``cache`` is False; array kinds are already
    arrays and are converted in memory.
    """
    start = time.perf_counter()
    if source.kind in FILE_KINDS:
        target = source.target()
        assert target is not None  # checked by ImageSource
        store = ImageCache(cache_dir) if cache else None
        loader = load_folder if source.kind == "image-folder" else load_manifest
        return loader(
            source.path,
            target,
            classes=source.classes,
            cache=store,
            cache_check=source.cache_check,
            progress=progress,
            reading=source.reading,
        )
    data, named = _array_set(source)
    if named and source.classes is not None:
        check_same_classes(source.classes, data, names=("given classes list", f"{source.describe()} set"))
    images = convert_array_images(
        data.images.numpy(),
        source.image_size,
        source.channels,
        source.resize,
        progress=progress,
        desc=source.describe(),
    )
    data = ImageSet(torch.from_numpy(images), data.labels, data.class_names)
    report = report_for(data, source.describe(), seconds=time.perf_counter() - start)
    return LoadResult(data, report)


def load_sources_matching(
    sources: Sequence[ImageSource], progress: bool = True, cache_dir: str | Path | None = None
) -> list[LoadResult]:
    """Load several sets that must share classes (e.g. private and public), refusing any mismatch."""
    results = [load_source(s, progress=progress, cache_dir=cache_dir) for s in sources]
    for source, result in zip(sources[1:], results[1:], strict=True):
        check_same_classes(
            results[0].data, result.data, names=(f"{sources[0].describe()} set", f"{source.describe()} set")
        )
    return results


def source_for_path(
    path: str | Path,
    image_size: int | None,
    channels: int | None,
    resize: str = "crop",
    split: str = "train",
    reading: ReadPolicy | None = None,
) -> ImageSource:
    """The source a user means by a path: a folder of class folders, a CSV manifest, or an npz file
    (MedMNIST's layout when it holds ``train_images``, this project's otherwise). ``reading``
    applies to folders and manifests."""
    path = Path(path)
    reading = reading or ReadPolicy()
    if path.is_dir():
        return ImageSource("image-folder", path, image_size, channels, resize, reading=reading)
    if not path.is_file():
        raise DataNotFound(f"{path} does not exist")
    if path.suffix.lower() == ".csv":
        return ImageSource("csv", path, image_size, channels, resize, reading=reading)
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            medmnist = "train_images" in npz.files
        kind = "medmnist" if medmnist else "npz"
        return ImageSource(kind, path, image_size, channels, resize, split=split if medmnist else "train")
    raise ValueError(f"{path}: give a folder of class folders, a .csv manifest or an .npz file")
