"""Embedding families as data: one `Recipe` per family, read by one encoder.

A recipe says everything that turns a vision-language model into the embedding
model its authors published: the input string per side (query / candidate) and
input kind (text, image, image+text), the image placeholder, the position rule,
pooling, normalisation, default and per-task instructions, image pixel bounds,
Matryoshka sizes and the dtype on a GPU. Adding a family is adding a recipe here
(and, where it needs one, a small function in `pooling`). Where each rule is
written in the authors' code:

- ``vlm2vec`` (TIGER-AI-Lab/VLM2Vec, V1 and V2 checkpoints): `src/model/processor.py`
  joins ``[image token, instruction, text]`` with one space, no chat template and no
  ``<|vision_start|>``; its vendored Qwen2-VL `get_rope_index` finds an image only after
  ``<|vision_start|>``, so every token gets **1D positions**; `src/model/model.py`
  `_pooling` takes the last non-padding token; L2.
- ``gme`` (Alibaba-NLP/gme-Qwen2-VL, `gme_inference.py`): a chat-like string with the
  instruction as system prompt, ``<|vision_start|><|image_pad|><|vision_end|>`` then the
  text, ending in ``<|im_start|>assistant\\n<|endoftext|>``; documents always take the
  default instruction; the text decoder is called with ``inputs_embeds`` and no position
  ids (1D); `smart_resize` (factor 28) before the processor; last token; L2.
- ``qwen3_vl_embedding`` (QwenLM/Qwen3-VL-Embedding): the Qwen3-VL chat template with the
  instruction as system prompt (a ``.`` appended when it does not end in punctuation),
  images before text, generation prompt; M-RoPE; last token; L2; images resized with
  factor 32 before a processor that does not resize; Matryoshka from 64 dimensions.
- ``jina_v4`` (jinaai/jina-embeddings-v4, single vector): ``Query: `` / ``Passage: ``
  before a text, a fixed string for an image; M-RoPE; masked mean over a text's tokens,
  mean over the ``<|vision_start|>`` .. ``<|vision_end|>`` span for an image; L2;
  Matryoshka 128..2048. It takes no instruction: its task is its adapter (``retrieval``,
  ``text-matching``, ``code``; `load_encoder(..., adapter=)`), and under ``text-matching``
  both sides take ``Query: `` (modeling_jina_embeddings_v4.py `_validate_encoding_params`: the
  prefix is ``PREFIX_DICT["query"]`` whenever the model's task is text-matching).
- ``mmsearch``: VLM2Vec's strings with transformers' M-RoPE positions, the rule that
  mmsearch's trainer trained its own models with (the built-in ``mmsearch-tiny``).
- ``clip`` / ``siglip``: dual encoders; image+text by UniIR score fusion (`dual`).
- ``colqwen2`` (illuin-tech/colpali `colpali_engine`, ColQwen2 and ColQwen2.5 checkpoints in
  transformers' ``ColQwen2ForRetrieval`` layout): multi-vector (`multivector`). Documents: the
  fixed ``visual_prompt_prefix`` of `processing_colqwen2.py`; queries: ``query_prefix`` + text +
  ``query_augmentation_token`` (``<|endoftext|>``) x10 (`processing_utils.py` `process_queries`).
  The prefix is ``Query: `` up to colpali_engine 0.3.10 (what vidore's v1.0 checkpoints were
  trained with), empty after; transformers' processor adds ``Query: `` and a trailing newline:
  the recipe's ``query_prefix``, overridable per checkpoint (`mmsearch.json`). **M-RoPE** (its
  model runs Qwen2-VL's own forward from ``input_ids``); every token's 128-d projection, L2.
- ``jina_v4_multivector``: jina-v4's prompts, positions and task adapters, output through its
  ``multi_vector_projector`` (`jina_multivector`): every unmasked token, projected then L2.
- ``colpali`` (colpali_engine `ColPaliProcessor`, transformers' ``ColPaliForRetrieval``):
  documents ``<image><bos>Describe the image.`` through PaliGemma's processor; queries
  ``<bos>`` + ``Query: `` + text + ``<pad>`` x10 + ``\n`` through the tokenizer alone; every
  token's 128-d projection, L2 (`colpali`).
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

from ..errors import ModelLoadError
from .formatting import IMAGE_TOKENS

SIDES = ("query", "candidate")
KINDS = ("text", "image", "image,text")
POSITIONS = ("1d", "mrope")
POOLINGS = ("last_token", "mean", "vision_span", "tokens")  # tokens: one vector per token (multi-vector)

VISION_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@dataclass(frozen=True)
class Template:
    """One input string: each part is formatted with ``{image}``, ``{instruction}`` and
    ``{text}``; parts that come out empty are dropped and the rest joined with `sep`.
    A family whose string is not a template names a function instead (`build`)."""

    parts: Tuple[str, ...] = ()
    sep: str = ""
    build: Optional[Callable[[str, str, str], str]] = None

    def render(self, image: str, instruction: str, text: str, prefix: str = "") -> str:
        if self.build is not None:
            return self.build(image, instruction, text)
        filled = (p.format(image=image, instruction=instruction, text=text, prefix=prefix) for p in self.parts)
        return self.sep.join(p for p in filled if p)


def vlm2vec_prompt(image: str, instruction: str, text: str) -> str:
    """VLM2Vec's `process_input_text` (src/model/processor.py): the instruction, then " " and
    the text if any, then the image token and " " in front for an image. An empty
    instruction keeps its separators ("<|image_pad|> ", "<|image_pad|>  text"); a text with
    neither instruction nor image is fed raw, as its eval feeds text candidates."""
    if not image and not instruction:
        return text
    prompt = instruction + (" " + text if text else "")
    return f"{image} {prompt}" if image else prompt


@dataclass(frozen=True)
class ImageBounds:
    """`smart_resize` before the processor: sides multiples of `factor`, pixels in [min, max]."""

    factor: int
    min_pixels: int
    max_pixels: int


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    backbones: Tuple[str, ...]
    # template per "side.kind", "kind", "side" or "default" (first found wins)
    prompts: Mapping[str, Template]
    image_slot: Optional[str] = None         # None: the backbone's own image token
    positions: str = "1d"
    pooling: str = "last_token"
    image_pooling: Optional[str] = None      # pooling for inputs with an image, if different
    normalize: bool = True
    gpu_dtype: str = "bf16"
    takes_instruction: bool = True
    default_instruction: Mapping[str, str] = field(default_factory=dict)   # per side
    fixed_candidate_instruction: bool = False   # candidates always take the default
    instruction_period: bool = False         # append "." unless it ends in punctuation
    kinds: Tuple[str, ...] = KINDS
    tasks: Mapping[str, Tuple[str, str]] = field(default_factory=dict)  # name -> (query, candidate)
    resize: Optional[ImageBounds] = None
    processor_pixels: Optional[Tuple[int, int]] = None   # (min, max) the family's code gives the processor
    processor_resizes: bool = True
    matryoshka: Tuple[int, ...] = ()         # listed sizes ...
    matryoshka_min: Optional[int] = None     # ... or any size from this one up
    multi_vector: Optional[str] = None       # the family embedding by the checkpoint's multi-vector head
    query_prefix: str = ""                   # ``{prefix}`` in a template (ColQwen2's query prefix)
    rule: str = "1"                          # bumped when a rule changes; recorded in manifests
    adapters: Tuple[str, ...] = ()           # task adapters the family's checkpoints carry; the first is the default
    adapter_prompts: Mapping[str, Mapping[str, Template]] = field(default_factory=dict)  # per adapter, over `prompts`
    adapter: Optional[str] = None            # the adapter this recipe is specialised to (`with_adapter`)

    def template(self, side: str, kind: str) -> Template:
        for key in (f"{side}.{kind}", kind, side, "default"):
            if key in self.prompts:
                return self.prompts[key]
        raise ModelLoadError(f"the {self.name} family has no prompt for {kind} inputs "
                             f"(it embeds {', '.join(self.kinds)})")

    def instruction(self, side: str, given: Optional[str]) -> str:
        """The instruction an input is embedded with: the family's default when none is
        given (or when candidates always take it), then its punctuation rule."""
        if not self.takes_instruction:
            return ""
        default = self.default_instruction.get(side, "")
        text = default if (not given or (side == "candidate" and self.fixed_candidate_instruction)) else given
        text = text.strip() if self.instruction_period else text
        if self.instruction_period and text and not unicodedata.category(text[-1]).startswith("P"):
            text += "."
        return text

    def render(self, backbone: str, side: str, text: Optional[str], instruction: Optional[str],
               has_image: bool) -> str:
        kind = "image,text" if has_image and text else ("image" if has_image else "text")
        if kind not in self.kinds:
            raise ModelLoadError(f"the {self.name} family embeds {' or '.join(self.kinds)} inputs, "
                                 f"not {kind}; encode the image and the text apart")
        slot = self.image_slot if self.image_slot is not None else IMAGE_TOKENS[backbone]
        return self.template(side, kind).render(slot if has_image else "", self.instruction(side, instruction),
                                                text or "", self.query_prefix)

    def check_dim(self, dim: Optional[int], full: int, listed: Optional[Sequence[int]] = None) -> Optional[int]:
        """`dim` if the family allows truncating to it (None or the full size: no truncation).
        `listed`: the sizes the checkpoint's config names (jina-v4's `matryoshka_dims`),
        which take the place of the recipe's."""
        if dim is None or dim == full:
            return None
        if not listed and not self.matryoshka and self.matryoshka_min is None:
            raise ModelLoadError(f"dim={dim!r}: the {self.name} family has no Matryoshka sizes; "
                                 f"its vectors have {full} dimensions")
        sizes = tuple(listed) if listed else self.matryoshka
        lowest = None if listed else self.matryoshka_min
        ok = isinstance(dim, int) and not isinstance(dim, bool) and dim < full and (
            dim in sizes or (lowest is not None and dim >= lowest))
        if not ok:
            fitting = [str(d) for d in sizes if d < full]
            if lowest is not None and lowest >= full:
                raise ModelLoadError(f"dim={dim!r}: this model's vectors have {full} dimensions, and the {self.name} "
                                     f"family truncates to {lowest} or more, so there is nothing to truncate to")
            valid = (f"{lowest}..{full}" if lowest is not None else ", ".join(fitting) if fitting else
                     f"none below this model's {full} dimensions (the family lists "
                     f"{', '.join(str(d) for d in sizes)})")
            raise ModelLoadError(f"dim={dim!r} is not a Matryoshka size of the {self.name} family; valid: {valid}")
        return dim

    def sizes(self, full: int, listed: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
        """The Matryoshka sizes below `full` that `check_dim` accepts, largest first: `listed`
        (the checkpoint's own) or the family's, or halvings of `full` down to its lowest size."""
        sizes = {d for d in (listed or self.matryoshka) if d < full}
        if self.matryoshka_min and not listed:
            d = full // 2
            while d >= self.matryoshka_min:
                sizes.add(d)
                d //= 2
        return tuple(sorted(sizes, reverse=True))

    def with_overrides(self, **changes) -> "Recipe":
        return replace(self, **changes)

    def with_query_prefix(self, prefix: Optional[str]) -> "Recipe":
        """This recipe with a checkpoint's own query prefix (None: unchanged); a prefix other
        than the family's is part of the rule an index records."""
        if prefix is None or prefix == self.query_prefix:
            return self
        if not isinstance(prefix, str):
            raise ModelLoadError(f"query_prefix={prefix!r}: expected a str")
        if not any("{prefix}" in part for t in self.prompts.values() for part in t.parts):
            raise ModelLoadError(f"query_prefix={prefix!r}: the {self.name} family's prompts take no query prefix")
        return replace(self, query_prefix=prefix, rule=f"{self.rule};query_prefix={prefix!r}")

    def with_adapter(self, adapter: Optional[str], valid: Optional[Sequence[str]] = None) -> "Recipe":
        """This recipe under a task adapter: its prompt rules over the default ones. `valid`:
        the adapters the checkpoint itself lists, in place of the family's. None: unchanged."""
        if adapter is None:
            return self
        names = tuple(valid) if valid else self.adapters
        if not names:
            raise ModelLoadError(f"adapter={adapter!r}: the {self.name} family has no task adapters")
        if adapter not in names:
            raise ModelLoadError(f"unknown adapter {adapter!r} for the {self.name} family; "
                                 f"valid: {', '.join(names)}")
        return replace(self, prompts={**self.prompts, **self.adapter_prompts.get(adapter, {})}, adapter=adapter)


# ------------------------------------------------------------------------- families

_CHAT = "<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{image}{text}<|im_end|>\n<|im_start|>assistant\n"
GME_DEFAULT = "You are a helpful assistant."
QWEN3_DEFAULT = "Represent the user's input."
JINA_IMAGE = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"

VLM2VEC = Recipe(
    name="vlm2vec",
    description="VLM2Vec V1/V2 (TIGER-Lab): bare image token, instruction, text; 1D positions; last token",
    backbones=("qwen2_vl", "qwen2_5_vl", "llava_next", "phi3_v"),
    prompts={"default": Template(build=vlm2vec_prompt)},
    positions="1d",
)

# mmsearch's trainer joined the non-empty parts with one space and kept transformers' positions
MMSEARCH = replace(
    VLM2VEC,
    name="mmsearch",
    description="models trained by mmsearch: VLM2Vec's parts joined with one space, M-RoPE positions",
    prompts={"default": Template(("{image}", "{instruction}", "{text}"), sep=" ")},
    positions="mrope",
)

GME = Recipe(
    name="gme",
    description="GME (Alibaba-NLP gme-Qwen2-VL): system instruction, vision span then text, <|endoftext|>; "
                "1D positions; last token",
    backbones=("qwen2_vl",),
    prompts={"default": Template((_CHAT + "<|endoftext|>",))},
    image_slot=VISION_SLOT,
    positions="1d",
    gpu_dtype="fp16",
    default_instruction={"query": GME_DEFAULT, "candidate": GME_DEFAULT},
    fixed_candidate_instruction=True,
    tasks={"t2i": ("Find an image that matches the given text.", GME_DEFAULT)},
    resize=ImageBounds(28, 4 * 28 * 28, 16384 * 28 * 28),
    processor_pixels=(256 * 28 * 28, 1280 * 28 * 28),   # GmeQwen2VL's min/max_image_tokens
)

QWEN3_VL_EMBEDDING = Recipe(
    name="qwen3_vl_embedding",
    description="Qwen3-VL-Embedding: Qwen3-VL chat template, instruction as system prompt; M-RoPE; last token",
    backbones=("qwen3_vl",),
    prompts={"default": Template((_CHAT,))},
    image_slot=VISION_SLOT,
    positions="mrope",
    default_instruction={"query": QWEN3_DEFAULT, "candidate": QWEN3_DEFAULT},
    instruction_period=True,
    tasks={"doc": ("Find a document image that matches the given query.", QWEN3_DEFAULT)},
    resize=ImageBounds(32, 4 * 32 * 32, 1800 * 32 * 32),
    processor_resizes=False,
    matryoshka_min=64,
)

JINA_V4 = Recipe(
    name="jina_v4",
    description="jina-embeddings-v4 (single vector): Query:/Passage: prefixes, fixed image prompt; M-RoPE; "
                "mean pooling (images: the vision span)",
    backbones=("qwen2_5_vl",),
    prompts={"query.text": Template(("Query: {text}",)), "candidate.text": Template(("Passage: {text}",)),
             "image": Template((JINA_IMAGE,))},
    image_slot=VISION_SLOT,
    positions="mrope",
    pooling="mean",
    image_pooling="vision_span",
    takes_instruction=False,
    kinds=("text", "image"),
    matryoshka=(128, 256, 512, 1024, 2048),
    multi_vector="jina_v4_multivector",
    # ref: JinaEmbeddingsV4Model.task setter ("Must be one of ['retrieval', 'text-matching', 'code']");
    # _validate_encoding_params: text-matching texts take the query prefix on both sides
    adapters=("retrieval", "text-matching", "code"),
    adapter_prompts={"text-matching": {"candidate.text": Template(("Query: {text}",))}},
)

# ref: colpali_engine 0.3.10 models/qwen2/colqwen2/processing_colqwen2.py ColQwen2Processor
COLQWEN2_DOCUMENT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image."
                     "<|im_end|><|endoftext|>")
