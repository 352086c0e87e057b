"""mmsearch.testing: tiny checkpoints that reload offline and run real forward passes."""
import json
import pathlib
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from mmsearch import testing
from mmsearch.errors import InputError

VLM_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_next")
DUAL_KINDS = ("clip", "siglip")
IMAGE_TOKEN = {
    "qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>", "qwen3_vl": "<|image_pad|>", "llava_next": "<image>"
}


# ----------------------------------------------------------------------------- helpers


def _image_only_processor_class(base):
    """The torchvision-free Qwen processor: no video_processor slot in __init__ (test-only copy)."""

    class ImageOnly(base):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return ImageOnly


def _load_processor(kind, path):
    import transformers as tf

    if kind == "qwen2_vl":
        return _image_only_processor_class(tf.Qwen2VLProcessor).from_pretrained(str(path))
    if kind == "qwen2_5_vl":
        return _image_only_processor_class(tf.Qwen2_5_VLProcessor).from_pretrained(str(path))
    if kind == "qwen3_vl":
        return _image_only_processor_class(tf.Qwen3VLProcessor).from_pretrained(str(path))
    return tf.AutoProcessor.from_pretrained(str(path))


def _vlm2vec_text(kind, image, instruction, text):
    """VLM2Vec input string (DESIGN §3)."""
    return " ".join(p for p in [IMAGE_TOKEN[kind] if image is not None else "", instruction, text] if p)


def _image(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def offline():
    """HF_HUB_OFFLINE=1 (env and the hub's import-time constant) and no sockets."""
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise OSError("network access during an offline test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {kind: testing.build_tiny_model(kind, root / kind, seed=0) for kind in testing.KINDS}


@pytest.fixture(scope="module")
def loaded(built, offline):
    """kind -> (model, processor), loaded back with from_pretrained."""
    out = {}
    for kind, path in built.items():
        model = testing.model_class(kind).from_pretrained(str(path)).eval()
        out[kind] = (model, _load_processor(kind, path))
    return out


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(pathlib.Path(path) / "model.safetensors"))


def _forward(model, processor, texts, images=None, **kwargs):
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True, **kwargs)
    with torch.no_grad():
        return inputs, model(**inputs, output_hidden_states=True)


# ----------------------------------------------------------------------------- layout and configs


@pytest.mark.parametrize("kind", testing.KINDS)
def test_reloads_offline_with_auto_classes(kind, built, offline):
    from transformers import AutoConfig, AutoTokenizer

    path = built[kind]
    assert (path / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(str(path))
    assert config.model_type == kind
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "right"
    text_config = config.text_config
    assert text_config.vocab_size == len(tokenizer)
    assert text_config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("kind", ("qwen2_vl", "qwen2_5_vl"))
def test_qwen_config_matches_tokenizer(kind, built, offline):
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    config = AutoConfig.from_pretrained(str(built[kind]))
    tok = AutoTokenizer.from_pretrained(str(built[kind]))
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert len({config.image_token_id, config.video_token_id, tok.pad_token_id}) == 3
    text = config.text_config
    assert text.hidden_size == 64 and text.num_hidden_layers == 2
    assert config.vision_config.depth == 2 and config.vision_config.patch_size == 14
    assert config.vision_config.spatial_merge_size == 2
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    image_processor = AutoImageProcessor.from_pretrained(str(built[kind]))
    assert type(image_processor).__name__.startswith("Qwen2VLImageProcessor")
    assert image_processor.size.shortest_edge == 56 * 56
    assert image_processor.size.longest_edge == 112 * 112
    saved = json.loads((built[kind] / "preprocessor_config.json").read_text())
    expected = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}[kind]
    assert saved["processor_class"] == expected


