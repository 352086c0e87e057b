"""ColPali (family ``colpali``): transformers' ``ColPaliForRetrieval``, a PaliGemma (Gemma text
model, SigLIP vision tower) with a linear ``embedding_proj_layer`` to 128 dimensions.

The rules are colpali_engine's (illuin-tech/colpali; read from the stored files named here);
the strings are the recipe's (`recipes.COLPALI`):

- documents: models/paligemma/colpali/processing_colpali.py ``ColPaliProcessor.process_images``
  feeds ``visual_prompt_prefix`` = ``"<image><bos>Describe the image."`` with the RGB image to
  PaliGemma's processor (``padding="longest"``), which expands ``<image>`` to the image's
  ``image_seq_length`` tokens, inserts one more ``<bos>`` after them and appends ``"\\n"``;
  everything it returns goes to the model.
- queries: ``process_queries`` tokenizes ``bos + query_prefix + text + query_augmentation_token
  * 10 + "\\n"`` with the tokenizer alone (``return_token_type_ids=False``, ``padding="longest"``;
  its ``max_length=50`` does not truncate without ``truncation=True``). ``query_prefix`` is
  ``"Query: "`` and the augmentation token ``tokenizer.pad_token`` (``<pad>``); the ``<pad>``
  tokens are real, attended tokens, distinct from batch padding by the attention mask.
  PaliGemma's processor sets ``add_bos_token=False`` on its tokenizer, so the ``<bos>`` in the
  string is the only one.
- attention: colpali_engine ran PaliGemma under transformers 4.4x, whose
  ``_update_causal_mask`` (not training: no labels) lets every token attend to every unpadded
  token ("otherwise attend to the whole prefix"), queries included. transformers 5.25 does so
  for tokens with ``token_type_ids`` 0 (PaliGemma's prefix) and for an unpadded input without
  them, but gives a padded batch without them a causal mask; so queries are passed with
  ``token_type_ids`` 0, as the whole prefix they were in the reference.
- models/paligemma/colpali/modeling_colpali.py ``ColPali.forward``: the last hidden state,
  ``custom_text_proj``, ``proj / proj.norm(dim=-1)``, ``* attention_mask`` — what transformers'
  ``ColPaliForRetrieval.forward`` computes (``embedding_proj_layer``), so it is called as is.
- padding rows are dropped (`multivector`): colpali_engine keeps them as zero vectors.

transformers' own ``ColPaliProcessor`` differs: one ``<bos>`` before "Describe the image." and
``query_prefix`` ``"Question: "`` by default; the ``-hf`` checkpoints were converted from
colpali_engine's weights, so the recipe follows colpali_engine (a checkpoint's own prefix:
``query_prefix`` in its ``mmsearch.json``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from ..errors import InputError, ModelLoadError
from .base import Request
from .multivector import MultiVectorEncoder

AUGMENTATION_TOKEN = "<pad>"   # the recipe's literal; checked against the checkpoint's pad token
BOS_TOKEN = "<bos>"


def load_processor(path: Path):
    """PaliGemma's processor (tokenizer + SigLIP image processor) from the checkpoint's files,
    whichever processor class they name; the tokens the recipe spells out are checked."""
    import transformers

    try:
        processor = transformers.PaliGemmaProcessor.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"cannot load the PaliGemma processor from {path}: {e}") from None
    tok = processor.tokenizer
    if tok.pad_token != AUGMENTATION_TOKEN or tok.bos_token != BOS_TOKEN:
        raise ModelLoadError(f"{path}: the colpali family spells its query augmentation token {AUGMENTATION_TOKEN!r} "
                             f"and BOS {BOS_TOKEN!r} (colpali_engine: tokenizer.pad_token / bos_token); this "
                             f"tokenizer has pad {tok.pad_token!r}, bos {tok.bos_token!r}")
    return processor


class ColPaliEncoder(MultiVectorEncoder):
    """Token matrices of a ColPali checkpoint (``ColPaliForRetrieval``)."""

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.vlm_config.image_token_id)

    def processor_inputs(self, requests: Sequence[Request]) -> dict:
        """A batch is all images (documents) or all texts (queries): `plan_batches` groups them."""
        texts = [self.format(r) for r in requests]
        images = [self.prepare_image(r.image).convert("RGB") for r in requests if r.image is not None]
        if not images:  # ref: process_queries: the tokenizer alone; all of it PaliGemma's prefix
            batch = dict(self.processor.tokenizer(texts, return_token_type_ids=False, return_tensors="pt",
                                                  padding="longest"))
            batch["token_type_ids"] = batch["input_ids"].new_zeros(batch["input_ids"].shape)
            return batch
        if len(images) != len(requests):
            raise InputError("a ColPali batch holds images or texts, not both")
        batch = self.processor(text=texts, images=images, return_tensors="pt", padding="longest")
        batch.pop("labels", None)  # a training target the processor adds; not a model input here
        return dict(batch)

    def token_embeddings(self, batch: dict) -> "torch.Tensor":
        """(B, L, 128): ColPaliForRetrieval's own forward (projection, L2, times the mask)."""
        return self.model(**batch, use_cache=False).embeddings

    def patch_grid(self, image) -> Tuple[np.ndarray, Tuple[int, int]]:
        """Rows of the page's image tokens and the square grid they tile (SigLIP: one token per
        patch of the fixed-size image)."""
        batch = self.processor_inputs(self.to_requests([image]))
        ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].numpy()
        rows = np.flatnonzero(ids == self.image_token_id)
        side = math.isqrt(len(rows))
        if side * side != len(rows):
            raise InputError(f"{len(rows)} image tokens: not a square grid of one page image")
        return rows, (side, side)