COLQWEN2_AUGMENTATION = "<|endoftext|>" * 10  # query_augmentation_token x10 (process_queries' default suffix)

COLQWEN2 = Recipe(
    name="colqwen2",
    description="ColQwen2 / ColQwen2.5 (colpali_engine): multi-vector, a 128-d vector per token; "
                "Query: prefix + text + <|endoftext|>x10, fixed document prompt; M-RoPE; MaxSim",
    backbones=("colqwen2",),
    prompts={"text": Template(("{prefix}{text}" + COLQWEN2_AUGMENTATION,)), "image": Template((COLQWEN2_DOCUMENT,))},
    image_slot=VISION_SLOT,
    positions="mrope",
    pooling="tokens",
    takes_instruction=False,
    kinds=("text", "image"),
    # ref: ColQwen2Processor (colpali_engine <= 0.3.x): smart_resize, factor 28, 4..768 merged tokens
    resize=ImageBounds(28, 4 * 28 * 28, 768 * 28 * 28),
    multi_vector="colqwen2",
    query_prefix="Query: ",
)

# ref: modeling_jina_embeddings_v4.py get_multi_vector_embeddings / _process_batches (`jina_multivector`)
JINA_V4_MULTIVECTOR = replace(
    JINA_V4,
    name="jina_v4_multivector",
    description="jina-embeddings-v4 (multi-vector): its prompts and adapters; every unmasked token through "
                "multi_vector_projector, L2; MaxSim",
    pooling="tokens",
    image_pooling=None,
    matryoshka=(),
)

