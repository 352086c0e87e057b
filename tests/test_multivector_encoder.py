"""ColQwen2 / ColQwen2.5 multi-vector encoders held to an oracle written from the authors' code.

The oracle below is written from colpali_engine 0.3.10 (the wheel's
models/qwen2/colqwen2/processing_colqwen2.py `ColQwen2Processor`, utils/processing_utils.py,
models/qwen2/colqwen2/modeling_colqwen2.py `ColQwen2.forward`) and runs one unpadded input at a
time on a sharpened tiny checkpoint; "ref:" names the rule's source. Every planted wrong rule
(padding vectors kept, no / another query prefix, no augmentation tokens, 1D positions as
transformers 5's `ColQwen2ForRetrieval.forward` gives them) is shown to fail the same check first.
"""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import mmsearch
from mmsearch.encoders.recipes import get_recipe
from mmsearch.errors import InputError, ModelLoadError

PARITY = 0.9999
KINDS = ("colqwen2", "colqwen2_5")
QUERIES = ("a red bus", "two cats sleeping on a blue sofa next to a small dog running on the grass", "make it red")


def _image(width: int, height: int, seed: int) -> Image.Image:
    """A seeded RGB image with structure (gradients plus noise), 150-250 px a side."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([127 + 120 * np.sin(xx / rng.uniform(8, 30)), 127 + 120 * np.cos(yy / rng.uniform(8, 30)),
                     127 + 120 * np.sin((xx + yy) / rng.uniform(8, 30))], axis=-1)
    noise = rng.normal(0, 25, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


IMAGES = (_image(200, 170, 1), _image(160, 230, 2), _image(250, 150, 3))


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    """The lowest per-token cosine of two token matrices, aligned at their last token (a wrong
    prefix changes the count, and must still show in the vectors), -1 on another width."""
    if a.shape[1] != b.shape[1]:
        return -1.0
    n = min(len(a), len(b))
    a, b = a[-n:].astype(np.float64), b[-n:].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    return float(cos.min())


def _matches(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and _min_cos(got, want) >= PARITY


# ----------------------------------------------------------------------------- the oracle


def _smart_resize(height: int, width: int, factor=28, min_pixels=4 * 28 * 28, max_pixels=768 * 28 * 28):
    """ref: colpali_engine ColQwen2Processor.smart_resize_helper (num_image_tokens 768)."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _rope_index(input_ids: torch.Tensor, grid_thw, config) -> torch.Tensor:
    """(3, 1, L) M-RoPE positions of one unpadded sequence with at most one image: transformers
    4's Qwen2-VL get_rope_index, which colpali_engine's Qwen2VLModel forward computed from
    input_ids: text counts on, the image's tokens take (t, h, w) grid indices after it."""
    ids = input_ids.tolist()
    if grid_thw is None:
        return torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1)
    first = ids.index(config.image_token_id)
    t, h, w = (int(v) for v in grid_thw[0])
    merge = config.vision_config.spatial_merge_size
    gh, gw = h // merge, w // merge
    grid = torch.stack([torch.arange(t).repeat_interleave(gh * gw), torch.arange(gh).repeat_interleave(gw).repeat(t),
                        torch.arange(gw).repeat(t * gh)]) + first
    rest = len(ids) - first - t * gh * gw
    after = torch.arange(rest).view(1, -1).expand(3, -1) + int(grid.max()) + 1
    before = torch.arange(first).view(1, -1).expand(3, -1)
    return torch.cat([before, grid, after], dim=1).unsqueeze(1)


