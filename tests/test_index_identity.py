"""An index has an identity: the job (sources with fingerprints, settings) recorded in its
manifest. A build of another job into its folder is refused and changes nothing; the same
job resumes; an id deleted and compacted away never comes back unless added explicitly."""
import json
import os

import pytest

from indexing_helpers import make_corpus
from mmsearch.cli import main
from mmsearch.index_format import read_manifest, verify_index
from mmsearch.indexer.build import OtherJobError, add_to_index, build_index
from mmsearch.indexer.maintenance import compact, delete_ids
from indexing_helpers import live_ids

PIXELS = 200 * 200


def _live_ids(out):
    return sorted(live_ids(out))


def _snapshot(folder):
    """Every file under `folder` (the LMDB store, the lock file, the manifest...) -> its bytes."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                files[os.path.relpath(path, folder)] = fh.read()
    return files


@pytest.fixture()
def two_corpora(tmp_path):
    a, valid_a, _ = make_corpus(tmp_path / "a", n_valid=10, seed=11)
    b, valid_b, _ = make_corpus(tmp_path / "b", n_valid=7, seed=12)
    return a, sorted(valid_a), b, sorted(valid_b)


def test_build_delete_compact_rebuild_other_sources(tmp_path, tiny_dir, two_corpora, capsys):
    a, ids_a, b, ids_b = two_corpora
    model = str(tiny_dir("qwen2_vl"))
    out = tmp_path / "idx"
    build_index([a], out, model=model, shard_size=4, max_image_pixels=PIXELS)
    job = read_manifest(out).job
    assert [s["path"] for s in job["sources"]] == [str(a)]
    assert job["sources"][0]["resolved"] == os.path.realpath(a) and job["sources"][0]["kind"] == "file"
    assert job["sources"][0]["bytes"] == a.stat().st_size and len(job["sources"][0]["ends_sha256"]) == 64
    assert job["settings"] == {"shard_size": 4, "store_vectors": True, "source_kind": None, "source_options": {}}
    assert job["version"] == 1 and job["requested"]["model"] == model and job["requested"]["index"] == "auto"

    assert delete_ids(out, ["item-003"]) == 1
    assert compact(out)["rows_removed"] == 1
    assert _live_ids(out) == [i for i in ids_a if i != "item-003"]

    # the same job again resumes: nothing encoded, and the compacted id does not come back
    again = build_index([a], out, model=model, shard_size=4, max_image_pixels=PIXELS)
    assert again.indexed == 0 and again.stats["encoded"] == 0 and again.skipped == len(ids_a)
    assert _live_ids(out) == [i for i in ids_a if i != "item-003"]

    # another job: refused, one line, exit 1, and not one byte of the folder changed
    before = _snapshot(out)
    assert any(k.startswith("store.lmdb") for k in before) and "manifest.json" in before
    cmd = ["index", "build", str(b), "--out", str(out), "--model", model, "--shard-size", "4",
           "--max-image-pixels", str(PIXELS), "--no-progress"]
    capsys.readouterr()
    assert main(cmd) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "another job" in err and str(a) in err and str(b) in err
    assert "--overwrite" in err and "mmsearch index add" in err
    with pytest.raises(OtherJobError, match="sources"):
        build_index([b], out, model=model, shard_size=4, max_image_pixels=PIXELS)
    after = _snapshot(out)
    assert sorted(after) == sorted(before)
    assert [k for k in before if before[k] != after[k]] == []

    # --overwrite builds the new index, and only it
    assert main(cmd + ["--overwrite"]) == 0
    assert _live_ids(out) == ids_b and verify_index(out) == []
    assert [s["path"] for s in read_manifest(out).job["sources"]] == [str(b)]

    # the same sources again: resumes, nothing re-encoded
    resumed = build_index([b], out, model=model, shard_size=4, max_image_pixels=PIXELS)
    assert resumed.indexed == 0 and resumed.stats["encoded"] == 0 and resumed.skipped == len(ids_b)
    assert _live_ids(out) == ids_b


def test_a_compacted_id_comes_back_only_when_added(tmp_path, tiny_dir, two_corpora):
    a, ids_a, _, _ = two_corpora
    model = str(tiny_dir("qwen2_vl"))
    out = tmp_path / "idx"
    build_index([a], out, model=model, max_image_pixels=PIXELS)
    delete_ids(out, ["item-001"])
    compact(out)
    extra = tmp_path / "again.jsonl"
    extra.write_text(json.dumps({"id": "item-001", "text": "added again"}) + "\n")
    added = add_to_index(out, [extra])
    assert added.indexed == 1 and "item-001" in _live_ids(out)
    assert read_manifest(out).job["added"][0]["sources"][0]["path"] == str(extra)
    build_index([a], out, model=model, max_image_pixels=PIXELS)  # the build's job: item-001 is indexed, skipped
    assert _live_ids(out) == ids_a


def test_what_makes_another_job(tmp_path, tiny_dir, two_corpora):
    a, _, _, _ = two_corpora
    model = str(tiny_dir("qwen2_vl"))
    out = tmp_path / "idx"
    build_index([a], out, model=model, shard_size=8, max_image_pixels=PIXELS)
    with pytest.raises(OtherJobError, match=r"shard_size: the index has 8, this run 5"):
        build_index([a], out, model=model, shard_size=5, max_image_pixels=PIXELS)
    before = _snapshot(out)
    with pytest.raises(OtherJobError, match="model: the index has"):  # found once the model is loaded,
        build_index([a], out, model=str(tiny_dir("qwen2_5_vl")), shard_size=8, max_image_pixels=PIXELS)
    assert _snapshot(out) == before  # still before the store is opened or a file written
    with open(a, "a") as fh:  # the same path with other content is another job
        fh.write(json.dumps({"id": "late", "text": "appended"}) + "\n")
    with pytest.raises(OtherJobError, match=r"changed since the index was built \(\d+ -> \d+ bytes\)"):
        build_index([a], out, model=model, shard_size=8, max_image_pixels=PIXELS)
    r = build_index([a], out, model=model, shard_size=8, max_image_pixels=PIXELS, overwrite=True)
    assert r.indexed == len(_live_ids(out))
    os.utime(a, (1, 1))
    assert build_index([a], out, model=model, shard_size=8, max_image_pixels=PIXELS).indexed == 0


def test_folder_sources_are_fingerprinted_by_their_file_list(tmp_path, tiny_dir):
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(folder / f"{i}.png")
    out = folder / "index"  # an index inside its own source folder is left out of the fingerprint
    model = str(tiny_dir("qwen2_vl"))
    assert build_index([folder], out, model=model).indexed == 3
    assert build_index([folder], out, model=model).skipped == 3
    src = read_manifest(out).job["sources"][0]
    assert src["kind"] == "folder" and src["files"] == 3
    Image.new("RGB", (32, 32), (0, 0, 200)).save(folder / "new.png")
    with pytest.raises(OtherJobError, match=r"3 -> 4 files"):
        build_index([folder], out, model=model)


def test_index_without_job_record_resumes_on_its_listed_sources(tmp_path, tiny_dir, two_corpora):
    a, ids_a, b, _ = two_corpora
    model = str(tiny_dir("qwen2_vl"))
    out = tmp_path / "idx"
    build_index([a], out, model=model, max_image_pixels=PIXELS)
    data = json.loads((out / "manifest.json").read_text())
    del data["job"]  # as written before job records
    (out / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(out).job == {} and read_manifest(out).extra["sources"] == [str(a)]

    before = _snapshot(out)
    with pytest.raises(OtherJobError, match="sources: the index was built from"):
        build_index([b], out, model=model, max_image_pixels=PIXELS)
    assert _snapshot(out) == before

    r = build_index([a], out, model=model, max_image_pixels=PIXELS)
    assert r.indexed == 0 and r.skipped == len(ids_a)
    assert read_manifest(out).job["sources"][0]["path"] == str(a)  # the job is recorded now
