"""Options of a synthetic collection: one frozen dataclass, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ..errors import InputError
from .docs import DocOptions
from .edits import EDIT_KINDS, QUESTION_KINDS, check_kinds
from .scenes import Pair, SceneOptions
from .specs import TASKS

SPLITS = ("train", "val", "test")
FORMATS = ("mbeir", "mmeb", "train")
TABLE_FORMATS = ("parquet", "jsonl")
# What each layout holds by default: M-BEIR ships train/val/test; MMEB-eval a test
# split per dataset; MMEB-train the training pairs.
DEFAULT_SPLITS = {"mbeir": SPLITS, "mmeb": ("test",), "train": ("train",)}


@dataclass(frozen=True)
class Holdout:
    """Colour x shape pairs kept out of some splits ("unseen attribute combinations").

    Give ``pairs`` explicitly, or a ``fraction`` of all pairs chosen with ``seed`` --
    a seed of its own, so collections generated with different data seeds hold out
    the same pairs. Splits in ``splits`` (default: test) draw every scene with at
    least one held-out pair, cycling through all of them; the other splits never
    show a held-out pair, not even in a hard negative.
    """

    pairs: Tuple[Pair, ...] = ()
    fraction: float = 0.0
    seed: int = 0
    splits: Tuple[str, ...] = ("test",)

    def __post_init__(self) -> None:
        pairs = tuple(tuple(p) for p in self.pairs)
        if any(len(p) != 2 or not all(isinstance(x, str) for x in p) for p in pairs):
            raise InputError(f"holdout pairs must be (colour, shape) pairs, got {self.pairs!r}")
        object.__setattr__(self, "pairs", pairs)
        if bool(pairs) == bool(self.fraction):
            raise InputError("give holdout pairs or a holdout fraction (0 < fraction < 1), not both or neither")
        if self.fraction and not 0 < self.fraction < 1:
            raise InputError(f"holdout fraction must be in (0, 1), got {self.fraction!r}")
        object.__setattr__(self, "splits", tuple(self.splits))
        for s in self.splits:
            if s not in SPLITS:
                raise InputError(f"unknown holdout split {s!r}; valid: {', '.join(SPLITS)}")

    def resolve(self, scene: SceneOptions) -> Tuple[Pair, ...]:
        """The held-out pairs, in a fixed order. Every colour and every shape keeps
        at least one pair in the other splits."""
        valid = scene.pairs()
        if self.pairs:
            for p in self.pairs:
                if p not in valid:
                    raise InputError(f"holdout pair {p[0]} {p[1]} is not drawn: colours {', '.join(scene.colours)}; "
                                     f"shapes {', '.join(scene.shapes)}")
            return tuple(dict.fromkeys(self.pairs))
        want = max(1, round(self.fraction * len(valid)))
        seen_colour = {c: len(scene.shapes) for c in scene.colours}
        seen_shape = {s: len(scene.colours) for s in scene.shapes}
        held = []
        for i in np.random.default_rng([self.seed, 7919]).permutation(len(valid)):
            colour, shape = valid[i]
            if len(held) < want and seen_colour[colour] > 1 and seen_shape[shape] > 1:
                held.append((colour, shape))
                seen_colour[colour] -= 1
                seen_shape[shape] -= 1
        return tuple(held)


def _positive(name: str, value, low: int = 1, high: Optional[int] = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InputError(f"{name} must be an integer {span}, got {value!r}")


@dataclass(frozen=True)
class SyntheticOptions:
    """Everything that decides a synthetic collection; the same options and seed give
    byte-identical files."""

    format: str = "mbeir"
    size: int = 100                       # queries per task per split
    split_sizes: Mapping[str, int] = field(default_factory=dict)  # per-split overrides
    seed: int = 0
    image_size: int = 112
    tasks: Tuple[str, ...] = TASKS
    splits: Optional[Tuple[str, ...]] = None  # None: DEFAULT_SPLITS[format]
    holdout: Union[None, Holdout, float, str] = None  # a fraction or "red:circle,..." becomes a Holdout
    scene: SceneOptions = field(default_factory=SceneOptions)
    doc: DocOptions = field(default_factory=DocOptions)
    edit_kinds: Tuple[str, ...] = EDIT_KINDS
    question_kinds: Tuple[str, ...] = QUESTION_KINDS
    num_candidates: int = 1000            # MMEB: candidates per query, positive first
    table: str = "parquet"                # MMEB / MMEB-train tables: parquet or jsonl
    doc_titles: bool = False              # MMEB-train: also question -> page title text rows
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"unknown format {self.format!r}; valid: {', '.join(FORMATS)}")
        if self.table not in TABLE_FORMATS:
            raise InputError(f"unknown table format {self.table!r}; valid: {', '.join(TABLE_FORMATS)}")
        _positive("size", self.size, 1)
        _positive("seed", self.seed, 0)
        _positive("image_size", self.image_size, 32, 2048)
        _positive("num_candidates", self.num_candidates, 2)
        for name, kind in (("scene", SceneOptions), ("doc", DocOptions)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, kind(**value))
            elif not isinstance(value, kind):
                raise InputError(f"{name} must be a {kind.__name__} or a dict of its fields, got {value!r}")
        object.__setattr__(self, "holdout", holdout_from(self.holdout))
        object.__setattr__(self, "tasks", check_kinds(self.tasks, TASKS, "task"))
        if self.doc_titles and (self.format != "train" or "doc" not in self.tasks):
            raise InputError("doc_titles (--doc-titles: question -> page title rows) needs format 'train' and the "
                             f"doc task, got format {self.format!r} and tasks {', '.join(self.tasks)}")
        object.__setattr__(self, "edit_kinds", check_kinds(self.edit_kinds, EDIT_KINDS, "edit kind"))
        object.__setattr__(self, "question_kinds", check_kinds(self.question_kinds, QUESTION_KINDS, "question kind"))
        if self.splits is not None:
            object.__setattr__(self, "splits", check_kinds(self.splits, SPLITS, "split"))
        sizes = dict(self.split_sizes)
        for split, n in sizes.items():
            if split not in SPLITS:
                raise InputError(f"unknown split {split!r} in split_sizes; valid: {', '.join(SPLITS)}")
            _positive(f"split_sizes[{split!r}]", n, 1)
        object.__setattr__(self, "split_sizes", dict(sorted(sizes.items())))

    def active_splits(self) -> Tuple[str, ...]:
        chosen = self.splits if self.splits is not None else DEFAULT_SPLITS[self.format]
        return tuple(s for s in SPLITS if s in chosen)

    def sizes(self) -> Dict[str, int]:
        return {s: self.split_sizes.get(s, self.size) for s in self.active_splits()}

    @property
    def page_size(self) -> int:
        return self.doc.page_size or self.image_size


def holdout_from(value: Union[None, float, str, Holdout], seed: int = 0,
                 splits: Tuple[str, ...] = ("test",)) -> Optional[Holdout]:
    """A Holdout from a fraction (0.2, "0.2", "20%") or pairs ("red:circle,blue:square")."""
    if value is None or isinstance(value, Holdout):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Holdout(fraction=float(value), seed=seed, splits=splits)
    text = str(value).strip()
    try:
        fraction = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        pass
    else:
        return Holdout(fraction=fraction, seed=seed, splits=splits)
    pairs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.replace(":", " ").split()
        if len(parts) != 2:
            raise InputError(f"holdout item {item!r}: expected colour:shape (e.g. red:circle) or a fraction (0.2)")
        pairs.append((parts[0], parts[1]))
    return Holdout(pairs=tuple(pairs), seed=seed, splits=splits)
