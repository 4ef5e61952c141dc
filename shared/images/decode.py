"""Decode one image file faithfully into an 8-bit PIL image of mode ``L`` or ``RGB``.

Rules (each is the documented behaviour the tests pin):

* EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo comes out upright.
* Alpha (``LA``, ``RGBA``, ``PA``, a palette with a transparent index) is composited on black:
  ``colour * alpha / 255``. Black matches the zero padding of the ``pad`` resize policy, and
  transparent pixels carry no defined colour to keep.
* Palette (``P``) images become RGB; ``1`` becomes 0/255 gray; ``CMYK``, ``YCbCr`` and other colour
  modes are converted to RGB by Pillow (no ICC colour management).
* 16-bit (``I;16``, ``I;16B``, ...), 32-bit integer (``I``) and float (``F``) images are stretched
  to 0..255 by their own minimum and maximum (per image), never clipped: a 12-bit X-ray stored
  in 16 bits uses the full 8-bit range instead of coming out black. A constant image becomes 0.
  Float images with NaN or infinity are refused. (Pillow itself reads 16-bit-per-channel RGB PNGs
  as 8-bit RGB by keeping the high byte: a fixed rule that does not clip either.)
* A multi-page TIFF (a stack or volume) is refused; other multi-frame files give their first frame.
* Decompression bombs: a file whose header declares more than ``MAX_IMAGE_PIXELS`` pixels (``shared.images.pixels``)
  is refused before its pixel data is read; Pillow's own ``DecompressionBombWarning`` and
  ``DecompressionBombError`` become ``ImageDecodeError`` too. Pillow's global settings
  (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) are not changed; the warning is
  caught with ``warnings.catch_warnings``, which is not thread-safe, so decode from one thread.
* A truncated, corrupt or unidentifiable file raises ``ImageDecodeError`` naming the file.

DICOM files (``.dcm``/``.dicom``, or the ``DICM`` magic at byte 128) go to ``shared.images.dicom``,
NIfTI volumes (``.nii``, ``.nii.gz``) to ``shared.images.nifti``; a volume gives several 2D slices
(``decode_slices``, as ``shared.images.policy.ReadPolicy`` says).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from shared.images.errors import ImageDecodeError
from shared.images.pixels import MAX_IMAGE_PIXELS, check_pixel_count, stretch_to_uint8
from shared.images.policy import ReadPolicy

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def is_dicom(path: str | Path) -> bool:
    """A DICOM file by extension or by the ``DICM`` magic at offset 128 (files exported without one)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_EXTENSIONS:
        return True
    if suffix in IMAGE_EXTENSIONS:  # no need to open it twice
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_nifti(path: str | Path) -> bool:
    """A NIfTI volume: ``.nii`` or ``.nii.gz`` (any case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def is_image_file(path: str | Path) -> bool:
    """A file this layer can decode: a known image extension (any case), a NIfTI volume or a DICOM file."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS or is_nifti(path) or is_dicom(path)


def composite_on_black(image: Image.Image) -> Image.Image:
    """``LA``/``RGBA`` to ``L``/``RGB``: each colour multiplied by alpha / 255 (rounded)."""
    arr = np.asarray(image)
    colour = arr[..., :-1].astype(np.uint32)
    alpha = arr[..., -1:].astype(np.uint32)
    out = ((colour * alpha + 127) // 255).astype(np.uint8)
    return Image.fromarray(out[..., 0] if out.shape[-1] == 1 else out)


def to_8bit(image: Image.Image, path: str | Path = "<image>") -> Image.Image:
    """Any Pillow mode to 8-bit ``L`` or ``RGB`` following the module's rules."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(stretch_to_uint8(np.asarray(image), path))
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
        return composite_on_black(image) if transparent else image
    if mode in ("LA", "RGBA"):
        return composite_on_black(image)
    if "A" in image.getbands():
        return composite_on_black(image.convert("RGBA"))
    return image.convert("RGB")  # CMYK, YCbCr, RGBX, LAB, HSV ...


def convert_channels(image: Image.Image, channels: int) -> Image.Image:
    """``L``/``RGB`` to the requested channel count: gray repeated to RGB, RGB to ITU-R 601-2 luma."""
    if channels == 1:
        return image if image.mode == "L" else image.convert("L")
    if channels == 3:
        return image if image.mode == "RGB" else image.convert("RGB")
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def _decode_with_pillow(path: Path, draft_size: int | None, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            check_pixel_count(path, im.width, im.height, max_pixels)
            if im.format == "TIFF" and getattr(im, "n_frames", 1) > 1:
                raise ImageDecodeError(path, f"is a multi-page TIFF ({im.n_frames} pages); store one image per file")
            if draft_size and im.format == "JPEG":
                # libjpeg's DCT scaling: decode at the smallest 1/2, 1/4 or 1/8 scale still at least
                # draft_size on both sides (a 4000 px photo for a 64 px target decodes 8x faster).
                im.draft(im.mode, (draft_size, draft_size))
            im.load()
            upright = ImageOps.exif_transpose(im)
        return to_8bit(upright, path)


def _decode_image(path: Path, draft_size: int | None, max_pixels: int) -> Image.Image:
    try:
        return _decode_with_pillow(path, draft_size, max_pixels)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(path, f"refused as a decompression bomb ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(path, "file does not exist") from exc
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error ...
        raise ImageDecodeError(path, f"cannot be decoded as an image ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class Decoded:
    """A file's images (one, or a volume's kept slices) and the patient it names ("" if it names none)."""

    images: list[Image.Image]
    patient_id: str = ""


def decode_slices(
    path: str | Path,
    channels: int | None = None,
    *,
    policy: ReadPolicy | None = None,
    draft_size: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Decoded:
    """A file's images as 8-bit ``L``/``RGB``: one for an image file, the kept slices of a volume
    (multi-frame DICOM, NIfTI) as ``policy`` says. Raises ``ImageDecodeError``, or ``NotAnImage``
    for a file that holds no image (a DICOMDIR, a DICOM without pixel data)."""
    path = Path(path)
    if is_nifti(path):
        from shared.images.nifti import decode_nifti_slices

        decoded = Decoded(decode_nifti_slices(path, policy, max_pixels))
    elif is_dicom(path):
        from shared.images.dicom import decode_dicom_slices

        dicom = decode_dicom_slices(path, policy, max_pixels)
        decoded = Decoded(dicom.images, dicom.patient_id)
    else:
        decoded = Decoded([_decode_image(path, draft_size, max_pixels)])
    if channels is not None:
        decoded = Decoded([convert_channels(i, channels) for i in decoded.images], decoded.patient_id)
    return decoded


def decode_file(
    path: str | Path, channels: int | None = None, *, draft_size: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS
) -> Image.Image:
    """One file as one 8-bit ``L`` or ``RGB`` image (``channels`` 1 or 3 to convert, None to keep);
    a volume is refused here (collections read it as slices: ``decode_slices``).

    ``draft_size`` lets JPEGs decode at a reduced scale that stays at least that large on both
    sides (used when the caller will shrink to that size anyway). Raises ``ImageDecodeError``.
    """
    path = Path(path)
    if is_dicom(path) and not is_nifti(path):
        from shared.images.dicom import decode_dicom

        image = decode_dicom(path, max_pixels=max_pixels)
        return convert_channels(image, channels) if channels is not None else image
    images = decode_slices(path, channels, draft_size=draft_size, max_pixels=max_pixels).images
    if len(images) > 1:
        raise ImageDecodeError(path, f"is a volume of {len(images)} slices; read it as a collection of slices")
    return images[0]
