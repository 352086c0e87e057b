"""Reading a BEIR-format collection (and ViDoRe's variant of it), checked line by line.

Layout under DIR: the corpus (``corpus.jsonl[.gz]``, ``corpus.parquet`` or ``corpus/*.parquet``),
the queries (``queries.jsonl[.gz]``, ``queries.parquet`` or ``queries/*.parquet``) and the
judgments of a split (``qrels/<split>.tsv`` or ``qrels/<split>*.parquet``). Column names
may be BEIR's (``_id``, ``title``, ``text``) or ViDoRe v2's (``corpus-id``, ``query-id``,
``query``, ``image`` as a path, bytes or ``{"bytes", "path"}``); ids may be numbers.
The qrels TSV has the header ``query-id corpus-id score`` (optional), or TREC's four
columns ``qid 0 docid score``. A score <= 0 judges a document not relevant. A document
with neither text nor image is kept as an id (qrels may name it) but never indexed.

Every problem is an InputError naming the file and line (or row).
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import InputError

DOC_ID = ("_id", "corpus-id", "corpus_id", "docid", "id")
QUERY_ID = ("_id", "query-id", "query_id", "qid", "id")
QUERY_TEXT = ("text", "query")


@dataclass(frozen=True)
class Doc:
    id: str
    text: Optional[str]        # title and text joined with a space (BEIR's convention)
    image: Any                 # None, an absolute path, or bytes


@dataclass(frozen=True)
class Collection:
    root: Path
    corpus_files: Tuple[Path, ...]
    queries_file: Path
    qrels_file: Path
    corpus: Tuple[Doc, ...]
    queries: Dict[str, str]                 # query id -> text, the queries with judgments, in file order
    qrels: Dict[str, Dict[str, float]]      # query id -> {corpus id: score > 0}; {} for no relevant doc

    @property
    def has_images(self) -> bool:
        return any(d.image is not None for d in self.corpus)


def find_part(root: Path, name: str, split: Optional[str] = None) -> List[Path]:
    """The files of one part (corpus, queries, qrels) of the collection under root."""
    if name == "qrels":
        folder = root / "qrels"
        candidates = [[folder / f"{split}.tsv"], sorted(folder.glob(f"{split}.parquet")),
                      sorted(folder.glob(f"{split}-*.parquet"))]
        expected = f"qrels/{split}.tsv or qrels/{split}*.parquet"
    else:
        candidates = [[root / f"{name}.jsonl"], [root / f"{name}.jsonl.gz"], [root / f"{name}.parquet"],
                      sorted((root / name).glob("*.parquet"))]
        expected = f"{name}.jsonl, {name}.parquet or {name}/*.parquet"
    for files in candidates:
        if files and all(f.is_file() for f in files):
            return files
    raise InputError(f"no {name} in {root}: expected {expected}")


def rows(path: Path) -> Iterator[Tuple[str, dict]]:
    """(where, row) for each row of a JSON-lines or Parquet file; where is "path:line"."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                n += 1
                yield f"{path} row {n}", row
        return
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{n}", row


def _field(row: dict, names: Sequence[str], where: str, what: str) -> Any:
    for name in names:
        if row.get(name) is not None:
            return row[name]
    raise InputError(f"{where}: no {what} (looked for {', '.join(names)}; the row has {', '.join(row) or 'nothing'})")


def _id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise InputError(f"{where}: an id must be a non-empty string or an integer, got {value!r}")
    return str(value)


def _image(value: Any, base: Path, where: str) -> Any:
    if isinstance(value, dict):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if value is None or isinstance(value, (bytes, bytearray)):
        return bytes(value) if value else None
    if isinstance(value, str):
        return value if os.path.isabs(value) or "://" in value else str(base / value)
    raise InputError(f"{where}: image must be a path, bytes or {{'bytes', 'path'}}, got {type(value).__name__}")


def read_corpus(files: Sequence[Path]) -> Tuple[Doc, ...]:
    docs, seen = [], {}
    for path in files:
        for where, row in rows(path):
            did = _id(_field(row, DOC_ID, where, "document id"), where)
            if did in seen:
                raise InputError(f"{where}: duplicate document id {did!r} (first at {seen[did]})")
            seen[did] = where
            text = " ".join(str(row[c]).strip() for c in ("title", "text") if row.get(c)) or None
            docs.append(Doc(did, text, _image(row.get("image"), path.parent, where)))
    if not docs:
        raise InputError(f"the corpus {', '.join(map(str, files))} is empty")
    return tuple(docs)


def read_queries(files: Sequence[Path]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for path in files:
        for where, row in rows(path):
            qid = _id(_field(row, QUERY_ID, where, "query id"), where)
            text = _field(row, QUERY_TEXT, where, "query text")
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{where}: query {qid!r} has no text")
            out[qid] = text
    return out


def read_qrels(files: Sequence[Path]) -> Iterator[Tuple[str, str, str, float]]:
    """(where, query id, corpus id, score) for each judgment."""
    for path in files:
        if path.suffix == ".parquet":
            for where, row in rows(path):
                qid = _id(_field(row, QUERY_ID[1:], where, "query-id"), where)
                did = _id(_field(row, DOC_ID[1:], where, "corpus-id"), where)
                yield where, qid, did, _score(_field(row, ("score",), where, "score"), where)
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                cells = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
                if not line.strip() or (n == 1 and not _is_number(cells[-1])):  # a header
                    continue
                where = f"{path}:{n}"
                if len(cells) == 4:  # TREC qrels: qid iteration docid score
                    cells = [cells[0], cells[2], cells[3]]
                if len(cells) != 3 or not all(c.strip() for c in cells):
                    raise InputError(f"{where}: expected query-id, corpus-id and score separated by tabs, "
                                     f"got {line.strip()!r}")
                yield where, cells[0].strip(), cells[1].strip(), _score(cells[2].strip(), where)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _score(value: Any, where: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: the score must be a number, got {value!r}") from None
    if score != int(score):
        raise InputError(f"{where}: the score must be an integer relevance grade, got {value!r}")
    return score


def read_collection(root: Path, split: str = "test") -> Collection:
    """The corpus, the split's judged queries and their qrels; every qrels id must exist."""
    if not root.is_dir():
        raise InputError(f"BEIR collection {root} is not a folder; expected corpus.jsonl, queries.jsonl and "
                         f"qrels/{split}.tsv under it")
    corpus_files, queries_files = find_part(root, "corpus"), find_part(root, "queries")
    qrels_files = find_part(root, "qrels", split)
    corpus = read_corpus(corpus_files)
    all_queries = read_queries(queries_files)
    ids = {d.id for d in corpus}
    qrels: Dict[str, Dict[str, float]] = {}
    for where, qid, did, score in read_qrels(qrels_files):
        if qid not in all_queries:
            raise InputError(f"{where}: query-id {qid!r} is not in {queries_files[0]}")
        if did not in ids:
            raise InputError(f"{where}: corpus-id {did!r} is not in {corpus_files[0]}")
        judged = qrels.setdefault(qid, {})
        if score > 0:
            judged[did] = score
    if not qrels:
        raise InputError(f"{qrels_files[0]} judges no query")
    queries = {q: t for q, t in all_queries.items() if q in qrels}
    return Collection(root, tuple(corpus_files), queries_files[0], qrels_files[0], corpus, queries, qrels)
