"""One contrastive forward/backward, whole-batch or with GradCache (Gao et al., 2021).

A contrastive loss couples every query with every candidate, so a large batch
normally needs every activation in memory at once. GradCache splits the work:

1. embed the batch in sub-batches without autograd (only the (n, d) embeddings
   are kept), remembering the RNG state before each sub-batch;
2. compute the loss on those embeddings (made leaves) and backpropagate to them
   (and to the temperature), which gives d loss / d embedding for every row;
3. re-run each sub-batch with autograd, under its remembered RNG state so dropout
   draws the same masks, and backpropagate its slice of those cached gradients.

By the chain rule the parameter gradients equal those of the whole batch; the
peak memory is one sub-batch's activations. Sub-batches are planned like the
encoder's batches (`plan_batches`: inputs with images apart, similar lengths
together), and both paths embed through the encoder's own `model_inputs` and
`embed` (formatting, processor, last-token pooling, L2 normalisation).
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, List, Optional, Sequence, Tuple

import torch

from ..encoders.base import Request, plan_batches

Parts = List[Tuple[List[int], dict]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RngState:
    """The torch RNG state (CPU, and the current CUDA device's) at one moment, to replay it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state() if self.cuda else None

    @contextlib.contextmanager
    def replay(self):
        devices = [torch.cuda.current_device()] if self.cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda:
                torch.cuda.set_rng_state(self.cuda_state)
            yield


def prepare(encoder, requests: Sequence[Request], chunk_size: Optional[int]) -> Parts:
    """Model inputs per sub-batch, with the positions of its rows."""
    groups = plan_batches(requests, chunk_size or max(len(requests), 1))
    return [(idx, encoder.model_inputs([requests[i] for i in idx])) for idx in groups]


def _in_order(parts: Parts, reps: List[torch.Tensor]) -> torch.Tensor:
    order = torch.tensor([i for idx, _ in parts for i in idx], device=reps[0].device)
    return torch.cat(reps)[torch.argsort(order)]


def contrastive_backward(encoder, queries: Sequence[Request], candidates: Sequence[Request], loss_fn: LossFn,
                         chunk_size: Optional[int] = None, loss_scale: float = 1.0,
                         autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """Embed queries and candidates, compute `loss_fn(q, c)` and backpropagate
    `loss * loss_scale` into the parameters; return the (detached) loss.

    `chunk_size=None` backpropagates through the whole batch; an int uses GradCache
    with sub-batches of at most that many inputs.
    """
    qparts, cparts = prepare(encoder, queries, chunk_size), prepare(encoder, candidates, chunk_size)
    if chunk_size is None:
        return _whole(encoder, qparts, cparts, loss_fn, loss_scale, autocast)
    return _cached(encoder, qparts, cparts, loss_fn, loss_scale, autocast)


def _whole(encoder, qparts: Parts, cparts: Parts, loss_fn: LossFn, loss_scale: float, autocast) -> torch.Tensor:
    with autocast():
        q = _in_order(qparts, [encoder.embed(inputs) for _, inputs in qparts])
        c = _in_order(cparts, [encoder.embed(inputs) for _, inputs in cparts])
    loss = loss_fn(q, c)
    (loss * loss_scale).backward()
    return loss.detach()


def _cached(encoder, qparts: Parts, cparts: Parts, loss_fn: LossFn, loss_scale: float, autocast) -> torch.Tensor:
    parts = qparts + cparts
    states, reps = [], []
    for _, inputs in parts:  # 1. embeddings only, no graph
        states.append(RngState(encoder.device))
        with torch.no_grad(), autocast():
            reps.append(encoder.embed(inputs))
    q = _in_order(qparts, reps[:len(qparts)]).requires_grad_()
    c = _in_order(cparts, reps[len(qparts):]).requires_grad_()
    loss = loss_fn(q, c)  # 2. gradients w.r.t. the embeddings (and the temperature)
    (loss * loss_scale).backward()
    grads = [q.grad[idx] for idx, _ in qparts] + [c.grad[idx] for idx, _ in cparts]
    for (_, inputs), state, grad in zip(parts, states, grads):  # 3. replay with autograd
        with state.replay(), autocast():
            rep = encoder.embed(inputs)
        rep.backward(gradient=grad)
    return loss.detach()
