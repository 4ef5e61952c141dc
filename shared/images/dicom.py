"""Decode one DICOM file with pydicom into an 8-bit ``L`` or ``RGB`` image, as a viewer would show it.

Grayscale: the file's own Modality LUT or RescaleSlope/RescaleIntercept (``apply_modality_lut``),
then its VOI LUT or WindowCenter/WindowWidth (``apply_voi_lut``, first view), then a fixed linear
map of the VOI output range onto 0..255 (so a pixel at the window centre is about 128), and
MONOCHROME1 inverted (there, high values are dark). Without any VOI information the modality
values are stretched by the image's own min and max, as for 16-bit PNGs. PALETTE COLOR uses the
file's colour LUT; RGB/YBR pixels are used as RGB (stretched by min-max when above 8 bits).
Multi-frame files (volumes, cine loops) are refused: one file must be one image. Compressed
transfer syntaxes need pydicom's optional decoders (pylibjpeg, gdcm); without them the error
names the file and the transfer syntax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shared.images.decode import MAX_IMAGE_PIXELS, check_pixel_count, stretch_to_uint8
from shared.images.errors import ImageDecodeError

_PROBE = np.array([-1e30, 1e30])  # far outside any pixel value: VOI functions map these to their output bounds


def _voi_to_uint8(values: np.ndarray, ds) -> np.ndarray | None:
    """Apply the file's VOI LUT/window and map its output range to 0..255; None when it has neither."""
    from pydicom.pixels import apply_voi_lut

    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return None
    out = apply_voi_lut(values, ds)
    if has_lut:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**bits - 1)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            lo, hi = (float(v) for v in apply_voi_lut(_PROBE.copy(), ds))
    if not np.isfinite([lo, hi]).all() or hi == lo:
        return None
    scaled = (np.asarray(out, dtype=np.float64) - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)  # already within range; clip guards rounding


def _gray(ds, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(ds.pixel_array, ds)
    out = _voi_to_uint8(values, ds)
    if out is None:
        out = stretch_to_uint8(values, path)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 255 - out
    return out


def _colour(ds, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    arr = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageDecodeError(path, f"colour pixel data has shape {arr.shape}, expected rows x columns x 3")
    if arr.dtype == np.uint8:
        return arr
    return stretch_to_uint8(arr, path)


def decode_dicom(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """One single-frame DICOM image as 8-bit ``L`` (monochrome) or ``RGB``."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise ImageDecodeError(path, f"cannot be read as DICOM ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageDecodeError(path, "is a DICOM file without pixel data")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        interpretation = str(ds.PhotometricInterpretation)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageDecodeError(path, f"DICOM image attributes missing or invalid ({exc})") from exc
    check_pixel_count(path, columns, rows * frames, max_pixels)
    if frames > 1:
        raise ImageDecodeError(path, f"is a multi-frame DICOM ({frames} frames); store one image per file")
    try:
        if interpretation in ("MONOCHROME1", "MONOCHROME2"):
            return Image.fromarray(_gray(ds, path))
        if interpretation in ("RGB", "PALETTE COLOR") or interpretation.startswith("YBR"):
            return Image.fromarray(_colour(ds, path))
    except ImageDecodeError:
        raise
    except Exception as exc:  # missing decoder plugin, bad pixel data length, bad LUT ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        where = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageDecodeError(path, f"DICOM pixel data cannot be decoded{where}: {type(exc).__name__}: {exc}") from exc
    raise ImageDecodeError(path, f"unsupported DICOM PhotometricInterpretation {interpretation!r}")
