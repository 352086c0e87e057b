"""The encoder contract shared by VLM2Vec and dual-encoder baselines.

`encode` normalises every input into a `Request` (text, image, instruction),
plans homogeneous batches (inputs with an image apart from text-only ones,
similar lengths together, so padding stays small and processors that need
uniform batches are satisfied), runs them, and puts rows back in input order.
"""
from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import load_image
from ..types import Item, Query

EncodeInput = Union[Item, Query, str, Image.Image]
Instruction = Optional[Union[str, Sequence[Optional[str]]]]


@dataclass(frozen=True, eq=False)
class Request:
    """One input resolved to what the model sees (image decoded, instruction chosen)."""

    text: Optional[str]
    image: Optional[Image.Image]
    instruction: Optional[str]
    # A complete, already formatted input string used verbatim (benchmark protocols
    # such as MMEB ship them); it must carry the image token iff there is an image.
    prompt: Optional[str] = None


def _query_instruction(query: Query, default: Optional[str]) -> Optional[str]:
    if query.instruction is not None:
        return query.instruction
    if query.task is not None:
        from ..tasks import resolve_instruction  # the task library is data; import when used

        return resolve_instruction(task=query.task, side="query")
    return default


def to_request(x: EncodeInput, instruction: Optional[str], max_pixels: Optional[int], position: int) -> Request:
    """Resolve one input. A Query's own instruction/task wins over the call's."""
    if isinstance(x, str):
        text, image, instr = x, None, instruction
    elif isinstance(x, Image.Image):
        text, image, instr = None, x, instruction
    elif isinstance(x, Query):
        text, image, instr = x.text, x.image, _query_instruction(x, instruction)
    elif isinstance(x, Item):
        text, image, instr = x.text, x.image, instruction
    else:
        raise InputError(
            f"input #{position}: cannot encode {type(x).__name__}; "
            "expected mmsearch.Item, mmsearch.Query, str (text) or PIL.Image.Image"
        )
    if text is not None and not isinstance(text, str):
        raise InputError(f"input #{position}: text must be a str, got {type(text).__name__}")
    if not text and image is None:
        label = f"item {x.id!r}" if isinstance(x, Item) else f"input #{position}"
        raise InputError(f"{label} is empty: it has neither text nor an image")
    if image is not None:
        label = f"item {x.id!r}" if isinstance(x, Item) else None
        image = load_image(image, max_pixels=max_pixels, source=label)
    return Request(text=text or None, image=image, instruction=instr or None)


def _instruction_for(instruction: Instruction, i: int, n: int) -> Optional[str]:
    if instruction is None or isinstance(instruction, str):
        return instruction
    if len(instruction) != n:
        raise InputError(f"instruction list has {len(instruction)} entries for {n} inputs")
    return instruction[i]


def plan_batches(requests: Sequence[Request], batch_size: int) -> List[List[int]]:
    """Indices grouped by modality, then by text length, cut into batches."""
    def key(i: int):
        r = requests[i]
        size = r.image.size[0] * r.image.size[1] if r.image is not None else 0
        return (r.image is not None, size, len(r.prompt or "") + len(r.instruction or "") + len(r.text or ""))

    order = sorted(range(len(requests)), key=key)
    batches: List[List[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and key(batches[-1][0])[0] == key(i)[0]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class Encoder(ABC):
    """Maps inputs to L2-normalised float32 vectors of size `dim`."""

    dim: int
    name: str               # the model id or path it was loaded from
    backbone: str           # config.model_type
    default_batch_size: int = 16
    max_pixels: Optional[int] = None

    def encode(
        self,
        inputs: Union[EncodeInput, Iterable[EncodeInput]],
        instruction: Instruction = None,
        batch_size: Optional[int] = None,
        show_progress: Optional[bool] = None,
    ) -> np.ndarray:
        """Encode inputs (Item, Query, str or PIL image) to a float32 (n, dim) array."""
        if isinstance(inputs, (str, Item, Query, Image.Image)):
            inputs = [inputs]
        inputs = list(inputs)
        n = len(inputs)
        requests = [
            to_request(x, _instruction_for(instruction, i, n), self.max_pixels, i) for i, x in enumerate(inputs)
        ]
        return self.encode_requests(requests, batch_size=batch_size, show_progress=show_progress)

    def encode_requests(
        self, requests: Sequence[Request], batch_size: Optional[int] = None, show_progress: Optional[bool] = None
    ) -> np.ndarray:
        """Encode already-resolved requests (the indexer's decode workers build these)."""
        bs = self.default_batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty((len(requests), self.dim), dtype=np.float32)
        batches = plan_batches(requests, bs)
        bar = _progress(len(requests), show_progress and len(batches) > 0, show_progress is None and len(batches) > 1)
        for idx in batches:
            out[idx] = self.encode_batch([requests[i] for i in idx])
            bar.update(len(idx))
        bar.close()
        return out

    @abstractmethod
    def encode_batch(self, requests: Sequence[Request]) -> np.ndarray:
        """Encode one planned batch; rows L2-normalised float32."""


def _progress(total: int, forced: bool, auto: bool):
    from tqdm.auto import tqdm

    enabled = forced or (auto and sys.stderr.isatty())
    return tqdm(total=total, unit="item", desc="encode", disable=not enabled, dynamic_ncols=True)