class Oracle:
    # ref: ColQwen2Processor class attributes
    DOCUMENT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image."
                "<|im_end|><|endoftext|>")
    AUGMENTATION = "<|endoftext|>"

    def __init__(self, path, kind: str):
        import transformers as tf

        self.model = tf.ColQwen2ForRetrieval.from_pretrained(str(path)).eval()
        self.config = self.model.config.vlm_config
        cls = tf.Qwen2VLProcessor if kind == "colqwen2" else tf.Qwen2_5_VLProcessor

        class ImageOnly(cls):  # the Qwen processor minus its video part (no torchvision here)
            def __init__(self, image_processor=None, tokenizer=None, **kwargs):
                super().__init__(image_processor, tokenizer, None, **kwargs)

        self.processor = ImageOnly(image_processor=tf.Qwen2VLImageProcessorPil.from_pretrained(str(path)),
                                   tokenizer=tf.AutoTokenizer.from_pretrained(str(path)))

    def inputs(self, text=None, image=None, prefix="Query: ", n_augment=10, newline=False):
        if image is not None:
            # ref: smart_resize: image.convert("RGB").resize((w, h)) (PIL's default filter), then
            # process_images: the fixed visual prompt per image
            h, w = _smart_resize(image.height, image.width)
            return self.processor(text=[self.DOCUMENT], images=[image.convert("RGB").resize((w, h))],
                                  return_tensors="pt")
        # ref: process_queries: query_prefix + query + query_augmentation_token * 10 (transformers'
        # own processor adds a trailing "\n": the `newline` planted rule)
        query = prefix + text + self.AUGMENTATION * n_augment + ("\n" if newline else "")
        return self.processor(text=[query], return_tensors="pt")

    def __call__(self, text=None, image=None, positions="mrope", keep_padding_to=None, **query_rule) -> np.ndarray:
        batch = dict(self.inputs(text, image, **query_rule))
        batch.pop("mm_token_type_ids", None)
        if positions == "transformers_forward":  # planted: ColQwen2ForRetrieval.forward (1D positions)
            self.model.vlm.rope_deltas = None  # no stale deltas from an earlier call
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].unsqueeze(0)  # its processor pads per image
            with torch.no_grad():
                out = self.model(**batch).embeddings[0]
            return out.numpy()
        ids = batch["input_ids"][0]
        pos = _rope_index(ids, batch.get("image_grid_thw"), self.config)
        if positions == "1d":  # planted wrong rule
            pos = torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1)
        with torch.no_grad():
            # ref: ColQwen2.forward: Qwen2VLModel forward -> last_hidden_state; custom_text_proj
            # (transformers' name: embedding_proj_layer); proj / proj.norm; * attention_mask
            hidden = self.model.vlm(**batch, position_ids=pos, use_cache=False).last_hidden_state
            proj = self.model.embedding_proj_layer(hidden)
            proj = proj / proj.norm(dim=-1, keepdim=True)
            proj = proj * batch["attention_mask"].unsqueeze(-1)
        tokens = proj[0].double().numpy()
        if keep_padding_to is not None:  # planted: colpali_engine's zero vectors for padding kept
            tokens = np.concatenate([np.zeros((keep_padding_to - len(tokens), tokens.shape[1])), tokens])
        return tokens


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def checkpoint(sharp_checkpoint):
    return lambda kind, padding_side="left": sharp_checkpoint(kind, padding_side)


@pytest.fixture(scope="module")
def oracle(checkpoint):
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = Oracle(checkpoint(kind, "right"), kind)
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def encoder(checkpoint):
    cache = {}

    def get(kind, padding_side="left"):
        if (kind, padding_side) not in cache:
            cache[kind, padding_side] = mmsearch.load_encoder(checkpoint(kind, padding_side), device="cpu")
        return cache[kind, padding_side]

    return get


# ----------------------------------------------------------------------------- parity


