"""DICOM files written by pydicom itself: rescale and window applied, MONOCHROME1 inverted,
min-max without a window, found by magic without an extension, multi-frame refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from shared.images.decode import decode_file, is_dicom
from shared.images.errors import ImageDecodeError


def _dataset(modality: str) -> Dataset:
    """A Secondary Capture dataset with its file meta (Explicit VR Little Endian), before any pixel attribute."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    return ds


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    slope: float | None = 1.0,
    intercept: float | None = -1024.0,
    window: tuple[float, float] | None = (40.0, 400.0),
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    frames: int = 1,
) -> Path:
    """A minimal single-frame 16-bit grayscale DICOM (Explicit VR Little Endian) with a preamble."""
    ds = _dataset("CT")
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _pixels(path: Path) -> list[list[int]]:
    return np.asarray(decode_file(path)).astype(int).tolist()


def test_rescale_and_window_are_applied(tmp_path: Path) -> None:
    # stored 1064 -> HU 40 (the window centre); 0 -> -1024 (below the window); 4095 -> 3071 (above)
    path = write_dicom(tmp_path / "ct.dcm", np.array([[1064, 0], [4095, 1064 - 100]], dtype=np.uint16))
    out = _pixels(path)
    assert abs(out[0][0] - 128) <= 1
    assert out[0][1] == 0 and out[1][0] == 255
    assert abs(out[1][1] - (128 - 64)) <= 1  # 100 HU below the centre of a 400 HU window: a quarter down


def test_slope_enters_before_the_window(tmp_path: Path) -> None:
    # stored 70 with slope 2, intercept -100 -> 40, the window centre; stored 0 -> -100, inside the window
    path = write_dicom(tmp_path / "s.dcm", np.array([[70, 0, 4095]], dtype=np.uint16), slope=2.0, intercept=-100.0)
    out = _pixels(path)
    inside = ((-100 - 39.5) / 399 + 0.5) * 255  # DICOM's LINEAR window: 38.4 (without the rescale: 0)
    assert abs(out[0][0] - 128) <= 1 and abs(out[0][1] - inside) <= 1 and out[0][2] == 255


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = np.array([[1064, 0, 4095]], dtype=np.uint16)
    normal = _pixels(write_dicom(tmp_path / "m2.dcm", pixels))
    inverted = _pixels(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    assert inverted == [[255 - v for v in normal[0]]]
    assert inverted[0][1] == 255 and inverted[0][2] == 0


def test_without_window_values_are_stretched(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "nw.dcm", np.array([[100, 200, 300]], dtype=np.uint16), window=None)
    assert _pixels(path) == [[0, 128, 255]]
    plain = write_dicom(tmp_path / "plain.dcm", np.array([[5, 10]], dtype=np.uint16), slope=None, window=None)
    assert _pixels(plain) == [[0, 255]]


def test_dicom_is_found_by_magic_without_extension(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "IM0001", np.array([[1064, 0]], dtype=np.uint16))
    assert is_dicom(path)
    assert decode_file(path, channels=3).mode == "RGB"


def test_multiframe_and_broken_dicom_are_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "vol.dcm", np.zeros((2, 4, 4), dtype=np.uint16), frames=2)
    with pytest.raises(ImageDecodeError, match=r"vol\.dcm.*multi-frame"):
        decode_file(path)
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 10)
    with pytest.raises(ImageDecodeError, match=r"junk\.dcm"):
        decode_file(tmp_path / "junk.dcm")


def _float_dicom(path: Path, pixels: np.ndarray, window: tuple[float, float] | None) -> Path:
    """A Float Pixel Data (32-bit) grayscale DICOM, as parametric maps are written."""
    ds = _dataset("MR")
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 31, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.FloatPixelData = np.ascontiguousarray(pixels, dtype="<f4").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("window", [None, (50.0, 100.0)])
def test_nan_or_infinite_pixels_are_refused_with_or_without_a_window(tmp_path: Path, window) -> None:
    """A window clipped NaN to black and infinity to white, silently; without one it was refused. Now both are."""
    bad = np.array([[np.nan, 10.0], [np.inf, 60.0]], dtype=np.float32)
    with pytest.raises(ImageDecodeError, match="2 NaN or infinite values"):
        decode_file(_float_dicom(tmp_path / "f.dcm", bad, window))
    good = _pixels(_float_dicom(tmp_path / "g.dcm", np.array([[0.0, 50.0], [100.0, 25.0]], np.float32), window))
    assert good[0][0] == 0 and good[1][0] == 255


def test_a_header_declaring_more_decoded_bytes_than_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    """The voxel limit alone let 32-bit or colour frames decode to gigabytes: bytes are bounded too."""
    path = write_dicom(tmp_path / "deep.dcm", np.zeros((2, 2), np.uint16))
    from pydicom import dcmread

    ds = dcmread(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 256, 256, 2100  # 138 M voxels (within 2^28) of 32 bits: 550 MB
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="bytes of decoded pixels, beyond"):
        decode_file(path)
