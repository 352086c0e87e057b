"""The offline indexer end to end: bad input, exact vectors, format, incremental work."""
import json

import faiss
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import mmsearch
from indexing_helpers import expected_rejections, make_corpus
from mmsearch.errors import IndexMismatchError, InputError
from mmsearch.index_format import load_shard_vectors, open_shard_index, open_shard_meta, read_manifest, verify_index
from mmsearch.indexer.build import TooManyRejections, add_to_index, build_index
from mmsearch.indexer.maintenance import compact, delete_ids, describe
from mmsearch.indexer.planner import choose_factory
from mmsearch.indexer.settings import DEFAULT_INSTRUCTIONS
from mmsearch.store import Store


def _all_rows(index_dir):
    """id -> (row, vector from faiss, meta row) over the live (not tombstoned) rows."""
    out = {}
    with Store(index_dir / "store.lmdb", readonly=True) as store:
        dead = set(store.tombstoned_rows().tolist())
    for shard in read_manifest(index_dir).shards:
        index = open_shard_index(index_dir, shard, mmap=False)
        meta = open_shard_meta(index_dir, shard).to_pylist()
        flat = faiss.downcast_index(index.index) if hasattr(index, "index") else index
        vecs = flat.reconstruct_n(0, shard.rows)
        for i, m in enumerate(meta):
            if shard.id_start + i in dead:
                continue
            assert m["id"] not in out, f"{m['id']} indexed twice"
            out[m["id"]] = (shard.id_start + i, vecs[i], m)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("corpus")
    path, valid, reasons = make_corpus(root)
    out = root / "index"
    result = build_index([path], out, model=str(tiny_dir("qwen2_vl")), shard_size=16, batch_size=8,
                         max_image_pixels=200 * 200)
    return path, valid, reasons, out, result


def test_counts_reconcile_and_errors_name_items(built):
    _, valid, reasons, out, r = built
    assert r.read == r.indexed + r.rejected + r.skipped
    assert r.indexed == len(valid) and r.rejected == expected_rejections(reasons) and r.skipped == 0
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    by_id = {e["id"]: e for e in errors if e["id"]}
    for bid, fragment in reasons.items():
        assert bid in by_id, bid
        assert fragment in by_id[bid]["reason"].lower(), (bid, by_id[bid])
        assert "items.jsonl:" in by_id[bid]["source"]
    # the non-UTF-8 line and the broken JSON line still name their ids; only the row without one has none
    assert sum(e["id"] is None for e in errors) == 1
    assert "latin1" in by_id and "\\xe9 at byte" in by_id["latin1"]["reason"] and "broken" in by_id
    stats = json.loads((out / "stats.json").read_text())
    assert stats["reconciled"] and set(stats["busy_seconds"]) == {"read", "decode", "encode", "write"}
    assert 0 < stats["pipeline_efficiency"] <= 1


def test_vectors_equal_the_encoder(built, tiny_encoder):
    _, valid, _, out, _ = built
    rows = _all_rows(out)
    assert set(rows) == set(valid)
    enc = tiny_encoder("qwen2_vl")
    root = out.parent
    for item_id, spec in valid.items():
        text, image = spec.get("text"), spec.get("image")
        modality = "image,text" if text and image else ("image" if image else "text")
        q = mmsearch.Item(id=item_id, text=text, image=str(root / image) if image else None)
        want = enc.encode([q], instruction=DEFAULT_INSTRUCTIONS[modality])[0]
        got = rows[item_id][1]
        assert float(got @ want) >= 0.9999, item_id
        meta = rows[item_id][2]
        assert meta["modality"] == modality and meta["n"] == spec["n"] and meta["group"] == spec["group"]


