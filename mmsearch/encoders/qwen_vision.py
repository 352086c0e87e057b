"""A faster Qwen2-VL vision tower: the same arithmetic in fewer, larger operations.

transformers' Qwen2-VL (and Qwen2.5-VL) vision tower packs a batch's images into one
sequence. Without flash-attention (so always on CPU) its attention then loops over
the images in Python: one `scaled_dot_product_attention` call per image and layer, about
650 calls in a training step of mmsearch-tiny on 200 images. When every image has the
same number of patches, which the encoder's batching makes the usual case
(`plan_batches` groups images by size), the packed sequence reshapes to (images, heads,
patches, head_dim) and one call per layer computes the same attention. For short
sequences in bf16 on CPU, where PyTorch's flash kernel is slowest (its backward took
45 ms against 8 ms for 200 images of 64 patches; with 1,024 patches it is the faster
one), the attention is written out as softmax(q k^T / sqrt(d)) v.

The patch embedding is a Conv3d whose kernel equals its stride, i.e. one matrix product
per patch; as a matmul its backward is several times cheaper on CPU.

Unequal image sizes and other attention implementations keep transformers' forward.
"""
from __future__ import annotations

import importlib
import types

import torch

ATTENTION_CLASSES = ("VisionAttention", "Qwen2_5_VLVisionAttention")
PATCH_EMBED_CLASSES = ("PatchEmbed", "Qwen2_5_VisionPatchEmbed")
EXPLICIT_MAX_PATCHES = 256   # measured crossover (bf16, CPU): explicit is 2.5-5x faster at 64-256, slower at 1,024


def speed_up_vision(model: torch.nn.Module) -> int:
    """Give `model`'s Qwen2-VL vision attention and patch-embedding modules the faster
    forwards; returns how many modules changed (0 for other architectures)."""
    changed = 0
    for module in model.modules():
        kind = type(module).__name__
        if getattr(module, "_mmsearch_fast", False):
            continue
        if kind in ATTENTION_CLASSES and hasattr(module, "qkv"):
            rotary = importlib.import_module(type(module).__module__).apply_rotary_pos_emb_vision
            module.forward = types.MethodType(_attention_forward(type(module).forward, rotary), module)
        elif kind in PATCH_EMBED_CLASSES and isinstance(getattr(module, "proj", None), torch.nn.Conv3d):
            module.forward = types.MethodType(_patch_embed_forward, module)
        else:
            continue
        module._mmsearch_fast = True
        changed += 1
    return changed


def stock_vision(model: torch.nn.Module) -> int:
    """Undo `speed_up_vision`: transformers' own forwards again (for comparisons); returns
    how many modules changed back."""
    restored = 0
    for module in model.modules():
        if getattr(module, "_mmsearch_fast", False):
            del module.forward          # the instance attribute; the class's forward shows through
            module._mmsearch_fast = False
            restored += 1
    return restored


def _attention_forward(stock, rotary):
    def forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor, position_embeddings=None, **kwargs):
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if (self.config._attn_implementation != "sdpa" or position_embeddings is None
                or bool((lengths != lengths[0]).any())):
            return stock(self, hidden_states, cu_seqlens, position_embeddings=position_embeddings, **kwargs)
        seq, images, patches = hidden_states.shape[0], len(lengths), int(lengths[0])
        # the same steps as transformers' forward up to the attention call
        q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = rotary(q, k, cos, sin)
        # (seq, heads, dim) -> (images, heads, patches, dim): each image attends only to itself
        q, k, v = (t.reshape(images, patches, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and patches <= EXPLICIT_MAX_PATCHES:
            out = torch.softmax((q @ k.transpose(-1, -2)) * self.scaling, dim=-1) @ v
        else:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.0, scale=self.scaling)
        return self.proj(out.transpose(1, 2).reshape(seq, -1).contiguous())

    return forward


def _patch_embed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.proj.weight   # (embed_dim, channels, temporal, patch, patch): the rows' layout too
    flat = hidden_states.to(weight.dtype).reshape(-1, weight[0].numel())
    return torch.nn.functional.linear(flat, weight.reshape(weight.shape[0], -1), self.proj.bias)