def test_qwen3_vl_config_matches_tokenizer_and_processor(built, loaded):
    from transformers import AutoConfig, AutoImageProcessor

    path = built["qwen3_vl"]
    config = AutoConfig.from_pretrained(str(path))
    _, processor = loaded["qwen3_vl"]
    tok = processor.tokenizer
    assert config.model_type == "qwen3_vl"
    for name in ("image", "video", "vision_start", "vision_end"):
        token = {"image": "<|image_pad|>", "video": "<|video_pad|>"}.get(name, f"<|{name}|>")
        assert getattr(config, f"{name}_token_id") == tok.convert_tokens_to_ids(token)
    text, vision = config.text_config, config.vision_config
    assert text.hidden_size == 64 and text.num_hidden_layers == 2
    assert text.head_dim == text.hidden_size // text.num_attention_heads == 16
    section = text.rope_parameters["mrope_section"]
    assert sum(section) == text.head_dim // 2 and text.rope_parameters["mrope_interleaved"]
    assert 3 * max(section[1:]) <= text.head_dim // 2 + 1  # H/W dims interleave inside head_dim/2
    assert vision.depth == 2 and vision.patch_size == 16 and vision.spatial_merge_size == 2
    assert vision.out_hidden_size == text.hidden_size
    assert all(0 <= i < vision.depth for i in vision.deepstack_visual_indexes)
    assert len(vision.deepstack_visual_indexes) <= text.num_hidden_layers
    image_processor = AutoImageProcessor.from_pretrained(str(path))
    assert type(image_processor).__name__.startswith("Qwen2VLImageProcessor")
    assert image_processor.patch_size == 16 and image_processor.merge_size == 2
    assert image_processor.size.shortest_edge == 64 * 64 and image_processor.size.longest_edge == 128 * 128
    assert list(image_processor.image_mean) == [0.5, 0.5, 0.5]
    saved = json.loads((path / "preprocessor_config.json").read_text())
    assert saved["processor_class"] == "Qwen3VLProcessor"
    assert (saved["min_pixels"], saved["max_pixels"]) == (64 * 64, 128 * 128)


def test_qwen3_vl_chat_template_renders_like_qwen3_vl(loaded):
    _, processor = loaded["qwen3_vl"]
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Represent the user's input."}]},
        {"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "a red bus"}]},
    ]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nRepresent the user's input.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a red bus<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen3_vl_image_tokens_follow_the_32px_grid(loaded):
    model, processor = loaded["qwen3_vl"]
    prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a red bus<|im_end|>\n"
    inputs, out = _forward(model, processor, [prompt], [_image(200, 170, 9)])
    grid = inputs["image_grid_thw"][0].tolist()
    # 200x170 px is 34000 px > 128*128: smart_resize to multiples of 32 within the max
    assert grid[0] == 1 and grid[1] * 16 % 32 == 0 and grid[2] * 16 % 32 == 0
    assert grid[1] * grid[2] * 16 * 16 <= 128 * 128
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == grid[1] * grid[2] // 4
    assert "mm_token_type_ids" in inputs
    assert torch.isfinite(out.hidden_states[-1]).all()


def test_llava_next_config_matches_processor(built, loaded):
    model, processor = loaded["llava_next"]
    config = model.config
    assert config.image_token_index == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert config.vision_config.model_type == "clip_vision_model"
    assert config.text_config.hidden_size == 64 and config.text_config.num_hidden_layers == 2
    assert processor.patch_size == config.vision_config.patch_size == 14
    assert processor.vision_feature_select_strategy == config.vision_feature_select_strategy
    assert processor.num_additional_image_tokens == 1
    assert processor.image_processor.image_grid_pinpoints == config.image_grid_pinpoints
    # Mistral-style tokenizer: BOS first, no EOS appended
    ids = processor.tokenizer("a red bus").input_ids
    assert ids[0] == processor.tokenizer.bos_token_id and ids[-1] != processor.tokenizer.eos_token_id


def test_padding_side_is_saved(tmp_path, offline):
    from transformers import AutoTokenizer

    path = testing.build_tiny_model("qwen2_vl", tmp_path / "left", padding_side="left")
    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok.padding_side == "left"
    batch = tok(["a", "a red bus on the street"], padding=True)
    assert batch["attention_mask"][0][0] == 0 and batch["attention_mask"][0][-1] == 1


# ----------------------------------------------------------------------------- forward passes


