"""Synthetic collections: determinism, exact layouts, and ground truth checked by
independent oracles (a caption parser, a pixel reader, an edit interpreter, a VQA
answerer) rather than by the generator's own bookkeeping."""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmsearch.datasets import Holdout, SceneOptions, SyntheticOptions, make
from mmsearch.datasets.collection import generate
from mmsearch.datasets.scenes import PALETTE, Group, Scene, render_scene
from mmsearch.datasets.specs import IMAGE_CANDIDATE, PAGE_CANDIDATE
from mmsearch.errors import InputError

SEED, SIZE = 3, 10  # 10 >= the 8 held-out pairs of 0.2 x 40, so every pair is drawn in test
MBEIR_TASK = {("text", "image"): 0, ("text", "text"): 1, ("text", "image,text"): 2, ("image", "text"): 3,
              ("image", "image"): 4, ("image,text", "text"): 6, ("image,text", "image"): 7,
              ("image,text", "image,text"): 8}  # UniIR's MBEIR_TASK
PLACES = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom",
          "in the centre": "centre"}
CELLS = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "centre": (1, 1)}
COUNTS = {"a": 1, "one": 1, "two": 2, "three": 3}
WORDS = {1: "one", 2: "two", 3: "three"}


@pytest.fixture(scope="module")
def mbeir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mbeir")
    summary = make(root, format="mbeir", size=SIZE, seed=SEED, holdout=0.2)
    return root, summary


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """More edits and questions, so every kind and direction is exercised."""
    root = tmp_path_factory.mktemp("wide")
    return root, make(root, format="mbeir", size=70, seed=11, tasks=("composed", "vqa"), splits=("test",))


@pytest.fixture(scope="module")
def mmeb(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmeb")
    return root, make(root, format="mmeb", size=SIZE, seed=SEED, holdout=0.2, num_candidates=8)


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return root, make(root, format="train", size=SIZE, seed=SEED, holdout=0.2, table="jsonl")


# ----------------------------------------------------------------- oracles

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SINGULAR = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}, "crosses": "cross"}


def singular(noun):
    return SINGULAR[noun]


def parse_caption(text):
    """'Two small red circles on the left and a large blue square at the top.' ->
    {(2, 'small', 'red', 'circle', 'left'), (1, 'large', 'blue', 'square', 'top')}"""
    assert text[0].isupper() and text.endswith("."), text
    body = text[0].lower() + text[1:-1]
    out = set()
    for phrase in re.split(r", | and ", body):
        m = re.fullmatch(r"(a|two|three) (small|large) (\w+) (\w+) (" + "|".join(PLACES) + ")", phrase)
        assert m, phrase
        out.add((COUNTS[m[1]], m[2], m[3], singular(m[4]), PLACES[m[5]]))
    assert len({g[3] for g in out}) == len(out) and len({g[4] for g in out}) == len(out)
    return out


