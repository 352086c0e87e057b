"""The task library: named (query instruction, candidate instruction) pairs.

VLM2Vec embeds every input together with an instruction; queries and candidates
differ only in it (DESIGN.md §3). A task names such a pair, so users write
``task="CIRR"`` or ``task="t2i"`` instead of copying prompt strings around.

Three sources ship or load here:

- ``mmeb``: the 36 MMEB-V1 datasets, query instructions byte-exact from
  ``data/mmeb_v1_tasks.tsv`` (trailing spaces included: in MMEB the instruction
  is a prefix glued to the query text, ``"...caption: " + text``). Candidate
  instructions follow the MMEB eval data: raw text for text targets,
  ``Represent the given image.`` for image targets, and the dataset-specific
  prefixes in `_MMEB_CANDIDATE` for the rest.
- ``generic``: ``t2i``, ``i2t``, ``i2i``, ``t2t``, ``composed``, ``vqa``, ``doc``.
  They reuse the MMEB / VLM2Vec-V2 wordings, without trailing whitespace,
  since the encoder joins instruction and text with one space.
- ``mbeir``: M-BEIR's own ``instructions/query_instructions.tsv``, loaded on
  demand by `load_mbeir_instructions` (the file is not redistributed here).
"""
from __future__ import annotations

import dataclasses
import difflib
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .errors import InputError, UnknownTaskError
from .types import IMAGE, IMAGE_TEXT, ITEM_MODALITIES, MODALITIES, PAGE, TEXT

MMEB, GENERIC, MBEIR, CUSTOM = "mmeb", "generic", "mbeir", "custom"
SIDES = ("query", "candidate")

REPRESENT_IMAGE = "Represent the given image."
DOCUMENT_IMAGE = "Understand the content of the provided document image."


@dataclass(frozen=True)
class Task:
    """A named retrieval task: what to prepend to queries and to candidates."""

    name: str
    query_instruction: str
    candidate_instruction: str
    query_modality: str
    candidate_modality: str
    description: str
    meta_task: Optional[str] = None
    source: str = CUSTOM
    prompts: Tuple[str, ...] = ()  # M-BEIR: all prompt variants; query_instruction is the first
    dataset_id: Optional[str] = None  # M-BEIR dataset id (the qid/did prefix)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"task name {self.name!r}: expected a non-empty string")
        for attr in ("query_instruction", "candidate_instruction", "description", "source"):
            if not isinstance(getattr(self, attr), str):
                raise InputError(f"task {self.name!r}: {attr} must be a str, got {getattr(self, attr)!r}")
        for attr, valid in (("query_modality", MODALITIES), ("candidate_modality", ITEM_MODALITIES)):
            if getattr(self, attr) not in valid:  # candidates may be document pages too
                raise InputError(
                    f"task {self.name!r}: {attr}={getattr(self, attr)!r}; expected one of {list(valid)}"
                )
        object.__setattr__(self, "prompts", tuple(self.prompts))  # accept lists, stay hashable

    def to_dict(self) -> dict:
        """Plain JSON-ready fields (prompts as a list)."""
        return {**dataclasses.asdict(self), "prompts": list(self.prompts)}

    def instruction(self, side: str = "query") -> str:
        """The instruction for ``side`` ("query" or "candidate")."""
        return self.query_instruction if _check_side(side) == "query" else self.candidate_instruction


# ------------------------------------------------------------------ registry

_REGISTRY: Dict[str, Task] = {}
_LOCK = threading.Lock()
_BUILTINS_LOADED = False


