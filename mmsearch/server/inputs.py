"""Reading a search request: a JSON body or a form (multipart or urlencoded), to a checked
`SearchRequest` and the query image's bytes.

A query image only ever arrives as bytes (base64 in JSON, a file part in a form):
no string from a client is ever opened as a path or fetched as a URL. Its encoded
size and its pixel count (from the header, before decoding) are bounded by `Limits`.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any, Dict, Optional, Tuple

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from mmsearch.images import load_image

from . import fastjson
from .errors import ApiError
from .schemas import SearchRequest
from .settings import Limits

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
JSON_FIELDS = ("filter", "params", "rerank")  # multipart: given as JSON text (rerank may be plain text)
FORM_FIELDS = tuple(SearchRequest.model_fields)
MAX_TASK_CHARS = 200
_B64_HINT = ("send the image file's bytes base64-encoded, or as a data: URL (data:image/png;base64,...); "
             "file paths and URLs are not accepted")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_search(request: Request, limits: Limits) -> Tuple[SearchRequest, Optional[bytes]]:
    """(the request, the query image bytes or None), or an ApiError / validation error."""
    kind = media_type(request)
    if kind == "application/json" or kind.endswith("+json"):
        req = validate(parse_json(await request.body()))
        image = decode_base64(req.image, limits) if req.image is not None else None
    elif kind in FORM_TYPES:
        req, image = await _read_form(request, limits)
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {kind or '(none)'!r} is not accepted; send application/json or "
                       f"multipart/form-data (or application/x-www-form-urlencoded without an image file)")
    check_limits(req, limits)
    if image is None and not req.text and req.like is None:
        raise ApiError(400, "bad_request", "nothing to search for: give text, image, like (an item id), "
                                           "or text with image or like")
    if image is not None and req.like is not None:
        raise ApiError(400, "bad_request", "give either image or like, not both")
    if req.task is not None and req.instruction is not None:
        raise ApiError(400, "bad_request", "give either task or instruction, not both")
    return req, image


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object such as "
                                            '{"text": "a red bus", "k": 10}')
    try:
        return fastjson.loads(body)
    except fastjson.JSONError as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None


def validate(obj: Any) -> SearchRequest:
    if not isinstance(obj, dict):
        raise ApiError(400, "invalid_json", f"expected a JSON object with the fields {list(FORM_FIELDS)}, got "
                                            f"a JSON {type(obj).__name__}")
    try:
        return SearchRequest.model_validate(obj)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_context=False,
                                              include_input=False)) from None


def check_limits(req: SearchRequest, limits: Limits) -> None:
    problems = []
    if req.k > limits.max_k:
        problems.append(f"k={req.k} exceeds the limit of {limits.max_k} (max_k)")
    for name in ("text", "instruction"):
        value = getattr(req, name)
        if value is not None and len(value) > limits.max_text_chars:
            problems.append(f"{name} has {len(value):,} characters; the limit is {limits.max_text_chars:,}")
    if req.like is not None and not 0 < len(req.like) <= limits.max_id_chars:
        problems.append(f"like: an item id of 1 to {limits.max_id_chars} characters, got {len(req.like)}")
    problems += _rerank_problems(req.rerank, limits)
    if req.task is not None and len(req.task) > MAX_TASK_CHARS:
        problems.append(f"task: a task name (GET /tasks) of at most {MAX_TASK_CHARS} characters")
    params = req.params or {}
    if max(params.get(n, 0) for n in ("efSearch", "ef_search", "efsearch")) > limits.max_ef_search:
        problems.append(f"params.efSearch exceeds the limit of {limits.max_ef_search}")
    if max(params.get(n, 0) for n in ("k_factor", "kfactor", "oversample")) > limits.max_k_factor:
        problems.append(f"params.k_factor / oversample exceeds the limit of {limits.max_k_factor:g}")
    if problems:
        raise ApiError(422, "validation_error", "; ".join(problems))


def _rerank_problems(rerank: Any, limits: Limits) -> list:
    names = rerank.split(",") if isinstance(rerank, str) else (rerank or [])
    bad = [n for n in names if n.strip().lower() not in limits.rerankers]
    return [f"rerank {bad}: this server allows {list(limits.rerankers)}"] if bad else []


def decode_base64(value: str, limits: Limits) -> bytes:
    text = value.strip()
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(400, "invalid_base64", f"image: a data: URL must be base64 ({header[:60]!r}); {_B64_HINT}")
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    if len(text) > (limits.max_image_bytes + 2) // 3 * 4 + 4:
        raise ApiError(413, "image_too_large", f"image: about {len(text) * 3 // 4:,} bytes exceeds the limit of "
                                               f"{limits.max_image_bytes:,} (max_image_bytes)")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise ApiError(400, "invalid_base64", f"image {shown!r} is not valid base64; {_B64_HINT}") from None
    if not data:
        raise ApiError(400, "invalid_image", f"image is empty; {_B64_HINT}")
    return data


async def _read_form(request: Request, limits: Limits) -> Tuple[SearchRequest, Optional[bytes]]:
    try:
        form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 1)
    except ApiError:
        raise
    except Exception as e:  # python-multipart / Starlette parse errors
        raise ApiError(400, "bad_request", f"malformed multipart body: {e}") from None
    fields: Dict[str, Any] = {}
    image: Optional[bytes] = None
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "image":
                    raise ApiError(400, "bad_request", f"file field {name!r}: only 'image' may be a file")
                image = await _read_upload(value, limits)
            else:
                fields[name] = _form_value(name, value)
    finally:
        await form.close()
    req = validate(fields)
    if req.image is not None:
        image = decode_base64(req.image, limits)
    return req, image


def _form_value(name: str, value: str) -> Any:
    if name == "k":
        try:
            return int(value)
        except ValueError:
            raise ApiError(422, "validation_error", f"k: expected an integer, got {value[:40]!r}") from None
    if name in JSON_FIELDS:
        if name == "rerank" and not value.lstrip().startswith("["):
            return value
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            raise ApiError(400, "invalid_json", f"form field {name!r} is not valid JSON: {value[:60]!r}") from None
    return value


async def _read_upload(upload: UploadFile, limits: Limits) -> bytes:
    data = await upload.read(limits.max_image_bytes + 1)
    if len(data) > limits.max_image_bytes:
        raise ApiError(413, "image_too_large", f"image: the upload exceeds the limit of {limits.max_image_bytes:,} "
                                               f"bytes (max_image_bytes)")
    if not data:
        raise ApiError(400, "invalid_image", "image: the uploaded file is empty")
    return data


def decode_image(data: bytes, limits: Limits) -> Image.Image:
    """The query image as RGB; 413 beyond max_image_pixels (read from the header, so a
    decompression bomb is refused before any pixel is decoded), ImageError if broken."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as e:
        raise ApiError(413, "image_too_large", f"image: {e}") from None
    except Exception:
        width = height = 0  # not readable: load_image names the reason
    if width * height > limits.max_image_pixels:
        raise ApiError(413, "image_too_large", f"image: {width}x{height} = {width * height:,} pixels exceeds the "
                                               f"limit of {limits.max_image_pixels:,} (max_image_pixels)")
    return load_image(data, max_pixels=limits.max_image_pixels, source="image")
