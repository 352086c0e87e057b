"""Every quarantined input names the best id that can be read, its position, and its bad bytes."""
import io
import json
import tarfile

from mmsearch.indexer.sources import open_source
from mmsearch.indexer.sources.lines import bad_utf8_spans, describe_bad_utf8


def _rejected(source):
    return {r.where.rsplit("/", 1)[-1]: (r.id, r.error) for r in source if not r.ok}


def test_bad_bytes_are_named_escaped_with_their_offsets():
    raw = b'{"id": "x", "t": "caf\xe9 \xff\xfe!"}'
    assert bad_utf8_spans(raw) == [(21, b"\xe9"), (23, b"\xff\xfe")]
    assert describe_bad_utf8(raw) == r"\xe9 at byte 21, \xff\xfe at byte 23"
    many = b"".join(b"a\xff" for _ in range(5))
    assert describe_bad_utf8(many).endswith("and 2 more")


def test_jsonl_lines_that_cannot_be_read_keep_their_id(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join([
        b'{"id": "ok", "text": "fine"}',
        b'{"id": "latin1", "text": "caf\xe9"}',          # not UTF-8, the id is clean
        b'{"id": "caf\xe9-id", "text": "x"}',            # not UTF-8 in the id itself
        b'{"id": 42, "text": "\xff", ',                  # not UTF-8 and broken JSON
        b'{"id": "broken", "text": ',                     # broken JSON
        b'{"text": "no id", "x": "\xff"}',               # no id to read
        b'{"id": ["a list"], "text": "t"}',               # an id of the wrong type
    ]) + b"\n")
    rejected = _rejected(open_source(path))
    assert rejected["m.jsonl:2"] == ("latin1", "line is not valid UTF-8: \\xe9 at byte 29 "
                                               "(0-based byte offsets in the line)")
    bad_id, reason = rejected["m.jsonl:3"]
    assert bad_id is None and "\\xe9 at byte 11" in reason and "its 'id' field reads 'caf\\xe9-id'" in reason
    assert rejected["m.jsonl:4"][0] == "42" and "\\xff at byte 20" in rejected["m.jsonl:4"][1]
    assert rejected["m.jsonl:5"][0] == "broken" and rejected["m.jsonl:5"][1].startswith("broken JSON line")
    assert rejected["m.jsonl:6"][0] is None
    assert rejected["m.jsonl:7"][0] is None
    numbered = _rejected(open_source(path, id_column=None))
    assert numbered["m.jsonl:2"][0] == "m.jsonl:2"  # numbered ids are always known


def test_csv_rows_that_cannot_be_read_keep_their_id(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"id,text,tag\n"
                     b"ok,fine,a\n"
                     b"latin1,caf\xe9,b\n"
                     b"bad\xffid,x,c\n"
                     b"short,only two\n")
    rejected = _rejected(open_source(path))
    assert rejected["m.csv:3"] == ("latin1", "line is not valid UTF-8: \\xe9 at byte 10 "
                                             "(0-based byte offsets in the line)")
    assert rejected["m.csv:4"][0] is None and "its 'id' field reads 'bad\\xffid'" in rejected["m.csv:4"][1]
    assert rejected["m.csv:5"] == ("short", "row has 2 fields, the header has 3")


def test_other_sources_name_the_rejected_item(tmp_path):
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "a.txt").write_bytes(b"caption \xff")
    assert _rejected(open_source(folder))["a.png"][0] == "a.png"

    pool_dir = tmp_path / "mbeir" / "cand_pool" / "local"
    pool_dir.mkdir(parents=True)
    pool = pool_dir / "mbeir_x_cand_pool.jsonl"
    pool.write_bytes(b'{"did": "1:2", "txt": "caf\xe9", "modality": "text"}\n'
                     b'{"did": "1:3", "txt": "", "modality": "text"}\n')
    rejected = _rejected(open_source(pool))
    assert rejected["mbeir_x_cand_pool.jsonl:1"][0] == "1:2"
    assert rejected["mbeir_x_cand_pool.jsonl:2"][0] == "1:3"

    tar_path = tmp_path / "s.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in [("k1.txt", b"\xff bad"), ("k2.json", b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rejected = {r.where.rsplit(":", 1)[-1]: r.id for r in open_source(tar_path) if not r.ok}
    assert rejected == {"k1": "k1", "k2": "k2"}


def test_errors_jsonl_of_a_build(tmp_path, tiny_dir):
    from mmsearch.indexer.build import build_index

    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "good", "text": "hello"}\n{"id": "latin1", "text": "caf\xe9"}\n')
    build_index([path], tmp_path / "idx", model=str(tiny_dir("qwen2_vl")))
    (line,) = (tmp_path / "idx" / "errors.jsonl").read_text().splitlines()
    assert json.loads(line) == {"id": "latin1", "source": f"{path.as_posix()}:2",
                                "reason": "line is not valid UTF-8: \\xe9 at byte 29 (0-based byte offsets in the line)"}