@pytest.mark.parametrize("kind", VLM_KINDS)
@pytest.mark.parametrize("modality", ("text", "image", "image+text"))
def test_vlm_forward(kind, modality, loaded):
    model, processor = loaded[kind]
    with_image = modality != "text"
    images = [_image(40, 30, 1), _image(90, 120, 2)] if with_image else None
    instruction = "Represent the given image." if modality == "image" else None
    texts = ["" if modality == "image" else "a red bus", "" if modality == "image" else "two cats on a sofa"]
    prompts = [_vlm2vec_text(kind, images and images[i], instruction, t) for i, t in enumerate(texts)]
    inputs, out = _forward(model, processor, prompts, images)
    if kind.startswith("qwen"):
        # transformers 5 builds Qwen's M-RoPE positions from these
        assert "mm_token_type_ids" in inputs
    image_token_id = model.config.image_token_id if kind.startswith("qwen") else model.config.image_token_index
    n_image_tokens = (inputs["input_ids"] == image_token_id).sum(dim=1)
    if with_image:
        assert (n_image_tokens > 0).all()
        if kind.startswith("qwen"):
            assert int(inputs["image_grid_thw"].prod(dim=1).sum()) // 4 == int(n_image_tokens.sum())
            assert (n_image_tokens <= 16).all()
    else:
        assert (n_image_tokens == 0).all()
    hidden = out.hidden_states[-1]
    assert hidden.shape == (*inputs["input_ids"].shape, 64)
    assert torch.isfinite(hidden).all()
    assert torch.isfinite(out.logits).all()
    # the two rows differ (the inputs differ)
    last = inputs["attention_mask"].sum(dim=1) - 1
    pooled = hidden[torch.arange(2), last]
    assert not torch.allclose(pooled[0], pooled[1])


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_image_changes_embedding(kind, loaded):
    model, processor = loaded[kind]
    prompt = _vlm2vec_text(kind, True, "Represent the given image.", "")
    hidden = []
    for seed in (3, 4):
        inputs, out = _forward(model, processor, [prompt], [_image(56, 56, seed)])
        hidden.append(out.hidden_states[-1][0, -1])
    assert not torch.allclose(hidden[0], hidden[1])


@pytest.mark.parametrize("kind", DUAL_KINDS)
def test_dual_encoder_forward(kind, loaded):
    model, processor = loaded[kind]
    padding = "max_length" if kind == "siglip" else True  # SigLIP pools the last position
    texts = ["a red bus", "two cats sleeping on a blue sofa"]
    images = [_image(40, 30, 1), _image(90, 120, 2)]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=padding)
    assert inputs["pixel_values"].shape == (2, 3, 28, 28)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert out.text_embeds.shape == (2, 32) and out.image_embeds.shape == (2, 32)
    assert torch.isfinite(out.text_embeds).all() and torch.isfinite(out.image_embeds).all()
    assert out.text_model_output.hidden_states[-1].shape[-1] == 32
    assert not torch.allclose(out.text_embeds[0], out.text_embeds[1])
    assert not torch.allclose(out.image_embeds[0], out.image_embeds[1])
    if kind == "clip":  # CLIP pools the first EOS: every text must carry one
        eos = model.config.text_config.eos_token_id
        assert ((inputs["input_ids"] == eos).sum(dim=1) >= 1).all()


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", testing.KINDS)
def test_same_seed_same_weights_other_seed_differs(kind, built, tmp_path):
    same = _weights(testing.build_tiny_model(kind, tmp_path / "same", seed=0))
    other = _weights(testing.build_tiny_model(kind, tmp_path / "other", seed=1))
    ref = _weights(built[kind])
    assert same.keys() == ref.keys() == other.keys()
    assert all(torch.equal(same[k], ref[k]) for k in ref)
    assert any(not torch.equal(other[k], ref[k]) for k in ref)
    tokenizer_json = (tmp_path / "same" / "tokenizer.json").read_bytes()
    assert tokenizer_json == (built[kind] / "tokenizer.json").read_bytes()


