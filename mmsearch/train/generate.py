"""The generative objective: next-token prediction of the positive's text given the query.

A contrastive loss alone cannot teach a randomly initialised vision tower to read
(DESIGN.md §8): the gradient through one pooled vector is too weak a signal. Asking
the language-model head to write the text it sees gives one target per token. With
MMEB-train rows the query side (image and/or text) is the prompt and the positive's
text is the target: a page image with "Read the page." -> its title, an image ->
its caption, an image and a question -> the answer.

The input is the encoder's own formatting of the query (as `embed` sees it) followed
by a space and the target; only the target's tokens are scored, averaged over the
batch's target tokens, by the Hugging Face model's own loss (`labels`, -100 ignored).
"""
from __future__ import annotations

from typing import Callable, ContextManager, List, Optional, Sequence, Tuple

import torch

from ..encoders.base import Request, plan_batches
from ..errors import InputError
from .data import TrainData

IGNORE = -100  # label of positions the loss skips (Hugging Face's ignore_index)
NO_TARGET = "no positive text to generate"


def generation_data(data: TrainData) -> TrainData:
    """`data` without the examples whose positive has no text (counted as skipped);
    hard negatives and positive images play no part in generation."""
    kept = [ex for ex in data.examples if ex.positive.text]
    dropped = len(data.examples) - len(kept)
    if not kept:
        raise InputError(f"objective generate: none of the {dropped} training examples has a positive text "
                         f"(pos_text) to generate")
    skipped = data.skipped.copy()
    if dropped:
        skipped[NO_TARGET] += dropped
    return TrainData(examples=kept, skipped=skipped, rejected=data.rejected)


def generation_inputs(encoder, queries: Sequence[Request], targets: Sequence[str]) -> Tuple[dict, torch.Tensor]:
    """Model inputs of prompt + " " + target per row, and labels scoring the target tokens only."""
    prompts = [Request(text=None, image=q.image, instruction=None, prompt=f"{encoder.format(q)} {t}")
               for q, t in zip(queries, targets)]
    batch = encoder.model_inputs(prompts)
    tokenizer = getattr(encoder.processor, "tokenizer", encoder.processor)
    labels = torch.full_like(batch["input_ids"], IGNORE)
    for row, target in enumerate(targets):
        ids = torch.tensor(tokenizer(" " + target, add_special_tokens=False)["input_ids"], dtype=torch.long)
        real = batch["attention_mask"][row].nonzero().flatten()
        tail = real[len(real) - len(ids):]
        if len(ids) == 0 or not torch.equal(batch["input_ids"][row, tail].cpu(), ids):
            raise InputError(f"objective generate: the target {target!r} does not tokenise the same after its "
                             f"prompt {prompts[row].prompt[:60]!r}...; its tokens cannot be told apart")
        labels[row, tail] = batch["input_ids"][row, tail]
    return batch, labels


def generation_backward(encoder, queries: Sequence[Request], targets: Sequence[str], chunk_size: Optional[int],
                        scale: float, autocast: Callable[[], ContextManager]) -> float:
    """Backpropagate scale x the mean target-token cross-entropy of the batch, in
    sub-batches of `chunk_size` rows weighted by their share of the target tokens
    (so the gradient equals the whole batch's); returns the loss."""
    parts = [generation_inputs(encoder, [queries[i] for i in idx], [targets[i] for i in idx])
             for idx in plan_batches(queries, chunk_size or max(len(queries), 1))]
    total = sum(int((labels != IGNORE).sum()) for _, labels in parts)
    loss_sum = 0.0
    for batch, labels in parts:
        share = int((labels != IGNORE).sum()) / total
        with autocast():
            loss = encoder.model(**batch, labels=labels).loss
        (loss * share * scale).backward()
        loss_sum += float(loss.detach()) * share
    return loss_sum
