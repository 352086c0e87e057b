"""Lexical (BM25) search over the shards of one snapshot, scored as one collection.

Each shard carries its own tantivy index (`index_format.lexical`), and tantivy's BM25
weighs a term by the IDF of the index it searches. Scored per shard, a part number that
is frequent in one shard and rare in another would score higher in the second, and the
merged ranking would depend on how rows fell into shards. So the IDF is global, as a
distributed engine's "DFS" query phase does: document frequencies are summed over the
snapshot's shards, and each shard's term query is boosted by ``idf_global / idf_shard``,
which turns tantivy's per-shard score into the global one (BM25 is linear in the IDF of
each term). Length normalisation keeps each shard's own average length (shards of one
collection have near-equal averages; documented, and tested where lengths are equal).

Filters and tombstones: a shard is asked for ``k + (rows not allowed)`` hits, the
disallowed ones are dropped, so the top k allowed rows are exact whatever the filter.

A query word that analyses to several terms (``BD-3448`` -> ``bd``, ``3448``) must match all
of them, as a query parser makes a phrase of it (`index_format.query_groups`). Common words
(all terms in more than `COMMON_FRACTION` of the rows) add to a row's score but do not make
it a hit on their own, as Lucene's CommonTermsQuery does: in "the DOC-95509 form", matching
"the" alone would put every page in the lexical arm's ranking, and rank fusion (which
ignores scores) would promote pages whose only match is a word on every page. A query of
common words only matches on them as usual.
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from mmsearch.errors import InputError
from mmsearch.index_format import BODY, ROW, has_lexical, open_lexical, query_groups

from .filtered import RowMask
from .merge import empty_result

COMMON_FRACTION = 0.5  # a term in more than this share of the rows scores but does not match alone


def bm25_idf(df: float, n: float) -> float:
    """tantivy's (and Lucene's) BM25 IDF."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


class Searcher(NamedTuple):
    tantivy: object  # tantivy.Searcher
    schema: object   # its tantivy.Schema (term queries name fields through it)


class LexicalShards:
    """Opened tantivy searchers of the shards of an index (kept across snapshots)."""

    def __init__(self, path):
        self.path = path
        self._open: Dict[tuple, object] = {}
        self._lock = threading.Lock()

    def searchers(self, shards: Sequence) -> List["Searcher"]:
        """A searcher per shard (`query.shard.Shard`s of one view), in order."""
        missing = [s.info.name for s in shards if not has_lexical(s.info)]
        if missing:
            raise InputError(f"index {self.path} has no lexical index (shards {missing[:3]}); rebuild it with "
                             f"--text-fields (e.g. --text-fields text,caption) for mode='lexical' or 'hybrid'")
        out = []
        with self._lock:
            keys = [(s.info.name, s.info.files["lexical/meta.json"].sha256) for s in shards]
            for key, shard in zip(keys, shards):
                if key not in self._open:
                    self._open[key] = open_lexical(self.path, shard.info, rows=shard.rows)
                index = self._open[key]
                out.append(Searcher(index.searcher(), index.schema))
            for stale in set(self._open) - set(keys):  # shards compacted away
                del self._open[stale]
        return out


def search_lexical(shards: Sequence, searchers: Sequence[Searcher], texts: Sequence[Optional[str]], k: int,
                   masks: Sequence[Optional[RowMask]]) -> Tuple[np.ndarray, np.ndarray]:
    """BM25 top k of each query text over the shards: faiss convention, (D, I) of shape
    (n, k), global rows, -1 (and faiss's worst score) where fewer than k allowed rows match."""
    D, I = empty_result(len(texts), k, keep_max=True)
    n_docs = sum(s.tantivy.num_docs for s in searchers)
    for q, text in enumerate(texts):
        groups = Counter(query_groups(text or ""))  # a word of several terms matches all of them
        terms = {t for g in groups for t in g}
        if not terms or n_docs == 0:
            continue
        dfs = [{t: s.tantivy.doc_freq(BODY, t) for t in terms} for s in searchers]
        total_df = {t: sum(df[t] for df in dfs) for t in terms}
        idf = {t: bm25_idf(total_df[t], n_docs) for t in terms}
        common = {g for g in groups if all(total_df[t] > COMMON_FRACTION * n_docs for t in g)}
        if common == {g for g in groups if all(total_df[t] for t in g)}:
            common = set()  # only common words: they match as usual
        parts = [_search_shard(shard, s, groups, df, idf, common, k, mask)
                 for shard, s, df, mask in zip(shards, searchers, dfs, masks)]
        scores = np.concatenate([p[0] for p in parts])
        rows = np.concatenate([p[1] for p in parts])
        best = np.lexsort((rows, -scores))[:k]  # score, then row: deterministic ties
        D[q, :len(best)], I[q, :len(best)] = scores[best], rows[best]
    return D, I


def _search_shard(shard, searcher: Searcher, groups: Counter, df: dict, idf: dict, common_groups: set, k: int,
                  mask: Optional[RowMask]) -> Tuple[np.ndarray, np.ndarray]:
    import tantivy

    rare, common = [], []
    for group, count in groups.items():
        if not all(df[t] for t in group):
            continue  # no row of this shard can match it
        # a repeated query word counts once per occurrence, as in a Lucene BooleanQuery; each term's
        # boost turns this shard's IDF into the global one
        parts = [tantivy.Query.boost_query(tantivy.Query.term_query(searcher.schema, BODY, t),
                                           count * idf[t] / bm25_idf(df[t], searcher.tantivy.num_docs))
                 for t in group]
        query = parts[0] if len(parts) == 1 else tantivy.Query.boolean_query([(tantivy.Occur.Must, p) for p in parts])
        (common if group in common_groups else rare).append((tantivy.Occur.Should, query))
    clauses = rare + common
    if common_groups:  # the query has rare words (somewhere): a hit matches one; common ones only add score
        clauses = [(tantivy.Occur.Must, tantivy.Query.boolean_query(rare))] + common if rare else []
    allowed = shard.rows if mask is None else mask.count
    if not clauses or allowed == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    limit = min(shard.rows, k + shard.rows - allowed)
    hits = searcher.tantivy.search(tantivy.Query.boolean_query(clauses), limit, count=False).hits
    scores = np.array([h[0] for h in hits], dtype=np.float32)
    local = np.array(searcher.tantivy.fast_field_values(ROW, [h[1] for h in hits]), dtype=np.int64)
    if mask is not None:
        keep = mask.mask[local]
        scores, local = scores[keep], local[keep]
    return scores[:k], local[:k] + shard.id_start


def query_texts(queries: Sequence) -> List[Optional[str]]:
    """What the lexical arm searches: each query's own text, never its instruction
    (an instructed or composed query matches words by what the user typed)."""
    return [getattr(q, "text", None) for q in queries]
