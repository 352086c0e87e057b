"""The layout of an index directory (DESIGN §5): every file and folder name, in one place.

    INDEX/manifest.json               the single source of truth (see .manifest)
    INDEX/trained.faiss               trained empty FAISS template, when the spec needs training
    INDEX/shards/NNNNN/index.faiss    FAISS index whose search returns global int64 row ids
    INDEX/shards/NNNNN/meta.arrow     Arrow IPC file: id, modality, text, image, then metadata
    INDEX/shards/NNNNN/vectors.npy    optional float16 (rows, dim) vectors, row-aligned
    INDEX/shards/NNNNN/tokens.npy     multi-vector models: every item's token vectors, flat (see .tokens)
    INDEX/shards/NNNNN/token_offsets.npy, token_scales.npy   their row offsets, int8 scales
    INDEX/shards/NNNNN/lexical/       optional tantivy BM25 index of the text fields (see .lexical)
    INDEX/store.lmdb                  id -> row, embedding cache, tombstones, thumbnails
    INDEX/errors.jsonl                the rejections of the last run
    INDEX/stats.json                  counts and timings of the last run
    INDEX/query_bank.npy              optional: embeddings of typical queries (hubness)
    INDEX/query_bank.json             how that bank was made
    INDEX/.mmsearch.lock              held by the one process writing the index
    INDEX/.tmp-*, INDEX/shards/.tmp-* temporary files and folders (swept on resume)

Code outside this package names these files only through the functions below.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Tuple, Union

from mmsearch.errors import InputError

PathLike = Union[str, os.PathLike]

MANIFEST_FILE = "manifest.json"
TRAINED_FILE = "trained.faiss"
SHARDS_DIR = "shards"
INDEX_FILE = "index.faiss"
META_FILE = "meta.arrow"
VECTORS_FILE = "vectors.npy"
TOKENS_FILE = "tokens.npy"                  # multi-vector models: (T, d) float16 or int8 token vectors
TOKEN_OFFSETS_FILE = "token_offsets.npy"    # (rows + 1,) int64
TOKEN_SCALES_FILE = "token_scales.npy"      # (T,) float32, int8 tokens only
LEXICAL_DIR = "lexical"                     # a tantivy index of the text fields (see .lexical)
STORE_DIR = "store.lmdb"
ERRORS_FILE = "errors.jsonl"
STATS_FILE = "stats.json"
QUERY_BANK_FILE = "query_bank.npy"        # optional: embeddings of typical queries (hubness)
QUERY_BANK_INFO_FILE = "query_bank.json"  # how that bank was made
LOCK_FILE = ".mmsearch.lock"
TMP_MARK = ".tmp-"  # every temporary file or dir name contains it; remove_unlisted sweeps them
RAY_STAGING_DIR = f"{TMP_MARK}ray-staging"  # the Ray engine's staged batches (temporary by name)

# What an index consists of: `wipe_index` (--overwrite) removes these and nothing else.
FORMAT_FILES = (MANIFEST_FILE, SHARDS_DIR, STORE_DIR, TRAINED_FILE, ERRORS_FILE, STATS_FILE,
                QUERY_BANK_FILE, QUERY_BANK_INFO_FILE)

SHARD_NAME = re.compile(r"^\d{5,}$")  # zero-padded shard folder names


def manifest_path(index_dir: PathLike) -> Path:
    return Path(index_dir) / MANIFEST_FILE


def trained_template_path(index_dir: PathLike) -> Path:
    return Path(index_dir) / TRAINED_FILE


def shards_path(index_dir: PathLike) -> Path:
    """The folder holding every shard folder."""
    return Path(index_dir) / SHARDS_DIR


def shard_name(number: int) -> str:
    """Zero-padded shard directory name: 3 -> "00003"."""
    if not isinstance(number, int) or number < 0:
        raise ValueError(f"shard number must be an int >= 0, got {number!r}")
    return f"{number:05d}"


def shard_dir(index_dir: PathLike, shard) -> Path:
    """The folder of a shard, given its ShardInfo or its name."""
    return shards_path(index_dir) / (shard if isinstance(shard, str) else shard.name)


def store_path(index_dir: PathLike) -> Path:
    return Path(index_dir) / STORE_DIR


def errors_path(index_dir: PathLike) -> Path:
    return Path(index_dir) / ERRORS_FILE


def stats_path(index_dir: PathLike) -> Path:
    return Path(index_dir) / STATS_FILE


def query_bank_paths(index_dir: PathLike) -> Tuple[Path, Path]:
    """(the bank's vectors, its description)."""
    return Path(index_dir) / QUERY_BANK_FILE, Path(index_dir) / QUERY_BANK_INFO_FILE


def lock_path(index_dir: PathLike) -> Path:
    return Path(index_dir) / LOCK_FILE


def staging_path(index_dir: PathLike) -> Path:
    """Where the Ray engine stages encoded batches before they become shards."""
    return Path(index_dir) / RAY_STAGING_DIR


def is_index(index_dir: PathLike) -> bool:
    """Whether `index_dir` holds a committed index (a manifest)."""
    return manifest_path(index_dir).is_file()


def require_index(index_dir: PathLike, hint: str = "build it with `mmsearch index build`") -> Path:
    """`index_dir` as a Path, or InputError saying it is not an index (and `hint`)."""
    if not is_index(index_dir):
        raise InputError(f"{index_dir} is not an mmsearch index (no {MANIFEST_FILE}); {hint}")
    return Path(index_dir)
