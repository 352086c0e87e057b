"""The index manifest (`INDEX/manifest.json`): records, reading and the atomic commit.

The manifest is the single source of truth of an index (DESIGN §5): the model the
vectors came from, the candidate instructions, the FAISS spec and each committed
shard with its id range and file checksums. A shard directory that is not listed
here does not exist for readers.

Row ids are global int64 positions; a shard owns the half-open range
``[id_start, id_end)`` and ``rows == id_end - id_start``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Tuple, Union

from mmsearch.errors import IndexFormatError

from .durable import atomic_write_json, sha256_file, utc_now
from .fields import frozen_map, get_field
from .layout import MANIFEST_FILE, TOKENS_FILE, VECTORS_FILE, PathLike, manifest_path
from .model import ModelInfo
from .codes import CompactSpec
from .tokens import MultiVectorSpec

FORMAT_VERSION = 1
METRICS = ("inner_product", "l2")
DEFAULT_INSTRUCTION_KEY = "default"


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
        return cls(bytes=get_field(d, "bytes", where, int), sha256=get_field(d, "sha256", where, str))


@dataclass(frozen=True)
class FaissSpec:
    """How shards are built: the index_factory string, the trained empty template
    (``INDEX/trained.faiss``, only when the spec needs training) and default search
    parameters (e.g. ``{"nprobe": 32, "k_factor": 8}``) tuned at build time."""

    factory: str
    trained_path: Optional[str] = None
    trained_file: Optional[FileInfo] = None
    search_params: Mapping[str, Any] = field(default_factory=dict)
    # what the build measured for those defaults: recall@10 on held-out queries, the target, ...
    calibration: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory:
            raise IndexFormatError(f"faiss factory must be a non-empty string, got {self.factory!r}")
        if (self.trained_path is None) != (self.trained_file is None):
            raise IndexFormatError("faiss trained template needs both a path and its checksum")
        object.__setattr__(self, "search_params", frozen_map(self.search_params))
        object.__setattr__(self, "calibration", frozen_map(self.calibration))

    def to_dict(self) -> dict:
        trained = None
        if self.trained_path is not None:
            trained = {"path": self.trained_path, **self.trained_file.to_dict()}
        out = {"factory": self.factory, "trained": trained, "search_params": dict(self.search_params)}
        if self.calibration:
            out["calibration"] = json.loads(json.dumps(self.calibration, default=dict))
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FaissSpec":
        trained = get_field(d, "trained", "faiss", Mapping, optional=True)
        where = "faiss.trained"
        return cls(factory=get_field(d, "factory", "faiss", str),
                   trained_path=None if trained is None else get_field(trained, "path", where, str),
                   trained_file=None if trained is None else FileInfo.from_dict(trained, where),
                   search_params=get_field(d, "search_params", "faiss", Mapping, optional=True) or {},
                   calibration=get_field(d, "calibration", "faiss", Mapping, optional=True) or {})


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
        object.__setattr__(self, "files", frozen_map(self.files))

    @property
    def has_vectors(self) -> bool:
        return VECTORS_FILE in self.files

    @property
    def has_tokens(self) -> bool:
        return TOKENS_FILE in self.files

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())

    def to_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "id_start": self.id_start,
                "id_end": self.id_end, "files": {k: v.to_dict() for k, v in self.files.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ShardInfo":
        name = get_field(d, "name", "shards[]", str)
        where = f"shards[{name}]"
        files = get_field(d, "files", where, Mapping)
        return cls(name=name, rows=get_field(d, "rows", where, int),
                   id_start=get_field(d, "id_start", where, int), id_end=get_field(d, "id_end", where, int),
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
    # What made the index: sources with fingerprints and the settings that shape it
    # (see .job); {} for an index written before job records.
    job: Mapping[str, Any] = field(default_factory=dict)
    # A multi-vector (late-interaction) index: FDEs in FAISS, token vectors per shard; None otherwise.
    multi_vector: Optional[MultiVectorSpec] = None
    # Compact first-stage codes (Matryoshka truncation, float16/int8/binary) and rescoring; None: float32 as is.
    compact: Optional[CompactSpec] = None

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
        object.__setattr__(self, "instructions", frozen_map(self.instructions))
        object.__setattr__(self, "extra", frozen_map(self.extra))
        object.__setattr__(self, "job", frozen_map(self.job))
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
               metric: str = "inner_product", extra: Optional[Mapping[str, Any]] = None,
               job: Optional[Mapping[str, Any]] = None,
               multi_vector: Optional[MultiVectorSpec] = None,
               compact: Optional[CompactSpec] = None) -> "Manifest":
        """A new manifest with no shards; a plain string instruction becomes the default."""
        now = utc_now()
        return cls(model=model, faiss=faiss, created=now, updated=now, metric=metric,
                   instructions=_instruction_map(instructions), extra=extra or {}, job=job or {},
                   multi_vector=multi_vector, compact=compact)

    def encoder_options(self) -> dict:
        """What `load_encoder` needs besides the model id to embed as this index did. A
        multi-vector model's `dim` is its FDE's (`multi_vector` says how to make it), not a size
        to truncate the model to."""
        options = self.model.encoder_options()
        if self.multi_vector is not None:
            options.pop("dim", None)
        return options

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
            **({"job": dict(self.job)} if self.job else {}),
            **({"multi_vector": self.multi_vector.to_dict()} if self.multi_vector else {}),
            **({"compact": self.compact.to_dict()} if self.compact else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Manifest":
        version = get_field(d, "format_version", "manifest", int)
        if version != FORMAT_VERSION:  # say so before tripping over fields we do not know
            raise IndexFormatError(f"format_version {version} is not supported; this mmsearch reads "
                                   f"format_version {FORMAT_VERSION} (upgrade mmsearch to open it)")
        shards = get_field(d, "shards", "manifest", list)
        manifest = cls(
            format_version=version,
            created=get_field(d, "created", "manifest", str), updated=get_field(d, "updated", "manifest", str),
            model=ModelInfo.from_dict(get_field(d, "model", "manifest", Mapping)),
            instructions=_instruction_map(get_field(d, "candidate_instruction", "manifest", (str, Mapping))),
            metric=get_field(d, "metric", "manifest", str),
            faiss=FaissSpec.from_dict(get_field(d, "faiss", "manifest", Mapping)),
            shards=tuple(ShardInfo.from_dict(s) for s in shards),
            next_row=get_field(d, "next_row", "manifest", int),
            extra=get_field(d, "extra", "manifest", Mapping, optional=True) or {},
            job=get_field(d, "job", "manifest", Mapping, optional=True) or {},
            multi_vector=_multi_vector(get_field(d, "multi_vector", "manifest", Mapping, optional=True)),
            compact=_compact(get_field(d, "compact", "manifest", Mapping, optional=True)))
        rows = manifest.total_rows
        totals = d.get("totals")
        if isinstance(totals, Mapping) and totals.get("rows", rows) != rows:
            raise IndexFormatError(f"totals.rows {totals['rows']!r} != sum of shard rows "
                                   f"{manifest.total_rows} (manifest edited by hand?)")
        return manifest


def _multi_vector(d: Optional[Mapping[str, Any]]) -> Optional[MultiVectorSpec]:
    return None if d is None else MultiVectorSpec.from_dict(d)


def _compact(d: Optional[Mapping[str, Any]]) -> Optional[CompactSpec]:
    return None if d is None else CompactSpec.from_dict(d)


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
    path = manifest_path(index_dir)
    atomic_write_json(path, manifest.to_dict())
    return path


def read_manifest(index_dir: PathLike) -> Manifest:
    """The committed manifest of an index; IndexFormatError naming the path otherwise."""
    path = manifest_path(index_dir)
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
