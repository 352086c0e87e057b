"""Settings of an indexing run, as one frozen dataclass built by the CLI or `build_index`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from ..errors import InputError
from ..images import DEFAULT_MAX_PIXELS
from ..index_format import RESCORE_FROM, parse_text_fields

DEFAULT_INSTRUCTIONS = {
    # VLM2Vec's candidate conventions (DESIGN.md §3): raw text, a fixed image
    # instruction, and the document-page instruction for rendered pages.
    "text": "",
    "image": "Represent the given image.",
    "image,text": "Represent the given image with related text information:",
    "page": "Understand the content of the provided document image.",
}
EXISTING_POLICIES = ("skip", "update", "reject")
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BuildSettings:
    model: Optional[str] = None
    family: Optional[str] = None         # the model's embedding recipe; None: its own or its backbone's default
    dim: Optional[int] = None            # a Matryoshka size to truncate to (families that list them)
    adapter: Optional[str] = None        # the family's task adapter (jina-v4: retrieval, text-matching, code)
    device: str = "auto"
    dtype: str = "auto"
    task: Optional[str] = None
    instruction: Optional[str] = None
    index: str = "auto"                  # "auto" or a faiss index_factory string
    memory_budget: Optional[int] = None  # bytes for the search-time index; None = 4 GiB
    shard_size: int = 100_000
    batch_size: Optional[int] = None
    workers: Optional[int] = None        # decode threads; None: from the cores (threads.plan_threads), 0: inline
    store_vectors: bool = True           # shards/NNNNN/vectors.npy (float16) for refine/compact
    thumbnails: bool = True
    max_errors: Union[int, float, None] = None  # a count (>=1) or a fraction (<1) of items read
    max_image_pixels: Optional[int] = DEFAULT_MAX_PIXELS   # decompression-bomb guard
    existing: str = "skip"               # an id already in the index: skip (resume), update, reject
    source_kind: Optional[str] = None
    source_options: Mapping[str, Any] = field(default_factory=dict)
    queue_size: int = 256                # in-flight decoded items (backpressure)
    train_size: Optional[int] = None     # vectors to train IVF on; None = picked from nlist
    show_progress: bool = False
    recall_target: float = 0.95          # recall@10 auto's index and search defaults are calibrated to (held out)
    # Compact vectors (issue #25, `compact_plan`): codes of the first stage (float32, float16, int8, binary;
    # "auto": the memory budget picks dim and precision; None: float32, or auto when index="auto" and the
    # float32 vectors exceed memory_budget), then rescoring of oversample * k candidates from vectors.npy.
    precision: Optional[str] = None
    oversample: float = 4.0
    rescore: bool = True
    rescore_from: str = "float16"        # what vectors.npy keeps to rescore with: float16, or int8 codes
    keep_full: bool = False              # with dim: encode full size, index the truncation, keep full vectors
    engine: str = "local"                # "local" (threads in this process) or "ray" (Ray Data)
    ray_address: Optional[str] = None    # None: $RAY_ADDRESS, a `ray start` cluster here, or a new local one
    partition_size: int = 10_000         # records per partition (unit of work, retry and resume on Ray)
    ray_actors: Optional[int] = None     # encoder actors; None: one per GPU, else half the CPUs
    ray_actor_cpus: float = 1.0          # CPUs reserved per encoder actor
    # Multi-vector models (colqwen2, ...): token storage, MUVERA arguments (k_sim, dim_proj, r_reps, seed)
    # and the FDE candidates a search reranks by MaxSim; None / {}: the index's own, else the defaults.
    token_precision: Optional[str] = None
    fde: Mapping[str, int] = field(default_factory=dict)
    candidates: Optional[int] = None
    # Typical queries (a file, a list, or (n, dim) embeddings) written as INDEX/query_bank.npy after
    # the run, for hubness reranking; encoded with `task`'s query instruction, else none.
    query_bank: Any = None
    # Columns indexed for lexical (BM25) search, e.g. ("text", "caption"); a PDF page's text
    # layer (page_text) joins them. (): no lexical index. A str "a,b" is accepted.
    text_fields: Any = ()

    def __post_init__(self) -> None:
        for name in ("shard_size", "queue_size", "partition_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise InputError(f"workers must be an integer >= 0 (0: decode in the encoder thread) or None "
                             f"(chosen from the cores), got {self.workers!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.existing not in EXISTING_POLICIES:
            raise InputError(f"existing={self.existing!r}; valid: {', '.join(EXISTING_POLICIES)}")
        if self.task is not None and self.instruction is not None:
            raise InputError("give either task or instruction, not both")
        if not (isinstance(self.recall_target, (int, float)) and 0 < self.recall_target <= 1):
            raise InputError(f"recall_target must be a recall in (0, 1], got {self.recall_target!r}")
        if self.max_errors is not None and (self.max_errors < 0):
            raise InputError(f"max_errors must be >= 0, got {self.max_errors!r}")
        self._check_engine()
        self._check_compact()
        object.__setattr__(self, "text_fields", parse_text_fields(self.text_fields))

    def _check_compact(self) -> None:
        valid = ("float32", "float16", "int8", "binary", "auto")
        if self.precision is not None and self.precision not in valid:
            raise InputError(f"precision={self.precision!r}; valid: {', '.join(valid)}")
        if isinstance(self.oversample, bool) or not isinstance(self.oversample, (int, float)) or self.oversample < 1:
            raise InputError(f"oversample must be a number >= 1, got {self.oversample!r}")
        if self.keep_full and self.dim is None:
            raise InputError("keep_full keeps the full vectors beside a Matryoshka truncation: give dim too")
        if self.rescore_from not in RESCORE_FROM:
            raise InputError(f"rescore_from={self.rescore_from!r}; valid: {', '.join(RESCORE_FROM)}")
        compact = self.keep_full or self.precision not in (None, "float32")
        if self.rescore_from != "float16" and not compact:
            raise InputError(f"rescore_from={self.rescore_from!r} (--rescore-from) is the rescoring copy of compact "
                             f"codes: give precision (--precision float16, int8, binary or auto) or dim with "
                             f"keep_full (--dim with --keep-full-vectors) too")
        if compact and self.rescore and not self.store_vectors:
            raise InputError(f"precision={self.precision!r} rescores from the stored vectors: drop "
                             f"store_vectors=False (--no-vectors), or pass rescore=False")

    def _check_engine(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"engine={self.engine!r}; valid: {', '.join(ENGINES)}")
        if self.engine != "ray" and self.ray_address is not None:
            raise InputError(f"ray_address={self.ray_address!r} needs engine='ray' (got {self.engine!r})")
        if self.ray_actors is not None and (not isinstance(self.ray_actors, int) or self.ray_actors < 1):
            raise InputError(f"ray_actors must be a positive integer or None, got {self.ray_actors!r}")
        if not self.ray_actor_cpus > 0:
            raise InputError(f"ray_actor_cpus must be > 0, got {self.ray_actor_cpus!r}")

    def instructions(self, encoder=None) -> dict:
        """The candidate instruction per modality, as recorded in the manifest: the call's,
        else its task's (through the encoder's own task prompts), else the family's
        document instruction, else VLM2Vec's conventions."""
        if self.instruction is not None:
            return {"default": self.instruction}
        if self.task is not None:
            if hasattr(encoder, "task_instruction"):
                return {"default": encoder.task_instruction(self.task, "candidate")}
            from ..tasks import resolve_instruction

            return {"default": resolve_instruction(task=self.task, side="candidate")}
        own = encoder.candidate_instructions() if hasattr(encoder, "candidate_instructions") else None
        return dict(own) if own is not None else dict(DEFAULT_INSTRUCTIONS)

    def job_settings(self) -> dict:
        """The settings that shape an index's rows and files, as its job record keeps them:
        a build with other values is another job. (The model, the candidate instructions
        and the faiss spec are recorded and checked by the manifest itself; run options
        such as batch_size, workers or max_image_pixels, a guard, are not part of a job.)"""
        import json

        options = json.loads(json.dumps(dict(self.source_options), sort_keys=True, default=str))
        lexical = {"text_fields": list(self.text_fields)} if self.text_fields else {}  # older jobs: no key
        return {"shard_size": self.shard_size, "store_vectors": self.store_vectors, "source_kind": self.source_kind,
                "source_options": options, **lexical}

    def requested(self) -> dict:
        """What the run asked for where None or "auto" means "the index's own" on a resume."""
        return {"model": self.model, "family": self.family, "dim": self.dim, "adapter": self.adapter,
                "task": self.task, "instruction": self.instruction, "index": self.index}

    def error_limit(self, items_read: int) -> Optional[float]:
        if self.max_errors is None:
            return None
        if isinstance(self.max_errors, float) and self.max_errors < 1:
            return self.max_errors * items_read
        return float(self.max_errors)


def parse_max_errors(text: Optional[str]) -> Union[int, float, None]:
    """'100' -> 100 rejections, '0.01' or '1%' -> 1% of the items read."""
    if text is None:
        return None
    t = str(text).strip()
    try:
        if t.endswith("%"):
            return float(t[:-1]) / 100
        return float(t) if "." in t else int(t)
    except ValueError:
        raise InputError(f"--max-errors {text!r}: expected a count like 100 or a fraction like 0.01 or 1%") from None


def parse_size(text: Union[str, int, None]) -> Optional[int]:
    """'4G', '512M', '1.5GiB', 123 -> bytes."""
    if text is None or isinstance(text, int):
        return text
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError:
        raise InputError(f"size {text!r}: expected bytes or a number with K, M, G or T") from None