def test_format_readable_by_other_tools(built):
    out = built[3]
    assert verify_index(out) == []
    m = read_manifest(out)
    assert len(m.shards) == 3 and [s.rows for s in m.shards] == [16, 16, 8]
    shard = m.shards[1]
    table = meta = pa.ipc.open_file(str(out / "shards" / shard.name / "meta.arrow")).read_all()  # noqa: F841
    assert table.column_names[:4] == ["id", "modality", "text", "image"]
    pd = pytest.importorskip("pandas")
    df = pd.read_feather(out / "shards" / shard.name / "meta.arrow")
    assert list(df["id"]) == table.column("id").to_pylist()
    duckdb = pytest.importorskip("duckdb")
    n_even = duckdb.sql("select count(*) from meta where \"group\" = 'even'").fetchall()[0][0]
    assert n_even == int((df["group"] == "even").sum()) and len(df) == shard.rows
    vecs = load_shard_vectors(out, shard)
    assert vecs.dtype == np.float16 and vecs.shape == (16, 64)
    with Store(out / "store.lmdb", readonly=True) as store:
        assert store.get_row(table.column("id")[0].as_py()) == shard.id_start
        thumb = store.get_thumbnail("item-000")
        assert thumb is not None and max(Image.open(__import__("io").BytesIO(thumb)).size) <= 256
    assert m.instructions["image"] == "Represent the given image."
    assert m.model.weight_hash and m.model.backbone == "qwen2_vl"


def test_rerun_skips_and_cache_avoids_reencoding(built, tiny_dir, tmp_path):
    path, valid, _, out, _ = built
    again = build_index([path], out, model=str(tiny_dir("qwen2_vl")), shard_size=16, max_image_pixels=200 * 200)
    assert again.skipped == len(valid) and again.indexed == 0 and again.rows == len(valid)
    # lose every shard but keep the store: vectors come back from the LMDB cache
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "shards")
    (copy / "manifest.json").unlink()
    with Store(copy / "store.lmdb") as store:
        store.delete_ids(list(valid))
    redo = build_index([path], copy, model=str(tiny_dir("qwen2_vl")), shard_size=16, max_image_pixels=200 * 200)
    assert redo.indexed == len(valid) and redo.stats["encoded"] == 0 and redo.stats["cache_hits"] == len(valid)
    assert verify_index(copy) == []


def test_ivf_is_trained_once_and_shared(tmp_path, tiny_dir):
    path, valid, _ = make_corpus(tmp_path, n_valid=90, seed=1)
    out = tmp_path / "ivf"
    r = build_index([path], out, model=str(tiny_dir("qwen2_vl")), index="IVF4,Flat", shard_size=32,
                    max_image_pixels=200 * 200)
    m = read_manifest(out)
    assert m.faiss.trained_path == "trained.faiss" and len(m.shards) == 3 and r.indexed == 90
    trained = faiss.read_index(str(out / "trained.faiss"))  # keep the owner alive: faiss sub-objects borrow
    centroids = faiss.downcast_index(faiss.extract_index_ivf(trained).quantizer).reconstruct_n(0, 4)
    for shard in m.shards:
        owner = open_shard_index(out, shard, mmap=False)
        ivf = faiss.extract_index_ivf(owner)
        np.testing.assert_array_equal(faiss.downcast_index(ivf.quantizer).reconstruct_n(0, 4), centroids)
    assert "nprobe" in dict(m.faiss.search_params)
    assert verify_index(out) == []


def test_auto_policy():
    assert choose_factory(10_000, 768) == "Flat"
    big = choose_factory(1_000_000, 768, memory_budget=8 << 30)
    assert big.startswith("IVF") and big.endswith(",RFlat") and "x4fs" in big
    # 1M x 768: 4-bit codes ~0.1 GB; the refine stage's vectors 3.1 GB as float32, 1.5 as float16, 0.8 as SQ8
    assert choose_factory(1_000_000, 768, memory_budget=2 << 30).endswith(",Refine(SQfp16)")
    assert choose_factory(1_000_000, 768, memory_budget=1 << 30).endswith(",Refine(SQ8)")
    assert choose_factory(1_000_000, 768, memory_budget=1 << 29).endswith(",PQ192x4fs")
    assert choose_factory(1_000_000, 1536).endswith(",Refine(SQfp16)")   # the default 4 GiB budget
    with pytest.raises(InputError, match="memory-budget"):
        choose_factory(1_000_000_000, 768, memory_budget=1 << 30)


def test_ivf_training_sample_size():
    from mmsearch.indexer.planner import Plan, train_size

    assert train_size(Plan("Flat"), None) == 0
    assert train_size(Plan("IVF256,Flat", nlist=256), None) == 256 * 256      # small lists: faiss's own cap
    assert train_size(Plan("IVF1024,Flat", nlist=1024), None) == 100_000      # the floor
    assert train_size(Plan("IVF4096,Flat", nlist=4096), None) == 40 * 4096    # 1M rows: 40 per list, not 256
    assert train_size(Plan("IVF4096,Flat", nlist=4096), 5000) == 5000         # asked for


