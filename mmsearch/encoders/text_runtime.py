"""A torch-free runtime for text-only queries of Qwen-family embedding models.

A one-off `mmsearch search` spends seconds importing torch and transformers
before a short text query takes milliseconds. For the Qwen decoders
(Qwen2-VL, Qwen2.5-VL, Qwen3-VL) a text-only input needs nothing from either:
with no image, M-RoPE's three position rows are equal, so every family's
positions reduce to 1D RoPE over 0..L-1, and the decoder is embeddings, RMSNorm,
grouped-query causal attention (Qwen3: per-head q/k RMSNorm) and a SiLU-gated
MLP. This module runs exactly that in numpy from the checkpoint's safetensors
and tokenizer.json, one input at a time (so no padding). Anything else (an
image, a LoRA adapter, another backbone) goes to the torch encoder, loaded on
first need. `tests/test_text_runtime.py` holds it to the torch encoder.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import ModelLoadError
from .base import Encoder, Request

TEXT_BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
POOLINGS = ("last_token", "mean")
# Where the language model's weights sit, by the transformers version that saved them.
PREFIXES = ("model.language_model.", "model.", "language_model.model.")
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_safetensors(path: Path, keep: Callable[[str], bool]) -> Dict[str, np.ndarray]:
    """float32 arrays of the tensors in one .safetensors file whose names `keep` accepts
    (bfloat16 widened by a bit shift: numpy has no bfloat16)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or not keep(name):
            continue
        code = SAFETENSORS_DTYPES.get(meta["dtype"])
        if code is None:
            raise ModelLoadError(f"{path}: tensor {name} is {meta['dtype']}; the text runtime reads "
                                 f"{', '.join(SAFETENSORS_DTYPES)}")
        start, end = meta["data_offsets"]
        raw = data[start:end].view(code)
        arr = (raw.astype(np.uint32) << 16).view(np.float32) if meta["dtype"] == "BF16" else raw.astype(np.float32)
        out[name] = arr.reshape(meta["shape"])
    return out


