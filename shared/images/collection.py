"""Decode a listed collection of labelled files (from a folder or a manifest) into an ``ImageSet``.

The layout readers (``folder``, ``manifest``) only list files, labels and extra columns; this module
decodes them once with a progress bar, through the cache, and reports what happened. Nothing here
computes statistics of the pixels: normalisation constants are public, never from a private set.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shared.datasets import ImageSet
from shared.images.cache import CachedImages, ImageCache, cache_key, file_fingerprints, listing_material
from shared.images.decode import decode_file
from shared.images.errors import ImageDecodeError, ImageSourceError
from shared.images.report import LoadReport, LoadResult
from shared.images.resize import TargetFormat
from shared.progress import progress_bar


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
    ignored: int = 0
    ignored_examples: tuple[str, ...] = ()
    where: tuple[str, ...] = ()  # per file, how to name it in an error (e.g. "row 7"); optional


def decode_files(
    files: tuple[Path, ...], target: TargetFormat, *, progress: bool, skip_unreadable: bool, desc: str = "decoding"
) -> CachedImages:
    """Decode every file to ``target``; unreadable ones raise, or are skipped and listed."""
    out = np.empty((len(files), target.channels, target.image_size, target.image_size), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    for i, path in enumerate(progress_bar(files, desc=desc, unit="img", disable=not progress)):
        try:
            image = decode_file(path, target.channels, draft_size=target.image_size)
        except ImageDecodeError as exc:
            if not skip_unreadable:
                raise
            skipped.append((str(path), exc.reason))
            continue
        out[len(kept)] = target.apply(image)
        kept.append(i)
    images = out if len(kept) == len(files) else out[: len(kept)].copy()
    return CachedImages(images, np.asarray(kept, dtype=np.int64), tuple(skipped))


def load_listing(
    listing: Listing,
    target: TargetFormat,
    *,
    cache: ImageCache | None = None,
    cache_check: str = "stat",
    progress: bool = True,
    skip_unreadable: bool = False,
) -> LoadResult:
    """Decode (or fetch from the cache) the listed files and build the labelled set and its report."""
    start = time.perf_counter()
    entry, status, cache_file = None, "off", None
    key = None
    if cache is not None:
        fingerprints = file_fingerprints(listing.files, cache_check, listing.base)
        material = listing_material(listing.kind, fingerprints, vars(target) | {"check": cache_check}, skip_unreadable)
        key = cache_key(material)
        entry, status = cache.load(key)
        cache_file = str(cache.path(key))
    if entry is None:
        try:
            entry = decode_files(
                listing.files, target, progress=progress, skip_unreadable=skip_unreadable, desc=listing.source
            )
        except ImageDecodeError as exc:
            where = _where(listing, exc.path)
            if where:
                raise ImageDecodeError(exc.path, f"{exc.reason} ({where})") from exc
            raise
        if cache is not None and key is not None:
            cache.store(key, entry)
    kept = entry.kept.tolist()
    labels = np.asarray(listing.labels, dtype=np.int64)[kept]
    emptied = [n for c, n in enumerate(listing.class_names) if not (labels == c).any()]
    if emptied:
        raise ImageSourceError(f"classes {emptied} have no readable image left after skipping unreadable files")
    data = ImageSet(torch.from_numpy(entry.images), torch.from_numpy(labels), listing.class_names)
    report = LoadReport(
        source=listing.source,
        images=len(data),
        class_names=data.class_names,
        class_counts=tuple(data.class_counts()),
        image_shape=tuple(data.images.shape[1:]),
        ignored=listing.ignored,
        ignored_examples=listing.ignored_examples,
        skipped=entry.skipped,
        cache=status if cache is not None else "off",
        cache_file=cache_file,
        seconds=time.perf_counter() - start,
    )
    files = tuple(str(listing.files[i]) for i in kept)
    columns = {name: tuple(values[i] for i in kept) for name, values in listing.columns.items()}
    return LoadResult(data, report, files, columns)


def _where(listing: Listing, path: str) -> str:
    if not listing.where:
        return ""
    for f, w in zip(listing.files, listing.where, strict=True):
        if str(f) == path:
            return w
    return ""
