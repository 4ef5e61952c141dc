"""Both resize policies give the right shape and put content where they say; arrays and files agree."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.images.resize import TargetFormat, convert_array_images, luma, resize_image, to_chw


def _wide() -> Image.Image:
    """80 x 40: red left quarter, green middle half, blue right quarter."""
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:60] = (0, 255, 0)
    arr[:, 60:] = (0, 0, 255)
    return Image.fromarray(arr)


def test_crop_keeps_the_centre_square() -> None:
    out = np.asarray(resize_image(_wide(), 20, "crop")).astype(int)
    assert out.shape == (20, 20, 3)
    # only the green centre; the filter reaches one source pixel past the crop, as scale-then-crop does
    assert (out[:, 1:-1, 1] == 255).all() and out[:, 1:-1, [0, 2]].max() == 0
    assert out[:, [0, -1], 1].min() > 200 and out[..., [0, 2]].max() < 40


def test_pad_letterboxes_on_black() -> None:
    out = np.asarray(resize_image(_wide(), 20, "pad")).astype(int)
    assert out.shape == (20, 20, 3)
    assert out[:5].max() == 0 and out[15:].max() == 0  # black bands above and below (80x40 -> 20x10)
    assert out[7:13, 0, 0].min() > 200 and out[7:13, 10, 1].min() > 200 and out[7:13, 19, 2].min() > 200


def test_tall_image_and_upscaling() -> None:
    tall = _wide().transpose(Image.Transpose.ROTATE_90)  # 40 x 80
    assert resize_image(tall, 64, "crop").size == (64, 64)
    padded = np.asarray(resize_image(tall, 64, "pad")).astype(int)
    assert padded[:, :16].max() == 0 and padded[:, 48:].max() == 0  # bands left and right
    assert resize_image(Image.new("L", (7, 7), 90), 7, "pad").size == (7, 7)


def test_target_format_output_and_validation() -> None:
    target = TargetFormat(16, 1, "pad")
    out = target.apply(_wide())
    assert out.shape == (1, 16, 16) and out.dtype == np.uint8
    assert TargetFormat(16, 3).apply(Image.new("L", (30, 10), 77)).shape == (3, 16, 16)
    for size, channels, policy in [(0, 1, "crop"), (8, 2, "crop"), (8, 1, "stretch")]:
        with pytest.raises(ValueError):
            TargetFormat(size, channels, policy)


def test_array_conversion_matches_the_file_path() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 3, 24, 40), dtype=np.uint8)
    arrays = convert_array_images(rgb, 16, 1, "crop")
    files = np.stack([TargetFormat(16, 1, "crop").apply(Image.fromarray(im.transpose(1, 2, 0))) for im in rgb])
    assert np.array_equal(arrays, files)
    gray = rgb[:, :1]
    assert np.array_equal(convert_array_images(gray, None, 3), np.repeat(gray, 3, axis=1))
    assert convert_array_images(gray, None, None).shape == gray.shape


def test_luma_is_bit_identical_to_pillow() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    assert np.array_equal(luma(rgb, axis=2), np.asarray(Image.fromarray(rgb).convert("L")))
    assert to_chw(Image.fromarray(rgb)).shape == (3, 50, 50)