def weight_files(path: Path) -> List[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    return sorted(path.glob("*.safetensors"))


class TextConfig:
    """The decoder's shape and constants, read from config.json (transformers 4 or 5 layout)."""

    def __init__(self, config: dict):
        text = config.get("text_config") or {}

        def get(key, default=None):
            return text.get(key, config.get(key, default))

        self.hidden = int(get("hidden_size"))
        self.layers = int(get("num_hidden_layers"))
        self.heads = int(get("num_attention_heads"))
        self.kv_heads = int(get("num_key_value_heads") or self.heads)
        self.head_dim = int(get("head_dim") or self.hidden // self.heads)
        self.eps = float(get("rms_norm_eps", 1e-6))
        rope = get("rope_parameters") or get("rope_scaling") or {}
        self.rope_type = rope.get("rope_type") or rope.get("type") or "default"
        self.rope_theta = float(rope.get("rope_theta") or get("rope_theta") or 10000.0)
        self.act = get("hidden_act", "silu")
        self.sliding = bool(get("use_sliding_window", False))
        self.qk_norm = config.get("model_type") == "qwen3_vl"

    def unsupported(self) -> Optional[str]:
        """Why this runtime can't run the decoder, or None."""
        if self.rope_type not in ("default", "mrope"):
            return f"rope type {self.rope_type!r}"
        if self.act != "silu":
            return f"activation {self.act!r}"
        if self.sliding:
            return "sliding-window attention"
        return None


class TextDecoder:
    """The language model of a Qwen VLM, text only: token ids -> final hidden states."""

    def __init__(self, config: TextConfig, weights: Dict[str, np.ndarray]):
        self.config = config
        prefix = next((p for p in PREFIXES if p + "embed_tokens.weight" in weights), None)
        if prefix is None:
            raise ModelLoadError("no language-model embeddings (embed_tokens.weight) in the checkpoint")
        self.w = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        half = config.head_dim // 2
        self.inv_freq = 1.0 / config.rope_theta ** (np.arange(half, dtype=np.float64) * 2 / config.head_dim)

    @classmethod
    def load(cls, path: Path, config: dict) -> "TextDecoder":
        def keep(name):
            return "visual" not in name and not name.startswith("lm_head")

        weights = {}
        for f in weight_files(path):
            weights.update(read_safetensors(f, keep))
        return cls(TextConfig(config), weights)

    def eval(self) -> "TextDecoder":
        return self  # no dropout, no autograd: always in inference mode

    def _rms(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        var = np.mean(x * x, axis=-1, keepdims=True)
        return weight * (x / np.sqrt(var + self.config.eps))

    def _rope(self, n: int):
        freqs = np.outer(np.arange(n, dtype=np.float64), self.inv_freq)
        emb = np.concatenate([freqs, freqs], axis=-1)
        return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)

    @staticmethod
    def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        half = x.shape[-1] // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")
        return y if bias is None else y + bias

    def hidden_states(self, ids: Sequence[int]) -> np.ndarray:
        """(L, hidden) final-layer states (after the final norm) of one unpadded input."""
        c = self.config
        x = self.w["embed_tokens.weight"][np.asarray(ids)]
        n = x.shape[0]
        cos, sin = self._rope(n)
        causal = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
        group = c.heads // c.kv_heads
        for i in range(c.layers):
            p = f"layers.{i}."
            h = self._rms(x, self.w[p + "input_layernorm.weight"])
            q = self._linear(h, p + "self_attn.q_proj").reshape(n, c.heads, c.head_dim).transpose(1, 0, 2)
            k = self._linear(h, p + "self_attn.k_proj").reshape(n, c.kv_heads, c.head_dim).transpose(1, 0, 2)
            v = self._linear(h, p + "self_attn.v_proj").reshape(n, c.kv_heads, c.head_dim).transpose(1, 0, 2)
            if c.qk_norm:
                q = self._rms(q, self.w[p + "self_attn.q_norm.weight"])
                k = self._rms(k, self.w[p + "self_attn.k_norm.weight"])
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(c.head_dim) + causal
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            attn = (scores / scores.sum(axis=-1, keepdims=True)) @ v
            x = x + self._linear(attn.transpose(1, 0, 2).reshape(n, c.heads * c.head_dim), p + "self_attn.o_proj")
            h = self._rms(x, self.w[p + "post_attention_layernorm.weight"])
            gate = self._linear(h, p + "mlp.gate_proj")
            up = self._linear(h, p + "mlp.up_proj")
            x = x + self._linear(gate / (1.0 + np.exp(-gate)) * up, p + "mlp.down_proj")
        return self._rms(x, self.w["norm.weight"])


class TextQueryEncoder(Encoder):
    """An Encoder that embeds text-only inputs with `TextDecoder` and hands every other
    batch to the torch encoder, loaded by `load_full()` the first time one comes."""

    def __init__(self, decoder: TextDecoder, tokenizer, *, full_dim: int, dim: int, tasks: dict,
                 load_full: Callable[[], Encoder], **common):
        super().__init__(decoder, **common)
        self.tokenizer = tokenizer
        self.full_dim = full_dim
        self.dim = dim
        self.model_tasks = dict(tasks or {})
        self._load_full = load_full
        self._full: Optional[Encoder] = None

    @property
    def full(self) -> Encoder:
        """The torch encoder for what this runtime does not run (images), loaded once."""
        if self._full is None:
            self._full = self._load_full()
        return self._full

    def embed_text(self, text: str) -> np.ndarray:
        hidden = self.model.hidden_states(self.tokenizer.encode(text).ids)
        pooled = hidden[-1] if self.recipe.pooling == "last_token" else hidden.mean(axis=0)
        pooled = pooled[: self.dim]
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12) if self.recipe.normalize else pooled

    def encode_batch(self, requests: Sequence[Request]) -> np.ndarray:
        if any(r.image is not None for r in requests):
            return self.full.encode_batch(requests)
        return np.stack([self.embed_text(self.format(r)) for r in requests]).astype(np.float32)


def unsupported_reason(backbone: str, config: dict, recipe, adapter_merged: bool) -> Optional[str]:
    """Why a checkpoint's text queries can't run here (None: they can)."""
    if backbone not in TEXT_BACKBONES:
        return f"backbone {backbone!r} (the text runtime runs {', '.join(TEXT_BACKBONES)})"
    if adapter_merged:
        return "a LoRA adapter is merged at load time"
    if recipe.pooling not in POOLINGS:
        return f"pooling {recipe.pooling!r}"
    return TextConfig(config).unsupported()
