"""Multi-vector families beyond ColQwen2: jina-embeddings-v4's multi-vector head and ColPali,
each held to an oracle written from the authors' code that runs the raw transformers model class
with the authors' prompts and processing, and each oracle shown to reject planted wrong rules.

A match is: the same token count per input, every token's cosine >= PARITY, every token's norm
that of the oracle's (unit). The tiny checkpoints are sharpened (text q/k x6, `conftest.SHARPEN`)
so a wrong attention or prompt rule moves the vectors, not only the token count.

- jina-v4 (jinaai/jina-embeddings-v4 modeling_jina_embeddings_v4.py, read from a stored copy
  found with the code search): ``get_multi_vector_embeddings`` = ``normalize(multi_vector_projector(
  hidden_states, task_label=task))`` times the attention mask, the projector a task-adapted
  ``MultiAdapterLinear`` (custom_lora_module.py: ``base(x) + B(A(x)) * alpha / r``);
  ``_process_batches(return_multivector=True)`` keeps ``emb[attention_mask.bool()]``;
  prompts from ``JinaEmbeddingsV4Processor.process_texts`` / ``process_images``.
- ColPali (illuin-tech/colpali colpali_engine/models/paligemma/colpali/processing_colpali.py
  ``ColPaliProcessor.process_queries`` / ``process_images``, and modeling_colpali.py
  ``ColPali.forward``). colpali_engine keeps padding rows as zero vectors; the project drops
  them (model_families.md §E), so the oracle drops them too and "padding kept" is planted.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf
from safetensors import safe_open

import mmsearch
from mmsearch import testing
from mmsearch.indexer.loading import multi_vector_setup
from mmsearch.indexer.settings import BuildSettings
from test_family_parity import CASES, IMAGES, PARITY, _processor, _reference_rope_index

JINA = "jina_v4_multivector"
TEXTS = [CASES["text_short"][0], CASES["text_long"][0], "one two three"]
PAGES = [IMAGES["a"], IMAGES["b"]]


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def jina_repo(sharp_checkpoint, tmp_path_factory):
    return testing.build_tiny_jina_v4(sharp_checkpoint("qwen2_5_vl"), tmp_path_factory.mktemp("jina-mv") / "repo")


@pytest.fixture(scope="module")
def colpali_repo(sharp_checkpoint):
    return sharp_checkpoint("colpali")


@pytest.fixture(scope="module")
def jina_encoder(jina_repo):
    return mmsearch.load_encoder(str(jina_repo), family=JINA, device="cpu")


@pytest.fixture(scope="module")
def colpali_encoder(colpali_repo):
    return mmsearch.load_encoder(str(colpali_repo), device="cpu")


def _mismatch(got, want):
    """None when `got` matches `want` token for token, else why not."""
    if len(got) != len(want):
        return f"{len(got)} inputs, oracle {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape:
            return f"input {i}: {g.shape[0]} tokens, oracle {w.shape[0]}"
        gn, wn = np.linalg.norm(g, axis=1), np.linalg.norm(w, axis=1)
        cos = (g * w).sum(1) / np.maximum(gn * wn, 1e-12)
        if cos.min() < PARITY:
            return f"input {i}: token {int(cos.argmin())} cosine {cos.min():.6f}"
        if np.abs(gn - wn).max() > 1e-4:
            return f"input {i}: token norms differ by {np.abs(gn - wn).max():.2e}"
    return None


def _with_padding(tokens, mask):
    """Planted: every position of the padded batch kept (padding as zero rows)."""
    return [t if len(t) == mask.shape[1] else np.vstack([t, np.zeros((mask.shape[1] - len(t), t.shape[1]))])
            for t in tokens]


# ----------------------------------------------------------------------------- jina-v4 oracle


class JinaOracle:
    """jina-embeddings-v4's multi-vector output, from the authors' code, on transformers'
    Qwen2_5_VLForConditionalGeneration (what their vendored qwen2_5_vl.py subclasses) with the
    task LoRA run at forward time, nothing merged."""

    def __init__(self, repo, task="retrieval", *, projector_lora=True, projector_bias=True):
        self.model = tf.Qwen2_5_VLForConditionalGeneration.from_pretrained(str(repo)).eval()
        self.processor = _processor("qwen2_5_vl", repo)
        cfg = json.loads((repo / "adapters" / "adapter_config.json").read_text())
        scaling = cfg["lora_alpha"] / cfg["r"]  # ref: MultiAdapterLinear.update_layer (no rslora)
        with safe_open(str(repo / "model.safetensors"), framework="pt") as f:
            weight, bias = f.get_tensor("multi_vector_projector.weight"), f.get_tensor("multi_vector_projector.bias")
        # ref: JinaEmbeddingsV4Model._init_projection_layer: nn.Linear(hidden, multi_vector_projector_dim)
        self.projector = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.projector.weight.copy_(weight)
            self.projector.bias.copy_(bias if projector_bias else torch.zeros_like(bias))
        pairs = {}
        with safe_open(str(repo / "adapters" / "adapter_model.safetensors"), framework="pt") as f:
            for key in f.keys():  # base_model.model.<module>.lora_<A|B>.<task>.weight
                module, rest = key[len("base_model.model."):].split(".lora_")
                side, key_task = rest.split(".")[:2]
                if key_task == task:
                    pairs.setdefault(module, {})[side] = f.get_tensor(key)
        for module, ab in pairs.items():
            if module == "multi_vector_projector":
                if not projector_lora:
                    continue
                layer = self.projector
            else:  # transformers-4 names in the adapter; transformers 5 nests the text model
                layer = self.model.get_submodule(module.replace("model.", "model.language_model.", 1))
            # ref: custom_lora_module.py MultiAdapterLinear.forward: base(x) + lora_B(lora_A(x)) * scaling
            layer.register_forward_hook(lambda m, args, out, a=ab["A"], b=ab["B"]:
                                        out + torch.nn.functional.linear(torch.nn.functional.linear(args[0], a), b)
                                        * scaling)

    def _tokens(self, inputs, project_first=True):
        inputs.pop("mm_token_type_ids")
        # ref: get_last_hidden_states: M-RoPE positions from get_rope_index, hidden_states[-1]
        position_ids = _reference_rope_index(inputs["input_ids"][0], inputs.get("image_grid_thw"), self.model.config)
        with torch.no_grad():
            hidden = self.model(**inputs, position_ids=position_ids, output_hidden_states=True).hidden_states[-1]
            if project_first:  # ref: get_multi_vector_embeddings: project, then normalize(dim=-1), then * mask
                emb = torch.nn.functional.normalize(self.projector(hidden), dim=-1)
            else:  # planted: normalise the hidden state, then project
                emb = self.projector(torch.nn.functional.normalize(hidden, dim=-1))
            emb = emb * inputs["attention_mask"].unsqueeze(-1)
        # ref: _process_batches: emb[attention_mask.bool()]
        return emb[0][inputs["attention_mask"][0].bool()].double().numpy()

    def texts(self, texts, prefix="Query", **kw):
        # ref: JinaEmbeddingsV4Processor.process_texts: f"{prefix}: {text}"; encode_text's default prompt "query"
        return [self._tokens(self.processor(text=[f"{prefix}: {t}"], return_tensors="pt"), **kw) for t in texts]

    def images(self, images, **kw):
        # ref: process_images: this fixed prompt per image, the processor's own resizing
        prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
        return [self._tokens(self.processor(text=[prompt], images=[im.convert("RGB")], return_tensors="pt"), **kw)
                for im in images]


@pytest.fixture(scope="module")
def jina_oracle(jina_repo):
    cache = {}

    def get(**variant):
        key = tuple(sorted(variant.items()))
        if key not in cache:
            cache[key] = JinaOracle(jina_repo, **variant)
        return cache[key]

    return get


def test_jina_multi_vector_matches_the_authors_rules(jina_encoder, jina_oracle):
    assert jina_encoder.family == JINA and jina_encoder.token_dim == testing.JINA_PROJECTOR_DIM
    assert jina_encoder.multi_vector
    o = jina_oracle()
    got = jina_encoder.encode(TEXTS, side="query", multi_vector=True)  # one padded batch
    assert _mismatch(got, o.texts(TEXTS)) is None, _mismatch(got, o.texts(TEXTS))
    docs = jina_encoder.encode(TEXTS, side="candidate", multi_vector=True)
    assert _mismatch(docs, o.texts(TEXTS, prefix="Passage")) is None
    pages = jina_encoder.encode(PAGES, multi_vector=True)
    assert _mismatch(pages, o.images(PAGES)) is None, _mismatch(pages, o.images(PAGES))


def test_jina_oracle_rejects_planted_wrong_rules(jina_encoder, jina_oracle):
    got_t = jina_encoder.encode(TEXTS, side="query", multi_vector=True)
    got_i = jina_encoder.encode(PAGES, multi_vector=True)
    o = jina_oracle()
    mask = jina_encoder.model_inputs(jina_encoder.to_requests(TEXTS, side="query"))["attention_mask"]
    planted = {
        "padding vectors kept": (got_t, _with_padding(o.texts(TEXTS), mask)),
        "Passage: prefix on queries": (got_t, o.texts(TEXTS, prefix="Passage")),
        "projector LoRA not merged (texts)": (got_t, jina_oracle(projector_lora=False).texts(TEXTS)),
        "projector LoRA not merged (images)": (got_i, jina_oracle(projector_lora=False).images(PAGES)),
        "projector bias dropped": (got_i, jina_oracle(projector_bias=False).images(PAGES)),
        "another task's adapter": (got_i, jina_oracle(task="code").images(PAGES)),
        "normalise before projecting": (got_t, o.texts(TEXTS, project_first=False)),
    }
    for name, (got, wrong) in planted.items():
        why = _mismatch(got, wrong)
        print(f"jina planted {name:36s} -> {why}")
        assert why is not None, f"planted rule {name!r} not rejected"


# ----------------------------------------------------------------------------- ColPali oracle


class ColPaliOracle:
    """colpali_engine's ColPaliProcessor (a PaliGemmaProcessor subclass) and ColPali.forward, on
    transformers' ColPaliForRetrieval weights (``vlm`` = PaliGemma, ``embedding_proj_layer`` =
    ``custom_text_proj``).

    Attention: colpali_engine ran PaliGemma under transformers 4.4x, whose
    ``PaliGemmaForConditionalGeneration._update_causal_mask`` (is_training = token_type_ids and
    labels given; colpali_engine passes no labels) does ``causal_mask[:, :sequence_length] = 0.0``
    ("otherwise attend to the whole prefix"), then masks padding keys: every token attends to
    every unpadded token, queries and documents alike. The oracle builds that 4D mask itself
    (transformers 5 passes a 4D mask through as is) instead of relying on 5.25's defaults, which
    give it without padding but a causal mask to a padded query batch."""

    def __init__(self, repo):
        self.model = tf.ColPaliForRetrieval.from_pretrained(str(repo)).eval()
        self.processor = tf.PaliGemmaProcessor.from_pretrained(str(repo))

    def queries(self, queries, prefix="Query: ", n_augment=10, causal=False, normalize=True):
        tok = self.processor.tokenizer
        # ref: process_queries: bos + query_prefix + query + query_augmentation_token (pad_token) * 10 + "\n"
        texts = [tok.bos_token + prefix + q + tok.pad_token * n_augment + "\n" for q in queries]
        batch = tok(texts, text_pair=None, return_token_type_ids=False, return_tensors="pt", padding="longest",
                    max_length=50)
        return self._forward(dict(batch), causal, normalize)

    def images(self, images, prompt="<image><bos>Describe the image.", causal=False, normalize=True):
        # ref: process_images: visual_prompt_prefix per image, RGB, padding="longest", all outputs to the model
        batch = dict(self.processor(text=[prompt] * len(images), images=[im.convert("RGB") for im in images],
                                    return_tensors="pt", padding="longest"))
        batch.pop("labels", None)  # only a target for training; colpali_engine's processor of its time had none
        batch.pop("token_type_ids")  # their one use, the prefix mask, is built below
        return self._forward(batch, causal, normalize)

    def _forward(self, batch, causal=False, normalize=True):
        mask2d = batch["attention_mask"].bool()
        n = mask2d.shape[1]
        allowed = mask2d[:, None, None, :].expand(-1, 1, n, n)  # every unpadded key
        if causal:  # planted: a causal decoder's mask
            allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
        inputs = {**batch, "attention_mask": allowed}
        # ref: ColPali.forward: last hidden state -> custom_text_proj -> proj / proj.norm(dim=-1) -> * attention_mask
        with torch.no_grad():
            hidden = self.model.vlm(**inputs, use_cache=False).last_hidden_state
            proj = self.model.embedding_proj_layer(hidden)
            if normalize:
                proj = proj / proj.norm(dim=-1, keepdim=True)
            proj = proj * mask2d.unsqueeze(-1)
        return [p[m].double().numpy() for p, m in zip(proj, mask2d)]  # padding rows dropped (§E)


@pytest.fixture(scope="module")
def colpali_oracle(colpali_repo):
    return ColPaliOracle(colpali_repo)


def test_colpali_matches_colpali_engine_rules(colpali_encoder, colpali_oracle):
    assert colpali_encoder.family == "colpali" and colpali_encoder.token_dim == testing.COLQWEN2_DIM
    got = colpali_encoder.encode(TEXTS, multi_vector=True)
    assert _mismatch(got, colpali_oracle.queries(TEXTS)) is None, _mismatch(got, colpali_oracle.queries(TEXTS))
    pages = colpali_encoder.encode(PAGES, multi_vector=True)
    assert _mismatch(pages, colpali_oracle.images(PAGES)) is None, _mismatch(pages, colpali_oracle.images(PAGES))
    n_image = (colpali_encoder.processor.image_seq_length)
    assert all(len(p) == n_image + 2 + len(colpali_encoder.processor.tokenizer("Describe the image.\n").input_ids)
               for p in pages)  # image tokens, two <bos>, the prompt and its newline
    rows, grid = colpali_encoder.patch_grid(PAGES[0])
    assert grid == (4, 4) and list(rows) == list(range(16))
    alone = [colpali_encoder.encode(t, multi_vector=True)[0] for t in TEXTS]
    assert _mismatch(alone, got) is None  # a batch gives what each input gets alone


def test_colpali_oracle_rejects_planted_wrong_rules(colpali_encoder, colpali_oracle):
    o = colpali_oracle
    got_q = colpali_encoder.encode(TEXTS, multi_vector=True)
    got_p = colpali_encoder.encode(PAGES, multi_vector=True)
    mask = colpali_encoder.model_inputs(colpali_encoder.to_requests(TEXTS))["attention_mask"]
    planted = {
        "padding vectors kept": (got_q, _with_padding(o.queries(TEXTS), mask)),
        "transformers' Question: prefix": (got_q, o.queries(TEXTS, prefix="Question: ")),
        "no query augmentation tokens": (got_q, o.queries(TEXTS, n_augment=0)),
        "queries attend causally": (got_q, o.queries(TEXTS, causal=True)),
        "transformers' document prompt (one <bos>)": (got_p, o.images(PAGES, prompt="<image>Describe the image.")),
        "document prompt attended causally": (got_p, o.images(PAGES, causal=True)),
        "projection not normalised": (got_p, o.images(PAGES, normalize=False)),
    }
    for name, (got, wrong) in planted.items():
        why = _mismatch(got, wrong)
        print(f"colpali planted {name:42s} -> {why}")
        assert why is not None, f"planted rule {name!r} not rejected"


# ----------------------------------------------------------------------------- as index models


@pytest.mark.parametrize("which", ["jina", "colpali"])
def test_index_build_takes_them_as_multi_vector_models(which, jina_encoder, colpali_encoder):
    enc = jina_encoder if which == "jina" else colpali_encoder
    fde_encoder, spec = multi_vector_setup(BuildSettings(), None, enc)
    assert spec.token_dim == enc.token_dim and fde_encoder.inner is enc
    fdes, tokens = fde_encoder.encode_requests_with_tokens(enc.to_requests([PAGES[0], "a red bus"]))
    assert fdes.shape == (2, fde_encoder.dim) and [len(t) for t in tokens] == [
        len(t) for t in enc.encode([PAGES[0], "a red bus"], multi_vector=True)]
    with pytest.raises(mmsearch.errors.InputError, match="multi-vector model"):
        enc.encode("a red bus", multi_vector=False)


def test_jina_multi_vector_family_needs_the_published_layout(sharp_checkpoint):
    with pytest.raises(mmsearch.errors.ModelLoadError, match="needs jina-embeddings-v4's published layout"):
        mmsearch.load_encoder(str(sharp_checkpoint("qwen2_5_vl")), family=JINA, device="cpu")


def test_jina_multi_vector_index_end_to_end(jina_repo, jina_encoder, tmp_path):
    """`build_index` with the family named builds a token index; search = brute-force MaxSim."""
    (tmp_path / "img").mkdir()
    lines = []
    for i, im in enumerate(PAGES + [IMAGES["c"]]):
        im.save(tmp_path / "img" / f"{i}.png")
        lines.append(json.dumps({"id": f"p{i}", "image": f"img/{i}.png"}))
    (tmp_path / "pages.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "index"
    mmsearch.build_index([tmp_path / "pages.jsonl"], out, str(jina_repo), family=JINA, index="Flat",
                         fde={"k_sim": 2, "dim_proj": 8, "r_reps": 2})
    pages = dict(zip(["p0", "p1", "p2"], jina_encoder.encode(
        [mmsearch.Item(id=f"p{i}", image=str(tmp_path / "img" / f"{i}.png")) for i in range(3)], multi_vector=True)))
    q = jina_encoder.encode("a red bus", multi_vector=True)[0]
    want = sorted(pages, key=lambda i: -float((q @ pages[i].T).max(axis=1).sum()))
    hits = mmsearch.open_index(out).search("a red bus", k=3)
    assert [h.id for h in hits] == want
