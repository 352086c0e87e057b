"""Tests of the indexer's sources: every input is built here, in tmp_path."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import random
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pypdfium2 as pdfium
import pytest
from PIL import Image

from mmsearch.errors import InputError
from mmsearch.indexer import sources
from mmsearch.indexer.sources import (CsvSource, FolderSource, JsonlSource, MBeirSource, ParquetSource,
                                      PdfSource, Record, WebDatasetSource, iter_sources, open_source)

# --------------------------------------------------------------------------- helpers


def image_bytes(color=(200, 30, 30), size=(8, 6), fmt="PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, fmt)
    return out.getvalue()


def write(path, data: bytes | str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    return str(path)


def jsonl(*rows) -> bytes:
    """Lines of a JSON-lines file; a bytes row is written as it is."""
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def items(records):
    return [r.item for r in records if r.item is not None]


def errors(records):
    return {r.where: r.error for r in records if r.item is None}


_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out, i, j = bytearray(), 0, 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def make_pdf(texts, size=(200, 100), password=None) -> bytes:
    """A PDF with one Helvetica line per page; with `password`, RC4-40 encrypted
    (PDF standard security handler, revision 2) so that the password is required."""
    file_id = hashlib.md5(repr(texts).encode()).digest()
    key = None
    if password is not None:
        padded = (password.encode() + _PAD)[:32]
        owner = _rc4(hashlib.md5(padded).digest()[:5], padded)
        key = hashlib.md5(padded + owner + (-4).to_bytes(4, "little", signed=True) + file_id).digest()[:5]
    objs = {1: b"<< /Type /Catalog /Pages 2 0 R >>", 3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"}
    kids = []
    for i, text in enumerate(texts):
        page, content = 4 + 2 * i, 5 + 2 * i
        kids.append(f"{page} 0 R")
        objs[page] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {size[0]} {size[1]}] "
                      f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content} 0 R >>").encode()
        stream = f"BT /F1 12 Tf 10 50 Td ({text}) Tj ET".encode()
        if key:
            stream = _rc4(hashlib.md5(key + content.to_bytes(3, "little") + b"\0\0").digest()[:10], stream)
        objs[content] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream)
    objs[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(texts)} >>".encode()
    encrypt = b""
    if key:
        num = len(objs) + 1
        objs[num] = b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -4 >>" % (
            owner.hex().encode(), _rc4(key, _PAD).hex().encode())
        encrypt = b" /Encrypt %d 0 R" % num
    out, offsets = bytearray(b"%PDF-1.4\n"), {}
    for num in sorted(objs):
        offsets[num] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (num, objs[num])
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % offsets[n] for n in sorted(objs))
    ident = file_id.hex().encode()
    out += b"trailer\n<< /Size %d /Root 1 0 R /ID [<%s> <%s>]%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs) + 1, ident, ident, encrypt, xref)
    return bytes(out)


def make_tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --------------------------------------------------------------------------- image folders


def test_folder_ids_sidecars_and_stable_order(tmp_path):
    root = tmp_path / "imgs"
    files = {
        "b.png": image_bytes(),
        "a.jpg": image_bytes(fmt="JPEG"), "a.txt": " a red square \n", "a.json": '{"tags": ["red"], "n": 1}',
        "a/x.gif": image_bytes(fmt="GIF"),
        "sub/c.JPEG": image_bytes(fmt="JPEG"),
        "sub/deep/d.webp": image_bytes(fmt="WEBP"), "sub/deep/d.txt": "deep",
        "e.tiff": image_bytes(fmt="TIFF"), "f.bmp": image_bytes(fmt="BMP"),
        ".hidden/h.png": image_bytes(), ".h.png": image_bytes(),
        "notes.md": "not an image", "orphan.txt": "no image here", "orphan.json": "{bad",
    }
    names = sorted(files)
    random.Random(0).shuffle(names)  # creation order must not matter
    for name in names:
        write(root / name, files[name])

    source = open_source(root)
    assert isinstance(source, FolderSource)
    records = list(source)
    expected = ["a/x.gif", "a.jpg", "b.png", "e.tiff", "f.bmp", "sub/c.JPEG", "sub/deep/d.webp"]
    assert [r.item.id for r in records] == expected
    assert expected == sorted(expected, key=lambda p: p.split("/"))
    assert [r.where for r in records] == [f"{root.as_posix()}/{i}" for i in expected]
    assert [r.item.id for r in source] == expected  # a second pass reads the same

    by_id = {r.item.id: r.item for r in records}
    assert by_id["a.jpg"].text == "a red square"
    assert by_id["a.jpg"].metadata == {"tags": ["red"], "n": 1}
    assert by_id["sub/deep/d.webp"].text == "deep" and by_id["sub/deep/d.webp"].metadata == {}
    assert by_id["b.png"].text is None and by_id["b.png"].modality == "image"
    for item_id, item in by_id.items():
        assert item.image == os.path.abspath(root / item_id) and os.path.isabs(item.image)


def test_folder_bad_sidecars_reject_only_their_image(tmp_path):
    root = tmp_path / "imgs"
    write(root / "bad.png", image_bytes())
    write(root / "bad.json", '{"broken": ')
    write(root / "list.png", image_bytes())
    write(root / "list.json", "[1, 2]")
    write(root / "latin.png", image_bytes())
    write(root / "latin.txt", b"caf\xe9")
    write(root / "good.png", image_bytes())
    records = list(open_source(root))
    assert [r.item.id for r in records if r.ok] == ["good.png"]
    errs = errors(records)
    assert errs[f"{root.as_posix()}/bad.png"].startswith("bad sidecar bad.json:")
    assert "expected an object" in errs[f"{root.as_posix()}/list.png"]
    assert "latin.txt is not valid UTF-8" in errs[f"{root.as_posix()}/latin.png"]


def test_folder_with_pdfs(tmp_path):
    root = tmp_path / "docs"
    write(root / "p/report.pdf", make_pdf(["one", "two"]))
    write(root / "cover.png", image_bytes())
    assert [r.item.id for r in open_source(root)] == ["cover.png"]  # PDFs only on request
    records = list(open_source(root, pdfs=True, dpi=72))
    assert [r.item.id for r in records] == ["cover.png", "p/report.pdf#p1", "p/report.pdf#p2"]
    assert records[1].where == f"{root.as_posix()}/p/report.pdf#p1"
    assert records[2].item.metadata == {"page": 2, "pages": 2, "source": "p/report.pdf", "page_text": "two"}


# --------------------------------------------------------------------------- JSON lines


def test_jsonl_items_paths_bytes_and_metadata(tmp_path):
    png = image_bytes()
    path = write(tmp_path / "data/m.jsonl", jsonl(
        {"id": "a", "text": "a cat", "image": "imgs/a.png", "score": 0.5, "tags": ["x"], "ok": True, "none": None},
        {"id": 7, "image": "/abs/b.png"},
        {"id": "c", "text": "only text", "extra": {"nested": [1, 2]}},
        {"id": "d", "image": {"bytes": base64.b64encode(png).decode()}},
        {"id": "e", "image": {"path": "e.png", "bytes": None}, "text": ""},
    ) + b"\n   \n")
    records = list(open_source(path))
    assert all(r.ok for r in records)
    assert [r.where for r in records] == [f"{(tmp_path / 'data/m.jsonl').as_posix()}:{n}" for n in range(1, 6)]
    a, b, c, d, e = items(records)
    assert (a.id, a.text, a.image) == ("a", "a cat", str(tmp_path / "data/imgs/a.png"))
    assert a.metadata == {"score": 0.5, "tags": ["x"], "ok": True, "none": None}
    assert (b.id, b.text, b.image, b.metadata) == ("7", None, "/abs/b.png", {})
    assert (c.modality, c.metadata) == ("text", {"extra": {"nested": [1, 2]}})
    assert d.image == png
    assert (e.text, e.image) == (None, str(tmp_path / "data/e.png"))


def test_jsonl_rejections_name_the_line_and_reason(tmp_path):
    path = write(tmp_path / "m.jsonl", jsonl(
        {"id": "ok1", "text": "fine"},
        b'{"id": "x", "text": "unterminated',
        b"[1, 2, 3]",
        {"text": "no id"},
        {"id": None, "text": "null id"},
        {"id": "empty", "text": "   ", "image": None},
        {"id": "num", "text": 42},
        b'{"id": "latin", "text": "caf\xe9"}',
        {"id": "b64", "image": {"bytes": "***"}},
        {"id": 1.5, "text": "float id"},
        {"id": "ok2", "text": "still read"},
    ))
    records = list(open_source(path))
    assert [i.id for i in items(records)] == ["ok1", "ok2"]
    where = tmp_path.joinpath("m.jsonl").as_posix()
    errs = {int(k.rsplit(":", 1)[1]): v for k, v in errors(records).items()}
    assert errs[2].startswith("broken JSON line")
    assert errs[3] == "line is a JSON array, not an object"
    assert errs[4] == "missing id (field 'id')"
    assert errs[5] == "missing id (field 'id')"
    assert errs[6] == "empty entry: no text and no image"
    assert errs[7].startswith("text field 'text' must be a string, got int")
    assert errs[8].startswith("line is not valid UTF-8")
    assert "not valid base64" in errs[9]
    assert "must be a string or an integer, got float" in errs[10]
    assert len(records) == 11 and records[-1].where == f"{where}:11"


def test_jsonl_numbered_ids_custom_columns_and_metadata_subset(tmp_path):
    path = write(tmp_path / "m.jsonl", jsonl(
        {"caption": "first", "img": "1.png", "a": 1, "b": 2},
        {"caption": "second", "a": 3},
    ))
    records = list(open_source(path, id_column=None, text_column="caption", image_column="img",
                               metadata_columns=["a"]))
    first, second = items(records)
    assert (first.id, first.text, first.metadata) == ("m.jsonl:1", "first", {"a": 1})
    assert first.image == str(tmp_path / "1.png")
    assert (second.id, second.image, second.metadata) == ("m.jsonl:2", None, {"a": 3})


# --------------------------------------------------------------------------- CSV


def test_csv_rows_line_numbers_and_rejections(tmp_path):
    text = ('id,text,image,year\n'
            'a,"a ""quoted"", multi\nline caption",a.png,2020\n'
            'b,,b.png,\n'
            '\n'
            'c,too,many,fields,here\n'
            ',no id,,2021\n'
            'e,,,\n').encode() + b"f,caf\xe9,,\n" + b"g,last,,1999\n"
    path = write(tmp_path / "t.csv", text)
    records = list(open_source(path))
    where = tmp_path.joinpath("t.csv").as_posix()
    a, b, g = items(records)
    assert (a.id, a.text, a.image, a.metadata) == ("a", 'a "quoted", multi\nline caption', str(tmp_path / "a.png"),
                                                   {"year": "2020"})
    assert (b.id, b.text, b.metadata) == ("b", None, {"year": None})
    assert g.id == "g" and [r.where for r in records if r.ok] == [f"{where}:2", f"{where}:4", f"{where}:10"]
    assert errors(records) == {
        f"{where}:6": "row has 5 fields, the header has 4",
        f"{where}:7": "missing id (field 'id')",
        f"{where}:8": "empty entry: no text and no image",
        f"{where}:9": errors(records)[f"{where}:9"],
    }
    assert errors(records)[f"{where}:9"].startswith("line is not valid UTF-8")


def test_csv_header_problems_and_tsv(tmp_path):
    no_id = write(tmp_path / "no_id.csv", "key,text\n1,hello\n")
    [record] = list(open_source(no_id))
    assert record.where.endswith("no_id.csv:1") and "no id column 'id'" in record.error
    assert "id_column=None" in record.error
    assert [i.id for i in items(open_source(no_id, id_column="key"))] == ["1"]
    tsv = write(tmp_path / "t.tsv", "text\timage\nhello, world\t\n")
    [item] = items(open_source(tsv, id_column=None))
    assert (item.id, item.text) == ("t.tsv:2", "hello, world")


# --------------------------------------------------------------------------- Parquet


def test_parquet_bytes_paths_structs_and_batches(tmp_path):
    png = image_bytes()
    table = pa.table({
        "id": pa.array([1, 2, None, 4, 5], pa.int64()),
        "text": ["one", None, "three", None, "five"],
        "image": pa.array([png, None, None, b"", png], pa.binary()),
        "score": [0.1, 0.2, 0.3, 0.4, 0.5],
        "tags": [["a"], [], None, ["b"], ["c", "d"]],
    })
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=2)
    records = list(ParquetSource(path, batch_size=2))
    where = path.as_posix()
    assert [r.where for r in records] == [f"{where}:{n}" for n in range(1, 6)]
    one, five = items(records)
    assert (one.id, one.text, one.image, one.metadata) == ("1", "one", png, {"score": 0.1, "tags": ["a"]})
    assert (five.id, five.image, five.metadata["tags"]) == ("5", png, ["c", "d"])
    assert errors(records) == {f"{where}:2": "empty entry: no text and no image",
                               f"{where}:3": "missing id (field 'id')",
                               f"{where}:4": "image field 'image': the image bytes are empty"}


def test_parquet_hf_image_structs_and_paths(tmp_path):
    png = image_bytes()
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"text": ["x", "y"],
                      "image": pa.array([{"bytes": png, "path": "ignored.png"}, {"bytes": None, "path": "p/y.png"}],
                                        image_type)})
    pq.write_table(table, tmp_path / "hf.parquet")
    x, y = items(open_source(tmp_path / "hf.parquet", id_column=None))
    assert (x.id, x.image) == ("hf.parquet:1", png)
    assert (y.id, y.image) == ("hf.parquet:2", str(tmp_path / "p/y.png"))


def test_parquet_file_level_rejections(tmp_path):
    write(tmp_path / "junk.parquet", b"PAR1 this is not parquet")
    [record] = list(open_source(tmp_path / "junk.parquet"))
    assert record.where == (tmp_path / "junk.parquet").as_posix() and "cannot read Parquet file" in record.error
    pq.write_table(pa.table({"id": ["a"], "text": [3]}), tmp_path / "int_text.parquet")
    [record] = list(open_source(tmp_path / "int_text.parquet"))
    assert record.error == "text column 'text' has type int64, expected strings"


# --------------------------------------------------------------------------- M-BEIR


def test_mbeir_pool_detected_with_inferred_root(tmp_path):
    root = tmp_path / "M-BEIR"
    pool = write(root / "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl", jsonl(
        {"did": "9:1", "txt": "", "img_path": "mbeir_images/mscoco_images/val2014/1.jpg", "modality": "image",
         "src_content": None},
        {"did": "9:2", "txt": "A man rides a horse.", "img_path": None, "modality": "text",
         "src_content": '{"k": 1}'},
        {"did": 93, "txt": "both", "img_path": "mbeir_images/x.jpg", "modality": "image,text"},
        {"did": "9:4", "txt": "", "img_path": None, "modality": "image"},
        {"did": "9:5", "txt": "v", "img_path": None, "modality": "video"},
        {"txt": "no did", "modality": "text"},
    ))
    source = open_source(pool)
    assert isinstance(source, MBeirSource) and source.root == str(root)
    records = list(source)
    image, text, both = items(records)
    assert (image.id, image.text, image.image) == ("9:1", None, str(root / "mbeir_images/mscoco_images/val2014/1.jpg"))
    assert image.metadata == {"modality": "image"} and image.modality == "image"
    assert (text.id, text.text, text.image) == ("9:2", "A man rides a horse.", None)
    assert text.metadata == {"modality": "text", "src_content": '{"k": 1}'}
    assert (both.id, both.modality) == ("93", "image,text")
    errs = {k.rsplit(":", 1)[1]: v for k, v in errors(records).items()}
    assert errs == {"4": "modality 'image' but img_path is empty",
                    "5": "unknown modality 'video'; M-BEIR uses 'text', 'image', 'image,text'",
                    "6": "missing id (field 'did')"}


def test_mbeir_root_must_be_known(tmp_path):
    pool = write(tmp_path / "mbeir_union_test_cand_pool.jsonl",
                 jsonl({"did": "1:1", "txt": "", "img_path": "i/1.jpg", "modality": "image"}))
    with pytest.raises(InputError, match="pass root="):
        open_source(pool)
    [item] = items(open_source(pool, root=tmp_path / "M"))
    assert item.image == str(tmp_path / "M/i/1.jpg")
    assert isinstance(open_source(pool, kind="jsonl"), JsonlSource)


# --------------------------------------------------------------------------- PDF


def test_pdf_pages_text_and_dpi(tmp_path):
    path = write(tmp_path / "docs/a.pdf", make_pdf(["Hello page one", "Second page", ""]))
    source = open_source(path)
    assert isinstance(source, PdfSource)
    records = list(source)
    where = (tmp_path / "docs/a.pdf").as_posix()
    assert [r.where for r in records] == [f"{where}#p{n}" for n in (1, 2, 3)]
    first, second, third = items(records)
    assert (first.id, first.text) == ("a.pdf#p1", "Hello page one")
    assert (second.text, third.text) == ("Second page", None)
    # the text layer is also metadata (page_text), which the lexical index searches; a blank page has none
    assert first.metadata == {"page": 1, "pages": 3, "source": "a.pdf", "page_text": "Hello page one"}
    assert "page_text" not in third.metadata
    assert isinstance(first.image, Image.Image) and first.image.mode == "RGB"
    assert first.image.size == (400, 200)  # 200x100 pt at 144 dpi
    assert items(PdfSource(path, dpi=72))[0].image.size == (200, 100)
    small = items(PdfSource(path, max_pixels=5000))[0].image
    assert small.width * small.height <= 5000 * 1.05


def test_pdf_image_only_pages_from_pillow(tmp_path):
    pages = [Image.new("RGB", (60, 40), c) for c in ("red", "green")]
    pages[0].save(tmp_path / "scan.pdf", "PDF", save_all=True, append_images=pages[1:], resolution=72)
    first, second = items(open_source(tmp_path / "scan.pdf", dpi=72))
    assert (first.id, first.text, second.id) == ("scan.pdf#p1", None, "scan.pdf#p2")
    assert first.image.getpixel((30, 20))[0] > 200 and second.image.getpixel((30, 20))[1] > 100


@pytest.mark.parametrize("data, reason", [
    (make_pdf(["secret"], password="s3cret"), "encrypted PDF (password required)"),
    (b"", "empty file (0 bytes), not a PDF"),
    (b"%PDF-1.4\n\x00\x01 this is no PDF at all", "not a PDF or corrupt (PDFium format error)"),
    (make_pdf(["cut short"])[:120], "not a PDF or corrupt (PDFium format error)"),
])
def test_pdf_unreadable_file_is_one_rejection(tmp_path, data, reason):
    path = write(tmp_path / "bad.pdf", data)
    assert [(r.where, r.error) for r in open_source(path)] == [((tmp_path / "bad.pdf").as_posix(), reason)]


def test_pdf_password(tmp_path):
    path = write(tmp_path / "locked.pdf", make_pdf(["Top secret"], password="s3cret"))
    [item] = items(open_source(path, password="s3cret"))
    assert item.text == "Top secret"
    [record] = list(open_source(path, password="wrong"))
    assert record.error == "encrypted PDF (wrong password)"


def test_pdf_renders_lazily_and_a_failed_page_is_rejected(tmp_path, monkeypatch):
    path = write(tmp_path / "a.pdf", make_pdf(["one", "two", "three"]))
    real_render, calls = pdfium.PdfPage.render, []

    def render(page, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise pdfium.PdfiumError("Failed to render page.")
        return real_render(page, *args, **kwargs)

    monkeypatch.setattr(pdfium.PdfPage, "render", render)
    records = iter(PdfSource(path, dpi=36))
    assert next(records).item.id == "a.pdf#p1" and len(calls) == 1
    rest = list(records)
    assert rest[0].item is None and rest[0].where.endswith("a.pdf#p2")
    assert rest[0].error == "cannot render page 2 of 3: PdfiumError: Failed to render page."
    assert rest[1].item.id == "a.pdf#p3"


# --------------------------------------------------------------------------- webdataset


def _shard_members():
    jpg = image_bytes(fmt="JPEG")
    return [
        ("s/0001.jpg", jpg), ("s/0001.txt", b"first caption\n"), ("s/0001.json", b'{"id": "u1", "w": 8}'),
        ("s/0002.png", image_bytes()), ("s/0002.json", b'{"id": "u2"}'),
        ("s/0003.caption", b"caption only"), ("s/0003.json", b'{"id": "u3"}'),
        ("s/0004.cls", b"3"),
        ("s/0005.jpg", jpg), ("s/0005.json", b"{broken"),
        ("s/0006.txt", b"last"), ("s/0006.json", b'{"w": 1}'),
    ]


def test_webdataset_samples_and_rejections(tmp_path):
    path = write(tmp_path / "shard-000.tar", make_tar(_shard_members()))
    source = open_source(path)
    assert isinstance(source, WebDatasetSource)
    records = list(source)
    where = (tmp_path / "shard-000.tar").as_posix()
    assert [r.where for r in records] == [f"{where}:s/000{n}" for n in range(1, 7)]
    one, two, three, six = items(records)
    assert (one.id, one.text, one.metadata) == ("s/0001", "first caption", {"id": "u1", "w": 8})
    assert one.image == _shard_members()[0][1]
    assert (two.id, two.text, two.image[:4]) == ("s/0002", None, b"\x89PNG")
    assert (three.text, three.image, six.text) == ("caption only", None, "last")
    errs = errors(records)
    assert errs[f"{where}:s/0004"] == "empty sample: no text and no image (members: cls)"
    assert errs[f"{where}:s/0005"].startswith("broken json member")


def test_webdataset_ids_from_json(tmp_path):
    path = write(tmp_path / "shard.tar", make_tar(_shard_members()))
    records = list(open_source(path, id_field="id"))
    assert [i.id for i in items(records)] == ["u1", "u2", "u3"]
    assert items(records)[0].metadata == {"w": 8}
    assert errors(records)[(tmp_path / "shard.tar").as_posix() + ":s/0006"] == "missing id (field 'json id')"


def test_webdataset_corrupt_tars_stop_cleanly(tmp_path):
    data = make_tar([("k/a.txt", b"a" * 600), ("k/b.txt", b"b" * 600), ("k/c.txt", b"c" * 600)])
    where = (tmp_path / "cut.tar").as_posix()
    write(tmp_path / "cut.tar", data[:1536 + 700])  # inside the data of k/b.txt
    records = list(open_source(tmp_path / "cut.tar"))
    assert [i.text for i in items(records)] == ["a" * 600]
    assert records[-1].where == f"{where}:k/b" and records[-1].error.startswith("corrupt tar, stopped reading it here")
    write(tmp_path / "cut.tar", data[:3072 + 100])  # inside the header of k/c.txt: k/b may be incomplete
    records = list(open_source(tmp_path / "cut.tar"))
    assert [i.text for i in items(records)] == ["a" * 600]
    assert "truncated" in errors(records)[f"{where}:k/b"]
    write(tmp_path / "junk.tar", b"not a tar archive " * 40)
    [record] = list(open_source(tmp_path / "junk.tar"))
    assert record.where == (tmp_path / "junk.tar").as_posix() and "corrupt tar" in record.error
    write(tmp_path / "z.tar.gz", gzip.compress(data, mtime=0))
    assert len(items(open_source(tmp_path / "z.tar.gz"))) == 3


# --------------------------------------------------------------------------- factory


def test_open_source_picks_the_kind_and_describes_it(tmp_path):
    (tmp_path / "dir").mkdir()
    paths = {"dir": FolderSource, "m.jsonl": JsonlSource, "m.json": JsonlSource, "m.csv": CsvSource,
             "m.tsv": CsvSource, "m.parquet": ParquetSource, "d.pdf": PdfSource, "s.tar": WebDatasetSource,
             "s.tar.gz": WebDatasetSource}
    for name, cls in paths.items():
        if name != "dir":
            write(tmp_path / name, b"")
        source = open_source(tmp_path / name)
        assert type(source) is cls
        assert (tmp_path / name).as_posix() in source.describe()
    assert type(open_source(tmp_path / "m.csv", kind="jsonl")) is JsonlSource


def test_open_source_errors_name_the_path_and_the_choices(tmp_path):
    weird = write(tmp_path / "notes.txt", "hello")
    with pytest.raises(InputError) as exc:
        open_source(weird)
    assert weird in str(exc.value) and "folder, jsonl, csv, parquet, mbeir, pdf, webdataset" in str(exc.value)
    with pytest.raises(InputError, match="unknown source kind 'xml'.*valid kinds: folder"):
        open_source(weird, kind="xml")
    with pytest.raises(InputError, match="does not exist"):
        open_source(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="expects a folder"):
        open_source(weird, kind="folder")
    with pytest.raises(InputError, match=r"unknown option\(s\) dpi; valid: id_column"):
        open_source(weird, kind="jsonl", dpi=10)
    with pytest.raises(InputError, match="dpi=0"):
        open_source(write(tmp_path / "a.pdf", make_pdf(["x"])), dpi=0)


def test_iter_sources_chains_and_routes_options(tmp_path):
    write(tmp_path / "imgs/a.png", image_bytes())
    manifest = write(tmp_path / "m.jsonl", jsonl({"id": "t1", "text": "hello"}, b"oops"))
    pdf = write(tmp_path / "d.pdf", make_pdf(["page"]))
    records = iter_sources([tmp_path / "imgs", manifest, pdf], dpi=36)
    assert [(r.item.id if r.ok else r.error[:6]) for r in records] == ["a.png", "t1", "broken", "d.pdf#p1"]
    assert items(iter_sources(pdf, dpi=36))[0].image.size == (100, 50)
    with pytest.raises(InputError, match="unknown source option"):
        iter_sources([manifest], colour="red")
    with pytest.raises(InputError, match="does not exist"):
        iter_sources([manifest, tmp_path / "gone.csv"])  # checked before anything is read


def test_public_names_and_record():
    assert sorted(sources.__all__) == sorted([
        "Record", "Source", "KINDS", "detect_kind", "open_source", "iter_sources", "FolderSource",
        "JsonlSource", "CsvSource", "ParquetSource", "MBeirSource", "PdfSource", "WebDatasetSource"])
    assert list(sources.KINDS) == ["folder", "jsonl", "csv", "parquet", "mbeir", "pdf", "webdataset"]
    record = Record(item=None, where="m.jsonl:3", error="broken")
    assert not record.ok
    with pytest.raises(AttributeError):
        record.where = "elsewhere"
