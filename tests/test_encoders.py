"""Encoders against an independent implementation of mmsearch's own family (the rule its
trainer used: VLM2Vec's parts joined by one space, transformers' positions), batching,
padding, adapters, dual encoders and errors. Each published family's parity with its
authors' code is tests/test_family_parity.py.

The oracle below re-derives every rule on its own: it builds the input string
by hand, processes ONE input at a time (so no padding), runs the FULL model
with output_hidden_states, takes hidden_states[-1] at the last position and
L2-normalises. mmsearch batches, pads, skips the LM head and pools by mask.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import mmsearch
from mmsearch.encoders import format_input
from mmsearch.errors import ImageError, InputError, ModelLoadError
from mmsearch.testing import build_tiny_adapter, model_class

VLM_KINDS = ["qwen2_vl", "qwen2_5_vl", "llava_next"]
TOKENS = {"qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>", "llava_next": "<image>"}


def _image(seed, size=(64, 48)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def _oracle_processor(kind, path):
    import transformers

    if kind == "llava_next":
        return transformers.AutoProcessor.from_pretrained(str(path))
    base = transformers.Qwen2VLProcessor if kind == "qwen2_vl" else transformers.Qwen2_5_VLProcessor

    class NoVideo(base):  # the torchvision-free construction, written independently
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kw):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)

    return NoVideo.from_pretrained(str(path))


class Oracle:
    def __init__(self, kind, path):
        self.kind = kind
        self.processor = _oracle_processor(kind, path)
        self.model = model_class(kind).from_pretrained(str(path)).eval()

    def __call__(self, text=None, image=None, instruction=None):
        parts = ([TOKENS[self.kind]] if image is not None else []) + [p for p in (instruction, text) if p]
        kwargs = {"text": [" ".join(parts)], "return_tensors": "pt"}
        if image is not None:
            kwargs["images"] = [image]
        with torch.no_grad():
            out = self.model(**self.processor(**kwargs), output_hidden_states=True)
        h = out.hidden_states[-1][0, -1].float()
        return (h / h.norm()).numpy()


def _cases():
    img_a, img_b = _image(1), _image(2, (80, 56))
    return [
        dict(text="a red square on the left"),
        dict(text="two blue circles", instruction="Find me an everyday image that matches the given caption:"),
        dict(image=img_a),
        dict(image=img_b, instruction="Represent the given image."),
        dict(image=img_a, text="make the square green",
             instruction="Given an image, find a similar everyday image with the described changes:"),
        dict(image=img_b, text="what colour is the circle?", instruction="Represent the given image with the following question:"),
    ]


def _as_input(case):
    return mmsearch.Query(text=case.get("text"), image=case.get("image"), instruction=case.get("instruction"))


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_matches_independent_reference(kind, tiny_dir):
    """mmsearch's own family (the rule its trainer trained with: parts joined by one space,
    transformers' positions). The published families' parity is tests/test_family_parity.py."""
    oracle = Oracle(kind, tiny_dir(kind))
    cases = _cases()
    enc = mmsearch.load_encoder(tiny_dir(kind), family="mmsearch", device="cpu")
    got = enc.encode([_as_input(c) for c in cases], batch_size=4)
    assert got.dtype == np.float32 and got.shape == (len(cases), 64)
    for case, row in zip(cases, got):
        want = oracle(**case)
        assert float(row @ want) >= 0.9999, case


@pytest.mark.parametrize("kind", VLM_KINDS)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_and_padding_invariance(kind, padding_side, tiny_encoder):
    enc = tiny_encoder(kind, padding_side)
    cases = _cases() + [dict(text="x"), dict(text=" ".join(["word"] * 40))]
    inputs = [_as_input(c) for c in cases]
    alone = np.stack([enc.encode([x])[0] for x in inputs])
    for bs in (32, 3):
        batched = enc.encode(inputs, batch_size=bs)
        cos = np.sum(alone * batched, axis=1)
        assert cos.min() >= 0.9999, (bs, cos)
    np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)


def test_left_and_right_padded_checkpoints_agree(tiny_encoder):
    inputs = [_as_input(c) for c in _cases()]
    left = tiny_encoder("qwen2_vl", "left").encode(inputs, batch_size=8)
    right = tiny_encoder("qwen2_vl", "right").encode(inputs, batch_size=8)
    assert np.sum(left * right, axis=1).min() >= 0.9999


def test_input_types_and_query_task(tiny_encoder):
    enc = tiny_encoder("qwen2_vl")
    img = _image(3)
    from mmsearch.tasks import resolve_instruction

    t2i = resolve_instruction(task="t2i", side="query")
    a = enc.encode(["a cat", img, mmsearch.Item(id="i1", text="a cat", image=img)])
    b = enc.encode([mmsearch.Query(text="a cat"), mmsearch.Query(image=img), mmsearch.Query(text="a cat", image=img)])
    np.testing.assert_allclose(a, b, atol=1e-5)
    by_task = enc.encode([mmsearch.Query(text="a cat", task="t2i")])
    by_text = enc.encode(["a cat"], instruction=t2i)
    np.testing.assert_allclose(by_task, by_text, atol=1e-5)
    assert float(by_task[0] @ a[0]) < 0.9999  # the instruction changes the vector


def test_golden_input_strings():
    assert format_input("qwen2_vl", "a dog", "Find it:", True) == "<|image_pad|> Find it: a dog"
    assert format_input("qwen2_5_vl", None, "Represent the given image.", True) == "<|image_pad|> Represent the given image."
    # VLM2Vec's process_input_text keeps its separators when there is no instruction...
    assert format_input("llava_next", "a dog", None, True) == "<image>  a dog"
    assert format_input("qwen2_vl", None, None, True) == "<|image_pad|> "
    # ...where mmsearch's own family (its trainer's rule) joins the non-empty parts
    assert format_input("llava_next", "a dog", None, True, family="mmsearch") == "<image> a dog"
    assert format_input("phi3_v", "a dog", "Find it:", True) == "<|image_1|> Find it: a dog"
    assert format_input("phi3_v", "a dog", "Find it:", False) == "Find it: a dog"
    assert format_input("qwen2_vl", "a dog", "", False) == "a dog"
    with pytest.raises(ModelLoadError, match="supported: qwen2_vl"):
        format_input("bert", "x", None, False)


def test_tiny_images_are_upscaled_for_qwen(tiny_encoder):
    enc = tiny_encoder("qwen2_vl")
    small = _image(4, (10, 12))
    got = enc.encode([small])
    want = enc.encode([small.resize((56, 56), Image.BICUBIC)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_image_size_override(tiny_dir):
    enc = mmsearch.load_encoder(tiny_dir("qwen2_vl"), device="cpu", image_size=(56, 56))
    img = _image(5, (90, 70))
    np.testing.assert_allclose(enc.encode([img]), enc.encode([img.resize((56, 56), Image.BICUBIC)]), atol=1e-5)
    with pytest.raises(TypeError, match="unknown encoder option"):
        mmsearch.load_encoder(tiny_dir("qwen2_vl"), device="cpu", image_sise=(56, 56))


def test_adapter_equals_merged(tiny_dir, tmp_path):
    from peft import PeftModel

    base = tiny_dir("qwen2_vl")
    adapter = build_tiny_adapter(base, tmp_path / "adapter", seed=7)
    merged_dir = tmp_path / "merged"
    net = PeftModel.from_pretrained(model_class("qwen2_vl").from_pretrained(str(base)), str(adapter))
    net.merge_and_unload().save_pretrained(str(merged_dir))
    for f in base.iterdir():
        if f.suffix == ".json" and f.name != "config.json":
            shutil.copy(f, merged_dir / f.name)
    inputs = [_as_input(c) for c in _cases()]
    via_adapter = mmsearch.load_encoder(adapter, device="cpu").encode(inputs)
    via_merged = mmsearch.load_encoder(merged_dir, device="cpu").encode(inputs)
    via_base = mmsearch.load_encoder(base, device="cpu").encode(inputs)
    assert np.sum(via_adapter * via_merged, axis=1).min() >= 0.9999
    assert np.sum(via_adapter * via_base, axis=1).max() < 0.999  # the adapter did something


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_encoder_score_fusion(kind, tiny_dir, tiny_encoder):
    import transformers

    path = tiny_dir(kind)
    model = model_class(kind).from_pretrained(str(path)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    improc = transformers.AutoImageProcessor.from_pretrained(str(path))
    padding = "max_length" if kind == "siglip" else True

    def feats(out):
        return out if torch.is_tensor(out) else out.pooler_output

    img, text = _image(6), "a small green triangle"
    with torch.no_grad():
        t = feats(model.get_text_features(**tok([text], padding=padding, return_tensors="pt")))[0]
        i = feats(model.get_image_features(pixel_values=improc(images=[img], return_tensors="pt")["pixel_values"]))[0]
    t, i = t / t.norm(), i / i.norm()
    fused = (t + i) / (t + i).norm()
    got = tiny_encoder(kind).encode([text, img, mmsearch.Query(text=text, image=img)])
    for row, want in zip(got, (t, i, fused)):
        assert float(row @ want.numpy()) >= 0.9999


def test_bad_inputs_raise_clear_errors(tiny_encoder, tmp_path):
    enc = tiny_encoder("qwen2_vl")
    with pytest.raises(ImageError, match="'broken'"):
        enc.encode([mmsearch.Item(id="broken", image=b"not an image at all")])
    with pytest.raises(ImageError, match="missing.png"):
        enc.encode([mmsearch.Query(image=str(tmp_path / "missing.png"))])
    with pytest.raises(InputError, match="empty"):
        enc.encode([mmsearch.Item(id="e")])
    with pytest.raises(InputError, match="cannot encode int"):
        enc.encode([42])
    with pytest.raises(InputError, match="batch_size"):
        enc.encode(["x"], batch_size=0)


def test_model_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        mmsearch.load_encoder(str(tmp_path / "nope"))
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match=r"unsupported model_type 'bert'.*qwen2_vl.*llava_next"):
        mmsearch.load_encoder(bad)
    with pytest.raises(ModelLoadError, match="no config.json"):
        mmsearch.load_encoder(tmp_path)
    with pytest.raises(ModelLoadError, match=r"HF_HUB_OFFLINE.*local-dir"):
        mmsearch.load_encoder("no-such-org/no-such-model-xyz")


def test_public_api_is_locked():
    assert sorted(mmsearch.__all__) == sorted([
        "Hit", "ImageError", "Index", "Item", "MMSearchError", "Query", "__version__", "build_index",
        "load_encoder", "open_index", "search",
    ])
    for name in mmsearch.__all__:
        assert hasattr(mmsearch, name)


def test_transformers4_style_adapter_loads_the_same(tiny_dir, tmp_path):
    base = tiny_dir("qwen2_vl")
    new = build_tiny_adapter(base, tmp_path / "new", seed=3)
    old = build_tiny_adapter(base, tmp_path / "old", seed=3, legacy_keys=True)
    inputs = [_as_input(c) for c in _cases()]
    a = mmsearch.load_encoder(new, device="cpu").encode(inputs)
    b = mmsearch.load_encoder(old, device="cpu").encode(inputs)
    np.testing.assert_allclose(a, b, atol=1e-6)
