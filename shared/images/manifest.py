"""CSV manifests: one row per image, ``path,label`` plus any extra columns (e.g. ``patient_id``).

* UTF-8 (a spreadsheet's byte-order mark is accepted), comma-separated, first row the header.
  Rows are numbered as a spreadsheet shows them: the header is row 1, the first image row 2.
* ``path``: relative to the CSV's folder, or absolute. Backslashes are accepted as separators when
  the path does not exist as written (exports from Windows). DICOM files are recognised by
  ``.dcm``/``.dicom`` or by the ``DICM`` magic and read with pydicom (``shared.images.dicom``).
* ``label``: a class name (text). Classes sort naturally unless a ``classes`` list is given.
* Extra columns are kept as strings, aligned with the loaded images (``LoadResult.columns``), so a
  patient-level grouping can be built later; they are never decoded or interpreted here.
* Column names, labels and extra values are identifiers: Unicode NFC without surrounding spaces
  (``shared.identifiers``), so "Zoë" typed on one system and on another is one label or patient.
* Refused, naming the row: a missing file, an empty path or label, a row with the wrong number of
  columns, the same file listed twice (it would count one record twice under differential
  privacy). Refused: a header without ``path`` or ``label``, or with a repeated or empty name.
  Blank lines are skipped. Images keep the order of the rows.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from shared.identifiers import normalise_identifier
from shared.images.cache import ImageCache
from shared.images.classes import resolve_classes
from shared.images.collection import Listing, load_listing
from shared.images.errors import DataNotFound, ImageSourceError
from shared.images.policy import ReadPolicy
from shared.images.report import LoadResult
from shared.images.resize import TargetFormat

REQUIRED_COLUMNS = ("path", "label")


def _resolve(base: Path, raw: str) -> Path:
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists() and "\\" in raw:
        alt = Path(raw.replace("\\", "/"))
        path = alt if alt.is_absolute() else base / alt
    return path


def _header(row: list[str], csv_path: Path) -> list[str]:
    header = [normalise_identifier(h) for h in row]
    if any(not h for h in header):
        raise ImageSourceError(f"{csv_path}: row 1 (header) has an empty column name: {header}")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise ImageSourceError(f"{csv_path}: row 1 (header) repeats column names {repeated}")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        hint = " (the file must be comma-separated)" if len(header) == 1 and ";" in header[0] else ""
        raise ImageSourceError(f"{csv_path}: row 1 (header) lacks columns {missing}; found {header}{hint}")
    return header


def read_manifest(csv_path: str | Path, classes: Sequence[str] | None = None) -> Listing:
    """Parse and check a manifest (every listed file must exist); no decoding."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataNotFound(f"manifest {csv_path} does not exist")
    base = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            first = next(reader)
        except StopIteration:
            raise ImageSourceError(f"{csv_path} is empty (expected a header row such as 'path,label')") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ImageSourceError(f"{csv_path}: row 1 cannot be read as CSV ({exc})") from exc
        header = _header(first, csv_path)
        path_col, label_col = header.index("path"), header.index("label")
        extra = [(i, name) for i, name in enumerate(header) if name not in REQUIRED_COLUMNS]
        files: list[Path] = []
        label_names: list[str] = []
        rows: list[str] = []
        columns: dict[str, list[str]] = {name: [] for _, name in extra}
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                raise ImageSourceError(f"{csv_path}: row {reader.line_num} cannot be read as CSV ({exc})") from exc
            row_number = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ImageSourceError(
                    f"{csv_path}: row {row_number} has {len(row)} columns, the header has {len(header)} ({header})"
                )
            raw_path, label = row[path_col].strip(), normalise_identifier(row[label_col])
            if not raw_path:
                raise ImageSourceError(f"{csv_path}: row {row_number} has an empty path")
            if not label:
                raise ImageSourceError(f"{csv_path}: row {row_number} has an empty label")
            path = _resolve(base, raw_path)
            if not path.is_file():
                raise ImageSourceError(f"{csv_path}: row {row_number}: file {path} does not exist")
            files.append(path)
            label_names.append(label)
            rows.append(f"row {row_number} of {csv_path.name}")
            for i, name in extra:
                columns[name].append(normalise_identifier(row[i]))
    if not files:
        raise ImageSourceError(f"{csv_path} lists no images (only a header)")
    names = resolve_classes(label_names, classes, what="label in the CSV")
    index = {name: i for i, name in enumerate(names)}
    return Listing(
        kind="csv",
        source=f"csv {csv_path}",
        base=base,
        files=tuple(files),
        labels=tuple(index[name] for name in label_names),
        class_names=names,
        columns={name: tuple(values) for name, values in columns.items()},
        where=tuple(rows),
    )


def load_manifest(
    csv_path: str | Path,
    target: TargetFormat,
    *,
    classes: Sequence[str] | None = None,
    cache: ImageCache | None = None,
    cache_check: str = "stat",
    progress: bool = True,
    reading: ReadPolicy | None = None,
) -> LoadResult:
    """A manifest's images decoded to ``target``, with its extra columns aligned to them."""
    listing = read_manifest(csv_path, classes)
    return load_listing(listing, target, cache=cache, cache_check=cache_check, progress=progress, reading=reading)
