"""Checked reading of the manifest's JSON records (shared by the record classes)."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Optional

from mmsearch.errors import IndexFormatError


def get_field(d: Mapping[str, Any], key: str, where: str, kind: Any, optional: bool = False) -> Any:
    """d[key] checked against `kind` (a type or tuple); bool is never accepted as int."""
    if not isinstance(d, Mapping):
        raise IndexFormatError(f"manifest: {where} must be an object, got {type(d).__name__}")
    if key not in d or d[key] is None:
        if optional:
            return None
        raise IndexFormatError(f"manifest: missing {where}.{key}")
    value = d[key]
    if isinstance(value, bool) and kind is not bool:
        raise IndexFormatError(f"manifest: {where}.{key} must be {kind}, got {value!r}")
    if not isinstance(value, kind):
        raise IndexFormatError(f"manifest: {where}.{key} must be {getattr(kind, '__name__', kind)}, "
                               f"got {value!r}")
    return value


def frozen_map(mapping: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))
