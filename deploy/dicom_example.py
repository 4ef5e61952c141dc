"""A DICOM collection laid out as a PACS or CD export would be, built from the files pydicom ships.

``dpdistill example-images dicom --out DIR`` copies the DICOM test files that pydicom and
pydicom-data ship (never downloaded) into class folders by their Modality (CT, MR, US), split by
file into ``train`` (the owner's private set), ``aux`` and ``test`` (public). They come in many
transfer syntaxes (uncompressed, JPEG baseline and lossless, JPEG-LS, JPEG 2000, RLE, deflate),
and the multi-frame files (volumes, read as slices of one patient) go to ``train``. ``train`` also
gets the awkward files such exports hold: a ``DICOMDIR`` and a structured report (ignored, counted
by reason), a copy with Window Width 0 (read with the image's own range) and one with
RescaleSlope 0 (unreadable: refused, or skipped under ``--unreadable skip``).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

CLASSES = ("CT", "MR", "US")
# File i of a class (in name order) goes to test when i % 5 == 0, to aux when i % 5 == 1, else to train.
TEST_EVERY, AUX_AT = 5, 1


def _testdata() -> list[Path]:
    from pydicom.data import get_testdata_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted({Path(p) for p in get_testdata_files("*") if Path(p).is_file()})


def _read(path: Path):
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, force=True)
        except Exception:  # not DICOM, or too broken to tell its modality: not part of the example
            return None


def write_dicom_example(out: str | Path) -> dict:
    """Write the collection under ``out`` (an existing complete one is kept); return its summary."""
    out = Path(out)
    summary_path = out / "example.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not an example folder written by this command; choose another")
    by_class: dict[str, list[tuple[Path, bool]]] = {c: [] for c in CLASSES}
    for path in _testdata():
        ds = _read(path)
        if ds is None or "PixelData" not in ds or str(getattr(ds, "Modality", "")) not in CLASSES:
            continue
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        by_class[str(ds.Modality)].append((path, frames > 1))
    counts: dict[str, dict[str, int]] = {split: {} for split in ("train", "aux", "test")}
    for cls, files in by_class.items():
        singles = [p for p, multi in files if not multi]
        for i, path in enumerate(singles):
            split = "test" if i % TEST_EVERY == 0 else "aux" if i % TEST_EVERY == AUX_AT else "train"
            _copy(path, out / split / cls, counts[split], cls)
        for path in (p for p, multi in files if multi):  # volumes: private, one patient each
            _copy(path, out / "train" / cls, counts["train"], cls)
    awkward = _awkward_files(out / "train")
    summary = {
        "kind": "dicom",
        "classes": list(CLASSES),
        "files": counts,
        "awkward_files_in_train": awkward,
        "volumes_in_train": {c: sum(multi for _, multi in by_class[c]) for c in CLASSES},
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def _copy(path: Path, folder: Path, counts: dict[str, int], cls: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, folder / (path.name if path.suffix else path.name + ".dcm"))
    counts[cls] = counts.get(cls, 0) + 1


def _awkward_files(train: Path) -> dict[str, str]:
    """The files a real export holds beside the images; returns where each went and what it is."""
    from pydicom.data import get_testdata_file

    def shipped(name: str) -> Path | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = get_testdata_file(name, download=False)
        return Path(found) if found else None

    placed: dict[str, str] = {}
    for name, dest, what in (
        ("DICOMDIR", "MR/DICOMDIR", "a DICOMDIR (ignored)"),
        ("test-SR.dcm", "CT/report.dcm", "a structured report without pixel data (ignored)"),
    ):
        source = shipped(name)
        if source is not None:
            shutil.copy(source, train / dest)
            placed[dest] = what
    for name, dest, changes, what in (
        ("MR_small.dcm", "MR/window0.dcm", {"WindowWidth": 0}, "Window Width 0 (read with the image's own range)"),
        ("CT_small.dcm", "CT/slope0.dcm", {"RescaleSlope": 0}, "RescaleSlope 0 (unreadable)"),
    ):
        source = shipped(name)
        ds = _read(source) if source is not None else None
        if ds is None:
            continue
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(train / dest)
        placed[dest] = what
    return placed
