"""CSV manifests: relative paths, extra columns kept aligned, DICOM rows, and every malformed row
refused with its row number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.images.errors import DataNotFound, ImageDecodeError, ImageSourceError
from shared.images.manifest import load_manifest, read_manifest
from shared.images.resize import TargetFormat
from tests.test_images_dicom import write_dicom


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (12, 12), value).save(path)


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_with_patient_ids_and_a_dicom(tmp_path: Path) -> None:
    _png(tmp_path / "img" / "a.png", 10)
    _png(tmp_path / "img" / "b.png", 20)
    _png(tmp_path / "elsewhere" / "c.png", 30)
    write_dicom(tmp_path / "img" / "d.dcm", np.full((6, 6), 1064, dtype=np.uint16))  # window centre -> ~128
    absolute = tmp_path / "elsewhere" / "c.png"
    csv = _csv(
        tmp_path / "m.csv",
        "\ufeffpath,label,patient_id\n"  # a spreadsheet's byte-order mark
        "img/a.png,class10,p1\n"
        "img/b.png,class2,p1\n"
        "\n"
        f"{absolute},class2,p2\n"
        "img\\d.dcm,class10,p3\n",  # Windows separator
    )
    result = load_manifest(csv, TargetFormat(8, 1), progress=False)
    assert result.data.class_names == ("class2", "class10")  # natural order
    assert result.data.labels.tolist() == [1, 0, 0, 1]  # row order kept
    assert result.columns == {"patient_id": ("p1", "p1", "p2", "p3")}
    assert result.data.images[:3, 0, 4, 4].tolist() == [10, 20, 30]
    assert abs(int(result.data.images[3, 0, 4, 4]) - 128) <= 1
    assert result.files[2] == str(absolute)
    explicit = load_manifest(csv, TargetFormat(8, 3), classes=["class10", "class2"], progress=False)
    assert explicit.data.labels.tolist() == [0, 1, 1, 0] and explicit.data.images.shape[1] == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("path,label\nmissing.png,a\n", r"row 2: file .*missing\.png does not exist"),
        ("path,label\nok.png,a\nok.png,\n", r"row 3 has an empty label"),
        ("path,label\n,a\n", r"row 2 has an empty path"),
        ("path,label,path\nok.png,a,x\n", r"row 1 \(header\) repeats column names \['path'\]"),
        ("path,label\nok.png,a\nok.png,a,extra\n", r"row 3 has 3 columns, the header has 2"),
        ("file,class\nok.png,a\n", r"lacks columns \['path', 'label'\]"),
        ("path;label\nok.png;a\n", r"comma-separated"),
        (
            "path,label\nok.png,a\n./ok.png,b\n",
            r"row 3 of m\.csv lists .*ok\.png again \(first listed in row 2 of m\.csv",
        ),
        ("path,label\n", r"lists no images"),
        ("", r"is empty"),
    ],
)
def test_malformed_manifests_are_refused_with_the_row(tmp_path: Path, body: str, message: str) -> None:
    _png(tmp_path / "ok.png", 1)
    with pytest.raises(ImageSourceError, match=message):
        read_manifest(_csv(tmp_path / "m.csv", body))


def test_manifest_classes_list_and_missing_csv(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png", 1)
    csv = _csv(tmp_path / "m.csv", "path,label\nok.png,normal\n")
    with pytest.raises(ImageSourceError, match="'tumour' have no label in the CSV"):
        read_manifest(csv, ["normal", "tumour"])
    with pytest.raises(ImageSourceError, match="'normal' not in the given classes"):
        read_manifest(csv, ["tumour"])
    with pytest.raises(DataNotFound, match="does not exist"):
        read_manifest(tmp_path / "none.csv")


def test_an_undecodable_row_names_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"nope")
    _png(tmp_path / "ok.png", 1)
    csv = _csv(tmp_path / "m.csv", "path,label\nok.png,a\nbad.png,a\n")
    with pytest.raises(ImageDecodeError, match=r"bad\.png: .*row 3 of m\.csv"):
        load_manifest(csv, TargetFormat(8, 1), progress=False)


def test_a_hard_link_listed_beside_its_file_is_one_record(tmp_path: Path) -> None:
    """Resolving paths misses hard links (and another spelling on a case-insensitive disk): identity is the inode."""
    _png(tmp_path / "ok.png", 1)
    (tmp_path / "again.png").hardlink_to(tmp_path / "ok.png")
    with pytest.raises(ImageSourceError, match=r"row 3 of m\.csv lists .*again\.png again"):
        read_manifest(_csv(tmp_path / "m.csv", "path,label\nok.png,a\nagain.png,b\n"))
