"""On-disk cache of decoded images (uint8 arrays), so a folder of 50,000 files loads again in seconds.

Key: a SHA-256 over the format version, Pillow/pydicom versions, the output format (size,
channels, resize policy), the read policy (unreadable files skipped, volume axis and slice range),
and each file's identity, either
(absolute path, size, mtime in ns) (``stat``, default: one ``stat`` per file) or (relative path,
BLAKE2b of its bytes) (``content``: reads every byte, survives copies, catches an edit that kept
size and mtime). Any change in those gives a new entry; old entries are never reused.

An entry is never trusted: it must parse, carry its own key and format version, and match the
SHA-256 of its arrays; anything else is ignored and rebuilt. Entries hold decoded *private* pixels:
the folder is created 0700 and files 0600; protect it like the source data and delete it with it.
Nothing here computes statistics of the pixels (normalisation constants are public).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_FORMAT_VERSION = 2  # 2: volumes as slices, invalid windows, files ignored, DICOM PatientID
CACHE_CHECKS = ("stat", "content")


def data_cache_root() -> Path:
    """``$DPDISTILL_DATA_CACHE``, else ``~/.cache/dpdistill``: where downloaded datasets (Fashion-MNIST,
    torchvision's) and, under ``images/``, decoded images are kept."""
    root = os.environ.get("DPDISTILL_DATA_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "dpdistill"


def default_cache_dir() -> Path:
    """``data_cache_root()/images``: decoded images, beside the datasets."""
    return data_cache_root() / "images"


def file_fingerprints(files: Sequence[Path], check: str = "stat", base: Path | None = None) -> list[list]:
    """Per file: [absolute path, size, mtime_ns, ctime_ns, inode] (``stat``) or [path relative to base, blake2b]
    (``content``). A copy that keeps timestamps (``cp -p``, ``rsync -a``, an unzip) sets mtime back but not
    ctime, and a file replaced by another has another inode: either makes a new entry."""
    if check not in CACHE_CHECKS:
        raise ValueError(f"cache check must be one of {CACHE_CHECKS}, got {check!r}")
    out: list[list] = []
    for f in files:
        if check == "stat":
            st = os.stat(f)
            out.append([str(Path(f).absolute()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
        else:
            digest = hashlib.blake2b(digest_size=20)
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            name = os.path.relpath(f, base) if base is not None else str(f)
            out.append([name, digest.hexdigest()])
    return out


# Every library that turns a file's bytes into pixels: an upgrade of any of them makes new entries.
DECODERS = (
    "pillow",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "nibabel",
    "numpy",
)


def decoder_versions() -> dict[str, str]:
    """The installed version of each decoding library (read from its metadata; nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in DECODERS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def cache_key(material: Mapping) -> str:
    """SHA-256 of the canonical JSON of ``material`` plus the format and library versions."""
    full = {"format": CACHE_FORMAT_VERSION, "decoders": decoder_versions(), **material}
    return hashlib.sha256(json.dumps(full, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class CachedImages:
    images: np.ndarray  # uint8 [K, C, H, W]
    # int64 [K]: index into the listing of each image (a volume's slices repeat its index; files
    # skipped as unreadable or ignored as not images are absent)
    kept: np.ndarray
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason): unreadable, left out by the skip policy
    ignored: tuple[tuple[str, str], ...] = ()  # (file, reason): not images (DICOMDIR, DICOM without pixels)
    patients: tuple[str, ...] = ()  # per listed file: the DICOM PatientID it names, "" for none


def _digest(images: np.ndarray, kept: np.ndarray, meta: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([list(images.shape), str(images.dtype), list(kept.shape)]).encode())
    h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(kept)).cast("B"))
    h.update(meta.encode())
    return h.hexdigest()


class ImageCache:
    """A folder of ``<key>.npz`` entries; ``load`` returns (entry or None, status)."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def load(self, key: str) -> tuple[CachedImages | None, str]:
        """(entry, "hit"), (None, "miss") when absent, (None, "rebuilt") when present but not valid."""
        path = self.path(key)
        if not path.exists():
            return None, "miss"
        try:
            with np.load(path, allow_pickle=False) as npz:
                images, kept = npz["images"], npz["kept"].astype(np.int64)
                meta_text, digest = str(npz["meta"][()]), str(npz["digest"][()])
            meta = json.loads(meta_text)
            valid = (
                meta.get("key") == key
                and meta.get("format") == CACHE_FORMAT_VERSION
                and images.dtype == np.uint8
                and images.ndim == 4
                and kept.shape == (images.shape[0],)
                and digest == _digest(images, kept, meta_text)
            )
            if valid:
                skipped = tuple((str(f), str(r)) for f, r in meta.get("skipped", []))
                ignored = tuple((str(f), str(r)) for f, r in meta.get("ignored", []))
                patients = tuple(str(p) for p in meta.get("patients", []))
                return CachedImages(images, kept, skipped, ignored, patients), "hit"
        except Exception:  # truncated zip, missing array, bad JSON ...: never trusted, rebuilt
            pass
        return None, "rebuilt"

    def store(self, key: str, entry: CachedImages) -> Path:
        """Write atomically (temporary file, then rename), readable by the owner only."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(key)
        meta = json.dumps(
            {
                "key": key,
                "format": CACHE_FORMAT_VERSION,
                "skipped": [list(s) for s in entry.skipped],
                "ignored": [list(s) for s in entry.ignored],
                "patients": list(entry.patients),
            }
        )
        kept = np.asarray(entry.kept, dtype=np.int64)
        tmp = self.folder / f".{key}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    images=entry.images,
                    kept=kept,
                    meta=np.array(meta),
                    digest=np.array(_digest(entry.images, kept, meta)),
                )
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


def listing_material(kind: str, fingerprints: Iterable, target_description: Mapping, reading: Mapping) -> dict:
    """The key material of a file collection (labels do not enter: they are re-read from the listing);
    ``reading``: what of the read policy changes the decoded images (``ReadPolicy.volume_material``)."""
    return {
        "kind": kind,
        "target": dict(target_description),
        "reading": dict(reading),
        "files": list(fingerprints),
    }
