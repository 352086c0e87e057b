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
from types import MappingProxyType
from typing import TYPE_CHECKING, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import load_image
from ..types import Item, Query

if TYPE_CHECKING:  # pragma: no cover
    from .recipes import Recipe

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
    side: str = "query"     # "query" or "candidate": families with one prompt per side need it


SIDES = ("query", "candidate")


def check_side(side: Optional[str]) -> Optional[str]:
    if side is not None and side not in SIDES:
        raise InputError(f"side={side!r}: expected one of {list(SIDES)}")
    return side


def to_request(x: EncodeInput, instruction: Optional[str], max_pixels: Optional[int], position: int,
               side: Optional[str] = None, task_instruction=None) -> Request:
    """Resolve one input. A Query's own instruction/task wins over the call's. `side`
    defaults to "candidate" for an Item and "query" for everything else;
    `task_instruction(task, side)` resolves a Query's task (default: the task library)."""
    if task_instruction is None:
        from ..tasks import resolve_instruction  # the task library is data; import when used

        def task_instruction(task, side):
            return resolve_instruction(task=task, side=side)
    if isinstance(x, str):
        text, image, instr, own = x, None, instruction, "query"
    elif isinstance(x, Image.Image):
        text, image, instr, own = None, x, instruction, "query"
    elif isinstance(x, Query):
        own = "query"
        text, image, instr = x.text, x.image, instruction
        if x.instruction is not None:
            instr = x.instruction
        elif x.task is not None:
            instr = task_instruction(x.task, side or own)
    elif isinstance(x, Item):
        text, image, instr, own = x.text, x.image, instruction, "candidate"
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
    return Request(text=text or None, image=image, instruction=instr or None, side=side or own)


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
    family: str             # the recipe it embeds by (`recipes.FAMILIES`)
    recipe: "Recipe"
    default_batch_size: int = 16
    max_pixels: Optional[int] = None
    multi_vector: bool = False  # True: `encode(..., multi_vector=True)` gives token matrices (`multivector`)
    model_tasks: Mapping = MappingProxyType({})  # the model's own task prompts: name -> (query, candidate)
    matryoshka_dims: Optional[Tuple[int, ...]] = None  # sizes the checkpoint's config names (else its family's)

    def __init__(self, model, *, backbone: str, recipe: "Recipe", name: str, device, dtype, fingerprint: str,
                 max_pixels: Optional[int] = None):
        """What every encoder is: its network (in eval mode), backbone, family recipe, where it
        was loaded from, device and dtype, weights fingerprint and image pixel limit."""
        self.model = model.eval()
        self.backbone = backbone
        self.recipe = recipe
        self.family = recipe.name
        self.name = name
        self.device = device
        self.dtype = dtype
        self.fingerprint = fingerprint
        self.max_pixels = max_pixels

    def task_instruction(self, task, side: str = "query") -> str:
        """A task's instruction for this model: the model's own prompts first (what it was
        trained with), then its family's documented ones, then the task library's."""
        from .recipes import task_instruction

        return task_instruction(self.recipe, self.model_tasks, task, check_side(side))

    def format(self, request: Request) -> str:
        """The input string the model sees: the request's own prompt, else the family's template."""
        if request.prompt is not None:
            return request.prompt
        return self.recipe.render(self.backbone, request.side, request.text, request.instruction,
                                  request.image is not None)

    def candidate_instructions(self) -> Optional[dict]:
        """The family's candidate instruction per modality for an index, or None for the
        library's (VLM2Vec's conventions)."""
        default = self.recipe.default_instruction.get("candidate")
        if not self.recipe.takes_instruction:
            return {"default": ""}
        return {"default": default} if default else None

    def encode(
        self,
        inputs: Union[EncodeInput, Iterable[EncodeInput]],
        instruction: Instruction = None,
        batch_size: Optional[int] = None,
        show_progress: Optional[bool] = None,
        side: Optional[str] = None,
    ) -> np.ndarray:
        """Encode inputs (Item, Query, str or PIL image) to a float32 (n, dim) array.

        `side` ("query" or "candidate") picks the family's prompt where the two differ;
        by default an Item is a candidate and everything else a query."""
        return self.encode_requests(self.to_requests(inputs, instruction, side), batch_size=batch_size,
                                    show_progress=show_progress)

    def to_requests(self, inputs: Union[EncodeInput, Iterable[EncodeInput]], instruction: Instruction = None,
                    side: Optional[str] = None) -> List[Request]:
        """`encode`'s inputs resolved to requests (images decoded, instructions chosen)."""
        if isinstance(inputs, (str, Item, Query, Image.Image)):
            inputs = [inputs]
        inputs = list(inputs)
        n = len(inputs)
        check_side(side)
        return [to_request(x, _instruction_for(instruction, i, n), self.max_pixels, i, side, self.task_instruction)
                for i, x in enumerate(inputs)]

    def encode_requests(
        self, requests: Sequence[Request], batch_size: Optional[int] = None, show_progress: Optional[bool] = None
    ) -> np.ndarray:
        """Encode already-resolved requests (the indexer's decode workers build these)."""
        bs = self.default_batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty((len(requests), self.dim), dtype=np.float32)
        batches = plan_batches(requests, bs)
        bar = progress_bar(len(requests), show_progress, len(batches))
        for idx in batches:
            out[idx] = self.encode_batch([requests[i] for i in idx])
            bar.update(len(idx))
        bar.close()
        return out

    @abstractmethod
    def encode_batch(self, requests: Sequence[Request]) -> np.ndarray:
        """Encode one planned batch; rows L2-normalised float32."""


def progress_bar(total: int, show_progress: Optional[bool], n_batches: int):
    """The encode progress bar: on when asked, or (None) on a terminal for more than one batch."""
    from tqdm.auto import tqdm

    enabled = (show_progress and n_batches > 0) or (show_progress is None and n_batches > 1 and sys.stderr.isatty())
    return tqdm(total=total, unit="item", desc="encode", disable=not enabled, dynamic_ncols=True)