def test_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    testing.build_tiny_model("clip", tmp_path / "clip", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_is_deterministic_and_byte_level(tmp_path):
    a = testing.build_tiny_tokenizer(tmp_path / "a")
    b = testing.build_tiny_tokenizer(tmp_path / "b", padding_side="left")
    assert a.get_vocab() == b.get_vocab()
    assert b.padding_side == "left"
    assert 300 <= len(a) <= 300 + len(testing.QWEN_SPECIAL_TOKENS)
    text = "Zürich 東京 <|image_pad|> a red bus"
    ids = a(text).input_ids
    assert a.decode(ids) == text
    assert a.convert_tokens_to_ids("<|image_pad|>") in ids
    assert (tmp_path / "a" / "tokenizer.json").is_file()


# ----------------------------------------------------------------------------- adapters


@pytest.fixture(scope="module")
def adapter(built, tmp_path_factory):
    return testing.build_tiny_adapter(built["qwen2_vl"], tmp_path_factory.mktemp("adapter") / "lora", seed=0)


def test_adapter_files(adapter, built):
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["base_model_name_or_path"] == str(built["qwen2_vl"].resolve())
    assert pathlib.Path(config["base_model_name_or_path"]).is_absolute()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "model.safetensors").exists() and not (adapter / "config.json").exists()
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (adapter / name).read_bytes() == (built["qwen2_vl"] / name).read_bytes()
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all("visual" not in k for k in weights)
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    targeted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in weights}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_adapter_is_seeded(adapter, built, tmp_path):
    from safetensors.torch import load_file

    def build(name, seed):
        path = testing.build_tiny_adapter(built["qwen2_vl"], tmp_path / name, seed=seed)
        return load_file(str(path / "adapter_model.safetensors"))

    ref = load_file(str(adapter / "adapter_model.safetensors"))
    same, other = build("s", 0), build("o", 1)
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert any(not torch.equal(ref[k], other[k]) for k in ref)


def test_adapter_changes_outputs_and_merges(adapter, built, loaded, offline):
    from peft import PeftModel

    base, processor = loaded["qwen2_vl"]
    prompt = _vlm2vec_text("qwen2_vl", True, "Represent the given image.", "a red bus")
    inputs = processor(text=[prompt], images=[_image(56, 56, 5)], return_tensors="pt")

    def last_hidden(model):
        with torch.no_grad():
            return model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1]

    base_out = last_hidden(base)
    fresh = testing.model_class("qwen2_vl").from_pretrained(str(built["qwen2_vl"]))
    peft_model = PeftModel.from_pretrained(fresh, str(adapter)).eval()
    adapted = last_hidden(peft_model)
    merged = peft_model.merge_and_unload()
    merged_out = last_hidden(merged)
    assert type(merged).__name__ == "Qwen2VLForConditionalGeneration"
    assert not torch.allclose(adapted, base_out, atol=1e-4)
    assert torch.allclose(merged_out, adapted, atol=1e-4)


