"""search() end to end with a tiny VLM2Vec encoder: text, image and composed queries,
instructions, model checks, lazy loading, the one-shot helper and the CLI."""
import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch.commands import search as search_cmd
from mmsearch.errors import IndexMismatchError, InputError
from mmsearch.query import open_index, search
from mmsearch.tasks import resolve_instruction
from mmsearch.types import Item, Query
from test_query_support import build_index, model_info

TEXTS = ["a red bus parked on a city street", "a small dog running on the grass in the park",
         "two cats sleeping on a blue sofa", "a man riding a bicycle down the road",
         "a woman holding an umbrella in the rain", "a green apple and a yellow banana on a table",
         "a white boat sailing on the calm sea"]
COLORS = [(220, 30, 30), (30, 200, 40), (40, 40, 220), (240, 240, 240), (20, 20, 20), (200, 120, 30)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_encoder):
    """An index of 7 texts, 6 images and 2 image+text items, encoded by the tiny Qwen2-VL."""
    enc = tiny_encoder("qwen2_vl")
    root = tmp_path_factory.mktemp("query-e2e")
    images = []
    for i, c in enumerate(COLORS):
        images.append(str(root / f"img{i}.png"))
        Image.new("RGB", (56 + 4 * i, 56), c).save(images[-1])
    texts = TEXTS + [None] * 6 + ["a red square", "a blue square"]
    imgs = [None] * 7 + images + [images[0], images[2]]
    items = [Item(id=f"item-{i}", text=t, image=im) for i, (t, im) in enumerate(zip(texts, imgs))]
    x = enc.encode(items, instruction="Represent the given image.")
    path = root / "index"
    build_index(path, x, "Flat", shards=3, model=model_info(enc), texts=texts, images=imgs,
                modalities=[item.modality for item in items])
    return path, enc, x, images


def check_against_encoder(hits, enc, x, query, k):
    """Hits = brute force over the stored vectors with the encoder's own query vector."""
    q = enc.encode([query])[0]
    scores = (x.astype(np.float16).astype(np.float32) @ q).astype(np.float32)
    order = np.argsort(-scores, kind="stable")[:k]
    assert len(hits) == k and [h.rank for h in hits] == list(range(1, k + 1))
    np.testing.assert_allclose([h.score for h in hits], scores[order], atol=2e-3)
    for h in hits:
        assert abs(scores[h.row] - h.score) < 2e-3 and h.id == f"item-{h.row}"


def test_text_image_and_composed_queries(corpus):
    path, enc, x, images = corpus
    with open_index(path, encoder=enc) as index:
        check_against_encoder(index.search("a red bus", k=5), enc, x, Query(text="a red bus"), 5)
        for image in (Path(images[1]), Image.open(images[1]), Path(images[1]).read_bytes()):
            check_against_encoder(index.search(image, k=4), enc, x, Query(image=images[1]), 4)
        composed = Query(image=images[2], text="make it red")
        hits = index.search(composed, k=3)
        check_against_encoder(hits, enc, x, composed, 3)
        assert hits[0].metadata["modality"] in ("text", "image", "image,text") and "id" not in hits[0].metadata
        many = index.search(["a red bus", composed], k=2)
        assert [h.id for h in many[1]] == [h.id for h in hits[:2]]
        assert index.search([], k=3) == []


def test_instruction_precedence(corpus):
    path, enc, x, _ = corpus
    t2i = resolve_instruction(task="t2i", side="query")
    with open_index(path, encoder=enc) as index:
        check_against_encoder(index.search("a dog", k=3, task="t2i"), enc, x,
                              Query(text="a dog", instruction=t2i), 3)
        own = Query(text="a dog", instruction="Find the dog.")  # the query's own beats the task
        check_against_encoder(index.search(own, k=3, task="t2i"), enc, x, own, 3)
        explicit = index.search(own, k=3, instruction="Explicit wins.")  # the call's instruction beats all
        check_against_encoder(explicit, enc, x, Query(text="a dog", instruction="Explicit wins."), 3)
        own_task = Query(text="a dog", task="i2t")
        check_against_encoder(index.search(own_task, k=3, task="t2i"), enc, x,
                              Query(text="a dog", instruction=resolve_instruction(task="i2t")), 3)
        with pytest.raises(Exception, match="unknown task"):
            index.search("a dog", task="no-such-task")
        with pytest.raises(InputError, match="cannot search with int"):
            index.search(42)


def test_filters_and_hydration_end_to_end(corpus):
    path, enc, _, images = corpus
    with open_index(path, encoder=enc) as index:
        hits = index.search("a red bus", k=20, filter={"modality": "image"})
        assert len(hits) == 6 and {h.modality for h in hits} == {"image"}
        assert {h.image for h in hits} == set(images)
        assert index.candidate_image(index.records([hits[0].row])[0]).size[1] == 56


def test_mismatched_model_names_both(corpus, tiny_encoder):
    path, enc, _, _ = corpus
    other = tiny_encoder("qwen2_5_vl")
    with pytest.raises(IndexMismatchError) as err:
        open_index(path, encoder=other)
    assert enc.name in str(err.value) and other.name in str(err.value)


def test_manifest_model_loads_lazily(corpus):
    path, enc, x, _ = corpus  # the manifest's model id is the tiny checkpoint's directory
    index = open_index(path, device="cpu")
    assert index._encoder is None
    index.search_vectors(x[:1], 2)
    assert index._encoder is None  # vectors need no model
    check_against_encoder(index.search("a red bus", k=3), enc, x, Query(text="a red bus"), 3)
    assert index.encoder.fingerprint == enc.fingerprint
    index.close()


def test_one_shot_search(corpus):
    path, enc, x, _ = corpus
    check_against_encoder(search(path, "two cats", k=5, encoder=enc), enc, x, Query(text="two cats"), 5)


def run_cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="mmsearch")
    search_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.handler(args)
    return code, capsys.readouterr().out


def test_cli_table_and_json(corpus, capsys):
    path, enc, x, images = corpus
    model = ["--model", enc.name, "--device", "cpu"]
    code, out = run_cli(["search", str(path), "--text", "a red bus", "-k", "3"] + model, capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["rank", "score", "id", "text", "image"] and len(lines) == 4
    code, out = run_cli(["search", str(path), "--image", images[0], "--text", "make it blue", "-k", "2",
                         "--filter", '{"modality": ["image", "image,text"]}', "--json"] + model, capsys)
    doc = json.load(io.StringIO(out))
    assert code == 0 and [h["rank"] for h in doc["hits"]] == [1, 2]
    assert all(h["metadata"]["modality"] != "text" for h in doc["hits"])
    with pytest.raises(InputError, match="--filter is not valid JSON"):
        run_cli(["search", str(path), "--text", "x", "--filter", "{bad"] + model, capsys)
    with pytest.raises(InputError, match="give --text, --image or both"):
        run_cli(["search", str(path)] + model, capsys)
