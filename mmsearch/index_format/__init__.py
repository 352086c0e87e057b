"""The index directory format (DESIGN §5): the only code that knows an index folder.

The indexer, the query engine, eval, the server and the CLI read and write an index
only through the names exported here:

    layout      every file and folder name, and path functions (`manifest_path`, ...)
    durable     fsync, temporary names, atomic writes
    model       ModelInfo and `check_model` (may this encoder search these vectors?)
    manifest    FileInfo, FaissSpec, ShardInfo, Manifest; read, write (atomically)
    faiss_io    metrics, ids, the trained template, a new empty shard index
    meta        the shard metadata table (meta.arrow)
    shards      writing, sweeping and opening shard folders
    tokens      a multi-vector model's token vectors: one flat matrix + offsets per shard
    codes       compact vectors: Matryoshka truncation, float16/int8/binary codes (CompactSpec)
    lexical     a shard's tantivy BM25 index of its text fields (and PDF pages' text layer)
    verify      `verify_index`: every checksum, row count and id range
    lock        the one-writer lock and --overwrite's wipe
    job         the job record: the sources (with fingerprints) and settings that made an index
    query_bank  the query bank's vector file and its description

Names load lazily (PEP 562): ``from mmsearch.index_format import MANIFEST_FILE`` reads
the layout only, without faiss or pyarrow, so the CLI can name files cheaply.
"""
from mmsearch._lazy import lazy_attributes

_EXPORTS = {
    "layout": (
        "PathLike", "MANIFEST_FILE", "TRAINED_FILE", "SHARDS_DIR", "INDEX_FILE", "META_FILE", "VECTORS_FILE",
        "TOKENS_FILE", "TOKEN_OFFSETS_FILE", "TOKEN_SCALES_FILE", "LEXICAL_DIR",
        "STORE_DIR", "ERRORS_FILE", "STATS_FILE", "QUERY_BANK_FILE", "QUERY_BANK_INFO_FILE", "LOCK_FILE",
        "TMP_MARK", "RAY_STAGING_DIR", "FORMAT_FILES", "manifest_path", "trained_template_path", "shards_path",
        "shard_name", "shard_dir", "store_path", "errors_path", "stats_path", "query_bank_paths", "lock_path",
        "staging_path", "is_index", "require_index"),
    "durable": ("sha256_file", "fsync_file", "fsync_dir", "atomic_write_bytes", "atomic_write_json", "tmp_name",
                "utc_now"),
    "model": ("LEGACY_FAMILY", "ModelInfo", "model_info_of", "check_model"),
    "manifest": ("FORMAT_VERSION", "METRICS", "DEFAULT_INSTRUCTION_KEY", "Manifest", "FaissSpec", "ShardInfo",
                 "FileInfo", "read_manifest", "write_manifest"),
    "faiss_io": ("faiss_metric", "faiss_index_to_cpu", "faiss_ids", "write_trained_template",
                 "read_trained_template", "new_shard_index"),
    "meta": ("META_COLUMNS", "build_meta_table"),
    "shards": ("ShardRef", "write_shard", "remove_unlisted", "open_shard_index", "open_shard_meta",
               "load_shard_vectors", "load_shard_tokens"),
    "joined": ("join_budget", "join_ivf", "joinable", "positions_label_rows"),
    "tokens": ("TOKEN_PRECISIONS", "FDE_DEFAULTS", "DEFAULT_CANDIDATES", "MultiVectorSpec", "TokenMatrix"),
    "codes": ("PRECISIONS", "CODE_BYTES", "CALIBRATION_ROWS", "CompactSpec", "CompactIndex", "faiss_factory",
              "factory_lists", "train_binary_lists",
              "first_stage_vectors", "int8_ranges", "quantize_int8", "dequantize_int8", "binarize",
              "hamming_scores", "first_stage_queries", "first_stage_scores", "rescore", "is_binary", "downcast",
              "RESCORE_FROM", "stored_vectors", "vectors_of_stored"),
    "lexical": ("LEXICAL_KEY", "PAGE_TEXT", "BODY", "ROW", "parse_text_fields", "lexical_extra", "lexical_fields",
                "has_lexical", "lexical_texts", "open_lexical", "query_groups", "query_terms"),
    "verify": ("verify_index",),
    "lock": ("writer_lock", "wipe_index"),
    "job": ("JOB_VERSION", "fingerprint_source", "job_record", "job_differences", "legacy_differences"),
    "query_bank": ("save_query_bank", "load_query_bank", "load_query_bank_info"),
}
_WHERE = {name: f"{__name__}.{module}" for module, names in _EXPORTS.items() for name in names}
# Reachable as before the split (`fmt.IndexFormatError`), not part of the format's API.
_WHERE.update(dict.fromkeys(("IndexFormatError", "IndexMismatchError", "InputError"), "mmsearch.errors"))

__all__ = [name for names in _EXPORTS.values() for name in names]


__getattr__, __dir__ = lazy_attributes(globals(), _WHERE)
