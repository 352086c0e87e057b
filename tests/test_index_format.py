"""The index directory contract (DESIGN §5): manifest, shards, readers, verify."""
import dataclasses
import hashlib
import json
import os

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from mmsearch import index_format as fmt
from mmsearch.errors import IndexFormatError, IndexMismatchError, InputError

DIM = 24
MODEL = fmt.ModelInfo(id="tiny/test-model", backbone="qwen2_vl", dim=DIM, dtype="float32",
                      revision="abc123")
INSTRUCTIONS = {"image": "Represent the given image.", "text": "", "default": "Represent it."}
SPECS = ["Flat", "HNSW16", "IVF8,PQ6x4", "IVF8,PQ12x4fs,RFlat"]


def search_params(spec):
    """Per-call parameters (never set on the index): probe every list."""
    if "RFlat" in spec:
        return faiss.IndexRefineSearchParameters(
            k_factor=4, base_index_params=faiss.SearchParametersIVF(nprobe=8))
    return faiss.SearchParametersIVF(nprobe=8) if "IVF" in spec else None


def clustered(n, seed, d=DIM, k=7):
    """Seeded clustered unit vectors, so ANN results are neither trivial nor flaky."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    x = centers[rng.integers(0, k, n)] + 0.3 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def meta_for(start, n):
    ids = [f"item-{start + i}" for i in range(n)]
    return fmt.build_meta_table(
        ids, ["image,text"] * n, [f"caption {start + i}" for i in range(n)],
        [f"img/{start + i}.jpg" for i in range(n)],
        [{"score": float(i % 5), "source": "unit", "year": 1990 + i % 30} for i in range(n)])


def build_index(index_dir, spec, sizes=(53, 41), with_vectors=True):
    """A committed index of len(sizes) shards; returns (manifest, all vectors)."""
    faiss_spec = fmt.FaissSpec(spec)
    if "IVF" in spec:
        template = faiss.index_factory(DIM, spec, faiss.METRIC_INNER_PRODUCT)
        template.train(clustered(600, seed=1))
        faiss_spec = fmt.write_trained_template(index_dir, template, spec, {"nprobe": 4})
    manifest = fmt.Manifest.create(MODEL, faiss_spec, INSTRUCTIONS, extra={"note": "test"})
    fmt.write_manifest(index_dir, manifest)
    start, chunks = 0, []
    for number, n in enumerate(sizes):
        x = clustered(n, seed=10 + number)
        ids = np.arange(start, start + n, dtype=np.int64)
        index = fmt.new_shard_index(index_dir, manifest)
        index.add_with_ids(x, ids)
        info = fmt.write_shard(index_dir, fmt.shard_name(number), index, ids, meta_for(start, n),
                               x if with_vectors else None)
        manifest = manifest.with_shard(info)
        fmt.write_manifest(index_dir, manifest)
        chunks.append(x)
        start += n
    return manifest, np.concatenate(chunks)


def rewrite(index_dir, shard_name, filename, write):
    """Replace one shard file via `write(path)` and record its new checksum, so only
    the content check (not the checksum) can notice what changed."""
    path = fmt.shard_dir(index_dir, shard_name) / filename
    write(path)
    manifest = fmt.read_manifest(index_dir)
    shards = tuple(dataclasses.replace(s, files={**s.files, filename: fmt.FileInfo.of(path)})
                   if s.name == shard_name else s for s in manifest.shards)
    fmt.write_manifest(index_dir, dataclasses.replace(manifest, shards=shards))


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- helpers --------------------------------------------------------------------------

def test_sha256_and_atomic_writes(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # several chunks, odd size
    target = tmp_path / "blob.bin"
    fmt.atomic_write_bytes(target, data)
    assert fmt.sha256_file(target) == hashlib.sha256(data).hexdigest()
    fmt.atomic_write_json(target, {"a": [1, 2], "b": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": [1, 2], "b": "é"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin"]  # no temp left over
    with pytest.raises(ValueError):
        fmt.atomic_write_json(target, {"x": float("nan")})
    assert json.loads(target.read_text(encoding="utf-8"))["b"] == "é"  # old content kept
    fmt.fsync_dir(tmp_path)
    assert fmt.shard_name(7) == "00007"


# --- manifest -------------------------------------------------------------------------

def sample_manifest():
    files = {"index.faiss": fmt.FileInfo(10, "a" * 64), "meta.arrow": fmt.FileInfo(20, "b" * 64)}
    spec = fmt.FaissSpec("IVF8,PQ6x4", "trained.faiss", fmt.FileInfo(5, "c" * 64), {"nprobe": 4})
    m = fmt.Manifest.create(MODEL, spec, INSTRUCTIONS, extra={"k": [1, 2]})
    m = m.with_shard(fmt.ShardInfo("00000", 7, 0, 7, files))
    return m.with_shard(fmt.ShardInfo("00001", 5, 7, 12, files))


def test_manifest_round_trip(tmp_path):
    m = sample_manifest()
    d = json.loads(json.dumps(m.to_dict()))
    assert fmt.Manifest.from_dict(d) == m
    assert d["format_version"] == fmt.FORMAT_VERSION == 1
    assert d["totals"] == {"rows": 12, "shards": 2, "bytes": 65}
    assert d["model"]["pooling"] == "last_token" and d["model"]["normalized"] is True
    assert m.next_row == 12 and m.instruction_for("image") == "Represent the given image."
    assert m.instruction_for("text") == "" and m.instruction_for("page") == "Represent it."
    fmt.write_manifest(tmp_path, m)
    assert fmt.read_manifest(tmp_path) == m
    with pytest.raises(TypeError):
        m.shards[0].files["x"] = None  # frozen all the way down
    plain = fmt.Manifest.create(MODEL, fmt.FaissSpec("Flat"), "Represent the given image.")
    assert fmt.Manifest.from_dict(plain.to_dict()).instruction_for("image,text") == \
        "Represent the given image."


def test_manifest_errors(tmp_path):
    with pytest.raises(IndexFormatError, match=r"not an mmsearch index \(no manifest.json\)"):
        fmt.read_manifest(tmp_path / "nowhere")
    d = sample_manifest().to_dict()
    future = dict(d, format_version=2, shards="a new layout")
    with pytest.raises(IndexFormatError, match="format_version 2 is not supported"):
        fmt.Manifest.from_dict(future)
    no_dim = json.loads(json.dumps(d))
    del no_dim["model"]["dim"]
    with pytest.raises(IndexFormatError, match="missing model.dim"):
        fmt.Manifest.from_dict(no_dim)
    overlap = json.loads(json.dumps(d))
    overlap["shards"][1].update(id_start=5, id_end=10)
    with pytest.raises(IndexFormatError, match="overlap"):
        fmt.Manifest.from_dict(overlap)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        fmt.read_manifest(tmp_path)
    with pytest.raises(IndexFormatError, match="metric"):
        fmt.Manifest.create(MODEL, fmt.FaissSpec("Flat"), metric="cosine")


def test_manifest_replace_is_atomic(tmp_path):
    first = sample_manifest()
    fmt.write_manifest(tmp_path, first)
    # A writer killed mid-write leaves a torn temporary file; readers never see it.
    (tmp_path / f"manifest.json.tmp-{os.getpid() + 1}").write_text('{"format_version": 1, "trunc')
    assert fmt.read_manifest(tmp_path) == first
    second = dataclasses.replace(first, extra={"generation": 2})
    fmt.write_manifest(tmp_path, second)
    assert fmt.read_manifest(tmp_path).extra == {"generation": 2}
    assert fmt.remove_unlisted(tmp_path) == [f"manifest.json.tmp-{os.getpid() + 1}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_check_model():
    fmt.check_model(MODEL, dataclasses.replace(MODEL, dtype="bfloat16"))
    with pytest.raises(IndexMismatchError, match="dim: index has 24, encoder has 32"):
        fmt.check_model(MODEL, dataclasses.replace(MODEL, dim=32))
    with pytest.raises(IndexMismatchError, match="revision"):
        fmt.check_model(MODEL, dataclasses.replace(MODEL, revision="def456"))
    hashed = dataclasses.replace(MODEL, weight_hash="f" * 64)
    fmt.check_model(hashed, dataclasses.replace(hashed, id="/local/copy", revision=None))


# --- shards: write, read back (mmap), search ---------------------------------------------

@pytest.mark.parametrize("spec", SPECS)
def test_shards_round_trip(tmp_path, spec):
    manifest, x = build_index(tmp_path, spec)
    assert fmt.read_manifest(tmp_path) == manifest
    assert [(s.name, s.id_start, s.id_end) for s in manifest.shards] == \
        [("00000", 0, 53), ("00001", 53, 94)]
    assert fmt.verify_index(tmp_path) == []
    xq = clustered(9, seed=99)
    params = search_params(spec)
    results = []
    for shard in manifest.shards:
        mapped = fmt.open_shard_index(tmp_path, shard)
        loaded = fmt.open_shard_index(tmp_path, shard, mmap=False)
        D1, I1 = mapped.search(xq, 5, params=params)
        D2, I2 = loaded.search(xq, 5, params=params)
        np.testing.assert_array_equal(I1, I2)
        np.testing.assert_allclose(D1, D2, rtol=1e-6)
        assert I1.min() >= shard.id_start and I1.max() < shard.id_end  # global ids come back
        results.append((D1, I1))
        meta = fmt.open_shard_meta(tmp_path, shard)
        assert meta.column_names[:4] == ["id", "modality", "text", "image"]
        assert meta.column("id")[0].as_py() == f"item-{shard.id_start}"
        vectors = fmt.load_shard_vectors(tmp_path, shard)
        assert vectors.dtype == np.float16 and isinstance(vectors, np.memmap)
        np.testing.assert_allclose(vectors, x[shard.id_start:shard.id_end], atol=1e-3)
    if spec == "Flat":  # exact: the shards together match brute force over all rows
        D = np.concatenate([d for d, _ in results], axis=1)
        I = np.concatenate([i for _, i in results], axis=1)
        top = np.take_along_axis(I, np.argsort(-D, axis=1)[:, :5], axis=1)
        np.testing.assert_array_equal(top, np.argsort(-(xq @ x.T), axis=1)[:, :5])


def test_trained_template_and_new_shard_index(tmp_path):
    manifest, _ = build_index(tmp_path, "IVF8,PQ6x4", sizes=(31,))
    spec = manifest.faiss
    assert spec.trained_path == "trained.faiss" and dict(spec.search_params) == {"nprobe": 4}
    fresh = fmt.new_shard_index(tmp_path, manifest)
    assert fresh.is_trained and fresh.ntotal == 0
    flat = fmt.Manifest.create(MODEL, fmt.FaissSpec("HNSW16"))
    assert isinstance(fmt.new_shard_index(tmp_path, flat), faiss.IndexIDMap)
    with pytest.raises(IndexFormatError, match="needs training"):
        fmt.new_shard_index(tmp_path, fmt.Manifest.create(MODEL, fmt.FaissSpec("IVF8,Flat")))
    index = faiss.index_factory(DIM, "Flat")
    index.add(clustered(3, seed=2))
    with pytest.raises(IndexFormatError, match="trained and empty"):
        fmt.write_trained_template(tmp_path, index, "Flat")
    assert fmt.faiss_index_to_cpu(index) is index


def test_meta_readable_by_other_tools(tmp_path):
    build_index(tmp_path, "Flat", sizes=(37,), with_vectors=False)
    path = fmt.shard_dir(tmp_path, "00000") / "meta.arrow"
    with pa.memory_map(str(path)) as source:
        table = ipc.open_file(source).read_all()  # an IPC *file*, not a stream
    assert table.num_rows == 37 and table.schema.field("id").type == pa.string()
    assert table.schema.metadata[b"mmsearch.id_start"] == b"0"
    pd = pytest.importorskip("pandas")
    frame = pd.read_feather(path)
    assert list(frame.columns) == ["id", "modality", "text", "image", "score", "source", "year"]
    assert frame["year"].iloc[3] == 1993
    duckdb = pytest.importorskip("duckdb")
    meta = fmt.open_shard_meta(tmp_path, "00000")  # duckdb finds the table by its variable name
    assert meta.num_rows == 37
    rows = duckdb.sql("SELECT id, year FROM meta WHERE score = 4 ORDER BY year").fetchall()
    assert rows[0] == ("item-4", 1994) and len(rows) == 7


def test_write_shard_rejects_misaligned_input(tmp_path):
    x = clustered(19, seed=3)
    ids = np.arange(100, 119, dtype=np.int64)
    good = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
    good.add_with_ids(x, ids)
    meta = meta_for(100, 19)
    shifted = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
    shifted.add_with_ids(x, ids + 1)
    bare = faiss.IndexFlatIP(DIM)
    bare.add(x)
    cases = [
        (dict(faiss_index=shifted), "faiss ids"),
        (dict(faiss_index=bare), "IndexIDMap"),
        (dict(ids=ids[:-1]), "holds 19 vectors, ids have 18"),
        (dict(ids=ids[::-1].copy()), "contiguous"),
        (dict(ids=ids.astype(np.int32)), "int64"),
        (dict(meta_table=meta.slice(1)), "18 rows"),
        (dict(meta_table=meta.drop_columns(["image"])), "must be unique and include"),
        (dict(meta_table=meta.set_column(0, "id", pa.array(["dup"] * 19))), "repeats 1 ids"),
        (dict(vectors=x[:, :-1]), "shape"),
    ]
    for change, message in cases:
        kwargs = dict(faiss_index=good, ids=ids, meta_table=meta, vectors=x) | change
        with pytest.raises(IndexFormatError, match=message):
            fmt.write_shard(tmp_path, "00004", **kwargs)
    with pytest.raises(IndexFormatError, match="zero-padded"):
        fmt.write_shard(tmp_path, "4", good, ids, meta)
    assert not (tmp_path / "shards").exists()  # nothing written, not even a temp dir


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    x = clustered(6, seed=6)
    ids = np.arange(6, dtype=np.int64)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
    index.add_with_ids(x, ids)

    def disk_full(folder, *args):
        (folder / "index.faiss").write_bytes(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("mmsearch.index_format.shards._write_files", disk_full)
    with pytest.raises(OSError, match="No space"):
        fmt.write_shard(tmp_path, "00000", index, ids, meta_for(0, 6))
    assert list((tmp_path / "shards").iterdir()) == []


def test_build_meta_table_errors():
    with pytest.raises(InputError, match="clash"):
        fmt.build_meta_table(["a"], ["text"], ["t"], [None], [{"text": "x"}])
    with pytest.raises(InputError, match="'size'"):
        fmt.build_meta_table(["a", "b"], ["text"] * 2, ["t"] * 2, [None] * 2,
                             [{"size": 1}, {"size": "big"}])
    with pytest.raises(InputError, match="length"):
        fmt.build_meta_table(["a", "b"], ["text"], ["t"], [None])


def test_committed_shard_is_never_overwritten(tmp_path):
    manifest, x = build_index(tmp_path, "Flat", sizes=(11,))
    index = fmt.open_shard_index(tmp_path, "00000", mmap=False)
    ids = np.arange(11, dtype=np.int64)
    with pytest.raises(IndexFormatError, match="already committed"):
        fmt.write_shard(tmp_path, "00000", index, ids, meta_for(0, 11))


def test_remove_unlisted_discards_torn_shards(tmp_path):
    manifest, _ = build_index(tmp_path, "Flat", sizes=(13, 8))
    shards = tmp_path / "shards"
    torn = shards / "00002"  # renamed into place but never committed
    torn.mkdir()
    (torn / "index.faiss").write_bytes(b"partial")
    half = shards / ".tmp-00003-999-abcd"  # killed while writing
    half.mkdir()
    (half / "meta.arrow").write_bytes(b"ARROW1")
    (shards / "README").write_text("not ours")
    removed = fmt.remove_unlisted(tmp_path)
    assert removed == ["shards/.tmp-00003-999-abcd", "shards/00002"]
    assert sorted(p.name for p in shards.iterdir()) == ["00000", "00001", "README"]
    assert fmt.verify_index(tmp_path) == []
    # The resumed job rewrites shard 00002 over a stale unlisted directory too.
    torn.mkdir()
    (torn / "junk").write_bytes(b"x")
    x = clustered(5, seed=4)
    ids = np.arange(21, 26, dtype=np.int64)
    index = fmt.new_shard_index(tmp_path, manifest)
    index.add_with_ids(x, ids)
    info = fmt.write_shard(tmp_path, "00002", index, ids, meta_for(21, 5), x)
    assert sorted(p.name for p in torn.iterdir()) == ["index.faiss", "meta.arrow", "vectors.npy"]
    fmt.write_manifest(tmp_path, manifest.with_shard(info))
    assert fmt.verify_index(tmp_path) == [] and fmt.remove_unlisted(tmp_path) == []


# --- verify ---------------------------------------------------------------------------

@pytest.mark.parametrize("filename", ["index.faiss", "meta.arrow", "vectors.npy"])
def test_verify_catches_flipped_byte(tmp_path, filename):
    build_index(tmp_path, "Flat", sizes=(17, 9))
    flip_byte(fmt.shard_dir(tmp_path, "00001") / filename)
    assert fmt.verify_index(tmp_path) == [
        f"shard 00001: {filename}: sha256 mismatch (file corrupted or replaced)"]


def test_verify_catches_corrupt_template_and_missing_file(tmp_path):
    build_index(tmp_path, "IVF8,PQ6x4", sizes=(17, 9))
    assert fmt.verify_index(tmp_path) == []
    flip_byte(tmp_path / "trained.faiss", offset=-3)
    (fmt.shard_dir(tmp_path, "00000") / "meta.arrow").unlink()
    problems = fmt.verify_index(tmp_path)
    assert len(problems) == 2
    assert problems[0] == "index: trained.faiss: sha256 mismatch (file corrupted or replaced)"
    assert problems[1].startswith("shard 00000: meta.arrow: missing")


def test_verify_catches_row_count_mismatch(tmp_path):
    build_index(tmp_path, "HNSW16", sizes=(17, 9))

    def shorter_meta(path):
        table = fmt.open_shard_meta(tmp_path, "00000").slice(0, 16).combine_chunks()
        with pa.OSFile(str(path) + ".new", "wb") as sink, ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        os.replace(str(path) + ".new", path)
    rewrite(tmp_path, "00000", "meta.arrow", shorter_meta)
    assert fmt.verify_index(tmp_path) == ["shard 00000: meta.arrow: has 16 rows, the manifest says 17"]


def test_verify_catches_misaligned_ids(tmp_path):
    build_index(tmp_path, "Flat", sizes=(17, 9))

    def shifted_ids(path):
        x = clustered(9, seed=5)
        index = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
        index.add_with_ids(x, np.arange(18, 27, dtype=np.int64))  # should be 17..25
        faiss.write_index(index, str(path))
    rewrite(tmp_path, "00001", "index.faiss", shifted_ids)
    assert fmt.verify_index(tmp_path) == [
        "shard 00001: index.faiss: faiss ids (9 ids in [18, 26]) are not the shard's ids [17, 26)"]


def test_verify_catches_wrong_vectors_and_duplicate_items(tmp_path):
    build_index(tmp_path, "Flat", sizes=(17, 9))
    rewrite(tmp_path, "00001", "vectors.npy", lambda p: np.save(p, np.zeros((9, DIM), np.float32)))

    def dup_meta(path):
        table = meta_for(0, 9)  # the ids of shard 00000's first rows again
        with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
    rewrite(tmp_path, "00001", "meta.arrow", dup_meta)
    assert fmt.verify_index(tmp_path) == [
        "shard 00001: vectors.npy: float32 (9, 24), expected float16 (9, 24)",
        "index: meta.arrow: meta column 'id' repeats 9 ids, e.g. 'item-0'"]


def test_verify_reports_unreadable_manifest(tmp_path):
    assert fmt.verify_index(tmp_path) == [f"not an mmsearch index (no manifest.json): {tmp_path}"]
