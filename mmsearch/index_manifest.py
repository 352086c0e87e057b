"""The index manifest (`INDEX/manifest.json`) and the durable-write helpers.

The manifest is the single source of truth of an index (DESIGN §5): the model the
vectors came from, the candidate instructions, the FAISS spec and each committed
shard with its id range and file checksums. A shard directory that is not listed
here does not exist for readers. Use it through `mmsearch.index_format`, which
re-exports every public name of this module.

Row ids are global int64 positions; a shard owns the half-open range
``[id_start, id_end)`` and ``rows == id_end - id_start``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional, Tuple, Union

from mmsearch.errors import IndexFormatError, IndexMismatchError

# Indexes written before embedding families (manifests without "family") embedded Qwen
# backbones with transformers' M-RoPE positions: the rule now called the "mmsearch" family.
LEGACY_FAMILY = {"qwen2_vl": "mmsearch", "qwen2_5_vl": "mmsearch"}

FORMAT_VERSION = 1

# The layout of INDEX/ (DESIGN §5).
MANIFEST_FILE = "manifest.json"
TRAINED_FILE = "trained.faiss"
SHARDS_DIR = "shards"
INDEX_FILE = "index.faiss"
META_FILE = "meta.arrow"
VECTORS_FILE = "vectors.npy"
STORE_DIR = "store.lmdb"
ERRORS_FILE = "errors.jsonl"
STATS_FILE = "stats.json"
QUERY_BANK_FILE = "query_bank.npy"        # optional: embeddings of typical queries (hubness)
QUERY_BANK_INFO_FILE = "query_bank.json"  # how that bank was made
TMP_MARK = ".tmp-"  # every temporary file or dir name contains it; remove_unlisted sweeps them
METRICS = ("inner_product", "l2")
DEFAULT_INSTRUCTION_KEY = "default"

PathLike = Union[str, os.PathLike]


# --- durable writes: one implementation each, reused by everything -----------------------

def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so big shards do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: PathLike) -> None:
    """Flush a file that some other writer (faiss, arrow) closed to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: PathLike) -> None:
    """Make renames and creations inside a directory durable (no-op where unsupported)."""
    flag = getattr(os, "O_DIRECTORY", None)
    if flag is None:  # Windows cannot open a directory for fsync
        return
    fd = os.open(path, os.O_RDONLY | flag)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(name: str) -> str:
    """A unique temporary sibling name: ``<name>.tmp-<pid>-<random>``."""
    return f"{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a torn one."""
    path = Path(path)
    tmp = path.with_name(tmp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """`atomic_write_bytes` of strict JSON (no NaN), indented for people who open it."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def utc_now() -> str:
    """ISO-8601 UTC timestamp with second precision, e.g. ``2025-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- validation helpers -----------------------------------------------------------------

def _get(d: Mapping[str, Any], key: str, where: str, kind: Any, optional: bool = False) -> Any:
    """d[key] checked against `kind` (a type or tuple); bool is never accepted as int."""
    if not isinstance(d, Mapping):
        raise IndexFormatError(f"manifest: {where} must be an object, got {type(d).__name__}")
    if key not in d or d[key] is None:
        if optional:
            return None
        raise IndexFormatError(f"manifest: missing {where}.{key}")
    value = d[key]
    if isinstance(value, bool) and kind is not bool:
        raise IndexFormatError(f"manifest: {where}.{key} must be {kind}, got {value!r}")
    if not isinstance(value, kind):
        raise IndexFormatError(f"manifest: {where}.{key} must be {getattr(kind, '__name__', kind)}, "
                               f"got {value!r}")
    return value


def _frozen(mapping: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


# --- the records ------------------------------------------------------------------------

@dataclass(frozen=True)
class FileInfo:
    """Size and sha256 of one file of the index."""

    bytes: int
    sha256: str

    def __post_init__(self) -> None:
        if not isinstance(self.bytes, int) or self.bytes < 0:
            raise IndexFormatError(f"file size must be an int >= 0, got {self.bytes!r}")
        if not (isinstance(self.sha256, str) and len(self.sha256) == 64):
            raise IndexFormatError(f"sha256 must be 64 hex characters, got {self.sha256!r}")

    @classmethod
    def of(cls, path: PathLike) -> "FileInfo":
        return cls(bytes=os.path.getsize(path), sha256=sha256_file(path))

    def to_dict(self) -> dict:
        return {"bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "file") -> "FileInfo":
        return cls(bytes=_get(d, "bytes", where, int), sha256=_get(d, "sha256", where, str))


@dataclass(frozen=True)
class ModelInfo:
    """The encoder the vectors were made with; `check_model` compares two of these."""

    id: str
    backbone: str
    dim: int
    dtype: str
    revision: Optional[str] = None
    weight_hash: Optional[str] = None
    pooling: str = "last_token"
    normalized: bool = True
    family: Optional[str] = None    # the embedding recipe (None: an index from before families)
    rule: Optional[str] = None      # the recipe's rule version

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim <= 0:
            raise IndexFormatError(f"model dim must be a positive int, got {self.dim!r}")
        for name in ("id", "backbone", "dtype", "pooling"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise IndexFormatError(f"model {name} must be a non-empty string, "
                                       f"got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelInfo":
        w = "model"
        return cls(id=_get(d, "id", w, str), backbone=_get(d, "backbone", w, str),
                   dim=_get(d, "dim", w, int), dtype=_get(d, "dtype", w, str),
                   revision=_get(d, "revision", w, str, optional=True),
                   weight_hash=_get(d, "weight_hash", w, str, optional=True),
                   pooling=_get(d, "pooling", w, str), normalized=_get(d, "normalized", w, bool),
                   family=_get(d, "family", w, str, optional=True), rule=_get(d, "rule", w, str, optional=True))

    @property
    def effective_family(self) -> Optional[str]:
        """The family the vectors were made by. Indexes from before families record none:
        their Qwen2-VL/Qwen2.5-VL vectors used transformers' M-RoPE positions, i.e. the
        ``mmsearch`` family; other backbones' rules did not change."""
        if self.family is not None:
            return self.family
        return LEGACY_FAMILY.get(self.backbone)

    def legacy_rule_note(self) -> Optional[str]:
        """What to tell a user whose index was built under the old Qwen2-VL rule, or None."""
        if self.family is not None or self.backbone not in LEGACY_FAMILY:
            return None
        return (f"this index was built before embedding families: its {self.backbone} vectors used M-RoPE "
                f"positions, which VLM2Vec's reference does not (it uses 1D positions). Searches keep the old "
                f"rule (family 'mmsearch') so results stay consistent. To get the reference embeddings, rebuild: "
                f"mmsearch index build SOURCES --out INDEX --model {self.id} --fresh")

    def encoder_options(self) -> dict:
        """What `load_encoder` needs besides the id to make the same vectors again."""
        family = self.effective_family
        return {} if family is None else {"family": family, "dim": self.dim}


def model_info_of(encoder, dtype: Optional[str] = None, pooling: str = "last_token",
                  normalized: bool = True) -> ModelInfo:
    """The ModelInfo of a loaded encoder, as the indexer records it and readers compare it."""
    dtype = dtype or str(getattr(encoder, "dtype", "float32")).replace("torch.", "")
    recipe = getattr(encoder, "recipe", None)
    return ModelInfo(id=str(encoder.name), backbone=str(encoder.backbone), dim=int(encoder.dim), dtype=dtype,
                     weight_hash=getattr(encoder, "fingerprint", None), pooling=pooling, normalized=normalized,
                     family=getattr(encoder, "family", None), rule=None if recipe is None else recipe.rule)


@dataclass(frozen=True)
class FaissSpec:
    """How shards are built: the index_factory string, the trained empty template
    (``INDEX/trained.faiss``, only when the spec needs training) and default search
    parameters (e.g. ``{"nprobe": 32, "k_factor": 8}``) tuned at build time."""

    factory: str
    trained_path: Optional[str] = None
    trained_file: Optional[FileInfo] = None
    search_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory:
            raise IndexFormatError(f"faiss factory must be a non-empty string, got {self.factory!r}")
        if (self.trained_path is None) != (self.trained_file is None):
            raise IndexFormatError("faiss trained template needs both a path and its checksum")
        object.__setattr__(self, "search_params", _frozen(self.search_params))

    def to_dict(self) -> dict:
        trained = None
        if self.trained_path is not None:
            trained = {"path": self.trained_path, **self.trained_file.to_dict()}
        return {"factory": self.factory, "trained": trained,
                "search_params": dict(self.search_params)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FaissSpec":
        trained = _get(d, "trained", "faiss", Mapping, optional=True)
        where = "faiss.trained"
        return cls(factory=_get(d, "factory", "faiss", str),
                   trained_path=None if trained is None else _get(trained, "path", where, str),
                   trained_file=None if trained is None else FileInfo.from_dict(trained, where),
                   search_params=_get(d, "search_params", "faiss", Mapping, optional=True) or {})


@dataclass(frozen=True)
class ShardInfo:
    """One committed shard: ``shards/<name>/`` holding global rows ``[id_start, id_end)``."""

    name: str
    rows: int
    id_start: int
    id_end: int
    files: Mapping[str, FileInfo]

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name.isdigit() and len(self.name) >= 5):
            raise IndexFormatError(f"shard name must be a zero-padded number like '00000', "
                                   f"got {self.name!r}")
        if not (0 <= self.id_start < self.id_end and self.rows == self.id_end - self.id_start):
            raise IndexFormatError(f"shard {self.name}: rows={self.rows} does not match its id "
                                   f"range [{self.id_start}, {self.id_end})")
        object.__setattr__(self, "files", _frozen(self.files))

    @property
    def has_vectors(self) -> bool:
        return VECTORS_FILE in self.files

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())

    def to_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "id_start": self.id_start,
                "id_end": self.id_end, "files": {k: v.to_dict() for k, v in self.files.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ShardInfo":
        name = _get(d, "name", "shards[]", str)
        where = f"shards[{name}]"
        files = _get(d, "files", where, Mapping)
        return cls(name=name, rows=_get(d, "rows", where, int),
                   id_start=_get(d, "id_start", where, int), id_end=_get(d, "id_end", where, int),
                   files={k: FileInfo.from_dict(v, f"{where}.files.{k}") for k, v in files.items()})


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to trust an index. Build one with `Manifest.create`,
    add shards with `with_shard`, persist with `write_manifest`.

    `instructions` maps a candidate modality ("image", "text", "image,text", "page", ...)
    to the instruction its candidates were encoded with; the key "default" covers the rest.
    """

    model: ModelInfo
    faiss: FaissSpec
    created: str
    updated: str
    instructions: Mapping[str, str] = field(default_factory=dict)
    metric: str = "inner_product"
    shards: Tuple[ShardInfo, ...] = ()
    next_row: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise IndexFormatError(f"format_version {self.format_version!r} is not supported; this "
                                   f"mmsearch reads format_version {FORMAT_VERSION} (upgrade mmsearch "
                                   f"to open newer indexes)")
        if self.metric not in METRICS:
            raise IndexFormatError(f"metric {self.metric!r} is not one of {METRICS}")
        bad = {k: v for k, v in dict(self.instructions).items()
               if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise IndexFormatError(f"instructions must map strings to strings, got {bad!r}")
        object.__setattr__(self, "instructions", _frozen(self.instructions))
        object.__setattr__(self, "extra", _frozen(self.extra))
        object.__setattr__(self, "shards", tuple(sorted(self.shards, key=lambda s: s.id_start)))
        self._check_shards()

    def _check_shards(self) -> None:
        names = [s.name for s in self.shards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise IndexFormatError(f"shard names listed twice: {dupes}")
        for prev, cur in zip(self.shards, self.shards[1:]):
            if cur.id_start < prev.id_end:
                raise IndexFormatError(f"shards {prev.name} [{prev.id_start}, {prev.id_end}) and "
                                       f"{cur.name} [{cur.id_start}, {cur.id_end}) overlap")
        end = self.shards[-1].id_end if self.shards else 0
        if not isinstance(self.next_row, int) or self.next_row < end:
            raise IndexFormatError(f"next_row {self.next_row!r} is below the last shard's id_end {end}")

    @classmethod
    def create(cls, model: ModelInfo, faiss: FaissSpec, instructions: Union[str, Mapping[str, str]] = "",
               metric: str = "inner_product", extra: Optional[Mapping[str, Any]] = None) -> "Manifest":
        """A new manifest with no shards; a plain string instruction becomes the default."""
        now = utc_now()
        return cls(model=model, faiss=faiss, created=now, updated=now, metric=metric,
                   instructions=_instruction_map(instructions), extra=extra or {})

    def with_shard(self, shard: ShardInfo) -> "Manifest":
        """A copy with `shard` listed (commit it with `write_manifest`)."""
        return dataclasses.replace(self, shards=self.shards + (shard,), updated=utc_now(),
                                   next_row=max(self.next_row, shard.id_end))

    def instruction_for(self, modality: str) -> str:
        """Candidate instruction used for items of this modality ("" when none)."""
        return self.instructions.get(modality, self.instructions.get(DEFAULT_INSTRUCTION_KEY, ""))

    def shard(self, name: str) -> ShardInfo:
        for s in self.shards:
            if s.name == name:
                return s
        raise IndexFormatError(f"no shard {name!r} in the manifest; "
                               f"shards: {[s.name for s in self.shards]}")

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def total_bytes(self) -> int:
        trained = self.faiss.trained_file.bytes if self.faiss.trained_file else 0
        return trained + sum(s.bytes for s in self.shards)

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "created": self.created,
            "updated": self.updated,
            "model": self.model.to_dict(),
            "candidate_instruction": dict(self.instructions),
            "metric": self.metric,
            "faiss": self.faiss.to_dict(),
            "shards": [s.to_dict() for s in self.shards],
            "next_row": self.next_row,
            # derived, written for people and other tools; checked on read
            "totals": {"rows": self.total_rows, "shards": len(self.shards), "bytes": self.total_bytes},
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Manifest":
        version = _get(d, "format_version", "manifest", int)
        if version != FORMAT_VERSION:  # say so before tripping over fields we do not know
            raise IndexFormatError(f"format_version {version} is not supported; this mmsearch reads "
                                   f"format_version {FORMAT_VERSION} (upgrade mmsearch to open it)")
        shards = _get(d, "shards", "manifest", list)
        manifest = cls(
            format_version=version,
            created=_get(d, "created", "manifest", str), updated=_get(d, "updated", "manifest", str),
            model=ModelInfo.from_dict(_get(d, "model", "manifest", Mapping)),
            instructions=_instruction_map(_get(d, "candidate_instruction", "manifest", (str, Mapping))),
            metric=_get(d, "metric", "manifest", str),
            faiss=FaissSpec.from_dict(_get(d, "faiss", "manifest", Mapping)),
            shards=tuple(ShardInfo.from_dict(s) for s in shards),
            next_row=_get(d, "next_row", "manifest", int),
            extra=_get(d, "extra", "manifest", Mapping, optional=True) or {})
        rows = manifest.total_rows
        totals = d.get("totals")
        if isinstance(totals, Mapping) and totals.get("rows", rows) != rows:
            raise IndexFormatError(f"totals.rows {totals['rows']!r} != sum of shard rows "
                                   f"{manifest.total_rows} (manifest edited by hand?)")
        return manifest


def _instruction_map(value: Union[str, Mapping[str, str]]) -> Mapping[str, str]:
    if isinstance(value, str):
        return {DEFAULT_INSTRUCTION_KEY: value} if value else {}
    return dict(value)


def write_manifest(index_dir: PathLike, manifest: Manifest) -> Path:
    """Commit `manifest` as ``INDEX/manifest.json`` atomically; returns its path."""
    if not isinstance(manifest, Manifest):
        raise TypeError(f"write_manifest needs a Manifest, got {type(manifest).__name__}")
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    path = index_dir / MANIFEST_FILE
    atomic_write_json(path, manifest.to_dict())
    return path


def read_manifest(index_dir: PathLike) -> Manifest:
    """The committed manifest of an index; IndexFormatError naming the path otherwise."""
    path = Path(index_dir) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexFormatError(
            f"not an mmsearch index (no {MANIFEST_FILE}): {Path(index_dir)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"cannot read {path}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, Mapping):
        raise IndexFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    try:
        return Manifest.from_dict(data)
    except IndexFormatError as e:
        raise IndexFormatError(f"{path}: {e}") from e


def check_model(built: ModelInfo, used: ModelInfo) -> None:
    """Raise IndexMismatchError unless `used` makes vectors comparable to `built`'s.

    Weight hashes decide when both are known (the same weights may load from another
    path); otherwise the model id and, when both are recorded, the revision. dtype may
    differ (bf16 on GPU, fp32 on CPU give the same embeddings up to rounding).
    """
    fields = ["backbone", "dim", "pooling", "normalized"]
    diffs = []
    if used.family is not None and built.effective_family not in (None, used.family):
        hint = " (load it with family=%r, or rebuild the index)" % built.effective_family
        diffs.append(f"family: index has {built.effective_family!r}, encoder has {used.family!r}{hint}")
    if built.weight_hash and used.weight_hash:
        fields.append("weight_hash")
    else:
        fields.append("id")
        if built.revision and used.revision:
            fields.append("revision")
    diffs += [f"{f}: index has {getattr(built, f)!r}, encoder has {getattr(used, f)!r}"
              for f in fields if getattr(built, f) != getattr(used, f)]
    if diffs:
        raise IndexMismatchError(f"the index was built with model {built.id!r} and cannot be searched "
                                 f"with {used.id!r}: " + "; ".join(diffs))
