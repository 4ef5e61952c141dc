"""Decode a listed collection of labelled files (from a folder or a manifest) into an ``ImageSet``.

The layout readers (``folder``, ``manifest``) only list files, labels and extra columns; this module
decodes them once with a progress bar, through the cache, and reports what happened. Nothing here
computes statistics of the pixels: normalisation constants are public, never from a private set.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shared.images.cache import CachedImages, ImageCache, cache_key, file_fingerprints, listing_material
from shared.images.decode import decode_slices
from shared.images.errors import ImageDecodeError, ImageSourceError, NotAnImage
from shared.images.image_set import ImageSet
from shared.images.policy import ReadPolicy
from shared.images.report import LoadReport, LoadResult, count_reasons
from shared.images.resize import TargetFormat
from shared.progress import progress_bar

MAX_IGNORED_EXAMPLES = 10


@dataclass(frozen=True)
class Listing:
    """Files of a collection in their final order, with labels indexing ``class_names``."""

    kind: str  # "image-folder" or "csv"
    source: str  # "image-folder /path" or "csv /path/manifest.csv"
    base: Path  # folder relative paths are reported (and content-keyed) against
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # extra per-file values
    ignored: tuple[tuple[str, str], ...] = ()  # (relative path, reason) of entries left out while listing
    where: tuple[str, ...] = ()  # per file, how to name it in an error (e.g. "row 7"); optional

    def __post_init__(self) -> None:
        """One file is one record, however it is reached: a symbolic or hard link, a second spelling of its
        path (a case-insensitive disk), or a second listing would make it several records (several
        patients, with patients by file), each moving a release by C."""
        first: dict[tuple[int, int] | str, int] = {}
        for i, path in enumerate(self.files):
            identity = file_identity(path)
            if identity in first:
                j = first[identity]
                if self.where:
                    raise ImageSourceError(
                        f"{self.where[i]} lists {path} again (first listed in {self.where[j]} as {self.files[j]}: "
                        "the same file, by another path or a link); one image must be one record"
                    )
                raise ImageSourceError(
                    f"{path} is the same file as {self.files[j]} (a link, or a second path to it); one image must "
                    "be one record, counted once: remove one of them"
                )
            first[identity] = i


def file_identity(path: Path) -> tuple[int, int] | str:
    """(device, inode): one file whatever path reaches it; its resolved path where a filesystem reports no
    inode numbers (0), so that an export there is never refused as one file."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino) if st.st_ino else str(Path(path).resolve())


def decode_files(
    files: tuple[Path, ...], target: TargetFormat, *, progress: bool, reading: ReadPolicy, desc: str = "decoding"
) -> CachedImages:
    """Decode every file to ``target`` (a volume to its kept slices): files that are not images are
    ignored; unreadable ones raise, or are skipped and listed (``reading.unreadable``)."""
    shape = (target.channels, target.image_size, target.image_size)
    out = np.empty((max(len(files), 1), *shape), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    ignored: list[tuple[str, str]] = []
    patients = [""] * len(files)
    for i, path in enumerate(progress_bar(files, desc=desc, unit="file", disable=not progress)):
        try:
            decoded = decode_slices(path, target.channels, policy=reading, draft_size=target.image_size)
        except NotAnImage as exc:
            ignored.append((str(path), exc.reason))
            continue
        except ImageDecodeError as exc:
            if not reading.skip_unreadable:
                raise
            skipped.append((str(path), exc.reason))
            continue
        for image in decoded.images:
            if len(kept) == len(out):  # volumes: grow by doubling
                out = np.concatenate([out, np.empty_like(out)])
            out[len(kept)] = target.apply(image)
            kept.append(i)
        patients[i] = decoded.patient_id
    images = out if len(kept) == len(out) else out[: len(kept)].copy()
    return CachedImages(images, np.asarray(kept, dtype=np.int64), tuple(skipped), tuple(ignored), tuple(patients))


def _check_skipped_share(listing: Listing, entry: CachedImages, reading: ReadPolicy) -> None:
    """More than ``max_skipped`` of the image files unreadable is a broken export: refused."""
    if not entry.skipped:
        return
    candidates = len(listing.files) - len(entry.ignored)
    share = len(entry.skipped) / max(candidates, 1)
    if share > reading.max_skipped:
        first_file, first_reason = entry.skipped[0]
        raise ImageSourceError(
            f"{listing.source}: {len(entry.skipped)} of {candidates} image files ({share:.1%}) cannot be read, more "
            f"than max_skipped = {reading.max_skipped:.1%} allows (first: {first_file}: {first_reason})"
        )


def load_listing(
    listing: Listing,
    target: TargetFormat,
    *,
    cache: ImageCache | None = None,
    cache_check: str = "stat",
    progress: bool = True,
    reading: ReadPolicy | None = None,
) -> LoadResult:
    """Decode (or fetch from the cache) the listed files and build the labelled set and its report."""
    reading = reading or ReadPolicy()
    start = time.perf_counter()
    entry, status, cache_file = None, "off", None
    key = None
    if cache is not None:
        fingerprints = file_fingerprints(listing.files, cache_check, listing.base)
        material = listing_material(
            listing.kind, fingerprints, vars(target) | {"check": cache_check}, reading.volume_material()
        )
        key = cache_key(material)
        entry, status = cache.load(key)
        cache_file = str(cache.path(key))
    if entry is None:
        try:
            entry = decode_files(listing.files, target, progress=progress, reading=reading, desc=listing.source)
        except ImageDecodeError as exc:
            where = _where(listing, exc.path)
            hint = '; the read policy unreadable = "skip" ([data] unreadable, --unreadable) leaves such files out'
            raise ImageDecodeError(exc.path, f"{exc.reason}{f' ({where})' if where else ''}{hint}") from exc
        if cache is not None and key is not None:
            cache.store(key, entry)
    _check_skipped_share(listing, entry, reading)
    kept = entry.kept.tolist()
    labels = np.asarray(listing.labels, dtype=np.int64)[kept]
    emptied = [n for c, n in enumerate(listing.class_names) if not (labels == c).any()]
    if emptied:
        raise ImageSourceError(
            f"classes {emptied} have no readable image left (their files were skipped as unreadable or hold no image)"
        )
    data = ImageSet(torch.from_numpy(entry.images), torch.from_numpy(labels), listing.class_names)
    base = str(listing.base)
    ignored = list(listing.ignored) + [(os.path.relpath(f, base), r) for f, r in entry.ignored]
    report = LoadReport(
        source=listing.source,
        images=len(data),
        class_names=data.class_names,
        class_counts=tuple(data.class_counts()),
        image_shape=tuple(data.images.shape[1:]),
        ignored=len(ignored),
        ignored_examples=tuple(f for f, _ in ignored[:MAX_IGNORED_EXAMPLES]),
        ignored_by_reason=count_reasons(ignored),
        skipped=entry.skipped,
        volumes=sum(1 for n in Counter(kept).values() if n > 1),
        cache=status if cache is not None else "off",
        cache_file=cache_file,
        seconds=time.perf_counter() - start,
    )
    files = tuple(str(listing.files[i]) for i in kept)
    columns = {name: tuple(values[i] for i in kept) for name, values in listing.columns.items()}
    patients = tuple(entry.patients[i] for i in kept) if entry.patients else ("",) * len(kept)
    return LoadResult(data, report, files, columns, patients)


def _where(listing: Listing, path: str) -> str:
    if not listing.where:
        return ""
    for f, w in zip(listing.files, listing.where, strict=True):
        if str(f) == path:
            return w
    return ""