def test_add_delete_compact(tmp_path, tiny_dir):
    path, valid, _ = make_corpus(tmp_path / "a", n_valid=20, seed=2)
    out = tmp_path / "idx"
    model = str(tiny_dir("qwen2_vl"))
    build_index([path], out, model=model, shard_size=8, max_image_pixels=200 * 200)
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"id": "new-1", "text": "a new caption"}\n{"id": "item-002", "text": "changed text"}\n')
    r = add_to_index(out, [extra])
    assert r.indexed == 1 and r.rejected == 1
    r = add_to_index(out, [extra], on_duplicate="update")
    assert r.indexed == 2 and r.updated == 2
    rows = _all_rows(out)
    with Store(out / "store.lmdb", readonly=True) as store:
        assert len(store.tombstoned_rows()) == 2  # the first versions of new-1 and item-002
        for i, (row, _, _) in rows.items():
            assert store.get_row(i) == row
    assert rows["item-002"][2]["text"] == "changed text" and "new-1" in rows
    assert set(rows) == set(valid) | {"new-1"}
    assert delete_ids(out, ["item-003", "new-1"]) == 2
    with pytest.raises(InputError, match="not in the index"):
        delete_ids(out, ["no-such-id"])
    info = describe(out)
    assert info["deleted"] == 4 and info["live_rows"] == info["rows"] - 4 == len(valid) - 1
    result = compact(out)
    assert result["rows_removed"] == 4 and verify_index(out) == []
    after = _all_rows(out)
    assert set(after) == set(valid) - {"item-003"}
    assert after["item-002"][2]["text"] == "changed text"
    with Store(out / "store.lmdb", readonly=True) as store:
        assert len(store.tombstoned_rows()) == 0
        for i, (row, _, _) in after.items():
            assert store.get_row(i) == row
        assert store.get_row("item-003") is None


def test_add_with_another_model_fails(tmp_path, tiny_dir):
    path, _, _ = make_corpus(tmp_path / "a", n_valid=6, seed=3)
    out = tmp_path / "idx"
    build_index([path], out, model=str(tiny_dir("qwen2_vl")), max_image_pixels=200 * 200)
    other = mmsearch.load_encoder(tiny_dir("qwen2_5_vl"), device="cpu")
    with pytest.raises(IndexMismatchError, match="qwen2_5_vl"):
        add_to_index(out, [path], encoder=other)
    with pytest.raises(InputError, match="candidate instructions"):
        build_index([path], out, model=str(tiny_dir("qwen2_vl")), instruction="Something else:")


def test_max_errors(tmp_path, tiny_dir):
    path, valid, reasons = make_corpus(tmp_path, n_valid=6, seed=4)
    with pytest.raises(TooManyRejections) as e:
        build_index([path], tmp_path / "idx", model=str(tiny_dir("qwen2_vl")), max_errors=0.1,
                    max_image_pixels=200 * 200)
    assert e.value.result.indexed == len(valid)  # the run finished before failing
    ok = build_index([path], tmp_path / "idx2", model=str(tiny_dir("qwen2_vl")), max_errors=100,
                     max_image_pixels=200 * 200)
    assert ok.rejected == expected_rejections(reasons)


def test_pdf_pages_use_the_page_instruction(tmp_path, tiny_dir, tiny_encoder):
    pages = [Image.new("RGB", (120, 160), c) for c in [(250, 250, 250), (200, 220, 240)]]
    pages[0].save(tmp_path / "doc.pdf", save_all=True, append_images=pages[1:])
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    out = tmp_path / "idx"
    r = build_index([tmp_path / "doc.pdf", tmp_path / "broken.pdf"], out, model=str(tiny_dir("qwen2_vl")))
    assert r.indexed == 2 and r.rejected == 1
    rows = _all_rows(out)
    assert set(rows) == {"doc.pdf#p1", "doc.pdf#p2"}
    from mmsearch.indexer.sources import open_source

    rendered = [rec.item.image for rec in open_source(tmp_path / "doc.pdf")]
    want = tiny_encoder("qwen2_vl").encode(rendered, instruction=DEFAULT_INSTRUCTIONS["page"])
    for i, pid in enumerate(["doc.pdf#p1", "doc.pdf#p2"]):
        assert float(rows[pid][1] @ want[i]) >= 0.9999