def test_tiny_checkpoint_is_a_colqwen2_for_retrieval(encoder, checkpoint):
    enc = encoder("colqwen2")
    assert type(enc.model).__name__ == "ColQwen2ForRetrieval"
    assert enc.family == "colqwen2" and enc.multi_vector is True and enc.token_dim == enc.dim == 32
    assert enc.recipe.query_prefix == "Query: " and enc.recipe.positions == "mrope"
    assert json.loads((checkpoint("colqwen2_5") / "config.json").read_text())["vlm_config"]["model_type"] == "qwen2_5_vl"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_tokens_match_the_oracle_batched_and_alone(kind, padding_side, encoder, oracle):
    enc, ref = encoder(kind, padding_side), oracle(kind)
    inputs = list(QUERIES) + list(IMAGES)
    want = [ref(text=x) if isinstance(x, str) else ref(image=x) for x in inputs]
    batched = enc.encode(inputs, batch_size=8)
    alone = [enc.encode(x)[0] for x in inputs]
    for got_b, got_a, w in zip(batched, alone, want):
        assert got_b.dtype == np.float32 and got_b.flags["C_CONTIGUOUS"]
        assert _matches(got_b, w) and _matches(got_a, w), (got_b.shape, w.shape, _min_cos(got_b, w))
        np.testing.assert_allclose(np.linalg.norm(got_b, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_planted_wrong_rules_fail_the_same_check(kind, encoder, oracle):
    enc, ref = encoder(kind), oracle(kind)
    query, image = QUERIES[1], IMAGES[0]
    got_q, got_d = enc.encode(query)[0], enc.encode(image)[0]
    assert _matches(got_q, ref(text=query)) and _matches(got_d, ref(image=image))
    wrong_queries = {
        "no prefix (colpali_engine > 0.3.10)": ref(text=query, prefix=""),
        "transformers' processor (trailing newline)": ref(text=query, newline=True),
        "no augmentation tokens": ref(text=query, n_augment=0),
        "padding vectors kept": ref(text=query, keep_padding_to=len(got_q) + 3),
    }
    for rule, wrong in wrong_queries.items():
        assert not _matches(got_q, wrong), rule
    # the rules that keep the token count must move the vectors themselves
    assert _min_cos(got_q, ref(text=query, prefix="")) < PARITY
    assert _min_cos(got_q, ref(text=query, n_augment=0)) < PARITY
    for positions in ("1d", "transformers_forward"):
        wrong = ref(image=image, positions=positions)
        assert wrong.shape == got_d.shape and _min_cos(got_d, wrong) < PARITY, positions


def _maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    """ref: colpali_engine processing_utils.score_multi_vector, one pair, by a loop."""
    return sum(max(float(q @ d) for d in doc) for q in query)


def test_dropping_padding_matters_when_all_similarities_are_negative(encoder):
    enc = encoder("colqwen2")
    q = enc.encode(QUERIES[0])[0]
    # real query tokens and a document every one of them disagrees with: their mean, negated,
    # mixed with some of a page's tokens
    centre = q.mean(0) / np.linalg.norm(q.mean(0))
    q = q[q @ centre > 0.2]
    doc = -centre[None] * 3 + 0.1 * enc.encode(IMAGES[0])[0][:5]
    doc /= np.linalg.norm(doc, axis=1, keepdims=True)
    assert len(q) >= 3 and (q @ doc.T).max() < 0
    padded = np.concatenate([doc, np.zeros((4, doc.shape[1]), np.float32)])  # colpali_engine's batch padding
    assert _maxsim(q, doc) < -0.5 and _maxsim(q, padded) == 0.0


# ----------------------------------------------------------------------------- the recipe's knobs


def test_query_prefix_is_the_checkpoints_and_is_recorded(checkpoint, oracle, tmp_path):
    path = tmp_path / "colqwen2-no-prefix"
    shutil.copytree(checkpoint("colqwen2"), path)
    (path / "mmsearch.json").write_text(json.dumps({"family": "colqwen2", "query_prefix": ""}))
    enc = mmsearch.load_encoder(path, device="cpu")
    assert enc.recipe.query_prefix == "" and "query_prefix=''" in enc.recipe.rule
    assert _matches(enc.encode(QUERIES[0])[0], oracle("colqwen2")(text=QUERIES[0], prefix=""))
    # the call wins over the card
    again = mmsearch.load_encoder(path, device="cpu", query_prefix="Query: ")
    assert again.recipe.rule == "1" and _matches(again.encode(QUERIES[0])[0], oracle("colqwen2")(text=QUERIES[0]))
    with pytest.raises(ModelLoadError, match="take no query prefix"):
        get_recipe("gme").with_query_prefix("Q: ")  # a family whose prompts have no {prefix}


def test_single_vector_requests_raise_a_clear_error(encoder):
    enc = encoder("colqwen2")
    with pytest.raises(InputError, match="multi-vector model"):
        enc.encode("a red bus", multi_vector=False)
    with pytest.raises(InputError, match="multi_vector=True"):
        enc.encode_requests(enc.to_requests(["a red bus"]))
    with pytest.raises(ModelLoadError, match="no Matryoshka"):
        mmsearch.load_encoder(enc.name, device="cpu", dim=16)
