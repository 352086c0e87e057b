"""The faster Qwen2-VL vision tower (`encoders.qwen_vision`) against transformers' own.

The oracle is the same loaded model with the stock forwards put back (a deep copy
without the instance-level forwards), so any difference comes from the rewrite.
"""
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from mmsearch.encoders.base import Request
from mmsearch.encoders.qwen_vision import speed_up_vision, stock_vision

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _stock(model):
    stock = copy.deepcopy(model)
    assert stock_vision(stock) > 0
    return stock


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _embed_and_grads(encoder, model, requests, bf16: bool):
    """Embeddings of `requests` through `model` (in `encoder`'s place) and the gradients of a fixed
    function of them, with dropout off."""
    original = encoder.model
    encoder.model = model
    try:
        model.eval()
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            emb = encoder.embed(encoder.model_inputs(requests))
        (emb[:, :5].sum() * emb.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return emb.detach(), grads
    finally:
        encoder.model = original


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("sizes", [[(56, 56)] * 5, [(56, 56), (84, 56), (56, 56), (112, 84)]],
                         ids=["same-size", "mixed-sizes"])
def test_fast_vision_tower_equals_transformers(tiny_encoder, kind, sizes):
    enc = tiny_encoder(kind)
    model = enc.model
    assert any(getattr(m, "_mmsearch_fast", False) for m in model.modules())  # load_encoder applied it
    stock = _stock(model)
    requests = [Request(text=None, image=im, instruction="Represent the given image.") for im in _images(sizes)]
    requests.append(Request(text="a caption without an image", image=None, instruction="Find the image."))
    for bf16, atol in ((False, 1e-5), (True, 2e-2)):
        fast_emb, fast_grads = _embed_and_grads(enc, model, requests, bf16)
        ref_emb, ref_grads = _embed_and_grads(enc, stock, requests, bf16)
        torch.testing.assert_close(fast_emb, ref_emb, rtol=0, atol=atol)
        assert fast_grads.keys() == ref_grads.keys()
        visual = [n for n in ref_grads if "visual" in n]
        assert visual and any(float(ref_grads[n].abs().max()) > 0 for n in visual)
        for name in visual:
            scale = float(ref_grads[name].abs().max()) + 1e-12
            err = float((fast_grads[name] - ref_grads[name]).abs().max()) / scale
            assert err < (1e-4 if not bf16 else 5e-2), (name, err)
    model.eval()


def test_speed_up_changes_each_module_once_and_only_qwen_vision(tiny_dir):
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(str(tiny_dir("qwen2_vl")))
    depth = model.config.vision_config.depth
    assert speed_up_vision(model) == depth + 1      # each block's attention and the patch embedding
    assert speed_up_vision(model) == 0              # already done
    assert stock_vision(model) == depth + 1 and stock_vision(model) == 0
    assert speed_up_vision(model) == depth + 1      # and again after undoing it
    assert speed_up_vision(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0

