"""One file decodes faithfully: every Pillow mode, EXIF orientation, 16-bit and float scaling,
channel conversion, and clear errors (naming the file) for truncated, corrupt and bomb files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.images.decode import convert_channels, decode_file
from shared.images.errors import ImageDecodeError
from shared.images.pixels import MAX_IMAGE_PIXELS, stretch_to_uint8


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_gray_and_rgb_pass_through_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 20), dtype=np.uint8)
    rgb = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    g, c = decode_file(tmp_path / "g.png"), decode_file(tmp_path / "c.bmp")
    assert (g.mode, c.mode) == ("L", "RGB")
    assert np.array_equal(np.asarray(g), gray) and np.array_equal(np.asarray(c), rgb)


def test_sixteen_bit_full_range_maps_to_full_8_bit_range(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535, 16384]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "full.png")
    img = decode_file(tmp_path / "full.png")
    assert img.mode == "L"
    assert _arr(img).tolist() == [[0, 128, 255, 64]]


def test_narrow_sixteen_bit_range_is_stretched_not_clipped(tmp_path: Path) -> None:
    values = (1000 + np.arange(256, dtype=np.uint16)).reshape(16, 16)  # a 12-bit-like image in 16 bits
    Image.fromarray(values).save(tmp_path / "narrow.tif")
    out = _arr(decode_file(tmp_path / "narrow.tif"))
    assert out.min() == 0 and out.max() == 255
    assert np.array_equal(out, values.astype(int) - 1000)


def test_big_endian_int32_and_float_tiffs(tmp_path: Path) -> None:
    values = np.array([[100, 200], [300, 400]], dtype=np.uint16)
    Image.frombytes("I;16B", (2, 2), values.astype(">u2").tobytes()).save(tmp_path / "be.tif")
    Image.fromarray(np.array([[-500, 0], [250, 500]], dtype=np.int32)).save(tmp_path / "i32.tif")
    Image.fromarray(np.array([[-1.0, 0.0], [0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "be.tif").mode == "I;16B"
    assert _arr(decode_file(tmp_path / "be.tif")).tolist() == [[0, 85], [170, 255]]
    assert _arr(decode_file(tmp_path / "i32.tif")).tolist() == [[0, 128], [191, 255]]
    assert _arr(decode_file(tmp_path / "f.tif")).tolist() == [[0, 128], [191, 255]]


def test_float_with_nan_is_refused_naming_the_file(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(ImageDecodeError, match=r"nan\.tif.*NaN"):
        decode_file(tmp_path / "nan.tif")


def test_constant_high_depth_image_becomes_zero() -> None:
    assert stretch_to_uint8(np.full((3, 3), 4000)).max() == 0


def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path) -> None:
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, :20] = (255, 0, 0)  # left half red
    img[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed after a 90 degree clockwise rotation
    Image.fromarray(img).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    out = _arr(decode_file(tmp_path / "phone.jpg"))
    assert out.shape == (40, 20, 3)  # now portrait
    top, bottom = out[:15].mean(axis=(0, 1)), out[25:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 50  # the left edge became the top: red
    assert bottom[2] > 200 and bottom[0] < 50


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    assert _arr(decode_file(tmp_path / "p.png")).tolist() == [[[255, 0, 0], [0, 255, 0]]]
    pal.save(tmp_path / "pt.png", transparency=1)  # index 1 fully transparent -> black
    assert _arr(decode_file(tmp_path / "pt.png")).tolist() == [[[255, 0, 0], [0, 0, 0]]]
    assert _arr(decode_file(tmp_path / "p.png", channels=1)).tolist() == [[76, 150]]


def test_alpha_is_composited_on_black(tmp_path: Path) -> None:
    Image.fromarray(np.array([[[200, 100, 50, 128], [10, 20, 30, 255]]], dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.array([[[200, 128], [90, 0]]], dtype=np.uint8)).save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    assert _arr(decode_file(tmp_path / "a.png")).tolist() == [[[100, 50, 25], [10, 20, 30]]]
    assert _arr(decode_file(tmp_path / "la.png")).tolist() == [[100, 0]]


def test_cmyk_tiff_and_jpeg(tmp_path: Path) -> None:
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    image = Image.frombytes("CMYK", (4, 1), cmyk.tobytes())
    image.save(tmp_path / "c.tif")
    expected = [[255, 255, 255], [0, 255, 255], [255, 0, 255], [0, 0, 0]]
    assert _arr(decode_file(tmp_path / "c.tif")).tolist() == [expected]
    big = image.resize((64, 16), Image.Resampling.NEAREST)
    big.save(tmp_path / "c.jpg", quality=95)
    out = _arr(decode_file(tmp_path / "c.jpg"))
    centres = out[8, [8, 24, 40, 56]]
    assert np.abs(centres - np.array(expected)).max() <= 12  # JPEG tolerance


def test_one_bit_images(tmp_path: Path) -> None:
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    assert _arr(decode_file(tmp_path / "b.png")).tolist() == [[255, 0]]


def test_rgb_to_gray_is_itu_601_luma_and_gray_to_rgb_repeats(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    gray = _arr(decode_file(tmp_path / "c.png", channels=1))
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    assert np.abs(gray - (0.299 * r + 0.587 * g + 0.114 * b)).max() <= 1
    back = _arr(convert_channels(Image.fromarray(gray.astype(np.uint8)), 3))
    assert np.array_equal(back, np.repeat(gray[..., None], 3, axis=2))
    with pytest.raises(ValueError, match="channels"):
        decode_file(tmp_path / "c.png", channels=2)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file_is_a_clear_error(tmp_path: Path, ext: str) -> None:
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / f"cut.{ext}"
    Image.fromarray(noise).save(path)
    _truncate(path)
    with pytest.raises(ImageDecodeError, match=rf"cut\.{ext}") as info:
        decode_file(path)
    assert info.value.path == str(path)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageDecodeError, match=r"junk\.png: cannot be decoded"):
        decode_file(tmp_path / "junk.png")


def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    blob = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    path.write_bytes(blob)


@pytest.mark.parametrize("side", [10_000, 100_000])  # above our limit (Pillow warns), far above (Pillow errors)
def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, side: int) -> None:
    assert side * side > MAX_IMAGE_PIXELS
    _png_header_only(tmp_path / "bomb.png", side, side)
    with pytest.raises(ImageDecodeError, match=r"bomb\.png.*decompression"):
        decode_file(tmp_path / "bomb.png")


def test_multipage_tiff_is_refused(tmp_path: Path) -> None:
    pages = [Image.new("L", (4, 4), v) for v in (0, 128)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageDecodeError, match=r"stack\.tif.*multi-page"):
        decode_file(tmp_path / "stack.tif")


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="nowhere.png"):
        decode_file(tmp_path / "nowhere.png")


def test_jpeg_draft_decoding_keeps_orientation_and_enough_pixels(tmp_path: Path) -> None:
    img = np.zeros((200, 400, 3), dtype=np.uint8)
    img[:, :200] = (255, 0, 0)
    img[:, 200:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(tmp_path / "big.jpg", exif=exif.tobytes(), quality=95)
    small = decode_file(tmp_path / "big.jpg", draft_size=16)
    assert min(small.size) >= 16 and small.size[0] < 200  # decoded at a reduced scale, still >= 16 px
    out = _arr(small)
    assert out.shape[0] > out.shape[1]  # portrait after the EXIF rotation
    assert out[: out.shape[0] // 4].mean(axis=(0, 1))[0] > 200
