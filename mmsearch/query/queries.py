"""What a query may be, and which instruction it is embedded with.

A query is a str (text), an image (PIL image, `os.PathLike` path or encoded bytes)
or a `Query(text=..., image=..., instruction=..., task=...)`; composed retrieval is
``Query(image="dress.jpg", text="the same, but in red")``. A plain str is always
text: pass ``pathlib.Path("x.jpg")`` or ``Query(image="x.jpg")`` for an image file.

Instruction, first that applies: the call's `instruction` (``""`` means none), the
Query's own instruction or task, the call's `task` (its query instruction), none.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from mmsearch.errors import InputError
from mmsearch.tasks import resolve_instruction
from mmsearch.types import Item, Query

ACCEPTED = ("str (text), PIL.Image.Image, os.PathLike or bytes (an image), or mmsearch.Query; "
            "or a list of these")


def as_queries(query: Any) -> Tuple[List[Query], bool]:
    """(the queries as Query objects, whether a single query was given)."""
    if isinstance(query, (list, tuple)):
        return [as_query(q, i) for i, q in enumerate(query)], False
    return [as_query(query, 0)], True


def as_query(x: Any, position: int = 0) -> Query:
    if isinstance(x, Query):
        return x
    if isinstance(x, str):
        return Query(text=x)
    if isinstance(x, (Image.Image, bytes, bytearray, os.PathLike)):
        return Query(image=x)
    if isinstance(x, Item):
        return Query(text=x.text, image=x.image)
    if isinstance(x, np.ndarray):
        raise InputError(f"query #{position} is a numpy array: search embeddings with "
                         f"Index.search_vectors(xq, k)")
    raise InputError(f"query #{position}: cannot search with {type(x).__name__}; expected {ACCEPTED}")


def with_instruction(queries: Sequence[Query], task: Optional[str], instruction: Optional[str],
                     task_instruction: Optional[Callable[[str, str], str]] = None) -> List[Query]:
    """Each query with its instruction settled (its `instruction` field set, `task` cleared).
    `task_instruction(task, side)` resolves task names: the encoder's (the model's own
    prompts first), else the task library's."""
    if instruction is not None:
        resolve_instruction(instruction=instruction)  # type check, with a helpful error
        return [dataclasses.replace(q, instruction=instruction, task=None) for q in queries]
    if task_instruction is None:
        def task_instruction(name: str, side: str) -> str:
            return resolve_instruction(task=name, side=side)
    default = task_instruction(task, "query") if task is not None else ""
    out = []
    for q in queries:
        if q.instruction is None:
            own = task_instruction(q.task, "query") if q.task is not None else default
            q = dataclasses.replace(q, instruction=own, task=None)
        out.append(q)
    return out
