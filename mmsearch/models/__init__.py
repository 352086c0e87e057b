"""Models mmsearch builds and ships.

`scratch`: Qwen-VL checkpoints of any size (`QwenSize`) with random weights and a byte-level
BPE trained in-process (`mmsearch train --scratch` starts from one; `mmsearch.testing`
builds its test checkpoints with it). `tiny/` is not code: the shipped mmsearch-tiny
checkpoint (`load_encoder()`'s default), its model card and `train.sh`, its recipe.
Importing this package loads neither torch nor transformers.
"""
from .scratch import QWEN_KINDS, QwenSize, build_qwen, model_class, qwen_tokenizer

__all__ = ["QWEN_KINDS", "QwenSize", "build_qwen", "model_class", "qwen_tokenizer"]
