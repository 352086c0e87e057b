"""JSON in and out of the server: orjson where installed (the ``server`` extra), else
the standard library, with the same answers either way.

orjson parses and serialises several times faster than `json`, and refuses what the
API refuses anyway (lone surrogates, NaN, numbers beyond a double, nesting beyond
1,024 levels) while it parses, so a request is read once instead of parsed and then
re-encoded to check it. The fallback refuses the same.
"""
from __future__ import annotations

import json
import math
from typing import Any

from fastapi.responses import JSONResponse

try:
    import orjson
except ImportError:  # pragma: no cover - the server extra installs it
    orjson = None


class JSONError(ValueError):
    """The body is not JSON the API accepts; the message says why."""


def loads(body: bytes) -> Any:
    """The JSON value of `body`, or JSONError (invalid, too deep, a lone surrogate)."""
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise JSONError(str(e)) from None
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # lone surrogates ("\\ud800") fail here
    except RecursionError:
        raise JSONError("nested too deeply") from None
    except UnicodeEncodeError:
        raise JSONError("an unpaired UTF-16 surrogate escape") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int too long
        raise JSONError(str(e)) from None
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of a value `schemas.json_safe` has cleaned (no NaN, str keys)."""
    if orjson is not None:
        return orjson.dumps(value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class FastJSONResponse(JSONResponse):
    """A JSONResponse rendered by `dumps`."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