# ref: colpali_engine models/paligemma/colpali/processing_colpali.py ColPaliProcessor (`colpali`)
COLPALI_DOCUMENT = "<image><bos>Describe the image."   # visual_prompt_prefix; the processor expands <image>
COLPALI_AUGMENTATION = "<pad>" * 10                    # query_augmentation_token (tokenizer.pad_token) x10

COLPALI = Recipe(
    name="colpali",
    description="ColPali (colpali_engine): multi-vector, a 128-d vector per token; <bos>Query: text <pad>x10, "
                "fixed document prompt through PaliGemma's processor; MaxSim",
    backbones=("colpali",),
    prompts={"text": Template(("<bos>{prefix}{text}" + COLPALI_AUGMENTATION + "\n",)),
             "image": Template((COLPALI_DOCUMENT,))},
    image_slot="<image>",
    pooling="tokens",
    takes_instruction=False,
    kinds=("text", "image"),
    multi_vector="colpali",
    query_prefix="Query: ",
)

CLIP = Recipe(
    name="clip",
    description="CLIP dual encoder; image+text by UniIR score fusion",
    backbones=("clip",),
    prompts={"default": Template(("{instruction}", "{text}"), sep=" ")},
    pooling="projection",
)
SIGLIP = replace(CLIP, name="siglip", description="SigLIP dual encoder; image+text by UniIR score fusion",
                 backbones=("siglip",))

