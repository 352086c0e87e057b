"""Position rules and pooling of the embedding families (see `recipes`).

Every function works on a padded batch, left or right padded: positions and
pools are computed over the real tokens only, so a batch gives each input the
embedding it has alone.
"""
from __future__ import annotations


def positions_1d(attention_mask: "torch.Tensor") -> "torch.Tensor":
    """1D positions (0, 1, 2, ... over the real tokens; padding gets 0), as M-RoPE's
    (3, B, L) with three equal rows: what VLM2Vec's and GME's reference code produce."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 0)
    return pos.unsqueeze(0).expand(3, -1, -1)


def last_token_pool(hidden: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """Hidden state of each row's last real token; correct for left or right padding."""
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.to(torch.long) * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def mean_pool(hidden: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """Mean of the hidden states where `mask` is 1."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def vision_span_mask(input_ids: "torch.Tensor", start_id: int, end_id: int) -> "torch.Tensor":
    """1 from each row's first `start_id` token to its first `end_id` token, both included."""
    import torch

    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    start = (input_ids == start_id).long().argmax(dim=1, keepdim=True)
    end = (input_ids == end_id).long().argmax(dim=1, keepdim=True)
    return ((positions >= start) & (positions <= end)).long()


def pool(kind: str, hidden: "torch.Tensor", batch: dict, config=None) -> "torch.Tensor":
    """Pool a batch's final hidden states by a recipe's rule."""
    mask = batch["attention_mask"]
    if kind == "last_token":
        return last_token_pool(hidden, mask)
    if kind == "mean":
        return mean_pool(hidden, mask)
    if kind == "vision_span":
        span = vision_span_mask(batch["input_ids"], config.vision_start_token_id, config.vision_end_token_id)
        return mean_pool(hidden, span * mask)
    raise ValueError(f"unknown pooling {kind!r}; valid: last_token, mean, vision_span")
