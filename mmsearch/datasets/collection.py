"""Generate a synthetic collection: examples with known ground truth, in no layout yet.

Every (task, split) draws from its own random stream, seeded by (seed, task, split).
Scenes are unique across the whole collection (no two share a caption), and page
keywords are unique, so each query has exactly one correct candidate in any pool
(local or global). The writers (`mbeir`, `mmeb`) only lay these examples out.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import InputError
from .docs import Page, page_question, pseudo_word, sample_page, visible_text
from .edits import ATTRIBUTE_EDITS, answer_vocabulary, apply_edit, sample_edit, sample_question, wrong_answer
from .options import SPLITS, SyntheticOptions
from .scenes import Pair, Scene, sample_scene
from .specs import IMAGE_CANDIDATE, TASK_SPECS, TASKS, TaskSpec

MAX_DRAWS = 5000  # attempts per item before the attribute space counts as exhausted


@dataclass(frozen=True)
class Picture:
    """An image to render: a scene or a page. ``name`` is its file stem, e.g. ``test/t2i_000007``."""

    name: str                                               # unique in a collection: equality and hash
    scene: Optional[Scene] = field(default=None, compare=False)
    page: Optional[Page] = field(default=None, compare=False)


@dataclass(frozen=True)
class Entry:
    """One side of a pair: a query or a candidate."""

    text: Optional[str] = None
    picture: Optional[Picture] = None

    @property
    def modality(self) -> str:
        parts = (["image"] if self.picture is not None else []) + (["text"] if self.text else [])
        return ",".join(parts)


@dataclass(frozen=True, eq=False)
class Example:
    query: Entry
    positive: Entry
    negatives: Tuple[Entry, ...] = ()          # hard negatives that are in the pool (composed: the source)
    hard_negative: Optional[Entry] = None      # for training: in the pool or not (one attribute off, ...)
    facts: Mapping[str, Any] = field(default_factory=dict)  # the ground truth, JSON-ready


@dataclass(frozen=True, eq=False)
class TaskData:
    spec: TaskSpec
    split: str
    examples: List[Example]
    pool: List[Entry]          # the split's candidates, unique, in a fixed order


@dataclass(frozen=True, eq=False)
class Collection:
    options: SyntheticOptions
    held_out: Tuple[Pair, ...]
    parts: Dict[Tuple[str, str], TaskData]   # (task, split) -> data, in split then task order

    def of_task(self, task: str) -> List[TaskData]:
        return [d for (t, s), d in self.parts.items() if t == task]


def generate(options: SyntheticOptions) -> Collection:
    gen = _Generator(options)
    parts = {}
    for split, n in options.sizes().items():
        for task in TASKS:
            if task in options.tasks:
                rng = np.random.default_rng([options.seed, TASKS.index(task), SPLITS.index(split)])
                examples, pool = getattr(gen, f"_{task}")(rng, split, n)
                parts[(task, split)] = TaskData(_spec(task, options), split, examples, pool)
    return Collection(options, gen.held, parts)


def _spec(task: str, options: SyntheticOptions) -> TaskSpec:
    if task == "doc" and options.doc.candidate == "image":
        return dataclasses.replace(TASK_SPECS[task], candidate_instruction=IMAGE_CANDIDATE)
    return TASK_SPECS[task]


class _Generator:
    def __init__(self, options: SyntheticOptions):
        self.o = options
        self.so = options.scene
        self.held: Tuple[Pair, ...] = options.holdout.resolve(self.so) if options.holdout else ()
        self._held = set(self.held)
        self.scenes: set = set()
        self.words: set = set()

    # ---- held-out pairs
    def _held_out(self, split: str) -> bool:
        return bool(self.held) and split in self.o.holdout.splits

    def _allowed(self, split: str) -> Callable[[Pair], bool]:
        if not self.held or self._held_out(split):
            return lambda pair: True
        return lambda pair: pair not in self._held

    def _fits(self, scene: Scene, split: str) -> bool:
        if not self.held:
            return True
        hits = sum(p in self._held for p in scene.pairs())
        return hits > 0 if self._held_out(split) else hits == 0

    def _draw(self, what: str, split: str, n: int, attempt: Callable[[], Optional[tuple]]) -> tuple:
        for _ in range(MAX_DRAWS):
            found = attempt()
            if found is not None:
                return found
        raise InputError(
            f"could not draw {n} distinct {what} for the {split} split after {MAX_DRAWS} attempts: the attribute "
            f"space is too small; lower the size, or allow more shapes, colours or groups")

    def _new_scene(self, rng, split: str, i: int, n: int) -> Scene:
        allowed = self._allowed(split)
        require = self.held[i % len(self.held)] if self._held_out(split) else None

        def attempt():
            scene = sample_scene(rng, self.so, allowed, require)
            if scene is None or not self._fits(scene, split) or scene.key() in self.scenes:
                return None
            return (scene,)

        (scene,) = self._draw("scenes", split, n, attempt)
        self.scenes.add(scene.key())
        return scene

    def _variant(self, rng, scene: Scene, split: str) -> Optional[Scene]:
        """The scene with one attribute of one group changed (a hard negative)."""
        edit = sample_edit(rng, scene, self.so, ATTRIBUTE_EDITS, self._allowed(split))
        return None if edit is None else apply_edit(scene, edit)

    # ---- tasks: each returns (examples, pool)
    def _t2i(self, rng, split: str, n: int):
        return self._captions(rng, split, n, "t2i")

    def _i2t(self, rng, split: str, n: int):
        return self._captions(rng, split, n, "i2t")

    def _captions(self, rng, split: str, n: int, task: str):
        examples = []
        for i in range(n):
            scene = self._new_scene(rng, split, i, n)
            name = f"{split}/{task}_{i:06d}"
            image, caption = Entry(picture=Picture(name, scene=scene)), Entry(text=scene.caption())
            variant = self._variant(rng, scene, split)
            facts = {"scene": scene.facts(), "caption": caption.text,
                     "hard_negative": variant.facts() if variant else None}
            if task == "t2i":
                neg = Entry(picture=Picture(name + "_neg", scene=variant)) if variant else None
                examples.append(Example(caption, image, (), neg, facts))
            else:
                neg = Entry(text=variant.caption()) if variant else None
                examples.append(Example(image, caption, (), neg, facts))
        return examples, [e.positive for e in examples]

    def _composed(self, rng, split: str, n: int):
        allowed, examples, pool = self._allowed(split), [], []
        for i in range(n):
            require = self.held[i % len(self.held)] if self._held_out(split) else None

            def attempt():
                source = sample_scene(rng, self.so, allowed, require)
                if source is None or not self._fits(source, split) or source.key() in self.scenes:
                    return None
                edit = sample_edit(rng, source, self.so, self.o.edit_kinds, allowed)
                target = apply_edit(source, edit) if edit is not None else None
                if target is None or not self._fits(target, split) or target.key() in self.scenes:
                    return None
                return source, edit, target

            source, edit, target = self._draw("edit pairs", split, n, attempt)
            self.scenes.update((source.key(), target.key()))
            src = Entry(picture=Picture(f"{split}/composed_{i:06d}_source", scene=source))
            tgt = Entry(picture=Picture(f"{split}/composed_{i:06d}_target", scene=target))
            facts = {"source": source.facts(), "edit": edit.facts(), "target": target.facts(),
                     "source_caption": source.caption(), "target_caption": target.caption()}
            examples.append(Example(Entry(edit.text, src.picture), tgt, (src,), src, facts))
            pool += [src, tgt]
        return examples, pool

    def _vqa(self, rng, split: str, n: int):
        examples = []
        for i in range(n):
            scene = self._new_scene(rng, split, i, n)
            q = sample_question(rng, scene, self.so, self.o.question_kinds)
            wrong = wrong_answer(rng, q, self.so)
            picture = Picture(f"{split}/vqa_{i:06d}", scene=scene)
            facts = {"scene": scene.facts(), "caption": scene.caption(), **q.facts()}
            examples.append(Example(Entry(q.text, picture), Entry(text=q.answer), (),
                                    Entry(text=wrong) if wrong else None, facts))
        return examples, [Entry(text=a) for a in answer_vocabulary(self.so)]

    def _doc(self, rng, split: str, n: int):
        pages, examples = [], []
        for i in range(n):
            def attempt():
                word = pseudo_word(rng)
                return None if word in self.words else (word,)

            (word,) = self._draw("page keywords", split, n, attempt)
            self.words.add(word)
            pages.append(Picture(f"{split}/doc_{i:06d}", page=sample_page(rng, word, self.o.doc)))
        for i, picture in enumerate(pages):
            kind, question, answer = page_question(rng, picture.page)
            other = int(rng.integers(n - 1)) if n > 1 else None
            neg = Entry(picture=pages[other + (other >= i)]) if other is not None else None
            facts = {"keyword": picture.page.keyword, "question_kind": kind, "answer": answer,
                     "page_text": visible_text(picture.page, self.o.page_size, self.o.doc)}
            examples.append(Example(Entry(text=question), Entry(picture=picture), (), neg, facts))
        return examples, [e.positive for e in examples]
