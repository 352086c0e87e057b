"""Decode any accepted image input into a fully loaded RGB PIL image, safely.

Every failure raises `mmsearch.errors.ImageError` naming the input and the reason,
so the indexer can record bad items instead of dying on them.

Pillow globals (`Image.MAX_IMAGE_PIXELS`, `ImageFile.LOAD_TRUNCATED_IMAGES`) are
never touched: the pixel limit is a per-call argument checked against the size in
the file header before any pixel is decoded, and truncated files raise.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, InputError
from .types import ImageLike

# Pillow's own warning threshold (1024**3 // 4 // 3, ~9459x9459). VLM2Vec shrinks
# images to at most ~1344x1344 anyway; anything bigger is a scan, a panorama or a bomb.
DEFAULT_MAX_PIXELS = 89_478_485

ACCEPTED_TYPES = "a path (str or os.PathLike), bytes/bytearray, or a PIL.Image.Image"

# Magic numbers, only to tell "damaged image" from "not an image" in messages.
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
}

_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
_INT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_WHITE = (255, 255, 255, 255)


def load_image(
    image: ImageLike,
    *,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    source: Optional[str] = None,
) -> Image.Image:
    """Return `image` as a fully loaded RGB image, EXIF-oriented.

    `image` is a path, encoded bytes, or a PIL image; files give their first
    frame, a PIL image the frame it is on (it is not modified). `max_pixels`
    bounds width*height, checked from the header before decoding; None disables
    it (Pillow's own hard limit, 2 * PIL.Image.MAX_IMAGE_PIXELS, still applies).
    `source` labels the input in error messages (default: the path, or
    ``<bytes len=N>``).
    """
    _check_max_pixels(max_pixels)
    label = source or _describe(image)
    if isinstance(image, Image.Image):
        return _decode(image, label, max_pixels)
    data_or_path = _as_openable(image, label)
    try:
        opened = Image.open(data_or_path)
    except Exception as e:  # Pillow raises many types on hostile input
        raise _open_error(e, data_or_path, label) from e
    with opened:
        return _decode(opened, label, max_pixels)


def image_fingerprint(image: ImageLike, *, source: Optional[str] = None) -> str:
    """A hex sha256 of the image content, usable as an embedding-cache key.

    Paths and bytes hash the encoded file bytes (cheap, no decoding); PIL images
    hash mode, size and raw pixels, so equal pixels give equal keys.
    """
    label = source or _describe(image)
    digest = hashlib.sha256()
    if isinstance(image, Image.Image):
        try:
            pixels = image.tobytes()
        except Exception as e:
            raise ImageError(label, f"cannot read pixels: {e}") from e
        digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
        digest.update(pixels)
        return digest.hexdigest()
    data_or_path = _as_openable(image, label)
    if isinstance(data_or_path, io.BytesIO):
        digest.update(data_or_path.getbuffer())
        return digest.hexdigest()
    try:
        with open(data_or_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise ImageError(label, f"cannot read file: {e.strerror or e}") from e
    return digest.hexdigest()


QWEN_MAX_RATIO = 200  # qwen_vl_utils.vision_process.MAX_RATIO


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's `smart_resize` (qwen_vl_utils.vision_process, which GME's `fetch_image` and the
    Qwen3-VL embedder and reranker call): (height, width) rounded to multiples of `factor` (at
    least one), then scaled down (floored) above `max_pixels` or up (ceiled) below `min_pixels`,
    keeping the aspect ratio."""
    if max(height, width) / min(height, width) > QWEN_MAX_RATIO:
        raise InputError(f"image of {width}x{height}: Qwen models take aspect ratios up to {QWEN_MAX_RATIO}, "
                         f"got {max(height, width) / min(height, width):.1f}")
    h, w = (max(factor, round(side / factor) * factor) for side in (height, width))
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h, w = (math.floor(side / scale / factor) * factor for side in (height, width))
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = (math.ceil(side * scale / factor) * factor for side in (height, width))
    return h, w


def make_thumbnail(
    img: ImageLike, max_side: int = 256, *, format: str = "JPEG", quality: int = 85
) -> bytes:
    """Encoded thumbnail bytes (JPEG or WEBP): longest side <= `max_side`,
    aspect ratio kept, never upscaled."""
    fmt = str(format).upper()
    if fmt not in ("JPEG", "WEBP"):
        raise InputError(f"thumbnail format {format!r}: expected 'JPEG' or 'WEBP'")
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise InputError(f"max_side={max_side!r}: expected a positive int")
    rgb = img if isinstance(img, Image.Image) and img.mode == "RGB" else load_image(img)
    size = _fit(rgb.size, max_side)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, fmt, quality=quality)
    return out.getvalue()


# --------------------------------------------------------------------- inputs


def _describe(image: object) -> str:
    """How an input is named in error messages."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<bytes len={len(image)}>"
    if isinstance(image, (str, os.PathLike)):
        return os.fsdecode(image)
    if isinstance(image, Image.Image):
        return f"<PIL.Image mode={image.mode} size={image.width}x{image.height}>"
    return f"<{type(image).__name__}>"


def _as_openable(image: object, label: str):
    """A BytesIO for bytes, a checked path string for paths; else ImageError."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise ImageError(label, "empty data (0 bytes)")
        return io.BytesIO(bytes(image))
    if isinstance(image, (str, os.PathLike)):
        path = os.fsdecode(image)
        _check_path(path, label)
        return path
    raise ImageError(label, f"unsupported type {type(image).__name__}; expected {ACCEPTED_TYPES}")


