"""A shard's lexical (BM25) index: ``shards/NNNNN/lexical/``, a tantivy index of the
shard's text fields, one document per row.

Why tantivy, not bm25s (measured on this machine, 100k documents of 20-120 words,
2 cores; `benchmarks/lexical.py`): tantivy built in 3.1 s into 18 MB and answered a
3-term query in 0.11 ms p50 / 4.2 ms p99; bm25s took 8.9 s, 49 MB and 13.7 / 20.9 ms.
tantivy also exposes what global scoring across shards needs: per-term document
frequencies (`Searcher.doc_freq`), boosted term queries, and a row fast field read
for many hits at once.

Which fields: the manifest's ``extra["lexical"]["fields"]`` (``--text-fields``), plus the
``page_text`` column (a PDF page's text layer) whenever a shard has it. `shards.write_shard`
reads them from the committed manifest and writes this index inside the shard's
temporary folder, so it shares the shard's durability (complete or absent) and every
file is checksummed in the manifest; compaction and `index add` rewrite it with the shard.

The documents' analyzer is tantivy's ``en_stem`` (simple tokenizer, remove_long 40,
lowercase, English stemmer); `query_terms` runs the same chain on a query, so a query's
terms are the indexed terms. No positions are stored: BM25 needs frequencies only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import pyarrow as pa

from mmsearch.errors import IndexFormatError, InputError

from .durable import fsync_dir, fsync_file
from .layout import LEXICAL_DIR, PathLike, shard_dir

LEXICAL_KEY = "lexical"   # the manifest's extra["lexical"]: {"fields": [...], "library": "tantivy"}
PAGE_TEXT = "page_text"   # a PDF page's text layer (metadata column), indexed whenever present
BODY, ROW = "body", "row"  # the tantivy fields: analysed text, and the shard-local row (a fast field)
ANALYZER = "en_stem"
_WRITER_HEAP = 64 << 20   # tantivy's indexing memory; one thread: documents keep row order


def parse_text_fields(fields: Any) -> Tuple[str, ...]:
    """``"caption,title"`` or a sequence -> a tuple of column names (empty: no lexical index)."""
    if fields is None:
        return ()
    items = fields.split(",") if isinstance(fields, str) else list(fields)
    if not all(isinstance(f, str) for f in items):
        raise InputError(f"text_fields={fields!r}: expected column names, e.g. 'text,caption'")
    names = tuple(dict.fromkeys(f.strip() for f in items if f.strip()))
    bad = [f for f in names if f == "id" or f == "image"]
    if bad:
        raise InputError(f"text_fields {bad}: not text columns; name text columns such as text, caption, title")
    if names:
        tantivy_module()  # missing: say so before a long build
    return names


def lexical_extra(fields: Sequence[str]) -> dict:
    """The manifest extra entry that turns the lexical index on (empty when no fields)."""
    return {LEXICAL_KEY: {"fields": list(fields), "library": "tantivy", "analyzer": ANALYZER}} if fields else {}


def lexical_fields(extra: Mapping[str, Any]) -> Tuple[str, ...]:
    """The text fields a manifest's extra names; () when the index has no lexical index."""
    return tuple((extra.get(LEXICAL_KEY) or {}).get("fields") or ())


def has_lexical(shard) -> bool:
    """Whether a ShardInfo lists a lexical index."""
    return any(f.startswith(LEXICAL_DIR + "/") for f in shard.files)


def lexical_texts(meta: pa.Table, fields: Sequence[str]) -> List[str]:
    """Each row's text for BM25: the named fields present in this shard, then page_text,
    joined by newlines (a field a shard lacks is empty there, not an error)."""
    names = [f for f in dict.fromkeys([*fields, PAGE_TEXT]) if f in meta.column_names]
    columns = [meta.column(f).to_pylist() for f in names]
    return ["\n".join(str(v) for v in values if v not in (None, "")) for values in zip(*columns)] if columns \
        else [""] * meta.num_rows


def tantivy_module():
    """The tantivy module, or an error naming the install line."""
    try:
        import tantivy
    except ImportError:
        raise InputError("lexical search needs tantivy: pip install 'mmsearch[lexical]' (or pip install tantivy)") \
            from None
    return tantivy


def _schema():
    tantivy = tantivy_module()
    builder = tantivy.SchemaBuilder()
    builder.add_text_field(BODY, stored=False, tokenizer_name=ANALYZER, index_option="freq")
    builder.add_integer_field(ROW, stored=False, indexed=False, fast=True)
    return builder.build()


def write_lexical(folder: Path, texts: Sequence[str]) -> None:
    """Build the lexical index of a shard being written (`folder`: its temporary folder).
    One writer thread and one commit: one segment, rows in order; files fsynced."""
    tantivy = tantivy_module()

    target = folder / LEXICAL_DIR
    target.mkdir()
    index = tantivy.Index(_schema(), path=str(target))
    writer = index.writer(heap_size=_WRITER_HEAP, num_threads=1)
    for row, text in enumerate(texts):
        writer.add_document(tantivy.Document(**{BODY: text or "", ROW: row}))
    writer.commit()
    writer.wait_merging_threads()
    del writer, index
    for entry in target.iterdir():
        fsync_file(entry)
    fsync_dir(target)


def open_lexical(index_dir: PathLike, shard, rows: Optional[int] = None):
    """A shard's tantivy index (read-only use), checked to hold one document per row."""
    tantivy = tantivy_module()

    path = shard_dir(index_dir, shard) / LEXICAL_DIR
    name = shard if isinstance(shard, str) else shard.name
    if not (path / "meta.json").is_file():
        raise IndexFormatError(f"shard {name}: no lexical index ({path}); rebuild the index with --text-fields")
    try:
        index = tantivy.Index.open(str(path))
        docs = index.searcher().num_docs
    except (ValueError, OSError) as e:
        raise IndexFormatError(f"shard {name}: cannot open lexical index {path}: {e}") from e
    if rows is not None and docs != rows:
        raise IndexFormatError(f"shard {name}: lexical index holds {docs} documents, the shard has {rows} rows")
    return index


_QUERY_ANALYZER = None


def query_terms(text: str) -> List[str]:
    """A query's terms, analysed as the documents were (en_stem's chain)."""
    global _QUERY_ANALYZER
    if _QUERY_ANALYZER is None:
        tantivy = tantivy_module()

        _QUERY_ANALYZER = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
                           .filter(tantivy.Filter.remove_long(40)).filter(tantivy.Filter.lowercase())
                           .filter(tantivy.Filter.stemmer("english")).build())
    return list(_QUERY_ANALYZER.analyze(text or ""))


def query_groups(text: str) -> List[Tuple[str, ...]]:
    """A query's terms grouped by the word they came from: "BD-3448 valve" -> [("bd", "3448"),
    ("valv",)]. A word that analyses to several terms (a part code, a hyphenated name) must
    match all of them, as a query parser makes a phrase of it (the index keeps no positions)."""
    return [g for g in (tuple(query_terms(word)) for word in (text or "").split()) if g]


def lexical_file_entries(folder: Path) -> List[Path]:
    """Every file of a shard folder, lexical/ included (manifest listing order)."""
    return sorted(p for p in folder.rglob("*") if p.is_file())