FAMILIES: Dict[str, Recipe] = {r.name: r for r in (VLM2VEC, GME, QWEN3_VL_EMBEDDING, JINA_V4, MMSEARCH, CLIP, SIGLIP,
                                                    COLQWEN2, JINA_V4_MULTIVECTOR, COLPALI)}
DEFAULT_FAMILY = {"qwen2_vl": "vlm2vec", "qwen2_5_vl": "vlm2vec", "llava_next": "vlm2vec", "phi3_v": "vlm2vec",
                  "qwen3_vl": "qwen3_vl_embedding", "clip": "clip", "siglip": "siglip", "colqwen2": "colqwen2",
                  "colpali": "colpali"}


def format_input(backbone: str, text: Optional[str], instruction: Optional[str], has_image: bool,
                 family: str = "vlm2vec", side: str = "query") -> str:
    """The exact string `family` feeds the processor for one input."""
    from .formatting import image_token

    image_token(backbone)  # validates the backbone even for text-only inputs
    return get_recipe(family).render(backbone, side, text, instruction, has_image)


def task_instruction(recipe: Recipe, model_tasks: Mapping[str, Tuple[str, str]], task, side: str) -> str:
    """A task's instruction under a model: its own prompts (`mmsearch.json`), then its
    family's, then the task library's; a family that gives its documents one fixed
    instruction gives that for every candidate side, and jina-v4 takes none."""
    from ..tasks import Task, resolve_instruction

    if not isinstance(task, Task):
        for table in (model_tasks, recipe.tasks):
            found = _lookup(table, task)
            if found is not None:
                return found[0 if side == "query" else 1]
    if not recipe.takes_instruction:
        return ""
    if side == "candidate" and recipe.default_instruction.get("candidate"):
        return recipe.default_instruction["candidate"]
    return resolve_instruction(task=task, side=side)


def _lookup(table: Mapping[str, Tuple[str, str]], task: str):
    if task in table:
        return table[task]
    folded = [v for k, v in table.items() if k.casefold() == str(task).strip().casefold()]
    return folded[0] if len(folded) == 1 else None


def get_recipe(name: str) -> Recipe:
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ModelLoadError(f"unknown model family {name!r}; families: {', '.join(FAMILIES)}") from None


def recipe_for(backbone: str, family: Optional[str]) -> Recipe:
    """The recipe of `family`, else the default for `backbone`; it must fit the backbone."""
    if family is None:
        if backbone not in DEFAULT_FAMILY:
            raise ModelLoadError(f"unsupported model_type {backbone!r}: no family knows it; families: "
                                 + "; ".join(f"{r.name} ({', '.join(r.backbones)})" for r in FAMILIES.values()))
        family = DEFAULT_FAMILY[backbone]
    recipe = get_recipe(family)
    if backbone not in recipe.backbones:
        raise ModelLoadError(f"the {recipe.name} family runs on {', '.join(recipe.backbones)} checkpoints, "
                             f"not {backbone!r}")
    return recipe
