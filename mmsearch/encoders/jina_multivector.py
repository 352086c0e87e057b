"""jina-embeddings-v4's multi-vector head (family ``jina_v4_multivector``).

The same model, prompts and positions as the single vector (`recipes.JINA_V4`, `jina` for the
checkpoint layout and the task LoRA); only the output differs. Where each rule is written in
the authors' code (modeling_jina_embeddings_v4.py, read from a stored copy found with the code
search):

- ``get_multi_vector_embeddings``: ``multi_vector_projector(hidden_states, task_label=...)``
  (an ``nn.Linear(hidden, 128)`` with bias, adapted by the task's LoRA like every linear
  layer), then ``normalize(dim=-1)``, then ``* attention_mask`` — projection first, L2 second.
- ``_process_batches`` with ``return_multivector=True``: ``emb[attention_mask.bool()]`` per
  input, i.e. every unmasked token is kept: the ``Query: ``/``Passage: `` prefix, and for an
  image the whole fixed prompt (chat markers, vision span, "Describe the image.").
- the hidden states are ``get_last_hidden_states``': the backbone's last layer, M-RoPE
  positions (the single-vector path's).

The head is loaded beside the backbone (`jina.load_projector`) and attached to the network as
``multi_vector_projector``, so it moves with it between devices.
"""
from __future__ import annotations

from .multivector import MultiVectorEncoder

HEAD = "multi_vector_projector"


class JinaMultiVectorEncoder(MultiVectorEncoder):
    """Token matrices of jina-embeddings-v4: its projector over every unmasked token."""

    def __init__(self, model, processor, **kwargs):
        super().__init__(model, processor, token_dim=getattr(model, HEAD).out_features, **kwargs)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def token_embeddings(self, batch: dict) -> "torch.Tensor":
        """(B, L, 128): the task-adapted projector of each last hidden state, L2-normalised,
        times the attention mask (ref: get_multi_vector_embeddings)."""
        import torch

        hidden = self.final_hidden_states(batch)
        head = getattr(self.model, HEAD)
        proj = torch.nn.functional.normalize(head(hidden.to(head.weight.dtype)), p=2, dim=-1)
        return proj * batch["attention_mask"].unsqueeze(-1).to(proj.dtype)
