"""Metadata filters (DESIGN §6) compiled to a boolean row mask per shard with Arrow.

    {"col": value}                 equality (None matches missing values)
    {"col": [v1, v2]}              membership
    {"col": {"gte": a, "lt": b}}   comparisons: eq, ne, gt, gte, lt, lte, in
    {"text": None}                 the reserved columns (text, image) work alike

Several keys combine with AND. A column absent from a shard matches nothing there.

The modality (vocabulary in `mmsearch.types`: "text", "image", "image,text", "page"):

    {"modality": "image"}                    exactly image: not image,text, not page
    {"modality": ["image", "image,text"]}    any of these exactly
    {"modality": {"has": "image"}}           any item with an image: image, image,text, page
    {"modality": {"has": "text"}}            any item whose embedded content has text:
                                             text, image,text (a page's text is not embedded)
    {"modality": {"has": ["image", "text"]}} both: image,text

A modality value outside the vocabulary is an error (naming the valid ones), not a
silent empty result; "has" names "image" or "text" and applies to `modality` only.
Pages of an index built before "page" existed (stored as "image" with `page` and
`pages` metadata) are pages here too (`mmsearch.query.modality.read_pages`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.errors import InputError
from mmsearch.types import ITEM_MODALITIES, PARTS, modalities_with

_COMPARE: Dict[str, Callable] = {"eq": pc.equal, "ne": pc.not_equal, "gt": pc.greater,
                                 "gte": pc.greater_equal, "lt": pc.less, "lte": pc.less_equal}
OPERATORS = tuple(_COMPARE) + ("in",)
MODALITY = "modality"
HAS = "has"  # {"modality": {"has": "image"}}: modality only


@dataclass(frozen=True)
class Condition:
    """One predicate: `column` `op` `value` (op is one of OPERATORS)."""

    column: str
    op: str
    value: Any

    def mask(self, table: pa.Table) -> pa.ChunkedArray:
        if self.column not in table.column_names:
            return pa.chunked_array([pa.array(np.zeros(table.num_rows, dtype=bool))])
        col = table.column(self.column)
        try:
            if self.op == "in":
                values = pa.array(list(self.value), type=col.type)
                return pc.is_in(col, value_set=values, skip_nulls=False)
            if self.value is None:
                return pc.is_null(col) if self.op == "eq" else pc.is_valid(col)
            return _COMPARE[self.op](col, pa.scalar(self.value))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as e:
            raise InputError(f"filter on {self.column!r} ({col.type}): cannot apply {self.op} "
                             f"{self.value!r}: {e}") from None


@dataclass(frozen=True)
class Filter:
    """A compiled filter; `key` is its canonical JSON (for caching masks)."""

    conditions: Tuple[Condition, ...]
    key: str

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> "Filter":
        if not isinstance(spec, Mapping):
            raise InputError(f"filter={spec!r}: expected a dict such as {{'modality': 'image', "
                             f"'year': {{'gte': 2000}}}}")
        conditions = []
        for column, value in spec.items():
            if not isinstance(column, str) or not column:
                raise InputError(f"filter key {column!r}: expected a column name (str)")
            conditions.extend(_conditions(column, value))
        return cls(tuple(conditions), json.dumps(spec, sort_keys=True, default=repr))

    @property
    def columns(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(c.column for c in self.conditions))

    def mask(self, table: pa.Table) -> np.ndarray:
        """bool (num_rows,): rows that satisfy every condition (nulls never match
        a comparison)."""
        result = np.ones(table.num_rows, dtype=bool)
        for condition in self.conditions:
            hit = pc.fill_null(condition.mask(table), False)
            result &= hit.to_numpy(zero_copy_only=False).astype(bool, copy=False)
        return result


def _conditions(column: str, value: Any) -> Sequence[Condition]:
    valid = list(OPERATORS) + ([HAS] if column == MODALITY else [])
    if isinstance(value, Mapping):
        if not value:
            raise InputError(f"filter on {column!r}: empty operator dict; use one of {valid}")
        unknown = sorted(str(op) for op in value if op not in valid)
        if unknown:
            hint = (f" ('{HAS}' applies to {MODALITY!r} only)" if HAS in unknown else "")
            raise InputError(f"filter on {column!r}: unknown operators {unknown}; valid: {valid}{hint}")
        conditions = [_has(v) if op == HAS else _condition(column, op, v) for op, v in value.items()]
    else:
        conditions = [_condition(column, "in" if _is_list(value) else "eq", value)]
    if column == MODALITY:
        for c in conditions:
            _check_modalities(c)
    return conditions


def _has(value: Any) -> Condition:
    """{"has": part or [parts]} -> membership in the modalities holding every part."""
    parts = list(value) if _is_list(value) else [value]
    bad = [p for p in parts if p not in PARTS]
    if not parts or bad:
        raise InputError(f"filter on {MODALITY!r}: 'has' {value!r}: expected one of {list(PARTS)} or a list "
                         f"of them, e.g. {{'modality': {{'has': 'image'}}}} (image, image,text, page)")
    return Condition(MODALITY, "in", modalities_with(*parts))


def _check_modalities(condition: Condition) -> None:
    values = condition.value if condition.op == "in" else (condition.value,)
    bad = [v for v in values if v is not None and v not in ITEM_MODALITIES]
    if bad:
        raise InputError(f"filter on {MODALITY!r}: unknown modality {bad[0]!r}; valid: "
                         f"{', '.join(ITEM_MODALITIES)} (exact), or {{'has': 'image'}} / {{'has': 'text'}} "
                         f"for any item holding an image / text")


def _condition(column: str, op: str, value: Any) -> Condition:
    if op == "in":
        if not _is_list(value):
            raise InputError(f"filter on {column!r}: 'in' needs a list of values, got {value!r}")
        return Condition(column, op, tuple(value))
    if _is_list(value) or isinstance(value, Mapping):
        raise InputError(f"filter on {column!r}: {op!r} needs a single value, got {value!r}")
    if value is None and op not in ("eq", "ne"):
        raise InputError(f"filter on {column!r}: {op!r} cannot compare with None")
    return Condition(column, op, value)


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset)) or (isinstance(value, np.ndarray) and value.ndim == 1)


def parse_filter(spec: Optional[Mapping[str, Any]]) -> Optional[Filter]:
    """None (no filter) or a compiled Filter; an empty dict is no filter."""
    if spec is None or isinstance(spec, Filter):
        return spec
    parsed = Filter.parse(spec)
    return parsed if parsed.conditions else None
