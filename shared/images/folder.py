"""Class-folder collections (torchvision's ``ImageFolder`` layout): ``root/<class name>/...``.

* Every non-hidden folder directly under ``root`` is a class; its name (Unicode NFC, surrounding spaces
  removed: ``shared.identifiers``) is the class name. Two folders whose names are the same once
  normalised (NFC and NFD spellings, as macOS writes them) are refused, naming both.
* Images may sit at any depth below their class folder (``root/pneumonia/patient7/img1.png``), as
  hospital exports often nest by patient or study; every image below a class folder belongs to it.
* Image files: ``.png .jpg .jpeg .tif .tiff .bmp`` (any case), ``.dcm``/``.dicom``, files with the
  DICOM magic, and NIfTI volumes ``.nii``/``.nii.gz``. Everything else is ignored and counted by
  reason: hidden entries (names starting with "."), ``__MACOSX``, ``.ipynb_checkpoints``,
  ``Thumbs.db``, ``desktop.ini``, ``DICOMDIR``, other files, and files lying directly in ``root``
  (a hidden folder counts once; its contents are not visited). DICOM files without pixel data
  (reports, RT structures, presentation states) are found when decoded, and ignored the same way.
* An empty class folder (no image at any depth) is refused, naming it.
* Classes sort naturally ("2" < "10", "class2" < "class10"), or follow the caller's ``classes``
  list exactly (a folder not in the list, or a listed class without a folder, is refused).
* Files within a class sort naturally by their path below the class folder; symbolic links to
  folders are followed once (loops are not revisited).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from shared.identifiers import normalise_identifier
from shared.images.cache import ImageCache
from shared.images.classes import natural_key, resolve_classes
from shared.images.collection import Listing, load_listing
from shared.images.decode import is_image_file
from shared.images.errors import (
    IGNORED_DICOMDIR,
    IGNORED_HIDDEN,
    IGNORED_NOT_IMAGE,
    IGNORED_OUTSIDE_CLASS,
    DataNotFound,
    ImageSourceError,
)
from shared.images.policy import ReadPolicy
from shared.images.report import LoadResult
from shared.images.resize import TargetFormat

IGNORED_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini", "ehthumbs.db"})


def is_hidden(name: str) -> bool:
    """Hidden or system entries that are never data (``.DS_Store``, ``.ipynb_checkpoints``, ``__MACOSX``...)."""
    return name.startswith(".") or name.casefold() in IGNORED_NAMES


class _Ignored:
    def __init__(self, root: Path):
        self.root, self.entries = root, []

    def add(self, path: Path, reason: str) -> None:
        self.entries.append((os.path.relpath(path, self.root), reason))

    @property
    def count(self) -> int:
        return len(self.entries)


def _class_files(class_dir: Path, ignored: _Ignored) -> list[Path]:
    files: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a second link to a visited folder
            dirnames[:] = []
            continue
        seen.add(real)
        for d in [d for d in dirnames if is_hidden(d)]:
            ignored.add(Path(dirpath) / d, IGNORED_HIDDEN)
            dirnames.remove(d)
        for name in filenames:
            path = Path(dirpath) / name
            if is_hidden(name):
                ignored.add(path, IGNORED_HIDDEN)
            elif name.upper() == "DICOMDIR":  # a CD's index of its DICOM files, not an image
                ignored.add(path, IGNORED_DICOMDIR)
            elif not is_image_file(path):
                ignored.add(path, IGNORED_NOT_IMAGE)
            else:
                files.append(path)
    return sorted(files, key=lambda p: tuple(natural_key(part) for part in p.relative_to(class_dir).parts))


def scan_image_folder(root: str | Path, classes: Sequence[str] | None = None) -> Listing:
    """List a class-folder tree: files in class order, labels, ignored entries. No decoding."""
    root = Path(root)
    if not root.is_dir():
        raise DataNotFound(f"image folder {root} does not exist")
    ignored = _Ignored(root)
    class_dirs: dict[str, Path] = {}
    for entry in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if is_hidden(entry.name) or not entry.is_dir():
            ignored.add(entry, IGNORED_HIDDEN if is_hidden(entry.name) else IGNORED_OUTSIDE_CLASS)
            continue
        name = normalise_identifier(entry.name)
        if name in class_dirs:  # "Café" written NFC and NFD, or "cat" and "cat ": which is meant is unknowable
            raise ImageSourceError(
                f"class folders {class_dirs[name]} and {entry} are two spellings of one class name {name!r} "
                "(Unicode NFC, surrounding spaces removed); merge them into one folder or rename one"
            )
        class_dirs[name] = entry
    if not class_dirs:
        raise ImageSourceError(
            f"image folder {root} holds no class folders (expected {root}/<class name>/<images>; "
            f"{ignored.count} other entries ignored)"
        )
    names = resolve_classes(class_dirs, classes, what="class folder")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        before = ignored.count
        found = _class_files(class_dirs[name], ignored)
        if not found:
            raise ImageSourceError(
                f"class folder {class_dirs[name]} holds no images ({ignored.count - before} other entries ignored); "
                "remove it or add its images"
            )
        files.extend(found)
        labels.extend([label] * len(found))
    return Listing(
        kind="image-folder",
        source=f"image-folder {root}",
        base=root,
        files=tuple(files),
        labels=tuple(labels),
        class_names=names,
        ignored=tuple(ignored.entries),
    )


def load_folder(
    root: str | Path,
    target: TargetFormat,
    *,
    classes: Sequence[str] | None = None,
    cache: ImageCache | None = None,
    cache_check: str = "stat",
    progress: bool = True,
    reading: ReadPolicy | None = None,
) -> LoadResult:
    """A class-folder tree decoded to ``target``; ``cache`` None decodes every file."""
    listing = scan_image_folder(root, classes)
    return load_listing(listing, target, cache=cache, cache_check=cache_check, progress=progress, reading=reading)
