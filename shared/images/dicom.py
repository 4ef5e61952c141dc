"""Decode one DICOM file with pydicom into 8-bit ``L`` or ``RGB`` images, as a viewer would show it.

Grayscale: the file's own Modality LUT or RescaleSlope/RescaleIntercept (``apply_modality_lut``),
then its VOI LUT or WindowCenter/WindowWidth (``apply_voi_lut``, first view), then a fixed linear
map of the VOI output range onto 0..255 (so a pixel at the window centre is about 128), and
MONOCHROME1 inverted (there, high values are dark). Without any VOI information, or with an
invalid window (a Window Width of 0 or below, or not a finite number: pydicom #1073; viewers show
such files), the modality values are stretched by the image's (the volume's) own min and max, as
for 16-bit PNGs. ``RescaleSlope = 0`` would map every pixel to the intercept (an all-black image):
refused as unreadable. PALETTE COLOR uses the file's colour LUT; RGB/YBR pixels are used as RGB
(stretched by min-max when above 8 bits).

A multi-frame file is a volume (or a cine loop): its frames become 2D slices as ``ReadPolicy``
says (axis, slice range). Not images, ignored by collections (``NotAnImage``): a ``DICOMDIR`` and
DICOM objects without pixel data (structured reports, RT structure sets and plans, presentation
states). Compressed transfer syntaxes are decoded by pydicom's plugins: pylibjpeg with libjpeg
(JPEG baseline, extended 12-bit, lossless, JPEG-LS), openjpeg (JPEG 2000) and rle (RLE Lossless).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared.identifiers import normalise_identifier
from shared.images.errors import IGNORED_DICOMDIR, IGNORED_NO_PIXELS, ImageDecodeError, NotAnImage
from shared.images.pixels import (
    MAX_IMAGE_PIXELS,
    MAX_SLICES,
    MAX_VOLUME_BYTES,
    MAX_VOLUME_VOXELS,
    check_finite,
    check_pixel_count,
    stretch_to_uint8,
    value_range,
)
from shared.images.policy import ReadPolicy

_PROBE = np.array([-1e30, 1e30])  # far outside any pixel value: VOI functions map these to their output bounds
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the SOP class of a DICOMDIR


@dataclass(frozen=True)
class DicomImages:
    images: list[Image.Image]  # one per kept slice (one for a single-frame file)
    patient_id: str  # (0010,0020) PatientID, "" when absent


def _first(value) -> float:
    if value is None:
        raise ValueError("missing")
    if not isinstance(value, str | bytes | int | float) and hasattr(value, "__len__"):
        value = value[0]
    return float(value)


def _valid_window(ds) -> bool:
    """A usable WindowCenter/WindowWidth: both present, finite, width at least 1 (above 0 for LINEAR_EXACT);
    viewers ignore any other window."""
    try:
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    except (ValueError, TypeError, IndexError):
        return False
    least = 0 if str(ds.get("VOILUTFunction", "LINEAR")).upper() == "LINEAR_EXACT" else 1  # as pydicom requires
    return math.isfinite(center) and math.isfinite(width) and width > 0 and width >= least


def _voi_range(ds) -> tuple[float, float] | None:
    """The output range of the file's VOI LUT or valid window; None: stretch by the values' own range."""
    from pydicom.pixels import apply_voi_lut

    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if not _valid_window(ds):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = (float(v) for v in apply_voi_lut(_PROBE.copy(), ds))
    if not np.isfinite([lo, hi]).all() or hi == lo:
        return None
    return lo, hi


def _check_slope(ds, path: Path) -> None:
    slope = ds.get("RescaleSlope")
    if slope is None or ds.get("ModalityLUTSequence"):  # a Modality LUT takes precedence over the slope
        return
    try:
        value = _first(slope)
    except (ValueError, TypeError, IndexError) as exc:
        raise ImageDecodeError(path, f"RescaleSlope {slope!r} is not a number") from exc
    if not math.isfinite(value):
        raise ImageDecodeError(path, f"RescaleSlope is {value}")
    if value == 0:
        raise ImageDecodeError(
            path, f"RescaleSlope is {value}: every pixel would map to the intercept (an all-black image)"
        )


def _slices(arr: np.ndarray, frames: int, policy: ReadPolicy) -> tuple[int, list[int]]:
    """(axis, kept indices) of a pixel array whose first axis is the frames."""
    if frames == 1:
        return 0, [0]
    axis = 0 if policy.volume_axis is None else policy.volume_axis
    return axis, policy.slices(arr.shape[axis])


def _gray(arr: np.ndarray, ds, path: Path, axis: int, kept: list[int]) -> list[np.ndarray]:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    voi = _voi_range(ds)  # None (no VOI, or an invalid window): the volume's own range
    invert = ds.PhotometricInterpretation == "MONOCHROME1"

    def modality(k: int) -> np.ndarray:
        return apply_modality_lut(np.take(arr, k, axis=axis), ds)

    if voi is None:  # one range for the whole volume (all slices), so kept slices look the same whichever are kept
        lo, hi = value_range((modality(k) for k in range(arr.shape[axis])), path)
    out = []
    for k in kept:
        values = modality(k)
        if voi is not None:
            check_finite(values, path)  # a window would clip NaN to black and infinities to white
            mapped = (np.asarray(apply_voi_lut(values, ds), dtype=np.float64) - voi[0]) * (255.0 / (voi[1] - voi[0]))
            u8 = np.rint(np.clip(mapped, 0.0, 255.0)).astype(np.uint8)  # within range; clip guards rounding
        else:
            u8 = stretch_to_uint8(values, path, lo, hi)
        out.append(255 - u8 if invert else u8)
    return out


def _colour(arr: np.ndarray, ds, path: Path, axis: int, kept: list[int]) -> list[np.ndarray]:
    from pydicom.pixels import apply_color_lut

    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.shape[-1] != 3 or arr.ndim != 4:
        raise ImageDecodeError(path, f"colour pixel data has shape {arr.shape[1:]}, expected rows x columns x 3")
    slices = [np.take(arr, k, axis=axis) for k in kept]
    if arr.dtype == np.uint8:
        return slices
    lo, hi = value_range([arr], path)
    return [stretch_to_uint8(s, path, lo, hi) for s in slices]


def _read(path: Path):
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise ImageDecodeError(path, f"cannot be read as DICOM ({type(exc).__name__}: {exc})") from exc
    # Files written without a meta header (or without its Transfer Syntax UID) were still read
    # in some uncompressed encoding: name it, as viewers do, so the pixel data can be decoded.
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}) and implicit is not None:
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _bytes_per_pixel(ds, path: Path) -> int:
    """What decoding allocates a pixel: samples x bytes a sample (a palette expands to three samples)."""
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(path, f"DICOM SamplesPerPixel or BitsAllocated invalid ({exc})") from exc
    if not (1 <= samples <= 4 and 1 <= bits <= 64):
        raise ImageDecodeError(path, f"DICOM declares {samples} samples of {bits} bits a pixel")
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        samples = 3 * max(samples, 1)
    return samples * -(-bits // 8)


def decode_dicom_slices(
    path: str | Path, policy: ReadPolicy | None = None, max_pixels: int = MAX_IMAGE_PIXELS
) -> DicomImages:
    """A DICOM file's image(s) as 8-bit ``L`` or ``RGB``: one, or a volume's kept slices."""
    path = Path(path)
    policy = policy or ReadPolicy()
    ds = _read(path)
    meta = getattr(ds, "file_meta", None)
    sop = str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", "") or "")
    if sop == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise NotAnImage(path, IGNORED_DICOMDIR)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise NotAnImage(path, IGNORED_NO_PIXELS)
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        interpretation = str(ds.PhotometricInterpretation)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageDecodeError(path, f"DICOM image attributes missing or invalid ({exc})") from exc
    check_pixel_count(path, columns, rows, max_pixels)
    if not 1 <= frames <= MAX_SLICES or rows * columns * frames > MAX_VOLUME_VOXELS:
        raise ImageDecodeError(
            path,
            f"declares {frames} frames of {rows} x {columns}, beyond the limits ({MAX_SLICES} frames, "
            f"{MAX_VOLUME_VOXELS:,} voxels a file)",
        )
    stored = rows * columns * frames * _bytes_per_pixel(ds, path)
    if stored > MAX_VOLUME_BYTES:
        raise ImageDecodeError(
            path, f"declares {stored:,} bytes of decoded pixels, beyond the limit of {MAX_VOLUME_BYTES:,} a file"
        )
    _check_slope(ds, path)
    try:
        arr = ds.pixel_array
        if frames == 1:
            arr = arr[None]
        axis, kept = _slices(arr, frames, policy)
        if interpretation in ("MONOCHROME1", "MONOCHROME2"):
            slices = _gray(arr, ds, path, axis, kept)
        elif interpretation in ("RGB", "PALETTE COLOR") or interpretation.startswith("YBR"):
            slices = _colour(arr, ds, path, axis, kept)
        else:
            raise ImageDecodeError(path, f"unsupported DICOM PhotometricInterpretation {interpretation!r}")
    except ImageDecodeError:
        raise
    except Exception as exc:  # missing decoder plugin, bad pixel data length, bad LUT ...
        syntax = getattr(meta, "TransferSyntaxUID", None)
        where = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageDecodeError(path, f"DICOM pixel data cannot be decoded{where}: {type(exc).__name__}: {exc}") from exc
    return DicomImages([Image.fromarray(s) for s in slices], normalise_identifier(ds.get("PatientID", "") or ""))


def decode_dicom(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """One single-frame DICOM image as 8-bit ``L`` (monochrome) or ``RGB``; a multi-frame file is refused."""
    images = decode_dicom_slices(path, max_pixels=max_pixels).images
    if len(images) > 1:
        raise ImageDecodeError(path, f"is a multi-frame DICOM ({len(images)} frames); read it as a volume of slices")
    return images[0]
