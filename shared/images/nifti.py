"""NIfTI volumes (``.nii``, ``.nii.gz``, read with nibabel) as 8-bit 2D slices.

The volume is first brought to the closest canonical orientation (RAS+: indices increase towards
the patient's Right, Anterior and Superior), so the default axis 2 gives axial slices whatever the
scanner's storage order. Its scaling
(``scl_slope``/``scl_inter``) is applied by nibabel. Slices are shown as viewers do: the first
remaining axis across, the second upwards. Values are stretched to 0..255 by the volume's min and
max (a NIfTI carries no window), so slices keep their relative brightness and look the same
whichever are kept; NaN or infinite values are refused. A 2D image (or a volume one slice thick)
is one image; a 4D series with more than one volume is refused (store one volume per file). The
header's shape and voxel type are checked (size limits, no empty axis, real numbers) before any voxel
is read, reorientation included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shared.images.errors import ImageDecodeError
from shared.images.pixels import (
    MAX_SLICES,
    MAX_VOLUME_BYTES,
    MAX_VOLUME_VOXELS,
    check_pixel_count,
    stretch_to_uint8,
    value_range,
)
from shared.images.policy import ReadPolicy

NIFTI_DEFAULT_AXIS = 2  # axial, in RAS+ orientation


def _load(path: Path):
    """The image in RAS+ orientation, its header checked first: reorienting reads every voxel."""
    import nibabel as nib

    try:
        image = nib.load(path)
        _check_header(path, tuple(int(n) for n in image.shape), np.dtype(image.get_data_dtype()))
        return nib.as_closest_canonical(image)
    except ImageDecodeError:
        raise
    except Exception as exc:  # ImageFileError, gzip and header errors ...
        raise ImageDecodeError(path, f"cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc


def _check_header(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse, from the header alone, what could not become images: a series, an empty axis, a volume
    beyond the size limit, or voxels that are not real numbers (complex, RGB records)."""
    if any(n > 1 for n in shape[3:]):
        raise ImageDecodeError(path, f"is a {len(shape)}D NIfTI series of shape {shape}; store one volume per file")
    if not shape or min(shape) < 1:
        raise ImageDecodeError(path, f"declares an empty volume of shape {shape}")
    voxels = int(np.prod(shape[:3], dtype=np.int64))
    if voxels > MAX_VOLUME_VOXELS or max(shape[:3]) > max(MAX_SLICES, 65535):
        raise ImageDecodeError(path, f"declares a volume of {shape[:3]}, beyond {MAX_VOLUME_VOXELS:,} voxels a file")
    if dtype.kind not in "biuf":
        raise ImageDecodeError(path, f"holds {dtype} voxels; only real-valued (integer or float) volumes are read")
    if voxels * dtype.itemsize > MAX_VOLUME_BYTES:
        raise ImageDecodeError(
            path, f"declares {voxels * dtype.itemsize:,} bytes of {dtype} voxels, beyond {MAX_VOLUME_BYTES:,} a file"
        )


def decode_nifti_slices(path: str | Path, policy: ReadPolicy | None, max_pixels: int) -> list[Image.Image]:
    """The kept 2D slices of a NIfTI file (one image for a 2D file) as 8-bit ``L`` images."""
    path = Path(path)
    policy = policy or ReadPolicy()
    image = _load(path)
    shape = (tuple(int(n) for n in image.shape) + (1, 1, 1))[:3]  # the header was checked in _load
    is_volume = sum(n > 1 for n in shape) == 3
    if is_volume:
        axis = NIFTI_DEFAULT_AXIS if policy.volume_axis is None else policy.volume_axis
    else:  # a 2D image, stored in any plane: cut across its thin axis
        axis = max(a for a, n in enumerate(shape) if n == 1)
    if is_volume and shape[axis] > MAX_SLICES:
        raise ImageDecodeError(path, f"has {shape[axis]} slices along axis {axis}, above {MAX_SLICES}")
    plane = [n for a, n in enumerate(shape) if a != axis]
    check_pixel_count(path, plane[0], plane[1], max_pixels)
    try:
        data = np.asanyarray(image.dataobj).reshape(shape)
    except Exception as exc:
        raise ImageDecodeError(path, f"NIfTI voxel data cannot be read ({type(exc).__name__}: {exc})") from exc
    kept = policy.slices(shape[axis]) if is_volume else [0]
    lo, hi = value_range([data], path)  # the whole volume's range, whichever slices are kept
    slices = [np.flipud(np.take(data, k, axis=axis).T) for k in kept]  # rows: 2nd remaining axis, upwards
    return [Image.fromarray(stretch_to_uint8(s, path, lo, hi)) for s in slices]