def _check_path(path: str, label: str) -> None:
    """Name the common path mistakes before Pillow turns them into vaguer errors."""
    if path.startswith(("http://", "https://")):
        raise ImageError(label, "URLs are not fetched; download the file and pass its path")
    if os.path.isdir(path):
        raise ImageError(label, "is a directory, not an image file")
    if not os.path.exists(path):
        raise ImageError(label, "file not found")
    if os.path.getsize(path) == 0:
        raise ImageError(label, "empty file (0 bytes)")


def _check_max_pixels(max_pixels: Optional[int]) -> None:
    if max_pixels is None:
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InputError(f"max_pixels={max_pixels!r}: expected a positive int, or None for no limit")


# ------------------------------------------------------------------- decoding


def _decode(im: Image.Image, label: str, max_pixels: Optional[int]) -> Image.Image:
    """Size check from the header, then decode, orient, convert to RGB.

    A freshly opened file sits on frame 0, so GIF/TIFF/WebP give their first
    frame; a PIL image passed in gives the frame it is on.
    """
    _check_size(im.size, label, max_pixels)
    try:
        im.load()
    except Exception as e:
        raise ImageError(label, _decode_reason(e)) from e
    try:
        return _to_rgb(_orient(im))
    except Exception as e:
        raise ImageError(label, f"cannot convert mode {im.mode} to RGB: {e}") from e


def _check_size(size: tuple[int, int], label: str, max_pixels: Optional[int]) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            label,
            f"too many pixels: {width}x{height} = {width * height:,} exceeds the limit of "
            f"{max_pixels:,} (possible decompression bomb); pass a larger max_pixels, "
            "or max_pixels=None to disable the check",
        )


def _orient(im: Image.Image) -> Image.Image:
    """A new image with the EXIF orientation applied (a copy if there is none).

    A damaged EXIF block leaves the pixels as stored: orientation is advisory
    metadata, the pixels themselves are intact.
    """
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im.copy()


def _open_error(e: Exception, data_or_path, label: str) -> ImageError:
    """Translate a failure of Image.open (header parsing) into an ImageError."""
    if isinstance(e, Image.DecompressionBombError):
        # Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS) fires inside open(),
        # before our per-call check can run; max_pixels cannot lift it.
        return ImageError(
            label,
            f"too many pixels (possible decompression bomb): {str(e).rstrip('.')}; this is over Pillow's "
            "hard limit of 2 * PIL.Image.MAX_IMAGE_PIXELS, which mmsearch never changes: "
            "raise that global in your application to accept such images",
        )
    if isinstance(e, OSError) and e.errno is not None:  # a real I/O error, not bad data
        return ImageError(label, f"cannot read file: {e.strerror or e}")
    fmt = _signature(_head(data_or_path))
    if fmt:
        return ImageError(label, f"{fmt} signature but the header is damaged or truncated ({e})")
    if isinstance(e, UnidentifiedImageError):
        head = _head(data_or_path)
        return ImageError(label, f"not an image: unrecognised format (data starts with {head!r})")
    return ImageError(label, _decode_reason(e))


def _signature(head: bytes) -> Optional[str]:
    """The image format whose magic number `head` starts with, if any."""
    for magic, fmt in _SIGNATURES.items():
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _head(data_or_path, n: int = 16) -> bytes:
    if isinstance(data_or_path, io.BytesIO):
        return data_or_path.getvalue()[:n]
    try:
        with open(data_or_path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _decode_reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "truncated" in text.lower():
        return f"truncated image data, the file is incomplete ({text})"
    return f"corrupt image data ({type(e).__name__}: {text})"


# --------------------------------------------------------------- mode to RGB


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha over white, high bit depths rescaled to 8 bits."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _INT_MODES or mode == "F":
        return _gray_to_rgb(_rescale_to_uint8(np.asarray(im), mode))
    if mode == "P" and "transparency" in im.info:
        return _over_white(im.convert("RGBA"))
    if mode in _ALPHA_MODES:
        return _over_white(im.convert("LA").convert("RGBA") if mode == "La" else im.convert("RGBA"))
    if mode == "LAB":
        return _lab_to_rgb(im)
    return im.convert("RGB")  # 1, L, P, CMYK, YCbCr, HSV, RGBX


def _lab_to_rgb(im: Image.Image) -> Image.Image:
    """CIELab through a colour transform: Pillow's plain convert copies channels."""
    from PIL import ImageCms  # needs littlecms; imported only for the rare LAB file

    transform = ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )
    return ImageCms.applyTransform(im, transform)


def _over_white(rgba: Image.Image) -> Image.Image:
    """Composite on white: transparent regions become white, as viewers show them."""
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _rescale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map 16/32-bit integer or float pixels to 0..255 instead of clipping at 255.

    Integers in 0..65535 (what 16-bit PNG/TIFF decode to, also in mode "I") are
    treated as 16-bit and divided by 257; floats in 0..1 are scaled by 255;
    anything else is stretched linearly from its min to its max.
    """
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    a = np.where(finite, a, 0.0)
    lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
    if mode != "F" and lo >= 0 and hi <= 65535:
        scaled = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        scaled = a * 255.0
    elif hi > lo:
        scaled = (a - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.stack([gray] * 3, axis=-1)))


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Size with the longest side at most `max_side`, aspect kept, never larger."""
    width, height = size
    scale = max_side / max(width, height)
    if scale >= 1:
        return size
    return max(1, round(width * scale)), max(1, round(height * scale))
