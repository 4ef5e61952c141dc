"""Hospital exports (issue 26 parts 1 and 2): bad files under both read policies, files that are not
images, invalid windows, every compressed transfer syntax with pydicom's own test files, volumes
(multi-frame DICOM, NIfTI) read as 2D slices, and DICOM PatientID as the patient."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.images.decode import decode_file, decode_slices
from shared.images.errors import ImageDecodeError, ImageSourceError, NotAnImage
from shared.images.folder import load_folder
from shared.images.policy import ReadPolicy
from shared.images.resize import TargetFormat

pydicom = pytest.importorskip("pydicom")
from tests.dicom_files import dicom_file  # noqa: E402

T = TargetFormat(16, 1)


def _edited(src: str, dst: Path, **changes) -> Path:
    """A copy of a test file with some elements set (None: removed)."""
    ds = pydicom.dcmread(dicom_file(src))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(decode_file(path)).astype(int)


# ------------------------------------------------------------------ transfer syntaxes

# (file, transfer syntax UID, uncompressed reference with the same pixels or None)
TRANSFER_SYNTAXES = [
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2", "MR_small.dcm"),
    ("MR_small.dcm", "1.2.840.10008.1.2.1", None),
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2", "MR_small.dcm"),
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99", None),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", None),  # JPEG baseline
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", None),  # 12-bit JPEG extended
    ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70", None),  # JPEG lossless SV1, 16 bit
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "1.2.840.10008.1.2.4.70", None),
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", "MR_small.dcm"),
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81", None),
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", "MR_small.dcm"),
    ("MR2_J2KR.dcm", "1.2.840.10008.1.2.4.90", "MR2_UNCR.dcm"),
    ("MR2_J2KI.dcm", "1.2.840.10008.1.2.4.91", None),  # lossy JPEG 2000
    ("US1_J2KI.dcm", "1.2.840.10008.1.2.4.91", None),  # colour, YBR_ICT
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "MR_small.dcm"),
    ("SC_rgb_rle.dcm", "1.2.840.10008.1.2.5", "SC_rgb.dcm"),
]


@pytest.mark.parametrize(("name", "syntax", "reference"), TRANSFER_SYNTAXES, ids=[t[0] for t in TRANSFER_SYNTAXES])
def test_every_transfer_syntax_decodes(name: str, syntax: str, reference: str | None) -> None:
    path = dicom_file(name)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    out = _pixels(path)
    assert out.ndim in (2, 3) and out.min() >= 0 and out.max() <= 255 and out.std() > 0
    if reference is not None:  # lossless: exactly the uncompressed file's image
        assert np.array_equal(out, _pixels(dicom_file(reference)))


# ------------------------------------------------------------------ bad and non-image files


def test_an_invalid_window_falls_back_to_the_images_own_range(tmp_path: Path) -> None:
    """pydicom #1073: a Window Width of 0 or below; viewers show such files with the image's own range."""
    assert "WindowWidth" in pydicom.dcmread(dicom_file("MR_small.dcm"))
    no_window = _pixels(_edited("MR_small.dcm", tmp_path / "none.dcm", WindowWidth=None, WindowCenter=None))
    for width in (0, -10, 0.5):
        out = _pixels(_edited("MR_small.dcm", tmp_path / f"w{width}.dcm", WindowWidth=width))
        assert np.array_equal(out, no_window)
    assert not np.array_equal(_pixels(dicom_file("MR_small.dcm")), no_window)  # a valid window is used


def test_rescale_slope_zero_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="RescaleSlope is 0"):
        decode_file(_edited("CT_small.dcm", tmp_path / "slope0.dcm", RescaleSlope=0))


@pytest.mark.parametrize(
    ("name", "reason"),
    [("DICOMDIR", "DICOMDIR"), ("test-SR.dcm", "without pixel data"), ("rtstruct.dcm", "without pixel data")],
)
def test_files_that_are_not_images_are_named_as_such(name: str, reason: str) -> None:
    with pytest.raises(NotAnImage, match=reason):
        decode_slices(dicom_file(name))