def _components(mask):
    """4-connected components of a boolean mask, as boolean masks."""
    seen, blobs = np.zeros_like(mask), []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        blob, stack = np.zeros_like(mask), [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            blob[cy, cx] = True
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        blobs.append(blob)
    return blobs


def read_pixels(path):
    """What an image shows, from its pixels alone: {(count, size, colour, place)}."""
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    bg, n = a[0, 0], a.shape[0]
    edges = [round(i * n / 3) for i in range(4)]
    fg = np.abs(a - bg).max(axis=2) > 40
    out = set()
    for (col, row) in [(0, 0), (2, 0), (0, 2), (2, 2)]:
        assert not fg[edges[row]:edges[row + 1], edges[col]:edges[col + 1]].any(), "corner cells stay empty"
    for place, (col, row) in CELLS.items():
        ys, xs = slice(edges[row], edges[row + 1]), slice(edges[col], edges[col + 1])
        blobs = _components(fg[ys, xs])
        if not blobs:
            continue
        cell = a[ys, xs]
        colours = set()
        for b in blobs:
            rgb = np.median(cell[b], axis=0)
            colours.add(min(PALETTE, key=lambda c: np.abs(np.array(PALETTE[c]) - rgb).sum()))
        assert len(colours) == 1, (path, place, colours)
        area = np.mean([b.sum() for b in blobs]) / fg[ys, xs].size
        out.add((len(blobs), "large" if area > 0.14 else "small", colours.pop(), place))
    return out


def without_shapes(groups):
    return {(c, s, col, p) for c, s, col, _, p in groups}


def apply_text_edit(groups, text):
    """The scene an edit text asks for, interpreted independently of the generator."""
    by_shape = {g[3]: list(g) for g in groups}
    t = text[0].lower() + text[1:].rstrip(".")
    if m := re.fullmatch(r"make the (\w+) (small|large)", t):
        by_shape[singular(m[1])][1] = m[2]
    elif m := re.fullmatch(r"make the (\w+) (\w+)", t):
        by_shape[singular(m[1])][2] = m[2]
    elif m := re.fullmatch(r"add (a|two|three) (small|large) (\w+) (\w+) (" + "|".join(PLACES) + ")", t):
        by_shape[singular(m[4])] = [COUNTS[m[1]], m[2], m[3], singular(m[4]), PLACES[m[5]]]
    elif m := re.fullmatch(r"remove the (\w+)", t):
        del by_shape[singular(m[1])]
    elif m := re.fullmatch(r"move the (\w+) to the (left|right|top|bottom|centre)", t):
        by_shape[singular(m[1])][4] = m[2]
    elif m := re.fullmatch(r"replace the (\w+) with (a|two|three) (\w+)", t):
        g = by_shape.pop(singular(m[1]))
        assert COUNTS[m[2]] == g[0]
        g[3] = singular(m[3])
        by_shape[g[3]] = g
    else:
        raise AssertionError(f"unknown edit {text!r}")
    return {tuple(g) for g in by_shape.values()}


def answer(groups, question):
    """The answer to a VQA question about these groups, worked out independently."""
    q = question[0].lower() + question[1:-1]
    shape = {g[3]: g for g in groups}
    if m := re.fullmatch(r"what colour (?:is|are) the (\w+)", q):
        a = shape[singular(m[1])][2]
    elif m := re.fullmatch(r"how many (\w+) are there", q):
        a = WORDS[shape[singular(m[1])][0]]
    elif m := re.fullmatch(r"what shape is (.+)", q):
        a = next(g[3] for g in groups if g[4] == PLACES[m[1]])
    elif m := re.fullmatch(r"what size (?:is|are) the (\w+)", q):
        a = shape[singular(m[1])][1]
    elif m := re.fullmatch(r"where (?:is|are) the (\w+)", q):
        a = next(k for k, v in PLACES.items() if v == shape[singular(m[1])][4])
    elif m := re.fullmatch(r"is there an? (\w+) (\w+)", q):
        a = "yes" if any(g[2] == m[1] and g[3] == m[2] for g in groups) else "no"
    else:
        raise AssertionError(f"unknown question {question!r}")
    return a[0].upper() + a[1:] + "."


# ----------------------------------------------------------------- helpers

def tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def pool_of(root, pair):
    return {r["did"]: r for r in jsonl(root / f"cand_pool/local/mbeir_{pair}_cand_pool.jsonl")}


def queries(root, pair, split):
    return jsonl(root / f"query/{split}/mbeir_{pair}_{split}.jsonl")


PAIRS = {"t2i": "synthshapes_task0", "i2t": "synthshapes_task3", "composed": "synthedit_task7",
         "vqa": "synthvqa_task6", "doc": "synthdocs_task0"}


# ----------------------------------------------------------------- determinism

@pytest.mark.parametrize("fmt", ["mbeir", "mmeb", "train"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, fmt):
    kw = dict(format=fmt, size=4, splits=("train", "test"), holdout="red:circle")
    make(tmp_path / "a", seed=5, **kw)
    make(tmp_path / "b", seed=5, **kw)
    make(tmp_path / "c", seed=6, **kw)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_same_bytes_across_processes(tmp_path):
    """No set or dict order leaks into the files: other hash seeds, same bytes."""
    import os
    import subprocess
    import sys

    code = ("import sys; from mmsearch.datasets import make; "
            "make(sys.argv[1], size=3, seed=1, splits=('val', 'test'), holdout=0.25)")
    for h in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": h}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / h)], check=True, env=env, timeout=120)
    assert tree_digest(tmp_path / "1") == tree_digest(tmp_path / "2")


def test_layouts_are_views_of_one_collection():
    a = generate(SyntheticOptions(format="mbeir", size=5, seed=2, splits=("test",)))
    b = generate(SyntheticOptions(format="mmeb", size=5, seed=2))
    for key in a.parts:
        assert [e.query.text for e in a.parts[key].examples] == [e.query.text for e in b.parts[key].examples]


# ----------------------------------------------------------------- M-BEIR layout

def test_mbeir_files_and_fields_exactly(mbeir):
    root, summary = mbeir
    assert summary["pairs"] == list(PAIRS.values()) and summary["splits"] == {"train": SIZE, "val": SIZE, "test": SIZE}
    for split in ("train", "val", "test"):
        for task, pair in PAIRS.items():
            rows = queries(root, pair, split)
            assert len(rows) == SIZE
            for r in rows:
                assert list(r) == ["qid", "query_txt", "query_img_path", "query_modality", "query_src_content",
                                   "pos_cand_list", "neg_cand_list", "task_id"]
                assert re.fullmatch(r"1[0-3]:\d+", r["qid"]) and isinstance(r["task_id"], int)
                parts = ["image"] * (r["query_img_path"] is not None) + ["text"] * (r["query_txt"] is not None)
                assert r["query_modality"] == ",".join(parts)
                json.loads(r["query_src_content"])
        for pair in PAIRS.values():
            qrels = (root / f"qrels/{split}/mbeir_{pair}_{split}_qrels.txt").read_text().splitlines()
            assert all(re.fullmatch(r"\d+:\d+ 0 \d+:\d+ 1 \d", line) for line in qrels)
    for pool in list((root / "cand_pool/local").iterdir()) + list((root / "cand_pool/global").iterdir()):
        rows = jsonl(pool)
        assert rows and len({r["did"] for r in rows}) == len(rows)
        keys = [tuple(map(int, r["did"].split(":"))) for r in rows]
        assert keys == sorted(keys)
        for r in rows:
            assert list(r) == ["txt", "img_path", "modality", "did", "src_content"]
            parts = ["image"] * (r["img_path"] is not None) + ["text"] * (r["txt"] is not None)
            assert r["modality"] == ",".join(parts)
    assert sorted(p.name for p in (root / "cand_pool/global").iterdir()) == [
        f"mbeir_union_{s}_cand_pool.jsonl" for s in ("test", "train", "val")]


def test_mbeir_qrels_match_queries_and_pools(mbeir):
    root, _ = mbeir
    for split in ("train", "val", "test"):
        union = {r["did"]: r for r in jsonl(root / f"cand_pool/global/mbeir_union_{split}_cand_pool.jsonl")}
        for task, pair in PAIRS.items():
            local = pool_of(root, pair)
            rows = queries(root, pair, split)
            qrels = [line.split() for line in (root / f"qrels/{split}/mbeir_{pair}_{split}_qrels.txt").read_text()
                     .splitlines()]
            assert {(q, d) for q, _, d, _, _ in qrels} == {(r["qid"], d) for r in rows for d in r["pos_cand_list"]}
            tasks = {r["qid"]: r["task_id"] for r in rows}
            for qid, zero, did, rel, task_id in qrels:
                assert zero == "0" and rel == "1" and int(task_id) == tasks[qid]
                assert did in union and (split == "train" or did in local)
                assert MBEIR_TASK[(next(r for r in rows if r["qid"] == qid)["query_modality"],
                                   union[did]["modality"])] == int(task_id)
            for r in rows:
                assert r["qid"].split(":")[0] == r["pos_cand_list"][0].split(":")[0]
                assert all(d in union for d in r["neg_cand_list"])


def test_mbeir_images_exist_and_open(mbeir):
    root, summary = mbeir
    paths = set()
    for f in root.glob("query/*/*.jsonl"):
        paths |= {r["query_img_path"] for r in jsonl(f) if r["query_img_path"]}
    for f in root.glob("cand_pool/*/*.jsonl"):
        paths |= {r["img_path"] for r in jsonl(f) if r["img_path"]}
    assert len(paths) == summary["images"] == len(list(root.glob("mbeir_images/**/*.png")))
    for p in paths:
        assert p.startswith("mbeir_images/") and not Path(p).is_absolute()
        with Image.open(root / p) as im:
            assert im.size == (112, 112) and im.mode == "RGB"


def test_mbeir_instructions_and_the_project_readers(mbeir):
    root, _ = mbeir
    lines = (root / "instructions/query_instructions.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["query_modality", "cand_modality", "dataset", "dataset_id",
                                    "prompt_1", "prompt_2", "prompt_3", "prompt_4"]
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(r) == 8 and all(p.strip() for p in r[4:]) for r in rows)
    keys = {(r[3], r[0], r[1]) for r in rows}
    for pair in PAIRS.values():
        q = queries(root, pair, "test")[0]
        did = q["pos_cand_list"][0]
        assert (q["qid"].split(":")[0], q["query_modality"], pool_of(root, pair)[did]["modality"]) in keys
    from mmsearch.tasks import load_mbeir_instructions
    from mmsearch.indexer.sources import MBeirSource

    assert len(load_mbeir_instructions(root / "instructions/query_instructions.tsv")) == 5
    for pool in (root / "cand_pool/local").iterdir():
        records = list(MBeirSource(str(pool)))
        assert records and all(rec.item is not None for rec in records), [r.error for r in records if r.item is None]


# ----------------------------------------------------------------- ground truth

def test_captions_describe_the_pixels(mbeir):
    root, _ = mbeir
    for split in ("train", "test"):
        pool = pool_of(root, PAIRS["t2i"]) if split == "test" else {
            r["did"]: r for r in jsonl(root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl")}
        for q in queries(root, PAIRS["t2i"], split):
            image = pool[q["pos_cand_list"][0]]["img_path"]
            assert read_pixels(root / image) == without_shapes(parse_caption(q["query_txt"]))
        i2t = pool_of(root, PAIRS["i2t"]) if split == "test" else pool
        for q in queries(root, PAIRS["i2t"], split):
            caption = i2t[q["pos_cand_list"][0]]["txt"]
            assert read_pixels(root / q["query_img_path"]) == without_shapes(parse_caption(caption))


def test_shapes_are_drawn_distinctly():
    """Fill ratio of each large shape's bounding box tells the shapes apart."""
    ratios = {}
    for shape in ("circle", "square", "triangle", "star", "cross", "diamond"):
        scene = Scene((Group(shape, "blue", "large", 1, "centre"),))
        a = np.asarray(render_scene(scene, 112)).astype(int)
        mask = np.abs(a - a[0, 0]).max(axis=2) > 40
        ys, xs = np.nonzero(mask)
        ratios[shape] = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    assert ratios["square"] > 0.95 and 0.72 < ratios["circle"] < 0.85
    assert ratios["star"] < 0.45 and 0.45 < ratios["triangle"] < 0.6 and 0.45 < ratios["diamond"] < 0.6
    assert 0.5 < ratios["cross"] < 0.7


@pytest.mark.parametrize("collection", ["mbeir", "wide"])
def test_composed_target_is_the_source_with_the_edit(collection, request):
    root, _ = request.getfixturevalue(collection)
    pool = pool_of(root, PAIRS["composed"])
    kinds = set()
    for q in queries(root, PAIRS["composed"], "test"):
        target = pool[q["pos_cand_list"][0]]
        source = pool[q["neg_cand_list"][0]]
        assert source["img_path"] == q["query_img_path"], "the source image is in the pool as a hard negative"
        src_groups = parse_caption(json.loads(source["src_content"])["caption"])
        tgt_groups = parse_caption(json.loads(target["src_content"])["caption"])
        assert apply_text_edit(src_groups, q["query_txt"]) == tgt_groups
        assert read_pixels(root / source["img_path"]) == without_shapes(src_groups)
        assert read_pixels(root / target["img_path"]) == without_shapes(tgt_groups)
        # pixels change only in the cells of the groups the edit touched
        a = np.asarray(Image.open(root / source["img_path"])).astype(int)
        b = np.asarray(Image.open(root / target["img_path"])).astype(int)
        changed = {g[4] for g in src_groups ^ tgt_groups}
        edges = [round(i * 112 / 3) for i in range(4)]
        diff = np.abs(a - b).max(axis=2) > 0
        for place, (col, row) in CELLS.items():
            region = diff[edges[row]:edges[row + 1], edges[col]:edges[col + 1]]
            assert region.any() == (place in changed), (q["query_txt"], place)
        edit = json.loads(q["query_src_content"])["edit"]
        kinds.add((edit["kind"], edit["value"] if edit["kind"] == "move" else None))
    if collection == "wide":
        assert {k for k, _ in kinds} == {"colour", "add", "remove", "move", "shape", "size"}
        assert {v for k, v in kinds if k == "move"} == set(CELLS)


@pytest.mark.parametrize("collection", ["mbeir", "wide"])
def test_vqa_answers_are_correct(collection, request):
    root, summary = request.getfixturevalue(collection)
    pool = pool_of(root, PAIRS["vqa"])
    assert len(pool) == len({r["txt"] for r in pool.values()})
    kinds = set()
    for split in summary["splits"]:
        for q in queries(root, PAIRS["vqa"], split):
            caption = json.loads(q["query_src_content"])["caption"]
            groups = parse_caption(caption)
            assert read_pixels(root / q["query_img_path"]) == without_shapes(groups)
            assert pool[q["pos_cand_list"][0]]["txt"] == answer(groups, q["query_txt"])
            kinds.add(json.loads(q["query_src_content"])["kind"])
    assert collection != "wide" or kinds == {"colour", "count", "shape", "size", "where", "exists"}


def test_doc_questions_name_one_page_that_answers_them(mbeir):
    root, _ = mbeir
    pool = pool_of(root, PAIRS["doc"])
    keywords = [json.loads(r["src_content"])["keyword"] for r in pool.values()]
    assert len(set(keywords)) == len(keywords)
    for q in queries(root, PAIRS["doc"], "test"):
        page = json.loads(pool[q["pos_cand_list"][0]]["src_content"])
        facts = json.loads(q["query_src_content"])
        assert page["keyword"] in q["query_txt"] and page["page_text"].split("\n")[0] == page["keyword"].capitalize()
        assert facts["answer"] in page["page_text"]
        assert [k for k in keywords if re.search(rf"\b{k}\b", q["query_txt"])] == [page["keyword"]]
        ink = np.asarray(Image.open(root / pool[q["pos_cand_list"][0]]["img_path"]).convert("L")) < 128
        assert ink[:20].any() and ink.mean() > 0.02


# ----------------------------------------------------------------- held-out pairs

def _scene_pairs(facts):
    scenes = [facts[k] for k in ("scene", "source", "target") if k in facts]
    return [{(g["colour"], g["shape"]) for g in s["groups"]} for s in scenes]


def test_held_out_pairs_only_in_test_and_all_of_them(mbeir, train):
    root, summary = mbeir
    held = {tuple(p) for p in summary["held_out_pairs"]}
    assert len(held) == 8
    seen_in_test = set()
    for split in ("train", "val", "test"):
        for task in ("t2i", "i2t", "composed", "vqa"):
            for q in queries(root, PAIRS[task], split):
                for pairs in _scene_pairs(json.loads(q["query_src_content"])):
                    if split == "test":
                        assert pairs & held
                        seen_in_test |= pairs & held
                    else:
                        assert not pairs & held
    assert seen_in_test == held
    troot, tsummary = train
    assert {tuple(p) for p in tsummary["held_out_pairs"]} == held
    for row in jsonl(troot / "train.jsonl"):  # hard negatives never show a held-out pair either
        facts = json.loads(row["src_content"])
        neg = facts.get("hard_negative")
        for pairs in _scene_pairs(facts) + ([{(g["colour"], g["shape"]) for g in neg["groups"]}] if neg else []):
            assert not pairs & held


def test_holdout_pairs_do_not_depend_on_the_data_seed():
    opts = SceneOptions()
    h = Holdout(fraction=0.25, seed=4)
    assert h.resolve(opts) == Holdout(fraction=0.25, seed=4).resolve(opts) != Holdout(fraction=0.25, seed=5).resolve(opts)
    a = generate(SyntheticOptions(size=3, seed=1, tasks=("t2i",), holdout=h)).held_out
    b = generate(SyntheticOptions(size=3, seed=2, tasks=("t2i",), holdout=h)).held_out
    assert a == b and len(a) == 10
    held = set(a)
    assert {c for c, _ in opts.pairs() if all((c, s) in held for s in opts.shapes)} == set()


# ----------------------------------------------------------------- MMEB layouts

def test_mmeb_positive_first(mmeb):
    root, summary = mmeb
    assert summary["splits"] == {"test": SIZE} and summary["image_dir"] == "images"
    images = root / "images"
    truth = generate(SyntheticOptions(format="mmeb", size=SIZE, seed=SEED, holdout=Holdout(fraction=0.2)))
    for task, name in [("t2i", "SynthShapes_t2i"), ("i2t", "SynthShapes_i2t"), ("composed", "SynthEdit"),
                       ("vqa", "SynthVQA"), ("doc", "SynthDocs")]:
        table = pq.read_table(root / name / "test.parquet")
        assert table.column_names == ["qry_text", "qry_img_path", "tgt_text", "tgt_img_path"]
        for r, ex in zip(table.to_pylist(), truth.parts[(task, "test")].examples, strict=True):
            assert r["qry_text"].endswith("\n") and len(r["tgt_text"]) == len(r["tgt_img_path"]) <= 8
            assert len(set(zip(r["tgt_text"], r["tgt_img_path"]))) == len(r["tgt_text"]) >= 2
            assert r["qry_text"].startswith("<|image_1|>\n") == bool(r["qry_img_path"])
            for p in [r["qry_img_path"], *r["tgt_img_path"]]:
                assert not p or (images / p).is_file()
            body = r["qry_text"].split(". ", 1)[-1].strip()
            first_img = images / r["tgt_img_path"][0] if r["tgt_img_path"][0] else None
            if task == "t2i":
                assert read_pixels(first_img) == without_shapes(parse_caption(body))
            elif task == "i2t":
                assert read_pixels(images / r["qry_img_path"]) == without_shapes(parse_caption(r["tgt_text"][0]))
            elif task == "composed":
                assert r["qry_img_path"] in r["tgt_img_path"][1:], "the source is a candidate, never first"
                src = parse_caption(ex.facts["source_caption"])
                assert read_pixels(images / r["qry_img_path"]) == without_shapes(src)
                assert read_pixels(first_img) == without_shapes(apply_text_edit(src, body))
            elif task == "vqa":
                groups = parse_caption(ex.facts["caption"])
                assert read_pixels(images / r["qry_img_path"]) == without_shapes(groups)
                assert r["tgt_text"][0] == answer(groups, body) and not any(r["tgt_img_path"])
            else:
                keyword = re.search(r"the (\w+)(?: come from| found)?\?$", body)[1]
                assert ex.facts["keyword"] == keyword and first_img.stem == ex.positive.picture.name.split("/")[1]
                assert r["tgt_text"][0] == "<|image_1|>\nUnderstand the content of the provided document image.\n"
    tsv = (root / "tasks.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:3] == ["dataset", "meta_task", "split"] and len(tsv) == 6


def test_train_layout_and_hard_negatives(train):
    root, summary = train
    rows = jsonl(root / "train.jsonl")
    assert len(rows) == 5 * SIZE and summary["splits"] == {"train": SIZE}
    for r in rows:
        assert list(r)[:6] == ["qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path"]
        for p in (r["qry_image_path"], r["pos_image_path"], r["neg_image_path"]):
            assert not p or (p.startswith("images/") and (root / p).is_file())
        assert (r["pos_text"], r["pos_image_path"]) != (r["neg_text"], r["neg_image_path"])
        if r["dataset"] == "SynthShapes_t2i":
            pos, neg = read_pixels(root / r["pos_image_path"]), read_pixels(root / r["neg_image_path"])
            assert pos == without_shapes(parse_caption(r["qry"].split("caption. ", 1)[1].strip()))
            assert len(pos - neg) <= 1 and len(neg - pos) <= 1, "one attribute of one group differs"
        if r["dataset"] == "SynthEdit":
            assert r["neg_image_path"] == r["qry_image_path"]
        if r["dataset"] == "SynthShapes_i2t":
            a, b = parse_caption(r["pos_text"]), parse_caption(r["neg_text"])
            assert len(a - b) == len(b - a) == 1
    per = jsonl(root / "SynthVQA" / "train.jsonl")
    assert per == [r for r in rows if r["dataset"] == "SynthVQA"]


def test_doc_title_rows_pair_each_question_with_its_page_title(tmp_path):
    root = tmp_path / "t"
    summary = make(root, format="train", size=SIZE, seed=SEED, tasks=("t2i", "doc"), doc_titles=True)
    docs = pq.read_table(root / "SynthDocs" / "train.parquet").to_pylist()
    titles = pq.read_table(root / "SynthDocTitles" / "train.parquet").to_pylist()
    assert summary["queries"]["SynthDocTitles"] == {"train": SIZE} and len(titles) == len(docs) == SIZE
    assert all(r["dataset"] != "SynthDocTitles" for r in pq.read_table(root / "train.parquet").to_pylist())
    for doc, row in zip(docs, titles, strict=True):
        assert row["qry"] == doc["qry"] and not row["qry_image_path"] and not row["pos_image_path"]
        keyword = re.search(r"\bthe (\w+)", doc["qry"].split(". ", 1)[1]).group(1)  # every question names it so
        assert row["pos_text"] == keyword.capitalize() == json.loads(doc["src_content"])["page_text"].split("\n")[0]
    # --doc-candidate image: the same rows, the page candidates with the generic image instruction
    make(tmp_path / "i", format="train", size=SIZE, seed=SEED, tasks=("t2i", "doc"), doc={"candidate": "image"})
    generic = pq.read_table(tmp_path / "i" / "SynthDocs" / "train.parquet").to_pylist()
    assert {r["pos_text"] for r in docs} == {f"<|image_1|>\n{PAGE_CANDIDATE}\n"}
    assert {r["pos_text"] for r in generic} == {r["neg_text"] for r in generic} == {f"<|image_1|>\n{IMAGE_CANDIDATE}\n"}
    same = ("qry", "pos_image_path", "neg_image_path", "src_content")
    assert [{k: r[k] for k in same} for r in generic] == [{k: r[k] for k in same} for r in docs]
    shapes = pq.read_table(tmp_path / "i" / "SynthShapes_t2i" / "train.parquet")
    assert shapes.equals(pq.read_table(root / "SynthShapes_t2i" / "train.parquet"))
    with pytest.raises(InputError, match="valid: page, image"):
        make(tmp_path / "j", format="train", size=2, tasks=("doc",), doc={"candidate": "screenshot"})
    with pytest.raises(InputError, match="doc_titles"):
        make(tmp_path / "m", format="mbeir", size=2, doc_titles=True)
    with pytest.raises(InputError, match="doc_titles"):
        make(tmp_path / "n", format="train", size=2, tasks=("t2i",), doc_titles=True)


# ----------------------------------------------------------------- options, errors, CLI

def test_bad_options_name_the_valid_ones(tmp_path):
    with pytest.raises(InputError, match="valid: t2i, i2t"):
        make(tmp_path / "a", tasks=("t2i", "video"))
    with pytest.raises(InputError, match="valid: mbeir, mmeb, train"):
        make(tmp_path / "a", format="coco")
    with pytest.raises(InputError, match="hexagon"):
        SceneOptions(shapes=("circle", "hexagon"))
    with pytest.raises(InputError, match="holdout pair"):
        make(tmp_path / "a", holdout="red:diamond", size=2)
    with pytest.raises(InputError, match="attribute space is too small"):
        make(tmp_path / "a", size=60, tasks=("t2i",), splits=("test",),
             scene=SceneOptions(shapes=("circle",), colours=("red",), max_groups=1))
    with pytest.raises(InputError, match="unknown option"):
        make(tmp_path / "a", colour="red")
    with pytest.raises(InputError, match="SceneOptions"):
        SyntheticOptions(scene="shapes")
    opts = SyntheticOptions(scene={"shapes": ("circle", "square")}, holdout="10%")
    assert opts.scene.max_groups == 2 and opts.holdout == Holdout(fraction=0.1)


def test_output_must_be_empty_unless_overwrite(tmp_path):
    root = tmp_path / "c"
    make(root, size=2, tasks=("t2i",), splits=("test",))
    (root / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        make(root, size=2, tasks=("i2t",), splits=("test",))
    make(root, size=2, tasks=("i2t",), splits=("test",), overwrite=True)
    assert (root / "notes.txt").read_text() == "mine"
    assert [p.name for p in (root / "query" / "test").iterdir()] == ["mbeir_synthshapes_task3_test.jsonl"]


def test_doc_styles_and_sizes(tmp_path):
    from mmsearch.datasets import DocOptions

    make(tmp_path / "w", format="mmeb", size=3, tasks=("doc",), doc=DocOptions(style="word", page_size=160))
    for p in (tmp_path / "w" / "images" / "SynthDocs" / "test").iterdir():
        ink = np.asarray(Image.open(p).convert("L")) < 128
        assert Image.open(p).size == (160, 160) and ink.any()
        rows = np.nonzero(ink.any(axis=1))[0]
        assert rows.min() > 160 * 0.2 and rows.max() < 160 * 0.8, "one word, centred"


def test_cli_make_synthetic(tmp_path, capsys, monkeypatch):
    from mmsearch import cli

    if "datasets" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("datasets",))
    code = cli.main(["datasets", "make", "synthetic", "--out", str(tmp_path / "c"), "--format", "train",
                     "--size", "3", "--train-size", "4", "--seed", "2", "--tasks", "t2i,composed",
                     "--holdout", "red:circle", "--image-size", "96", "--no-progress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 4} and summary["held_out_pairs"] == [["red", "circle"]]
    assert len(pq.read_table(tmp_path / "c" / "train.parquet")) == 8
    assert cli.main(["datasets", "make", "synthetic", "--out", str(tmp_path / "c"), "--no-progress"]) == 1
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["datasets", "make", "synthetic", "--out", str(tmp_path / "d"), "--format", "coco"])


def test_generation_is_fast(tmp_path):
    import time

    start = time.perf_counter()
    summary = make(tmp_path / "f", size=150, tasks=("t2i", "composed"), splits=("test",))
    assert summary["images"] == 450 and time.perf_counter() - start < 5
