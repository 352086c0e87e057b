"""load_image / image_fingerprint / make_thumbnail on images generated in-test."""
import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from mmsearch.errors import ImageError, InputError
from mmsearch.images import DEFAULT_MAX_PIXELS, image_fingerprint, load_image, make_thumbnail

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def noise(w=128, h=96, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def close(a, b, tol=6):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def png_with_header(width, height):
    """A valid-looking 8-bit grey PNG whose IDAT holds one row: tiny file, huge header."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ inputs


def test_path_bytes_pil_and_pathlike_agree(tmp_path):
    im = noise()
    data = encode(im, "PNG")
    path = write(tmp_path, "a.png", data)
    expected = np.asarray(im)
    for given in (path, str(path), data, bytearray(data), im):
        out = load_image(given)
        assert out.mode == "RGB" and out.size == im.size
        assert np.array_equal(np.asarray(out), expected)


def test_result_is_loaded_and_detached(tmp_path):
    path = write(tmp_path, "a.png", encode(noise(), "PNG"))
    out = load_image(path)
    path.unlink()
    assert out.getpixel((3, 3)) == noise().getpixel((3, 3))
    src = Image.new("L", (4, 4), 9)
    assert load_image(src) is not src and src.mode == "L"


# ------------------------------------------------------------------- modes


def test_grayscale_and_one_bit():
    assert load_image(Image.new("L", (2, 2), 77)).getpixel((0, 0)) == (77, 77, 77)
    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((1, 0), 1)
    out = load_image(bw)
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == WHITE


def palette_image():
    im = Image.new("P", (2, 1), 0)
    im.putpalette([0, 255, 0] + list(RED) + [0] * (3 * 254))
    im.putpixel((1, 0), 1)
    return im


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_goes_white(tmp_path, fmt):
    im = palette_image()
    path = write(tmp_path, f"p.{fmt.lower()}", encode(im, fmt, transparency=0))
    out = load_image(path)
    assert out.getpixel((0, 0)) == WHITE  # index 0 is transparent, not green
    assert out.getpixel((1, 0)) == RED


def test_palette_without_transparency():
    out = load_image(palette_image())
    assert out.getpixel((0, 0)) == (0, 255, 0) and out.getpixel((1, 0)) == RED


def test_alpha_modes_composite_on_white(tmp_path):
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (0, 255))
    out = load_image(write(tmp_path, "la.png", encode(la, "PNG")))
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == (0, 0, 0)

    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    out = load_image(write(tmp_path, "rgba.png", encode(rgba, "PNG")))
    assert out.getpixel((0, 0)) == WHITE  # fully transparent red shows white
    assert close(out.getpixel((1, 0)), (127, 127, 127), tol=1)

    pa = Image.new("PA", (2, 1), (1, 0))
    pa.putpalette(list(RED) * 256)
    pa.putpixel((1, 0), (1, 255))
    out = load_image(pa)
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == RED


def test_cmyk(tmp_path):
    im = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (0, 255, 255, 0))
    for given in (im, write(tmp_path, "c.tif", encode(im, "TIFF"))):
        out = load_image(given)
        assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == RED
    jpeg = load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    assert close(jpeg.getpixel((4, 4)), RED, tol=12)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_is_scaled_not_clipped(mode):
    im = Image.new(mode, (3, 1), 0)
    im.putpixel((1, 0), 32768)
    im.putpixel((2, 0), 65535)
    out = load_image(im)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert close(out.getpixel((1, 0)), (128, 128, 128), tol=1)  # mid grey, not white
    assert out.getpixel((2, 0)) == WHITE


def test_16_bit_png_file(tmp_path):
    im = Image.new("I;16", (2, 1), 32768)
    im.putpixel((1, 0), 16384)
    out = load_image(write(tmp_path, "g16.png", encode(im, "PNG")))
    assert close(out.getpixel((0, 0)), (128,) * 3, tol=1)
    assert close(out.getpixel((1, 0)), (64,) * 3, tol=1)


def test_32_bit_int_outside_16_bit_range_is_stretched():
    im = Image.new("I", (2, 1), -1000)
    im.putpixel((1, 0), 1_000_000)
    out = load_image(im)
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == WHITE


def test_float_images(tmp_path):
    unit = Image.new("F", (2, 1), 0.5)
    unit.putpixel((1, 0), 1.0)
    for given in (unit, write(tmp_path, "f.tif", encode(unit, "TIFF"))):
        out = load_image(given)
        assert close(out.getpixel((0, 0)), (128,) * 3, tol=1) and out.getpixel((1, 0)) == WHITE
    wide = Image.new("F", (3, 1), 0.0)
    wide.putpixel((1, 0), 500.0)
    wide.putpixel((2, 0), 1000.0)
    out = load_image(wide)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exotic_modes_become_rgb():
    for mode in ("YCbCr", "HSV", "LAB", "RGBa", "La", "RGBX"):
        out = load_image(Image.new(mode, (2, 2)))
        assert out.mode == "RGB" and out.size == (2, 2)
    assert close(load_image(Image.new("LAB", (1, 1), (255, 128, 128))).getpixel((0, 0)), WHITE, tol=3)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_multi_frame_gives_first_frame(tmp_path, fmt):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
    out = load_image(write(tmp_path, f"m.{fmt.lower()}", buf.getvalue()))
    assert out.size == (8, 8) and out.getpixel((4, 4)) == RED


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    im = Image.new("RGB", (40, 20), RED)
    im.paste(BLUE, (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load_image(write(tmp_path, f"r.{fmt.lower()}", encode(im, fmt, exif=exif, quality=95)))
    assert out.size == (20, 40)
    assert close(out.getpixel((10, 5)), RED, tol=12)  # the left edge is now on top
    assert close(out.getpixel((10, 35)), BLUE, tol=12)


# ------------------------------------------------------------ pixel limit


def test_bomb_refused_from_header_before_decoding(tmp_path):
    data = png_with_header(8000, 8000)  # 64 MP claimed, ~100 bytes, one row of data
    assert len(data) < 500
    path = write(tmp_path, "bomb.png", data)
    for given, label in ((path, str(path)), (data, f"<bytes len={len(data)}>")):
        with pytest.raises(ImageError) as err:
            load_image(given, max_pixels=10_000_000)
        msg = str(err.value)
        # "too many pixels", not "truncated": the size was checked before decoding
        assert label in msg and "too many pixels" in msg and "truncated" not in msg
        assert "8000x8000" in msg and "10,000,000" in msg and "max_pixels" in msg


def test_real_image_over_limit_and_limit_boundary():
    data = encode(Image.new("L", (300, 200)), "PNG")
    with pytest.raises(ImageError, match="300x200"):
        load_image(data, max_pixels=300 * 200 - 1)
    assert load_image(data, max_pixels=300 * 200).size == (300, 200)
    assert load_image(data, max_pixels=None).size == (300, 200)


def test_default_limit_and_pillow_hard_limit_without_touching_globals():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    huge = png_with_header(20000, 20000)  # 400 MP: over ours and over Pillow's own
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(huge)
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
        load_image(huge, max_pixels=None)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before
    assert DEFAULT_MAX_PIXELS < 20000 * 20000


@pytest.mark.parametrize("bad", [0, -5, 1.5, "100", True])
def test_bad_max_pixels(bad):
    with pytest.raises(InputError, match="max_pixels"):
        load_image(Image.new("RGB", (2, 2)), max_pixels=bad)


# ----------------------------------------------------------------- errors


def fails(given, *expected, **kw):
    with pytest.raises(ImageError) as err:
        load_image(given, **kw)
    msg = str(err.value)
    for part in expected:
        assert part in msg, f"{part!r} not in {msg!r}"
    return err.value


def test_missing_path(tmp_path):
    path = tmp_path / "nope.jpg"
    err = fails(path, str(path), "not found")
    assert err.source == str(path)


def test_directory(tmp_path):
    fails(tmp_path, str(tmp_path), "directory")


def test_zero_byte_file_and_empty_bytes(tmp_path):
    path = write(tmp_path, "empty.png", b"")
    fails(path, str(path), "empty")
    fails(b"", "<bytes len=0>", "empty")


def test_random_bytes():
    data = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    fails(data, "<bytes len=1000>", "not an image")


def test_text_file_named_jpg(tmp_path):
    path = write(tmp_path, "notes.jpg", b"hello, this is not a picture\n")
    fails(path, str(path), "not an image", "hello")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt):
    data = encode(noise(256, 256), fmt)
    cut = data[: len(data) // 2]
    path = write(tmp_path, f"cut.{fmt.lower()}", cut)
    fails(path, str(path), "truncated")
    fails(cut, f"<bytes len={len(cut)}>", "truncated")


def test_damaged_header(tmp_path):
    data = encode(noise(), "PNG")[:20]
    path = write(tmp_path, "head.png", data)
    fails(path, str(path), "PNG", "damaged")


def test_corrupt_data(tmp_path):
    data = bytearray(encode(noise(256, 256), "PNG"))
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    path = write(tmp_path, "corrupt.png", bytes(data))
    fails(path, str(path))


@pytest.mark.parametrize("bad", [42, 3.5, None, ["a.png"], np.zeros((2, 2, 3), np.uint8)])
def test_unsupported_type(bad):
    fails(bad, f"<{type(bad).__name__}>", "unsupported type", "PathLike", "bytes", "PIL.Image")


def test_url_is_not_fetched():
    fails("https://example.com/cat.jpg", "https://example.com/cat.jpg", "download")


def test_source_label_names_the_input():
    err = fails(b"junk" * 10, "manifest.csv row 7", source="manifest.csv row 7")
    assert err.source == "manifest.csv row 7"


# ------------------------------------------------------------ fingerprint


def test_fingerprint_of_path_and_bytes_is_file_sha256(tmp_path):
    data = encode(noise(), "PNG")
    path = write(tmp_path, "a.png", data)
    expected = hashlib.sha256(data).hexdigest()
    assert image_fingerprint(path) == image_fingerprint(str(path)) == expected
    assert image_fingerprint(data) == image_fingerprint(bytearray(data)) == expected


def test_fingerprint_of_pil_depends_on_pixels_mode_size():
    a, b = noise(seed=0), noise(seed=0)
    assert image_fingerprint(a) == image_fingerprint(b)
    assert image_fingerprint(a) != image_fingerprint(noise(seed=1))
    assert image_fingerprint(Image.new("L", (4, 2))) != image_fingerprint(Image.new("L", (2, 4)))
    assert image_fingerprint(Image.new("L", (4, 4))) != image_fingerprint(Image.new("P", (4, 4)))


def test_fingerprint_errors_name_the_input(tmp_path):
    with pytest.raises(ImageError, match="missing.png.*not found"):
        image_fingerprint(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="unsupported type"):
        image_fingerprint(7)


# -------------------------------------------------------------- thumbnail


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_thumbnail_keeps_aspect(fmt):
    thumb = Image.open(io.BytesIO(make_thumbnail(noise(1000, 500), 256, format=fmt)))
    assert thumb.format == fmt and thumb.size == (256, 128)


def test_thumbnail_never_upscales_and_accepts_any_input(tmp_path):
    small = Image.new("RGBA", (100, 50), (0, 0, 0, 0))
    thumb = Image.open(io.BytesIO(make_thumbnail(small)))
    assert thumb.size == (100, 50) and close(thumb.getpixel((50, 25)), WHITE)
    path = write(tmp_path, "tall.png", encode(Image.new("RGB", (30, 600), RED), "PNG"))
    assert Image.open(io.BytesIO(make_thumbnail(path, 60))).size == (3, 60)


def test_thumbnail_bad_arguments():
    with pytest.raises(InputError, match="max_side"):
        make_thumbnail(noise(), 0)
    with pytest.raises(InputError, match="GIF"):
        make_thumbnail(noise(), format="GIF")