def test_legacy_key_adapter_loads_with_key_mapping(adapter, built, loaded, tmp_path, offline):
    from peft import PeftModel
    from safetensors.torch import load_file

    legacy = testing.build_tiny_adapter(built["qwen2_vl"], tmp_path / "legacy", seed=0, legacy_keys=True)
    new_keys = load_file(str(adapter / "adapter_model.safetensors"))
    old_keys = load_file(str(legacy / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.model.layers.") for k in old_keys)
    assert len(old_keys) == len(new_keys)
    _, processor = loaded["qwen2_vl"]
    inputs = processor(text=["<|image_pad|> a red bus"], images=[_image(56, 56, 6)], return_tensors="pt")
    cls = testing.model_class("qwen2_vl")
    outs = []
    for path, mapping in ((adapter, None), (legacy, testing.LEGACY_ADAPTER_KEY_MAPPING)):
        base = cls.from_pretrained(str(built["qwen2_vl"]))
        model = PeftModel.from_pretrained(base, str(path), key_mapping=mapping)
        with torch.no_grad():
            outs.append(model.eval()(**inputs, output_hidden_states=True).hidden_states[-1])
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


# ----------------------------------------------------------------------------- sharpening


@pytest.mark.parametrize("kind", ("qwen2_vl", "qwen3_vl", "llava_next"))
def test_sharpen_attention_scales_only_text_queries_and_keys(kind, tmp_path, offline):
    path = testing.build_tiny_model(kind, tmp_path / kind, seed=0)
    files = {p.name: p.read_bytes() for p in path.iterdir() if p.name != "model.safetensors"}
    before = _weights(path)
    assert testing.sharpen_attention(path, factor=6.0) == path
    after = _weights(path)
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {
        k for k in before
        if ("q_proj" in k or "k_proj" in k or "q_norm" in k or "k_norm" in k)
        and "self_attn" in k and "vision" not in k and "visual" not in k
    }
    assert changed <= expected
    assert any("q_proj.weight" in k for k in changed) and any("k_proj.weight" in k for k in changed)
    if kind == "qwen3_vl":  # per-head RMSNorm after q/k_proj: the norm weights carry the factor
        assert any("q_norm" in k for k in changed) and any("k_norm" in k for k in changed)
    if kind == "qwen2_vl":  # biases are scaled too (the tiny model's start at zero)
        assert any(k.endswith("q_proj.bias") for k in expected)
    for k in expected:
        assert torch.allclose(after[k], before[k] * 6.0, rtol=1e-6, atol=0)
    # the other files are untouched, and the checkpoint reloads
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.name != "model.safetensors"} == files
    testing.model_class(kind).from_pretrained(str(path))


def test_sharpen_attention_changes_the_text_attention(built, loaded, tmp_path, offline):
    _, processor = loaded["qwen2_vl"]
    shutil.copytree(built["qwen2_vl"], tmp_path / "sharp")
    testing.sharpen_attention(tmp_path / "sharp")
    inputs = processor(text=["two cats sleeping on a blue sofa"], return_tensors="pt")

    def attention_entropy(path):
        net = testing.model_class("qwen2_vl").from_pretrained(str(path), attn_implementation="eager").eval()
        with torch.no_grad():
            attn = net(**inputs, output_attentions=True).attentions[-1][0, :, -1]  # last query, all heads
        return float(-(attn * attn.clamp_min(1e-12).log()).sum(-1).mean())

    # a random tiny model attends almost uniformly (entropy near log L); sharpened, it does not
    assert attention_entropy(tmp_path / "sharp") < attention_entropy(built["qwen2_vl"]) - 0.25


def test_sharpen_attention_errors(built, tmp_path):
    with pytest.raises(InputError, match="factor=0"):
        testing.sharpen_attention(built["qwen2_vl"], factor=0)
    with pytest.raises(InputError, match="factor=nan"):
        testing.sharpen_attention(built["qwen2_vl"], factor=float("nan"))
    with pytest.raises(InputError, match="safetensors"):
        testing.sharpen_attention(tmp_path / "missing")


# ----------------------------------------------------------------------------- layering


def _imported_modules(path: pathlib.Path, root: pathlib.Path):
    """Every module an import statement in `path` names (relative and function-level ones too)."""
    import ast

    package = list(path.relative_to(root.parent).with_suffix("").parts)[:-1]  # a module's or __init__'s package
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package[: len(package) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def test_library_code_never_imports_testing():
    import mmsearch

    root = pathlib.Path(mmsearch.__file__).parent
    offenders = sorted(
        str(path.relative_to(root.parent))
        for path in root.rglob("*.py")
        if path != root / "testing.py"
        and any(m == "mmsearch.testing" or m.startswith("mmsearch.testing.") for m in _imported_modules(path, root))
    )
    assert offenders == []


# ----------------------------------------------------------------------------- errors


def test_unknown_kind_names_the_options(tmp_path):
    with pytest.raises(InputError, match="phi3_v.*qwen2_vl.*siglip"):
        testing.build_tiny_model("phi3_v", tmp_path)


def test_bad_padding_side(tmp_path):
    with pytest.raises(InputError, match="'middle'.*left.*right"):
        testing.build_tiny_model("clip", tmp_path, padding_side="middle")


def test_bad_special_token():
    with pytest.raises(InputError, match="<nope>"):
        testing.build_tiny_tokenizer(pad_token="<nope>")


def test_adapter_needs_a_qwen_base(built, tmp_path):
    with pytest.raises(InputError, match="'clip'.*qwen2_vl"):
        testing.build_tiny_adapter(built["clip"], tmp_path / "x")
    with pytest.raises(InputError, match="config.json"):
        testing.build_tiny_adapter(tmp_path / "missing", tmp_path / "y")
    with pytest.raises(InputError, match="r=0"):
        testing.build_tiny_adapter(built["qwen2_vl"], tmp_path / "z", r=0)
