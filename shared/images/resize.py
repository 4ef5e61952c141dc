"""Bring decoded images to the output shape: ``channels`` x ``image_size`` x ``image_size`` uint8.

Two explicit policies, both with Pillow's antialiased bilinear filter:

* ``crop`` (default): scale the shorter side to ``image_size``, keep the centre square. Nothing is
  distorted; the borders of the longer side are lost.
* ``pad`` (letterbox): scale the longer side to ``image_size``, centre it on a black square.
  Nothing is lost; the bands are zeros (black), like composited alpha.

Nothing here looks at statistics of the pixels across images: normalisation constants are public
and never computed from a private set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from shared.images.decode import convert_channels
from shared.images.policy import DEFAULT_RESIZE, RESIZE_POLICIES
from shared.progress import progress_bar

_FILTER = Image.Resampling.BILINEAR


def check_resize_policy(policy: str) -> None:
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")


def resize_image(image: Image.Image, image_size: int, policy: str = DEFAULT_RESIZE) -> Image.Image:
    """A square ``image_size`` image following ``policy`` (``crop`` or ``pad``)."""
    check_resize_policy(policy)
    w, h = image.size
    if (w, h) == (image_size, image_size):
        return image
    if policy == "crop":
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        # One resampling of the central square (same result as scale-then-crop, one pass, no rounding).
        return image.resize((image_size, image_size), _FILTER, box=(left, top, left + side, top + side))
    scale = image_size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    inner = image if (nw, nh) == (w, h) else image.resize((nw, nh), _FILTER)
    canvas = Image.new(image.mode, (image_size, image_size), 0)
    canvas.paste(inner, ((image_size - nw) // 2, (image_size - nh) // 2))
    return canvas


def to_chw(image: Image.Image) -> np.ndarray:
    """An ``L``/``RGB`` image as uint8 [C, H, W]."""
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


# The largest image side the loaders produce (config and command line read it from here).
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class TargetFormat:
    """What every loaded image becomes: ``channels`` (1 or 3) x ``image_size`` x ``image_size``."""

    image_size: int
    channels: int
    resize: str = DEFAULT_RESIZE

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be an integer from 1 to {MAX_IMAGE_SIZE}, got {self.image_size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        check_resize_policy(self.resize)

    def apply(self, image: Image.Image) -> np.ndarray:
        """A decoded ``L``/``RGB`` image as uint8 [channels, image_size, image_size]."""
        return to_chw(resize_image(convert_channels(image, self.channels), self.image_size, self.resize))

    def describe(self) -> str:
        return f"{self.channels} x {self.image_size} x {self.image_size} ({self.resize})"


def luma(rgb: np.ndarray, axis: int) -> np.ndarray:
    """ITU-R 601-2 luma of uint8 RGB along ``axis``, bit-identical to Pillow's ``convert("L")``."""
    r, g, b = (np.take(rgb, i, axis=axis).astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def convert_array_images(
    images: np.ndarray,
    image_size: int | None = None,
    channels: int | None = None,
    resize: str = DEFAULT_RESIZE,
    *,
    progress: bool = False,
    desc: str = "resizing",
) -> np.ndarray:
    """uint8 [N, C, H, W] (C 1 or 3) to the requested channels and size; None keeps that property.

    Used for sets that arrive as arrays (npz, MedMNIST, torchvision), with the same channel rule and
    resize policy as files, so a PNG folder and an npz of the same images load the same.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images [N, 1 or 3, H, W], got {images.dtype} {tuple(images.shape)}")
    check_resize_policy(resize)
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if channels == 1 and images.shape[1] == 3:
        images = luma(images, axis=1)[:, None]
    elif channels == 3 and images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    n, c, h, w = images.shape
    if image_size is None or (h, w) == (image_size, image_size):
        return np.ascontiguousarray(images)
    out = np.empty((n, c, image_size, image_size), dtype=np.uint8)
    for i in progress_bar(range(n), desc=desc, unit="img", disable=not progress):
        arr = images[i, 0] if c == 1 else images[i].transpose(1, 2, 0)
        out[i] = to_chw(resize_image(Image.fromarray(np.ascontiguousarray(arr)), image_size, resize))
    return out
