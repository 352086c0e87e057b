"""Settings of published checkpoints, as data.

Each preset says what the checkpoint needs beyond its own files: its family
(`recipes`), backbone, the base model an adapter-only repo sits on, where the
processor comes from, and the image resolution it was evaluated with. Every
field can be overridden through `load_encoder(..., **overrides)`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple


@dataclass(frozen=True)
class Preset:
    family: Optional[str] = None
    backbone: Optional[str] = None
    base_model: Optional[str] = None        # for adapter-only checkpoints
    processor: Optional[str] = None         # where tokenizer/image processor come from
    dim: Optional[int] = None
    trust_remote_code: bool = False
    image_size: Optional[Tuple[int, int]] = None   # resize every image to (w, h) first
    min_pixels: Optional[int] = None        # Qwen2-VL dynamic-resolution bounds
    max_pixels: Optional[int] = None
    num_crops: Optional[int] = None         # Phi-3.5-V processor
    batch_size: Optional[int] = None
    adapter: Optional[str] = None           # the task adapter (jina-v4: retrieval, text-matching, code)
    query_prefix: Optional[str] = None      # ColQwen2: the query prefix, over the checkpoint's mmsearch.json

    def override(self, **kwargs) -> "Preset":
        given = {k: v for k, v in kwargs.items() if v is not None}
        unknown = set(given) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown encoder option(s) {sorted(unknown)}; valid: {sorted(self.__dataclass_fields__)}")
        return replace(self, **given)


PHI35V = "microsoft/Phi-3.5-vision-instruct"
QWEN2VL_2B = "Qwen/Qwen2-VL-2B-Instruct"
QWEN2VL_7B = "Qwen/Qwen2-VL-7B-Instruct"
GME_MIN_PIXELS, GME_MAX_PIXELS = 256 * 28 * 28, 1280 * 28 * 28   # gme_inference.py: min/max_image_tokens

KNOWN_CHECKPOINTS = {
    "TIGER-Lab/VLM2Vec-Full": Preset(
        family="vlm2vec", backbone="phi3_v", processor=PHI35V, dim=3072, trust_remote_code=True, num_crops=16
    ),
    "TIGER-Lab/VLM2Vec-LoRA": Preset(
        family="vlm2vec", backbone="phi3_v", base_model=PHI35V, processor=PHI35V, dim=3072, trust_remote_code=True, num_crops=16
    ),
    "TIGER-Lab/VLM2Vec-LLaVa-Next": Preset(
        family="vlm2vec", backbone="llava_next", processor="llava-hf/llava-v1.6-mistral-7b-hf", dim=4096
    ),
    # V1 Qwen2-VL checkpoints were evaluated with every image resized to 1344x1344.
    "TIGER-Lab/VLM2Vec-Qwen2VL-2B": Preset(
        family="vlm2vec", backbone="qwen2_vl", base_model=QWEN2VL_2B, processor=QWEN2VL_2B, dim=1536, image_size=(1344, 1344)
    ),
    "TIGER-Lab/VLM2Vec-Qwen2VL-7B": Preset(
        family="vlm2vec", backbone="qwen2_vl", base_model=QWEN2VL_7B, processor=QWEN2VL_7B, dim=3584, image_size=(1344, 1344)
    ),
    # V2.0 relies on the processor's own dynamic resizing, bounded as in its training config.
    "VLM2Vec/VLM2Vec-V2.0": Preset(family="vlm2vec", backbone="qwen2_vl", base_model=QWEN2VL_2B,
                                   processor=QWEN2VL_2B, dim=1536, min_pixels=3136, max_pixels=28 * 28 * 1280),
    "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct": Preset(family="gme", backbone="qwen2_vl", dim=1536,
                                                   min_pixels=GME_MIN_PIXELS, max_pixels=GME_MAX_PIXELS),
    "Alibaba-NLP/gme-Qwen2-VL-7B-Instruct": Preset(family="gme", backbone="qwen2_vl", dim=3584,
                                                   min_pixels=GME_MIN_PIXELS, max_pixels=GME_MAX_PIXELS),
    "Qwen/Qwen3-VL-Embedding-2B": Preset(family="qwen3_vl_embedding", backbone="qwen3_vl", dim=2048),
    "Qwen/Qwen3-VL-Embedding-8B": Preset(family="qwen3_vl_embedding", backbone="qwen3_vl", dim=4096),
    # the published repository: backbone + adapters/ with all three task LoRAs (`mmsearch.encoders.jina`)
    "jinaai/jina-embeddings-v4": Preset(family="jina_v4", backbone="qwen2_5_vl", dim=2048, adapter="retrieval"),
    # the same with one task's LoRA merged in (their model cards: plain Qwen2.5-VL weights for vLLM)
    "jinaai/jina-embeddings-v4-vllm-retrieval": Preset(family="jina_v4", backbone="qwen2_5_vl", dim=2048,
                                                       adapter="retrieval"),
    "jinaai/jina-embeddings-v4-vllm-text-matching": Preset(family="jina_v4", backbone="qwen2_5_vl", dim=2048,
                                                           adapter="text-matching"),
    # transformers' layout of vidore's ColQwen2 (trained with colpali_engine's "Query: " prefix, the family's)
    "vidore/colqwen2-v1.0-hf": Preset(family="colqwen2", backbone="colqwen2", dim=128),
}


def preset_for(model: str) -> Preset:
    """The preset of a known checkpoint id, or an empty one."""
    return KNOWN_CHECKPOINTS.get(str(model), Preset())