def get_task(name: Union[str, Task]) -> Task:
    """The task called `name` (exact, else a unique case-insensitive match)."""
    if isinstance(name, Task):
        return name
    if not isinstance(name, str):
        raise InputError(f"task {name!r}: expected a task name (str), got {type(name).__name__}")
    tasks = _registry()
    if name in tasks:
        return tasks[name]
    folded = [t for key, t in tasks.items() if key.casefold() == name.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    raise UnknownTaskError(_unknown_message(name, list(tasks)))


def list_tasks(source: Optional[str] = None) -> List[Task]:
    """Registered tasks in registration order, optionally only those of `source`."""
    tasks = list(_registry().values())
    if source is None:
        return tasks
    known = {MMEB, GENERIC, MBEIR, CUSTOM} | {t.source for t in tasks}
    if source not in known:
        raise InputError(f"task source {source!r}: expected one of {sorted(known)}")
    return [t for t in tasks if t.source == source]


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add `task` to the library. Re-registering an identical task is a no-op;
    a different task under a taken name needs ``overwrite=True``."""
    if not isinstance(task, Task):
        raise InputError(f"register_task expects a mmsearch.tasks.Task, got {type(task).__name__}")
    tasks = _registry()
    with _LOCK:
        existing = tasks.get(task.name)
        if existing is not None and existing != task and not overwrite:
            raise InputError(
                f"task {task.name!r} is already registered (source {existing.source!r}) "
                "with different settings; pass overwrite=True to replace it"
            )
        tasks[task.name] = task
    return task


def resolve_instruction(
    task: Union[str, Task, None] = None, instruction: Optional[str] = None, side: str = "query"
) -> str:
    """The instruction to embed with: an explicit `instruction` wins (``""``
    included, meaning none); else the task's instruction for `side`; else ``""``."""
    _check_side(side)
    if instruction is not None:
        if not isinstance(instruction, str):
            raise InputError(f"instruction must be a str, got {type(instruction).__name__}")
        return instruction
    if task is None:
        return ""
    return get_task(task).instruction(side)


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise InputError(f"side={side!r}: expected one of {list(SIDES)}")
    return side


def _unknown_message(name: str, names: List[str]) -> str:
    by_fold = {n.casefold(): n for n in names}
    close = difflib.get_close_matches(name.strip().casefold(), list(by_fold), n=5, cutoff=0.6)
    parts = [f"unknown task {name!r}."]
    if close:
        parts.append(f"Did you mean {', '.join(repr(by_fold[c]) for c in close)}?")
    parts.append(f"`mmsearch tasks` lists all {len(names)} tasks; or give the instruction text itself instead of a task.")
    return " ".join(parts)


def _registry() -> Dict[str, Task]:
    """The registry, with the built-in tasks loaded on first use (not at import)."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        with _LOCK:
            if not _BUILTINS_LOADED:
                for task in [*_mmeb_tasks(), *_generic_tasks()]:
                    _REGISTRY.setdefault(task.name, task)
                _BUILTINS_LOADED = True
    return _REGISTRY


# ---------------------------------------------------------------- MMEB-V1

_MMEB_TSV = "mmeb_v1_tasks.tsv"
_MMEB_COLUMNS = (
    "dataset", "meta_task", "split", "query_modality", "target_modality",
    "n_candidates", "query_instruction", "source_of_instruction",
)

# Targets that are not plain text, as the MMEB eval data writes them (target text is
# "<prefix><caption>"). Grounding crops have no period in the V1 data. Wiki-SS-NQ
# follows the paper's Table 9. Every other image target: REPRESENT_IMAGE.
_MMEB_CANDIDATE = {
    "WebQA": "Represent the given Wikipedia image with related text information: ",
    "OVEN": "Represent the given Wikipedia image with related text information: ",
    "EDIS": "Represent the given image with related text information: ",
    "RefCOCO-Matching": "Select the portion of the image that follows the language expressions: ",
    "Wiki-SS-NQ": "Represent the given document screenshot.",
    "MSCOCO": "Represent the given cropped image of the object",
    "RefCOCO": "Represent the given cropped image of the object",
    "Visual7W-Pointing": "Represent the given cropped image of the object",
}


def read_mmeb_table() -> List[Dict[str, str]]:
    """Rows of the packaged MMEB-V1 table, values byte-exact (trailing spaces kept)."""
    text = resources.files("mmsearch").joinpath("data").joinpath(_MMEB_TSV).read_text(encoding="utf-8")
    lines = text.split("\n")
    header = tuple(lines[0].rstrip("\r").split("\t"))
    if header != _MMEB_COLUMNS:  # a packaging error, not user input
        raise InputError(f"{_MMEB_TSV}: header {header} != expected {_MMEB_COLUMNS}")
    rows = []
    for line in lines[1:]:
        line = line.rstrip("\r")  # only the line ending: instructions keep their spaces
        if line:
            rows.append(dict(zip(_MMEB_COLUMNS, line.split("\t"))))
    return rows


def _mmeb_tasks() -> List[Task]:
    return [_mmeb_task(row) for row in read_mmeb_table()]


def _mmeb_task(row: Dict[str, str]) -> Task:
    name, target = row["dataset"], row["target_modality"]
    default = "" if target == TEXT else REPRESENT_IMAGE
    return Task(
        name=name,
        query_instruction=row["query_instruction"],
        candidate_instruction=_MMEB_CANDIDATE.get(name, default),
        query_modality=row["query_modality"],
        candidate_modality=target,
        description=(
            f"MMEB-V1 {row['meta_task']} ({row['split']}), {row['query_modality']} -> {target}, "
            f"{row['n_candidates']} candidates per query; instruction from {row['source_of_instruction']}"
        ),
        meta_task=row["meta_task"],
        source=MMEB,
    )


# ---------------------------------------------------------------- generic


def _generic_tasks() -> List[Task]:
    """Everyday tasks. Wordings come from MMEB (MSCOCO_t2i/i2t, NIGHTS, CIRR, the VQA
    sets) and VLM2Vec-V2's ViDoRe evaluation (doc); t2t has no MMEB counterpart."""
    spec = [
        ("t2i", "Find me an everyday image that matches the given caption:", REPRESENT_IMAGE,
         TEXT, IMAGE, "retrieval", "text -> image: find photos matching a caption"),
        ("i2t", "Find an image caption describing the given everyday image.", "",
         IMAGE, TEXT, "retrieval", "image -> text: find captions or descriptions of a photo"),
        ("i2i", "Find a day-to-day image that looks similar to the provided image.", REPRESENT_IMAGE,
         IMAGE, IMAGE, "retrieval", "image -> image: find visually similar photos"),
        ("t2t", "Retrieve a passage that is relevant to the given query:", "",
         TEXT, TEXT, "retrieval", "text -> text: find passages relevant to a query"),
        ("composed", "Given an image, find a similar everyday image with the described changes:",
         REPRESENT_IMAGE, IMAGE_TEXT, IMAGE, "retrieval",
         "image + modification text -> image: composed retrieval (\"this, but red\")"),
        ("vqa", "Represent the given image with the following question:", "",
         IMAGE_TEXT, TEXT, "vqa", "image + question -> answer text"),
        ("doc", "Find a document image that matches the given query:", DOCUMENT_IMAGE,
         TEXT, PAGE, "retrieval", "text question -> document page screenshot"),
    ]
    return [
        Task(name=n, query_instruction=q, candidate_instruction=c, query_modality=qm,
             candidate_modality=cm, description=d, meta_task=meta, source=GENERIC)
        for n, q, c, qm, cm, meta, d in spec
    ]


# ----------------------------------------------------------------- M-BEIR

# M-BEIR candidates carry no instruction in UniIR; for VLM2Vec we use its usual
# candidate prompts per modality (image+text as in MMEB's EDIS targets).
_MBEIR_CANDIDATE = {
    TEXT: "",
    IMAGE: REPRESENT_IMAGE,
    IMAGE_TEXT: "Represent the given image with related text information:",
}
_MBEIR_REQUIRED = ("query_modality", "cand_modality", "dataset", "dataset_id")
# UniIR's own reader goes by position: the four columns above, then every prompt.
_MBEIR_POSITIONAL = {"query_modality": 0, "cand_modality": 1, "dataset": 2, "dataset_id": 3, "prompts": None}


def mbeir_task_name(dataset: str, query_modality: str, cand_modality: str) -> str:
    """The library name of an M-BEIR task, e.g. ``mbeir:CIRR:image,text->image``."""
    return f"mbeir:{dataset}:{query_modality}->{cand_modality}"


def load_mbeir_instructions(path: Union[str, Path], *, register: bool = False) -> Dict[str, Task]:
    """Tasks from M-BEIR's ``instructions/query_instructions.tsv``, keyed by name
    (`mbeir_task_name`). Each keeps all its prompts; ``query_instruction`` is the
    first, for deterministic evaluation (UniIR samples one at random)."""
    path = Path(path)
    rows = _read_tsv(path)
    header = _mbeir_columns(rows[0]) if rows else None
    start = 0 if header is None else 1
    columns = header or _MBEIR_POSITIONAL  # headerless: read by position, as UniIR does
    tasks: Dict[str, Task] = {}
    for lineno, cells in enumerate(rows[start:], start=start + 1):
        task = _mbeir_task(cells, columns, f"{path}:{lineno}")
        if task is None:
            continue
        if task.name in tasks and tasks[task.name] != task:
            raise InputError(f"{path}:{lineno}: second, different row for {task.name!r}")
        tasks[task.name] = task
    if not tasks:
        raise InputError(f"{path}: no instruction rows found; expected M-BEIR's query_instructions.tsv")
    if register:
        for task in tasks.values():
            register_task(task, overwrite=True)
    return tasks


def _read_tsv(path: Path) -> List[List[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM
    except FileNotFoundError:
        raise InputError(f"M-BEIR instructions file not found: {path} "
                         "(expected M-BEIR/instructions/query_instructions.tsv)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read M-BEIR instructions file {path}: {e}") from e
    return [line.split("\t") for line in text.splitlines()]


def _header_key(cell: str) -> str:
    """'Query Modality' / 'candidate-modality' / 'Dataset_id' / 'Prompt 1' -> canonical."""
    key = "_".join(cell.strip().lower().replace("-", " ").replace("_", " ").split())
    return key.replace("candidate", "cand").replace("datasetid", "dataset_id")


def _mbeir_columns(header: List[str]):
    """Column positions from a header row, or None if the row is not a header."""
    keys = [_header_key(c) for c in header]
    if not all(k in keys for k in _MBEIR_REQUIRED):
        if _modality_or_none(header[0]) is None and header[0].strip():
            raise InputError(
                f"M-BEIR instructions header {header!r}: expected columns "
                f"{list(_MBEIR_REQUIRED)} then prompt_1..prompt_4"
            )
        return None  # the first row is data
    columns = {k: keys.index(k) for k in _MBEIR_REQUIRED}
    columns["prompts"] = [i for i, k in enumerate(keys) if k.startswith("prompt")]
    return columns


def _mbeir_task(cells: List[str], columns, where: str) -> Optional[Task]:
    if not any(c.strip() for c in cells):
        return None  # blank line
    def get(i: int) -> str:
        return cells[i].strip() if i < len(cells) else ""

    qmod, cmod = (_modality(get(columns[k]), where) for k in ("query_modality", "cand_modality"))
    dataset, dataset_id = get(columns["dataset"]), get(columns["dataset_id"])
    prompt_columns = columns["prompts"] if columns["prompts"] is not None else range(4, len(cells))
    prompts = tuple(p for p in (get(i) for i in prompt_columns) if p)
    if not dataset or not prompts:
        raise InputError(f"{where}: row needs a dataset and at least one prompt, got {cells!r}")
    return Task(
        name=mbeir_task_name(dataset, qmod, cmod),
        query_instruction=prompts[0],
        candidate_instruction=_MBEIR_CANDIDATE[cmod],
        query_modality=qmod,
        candidate_modality=cmod,
        description=f"M-BEIR {dataset} (dataset id {dataset_id}), {qmod} -> {cmod}",
        meta_task="retrieval",
        source=MBEIR,
        prompts=prompts,
        dataset_id=dataset_id,
    )


def _modality_or_none(value: str) -> Optional[str]:
    """'image,text' / 'text,image' / 'Image + Text' -> 'image,text'; None if unknown."""
    parts = {p.strip().lower() for p in value.replace("+", ",").split(",") if p.strip()}
    if parts == {"image", "text"}:
        return IMAGE_TEXT
    if len(parts) == 1 and parts <= {IMAGE, TEXT}:
        return parts.pop()
    return None


def _modality(value: str, where: str) -> str:
    modality = _modality_or_none(value)
    if modality is None:
        raise InputError(f"{where}: modality {value!r}; expected one of {list(MODALITIES)}")
    return modality
