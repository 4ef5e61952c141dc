"""What every decoder (Pillow images, DICOM, NIfTI) shares: how large a file may declare itself, and how
high-depth values are stretched onto 0..255 (by the image's, or the volume's, own min and max, never
clipped). Below ``decode``, ``dicom`` and ``nifti``, which import it and never each other's helpers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from shared.images.errors import ImageDecodeError

# Pillow's own default warning threshold (about 0.25 GiB of 24-bit pixels): far above any image a
# distillation needs, low enough that a hostile header cannot make the owner allocate gigabytes.
MAX_IMAGE_PIXELS = 89_478_485
# A volume (multi-frame DICOM, NIfTI) is read whole at its stored type, then sliced: 2**28 voxels
# (a 512 x 512 x 1024 CT, 512 MiB at 16 bits) bounds what one file may make the owner allocate.
MAX_VOLUME_VOXELS = 2**28
# ... and in bytes as stored (samples x bytes a sample: 32-bit, float or colour volumes are fewer voxels).
MAX_VOLUME_BYTES = 2**29
MAX_SLICES = 4096


def check_pixel_count(path: str | Path, width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            path,
            f"declares {width} x {height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
            "(decompression-bomb guard)",
        )


def value_range(arrays: Iterable[np.ndarray], path: str | Path = "<array>") -> tuple[float, float]:
    """(min, max) over ``arrays`` (a volume's slices); NaN or infinity refused."""
    lo, hi = math.inf, -math.inf
    for values in arrays:
        values = np.asarray(values)
        if values.dtype.kind == "f":
            check_finite(values, path)
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def stretch_to_uint8(
    values: np.ndarray, path: str | Path = "<array>", lo: float | None = None, hi: float | None = None
) -> np.ndarray:
    """Map an image's own value range (or the volume's ``lo``..``hi``) linearly onto 0..255; constant -> 0."""
    values = check_finite(np.asarray(values, dtype=np.float64), path)
    if lo is None or hi is None:
        lo, hi = value_range([values], path)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    # Halved first: hi - lo overflows to infinity for values near the float64 limits (every pixel would map to 0).
    return np.rint((values / 2 - lo / 2) / (hi / 2 - lo / 2) * 255.0).astype(np.uint8)


def check_finite(values: np.ndarray, path: str | Path) -> np.ndarray:
    """``values``, or an ImageDecodeError naming the file and how many pixels are NaN or infinite."""
    finite = np.isfinite(values)
    if not finite.all():
        raise ImageDecodeError(path, f"holds {int((~finite).sum())} NaN or infinite values")
    return values