def _export(root: Path) -> None:
    """A PACS/CD-like export: 20 good images per class, and one of each awkward file."""
    rng = np.random.default_rng(0)
    for cls in ("normal", "finding"):
        for i in range(20):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(root / cls / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L").save(root / "normal" / "whole.png")
    data = (root / "normal" / "whole.png").read_bytes()
    (root / "normal" / "truncated.png").write_bytes(data[: len(data) // 2])
    shutil.copy(dicom_file("DICOMDIR"), root / "normal" / "DICOMDIR")
    shutil.copy(dicom_file("test-SR.dcm"), root / "normal" / "report.dcm")
    shutil.copy(dicom_file("rtstruct.dcm"), root / "finding" / "structures.dcm")
    (root / "finding" / ".DS_Store").write_bytes(b"\0")
    _edited("MR_small.dcm", root / "finding" / "window0.dcm", WindowWidth=0)
    _edited("MR_small.dcm", root / "finding" / "negative_window.dcm", WindowWidth=-1)
    _edited("CT_small.dcm", root / "finding" / "slope0.dcm", RescaleSlope=0)
    shutil.copy(dicom_file("emri_small.dcm"), root / "finding" / "volume.dcm")  # 10 frames


def test_a_hospital_export_under_the_refuse_policy_names_the_first_bad_file(tmp_path: Path) -> None:
    _export(tmp_path)
    with pytest.raises(ImageDecodeError, match=r"(truncated\.png|slope0\.dcm).*unreadable = \"skip\""):
        load_folder(tmp_path, T, progress=False)
    (tmp_path / "normal" / "truncated.png").unlink()
    (tmp_path / "finding" / "slope0.dcm").unlink()
    result = load_folder(tmp_path, T, progress=False)  # not images are no errors under refuse either
    assert dict(result.report.ignored_by_reason) == {
        "DICOM without pixel data": 2,
        "DICOMDIR": 1,
        "hidden or system entry": 1,
    }
    assert len(result.data) == 21 + 20 + 2 + 10 and result.report.volumes == 1


def test_a_hospital_export_under_the_skip_policy_lists_every_skipped_file(tmp_path: Path) -> None:
    _export(tmp_path)
    result = load_folder(tmp_path, T, progress=False, reading=ReadPolicy("skip", max_skipped=0.1))
    skipped = dict(result.report.skipped)
    assert sorted(Path(f).name for f in skipped) == ["slope0.dcm", "truncated.png"]
    assert any("RescaleSlope is 0" in r for r in skipped.values())
    report = json.loads(json.dumps(result.report.to_dict()))
    assert report["ignored_by_reason"] == {"DICOM without pixel data": 2, "DICOMDIR": 1, "hidden or system entry": 1}
    assert {Path(s["file"]).name for s in report["skipped"]} == {"slope0.dcm", "truncated.png"}
    assert report["images"] == 21 + 20 + 2 + 10 and report["volumes"] == 1
    assert "2 unreadable files skipped" in result.report.summary()
    # Two of 45 image files is 4.4%: above a 4% share, refused.
    with pytest.raises(ImageSourceError, match=r"2 of 46 image files \(4\.3%\) .* max_skipped = 4\.0%"):
        load_folder(tmp_path, T, progress=False, reading=ReadPolicy("skip", max_skipped=0.04))


def test_read_policy_values_are_checked() -> None:
    for bad in (
        {"unreadable": "ignore"},
        {"max_skipped": 1.5},
        {"max_skipped": "5%"},
        {"volume_axis": 3},
        {"volume_axis": True},
        {"slice_range": (0.6, 0.4)},
        {"slice_range": (0.0,)},
        {"slice_range": (0.0, float("nan"))},
    ):
        with pytest.raises(ValueError):
            ReadPolicy(**bad)
    assert ReadPolicy(slice_range=(0.25, 0.75)).slices(10) == [2, 3, 4, 5, 6]
    assert ReadPolicy(slice_range=(0.5, 0.51)).slices(4) == [2]  # never empty


# ------------------------------------------------------------------ volumes


def test_a_multi_frame_dicom_is_read_as_slices_of_one_patient(tmp_path: Path) -> None:
    path = dicom_file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    every = decode_slices(path)
    assert len(every.images) == 10 and every.patient_id == str(ds.PatientID).strip()
    middle = decode_slices(path, policy=ReadPolicy(slice_range=(0.25, 0.75)))
    assert [np.asarray(i).tolist() for i in middle.images] == [np.asarray(i).tolist() for i in every.images[2:7]]
    across = decode_slices(path, policy=ReadPolicy(volume_axis=1))
    assert len(across.images) == frames.shape[1] and np.asarray(across.images[0]).shape == (10, 64)
    with pytest.raises(ImageDecodeError, match="multi-frame"):
        decode_file(path)
    (tmp_path / "a").mkdir()
    shutil.copy(path, tmp_path / "a" / "vol.dcm")
    result = load_folder(tmp_path, T, progress=False)
    assert len(result.data) == 10 and len(set(result.files)) == 1 and len(set(result.dicom_patients)) == 1


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def test_a_nifti_volume_is_read_as_axial_slices_in_canonical_orientation(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(8, 6, 5)).astype(np.float32)
    ras = decode_slices(_nifti(tmp_path / "ras.nii.gz", volume))
    assert len(ras.images) == 5 and np.asarray(ras.images[0]).shape == (6, 8)
    # The same volume stored left-to-right flipped (an LAS affine) gives the same slices.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    las = decode_slices(_nifti(tmp_path / "las.nii", volume[::-1].copy(), flip))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ras.images, las.images, strict=True))
    # One range for the whole volume: the brightest voxel is 255 in its slice only.
    top = int(np.argmax(volume.max(axis=(0, 1))))
    assert [int(np.asarray(i).max()) == 255 for i in ras.images].count(True) == 1
    assert int(np.asarray(ras.images[top]).max()) == 255
    sagittal = decode_slices(tmp_path / "ras.nii.gz", policy=ReadPolicy(volume_axis=0))
    assert len(sagittal.images) == 8 and np.asarray(sagittal.images[0]).shape == (5, 6)
    assert len(decode_slices(_nifti(tmp_path / "flat.nii", volume[:, :, :1].copy())).images) == 1
    with pytest.raises(ImageDecodeError, match="4D NIfTI series"):
        decode_slices(_nifti(tmp_path / "series.nii", np.zeros((4, 4, 3, 2), np.float32)))
    bad = volume.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ImageDecodeError, match="NaN"):
        decode_slices(_nifti(tmp_path / "nan.nii", bad))
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ImageDecodeError, match="NIfTI"):
        decode_slices(tmp_path / "broken.nii.gz")


def test_nifti_volumes_in_a_folder_are_one_file_each(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for cls in ("a", "b"):
        _nifti(tmp_path / cls / "v.nii.gz", rng.normal(size=(8, 8, 6)).astype(np.float32))
    result = load_folder(tmp_path, T, progress=False, reading=ReadPolicy(slice_range=(0.0, 0.5)))
    assert result.data.class_counts() == [3, 3] and result.report.volumes == 2
    assert len(set(result.files)) == 2


def test_a_manifest_row_that_is_no_image_is_ignored_and_a_class_of_none_is_refused(tmp_path: Path) -> None:
    from shared.images.manifest import load_manifest

    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8), "L").save(tmp_path / f"{i}.png")
    shutil.copy(dicom_file("test-SR.dcm"), tmp_path / "sr.dcm")
    (tmp_path / "m.csv").write_text("path,label\n0.png,a\n1.png,b\nsr.dcm,b\n")
    result = load_manifest(tmp_path / "m.csv", T, progress=False)
    assert len(result.data) == 2 and dict(result.report.ignored_by_reason) == {"DICOM without pixel data": 1}
    (tmp_path / "m.csv").write_text("path,label\n0.png,a\nsr.dcm,b\n")
    with pytest.raises(ImageSourceError, match=r"\['b'\] have no readable image left .*hold no image"):
        load_manifest(tmp_path / "m.csv", T, progress=False)


def test_a_nifti_header_is_checked_before_any_voxel_is_read(tmp_path: Path) -> None:
    """Reorienting (an LAS file, the usual case) reads every voxel: a header claiming 800^3 voxels over a few
    bytes of data is refused from the header, as are an empty axis and voxels that are not real numbers."""
    import nibabel as nib

    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    header = nib.Nifti1Header()
    header.set_data_shape((800, 800, 800))
    header.set_data_dtype(np.float32)
    header.set_sform(las, code=1)
    header.set_qform(las, code=1)
    huge = tmp_path / "huge.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), las), huge)
    raw = bytearray(huge.read_bytes())
    raw[:348] = header.binaryblock[:348]  # the same file, now claiming 800 x 800 x 800 voxels
    huge.write_bytes(bytes(raw))
    with pytest.raises(ImageDecodeError, match="beyond"):
        decode_slices(huge)
    header.set_data_shape((512, 512, 300))
    header.set_data_dtype(np.float64)  # 79 M voxels (within 2^28), 629 MB
    raw[:348] = header.binaryblock[:348]
    huge.write_bytes(bytes(raw))
    with pytest.raises(ImageDecodeError, match="bytes of float64 voxels"):
        decode_slices(huge)
    with pytest.raises(ImageDecodeError, match="empty volume"):
        decode_slices(_nifti(tmp_path / "empty.nii", np.zeros((10, 10, 0), np.float32), las))
    with pytest.raises(ImageDecodeError, match="complex"):
        decode_slices(_nifti(tmp_path / "complex.nii", np.ones((4, 4, 3), np.complex64), las))
