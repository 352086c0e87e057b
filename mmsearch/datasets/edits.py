"""Edits of a scene (composed retrieval) and questions about it (VQA), with ground truth.

An edit names its group by shape ("the square"), which is unambiguous because a
scene holds each shape at most once. Its text determines the target scene: "add"
names the new group's count, size, colour, shape and place. Applying an edit keeps
every other group, including its jitter, so the target's pixels differ from the
source's only in the cells the edit touches.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .scenes import (AT, COUNT_WORDS, NUMBER_WORDS, SIZES, TOWARDS, Group, Pair, Scene, SceneOptions,
                     plural, sample_group, sentence)

EDIT_KINDS = ("colour", "add", "remove", "move", "shape", "size")
# Edits that change one attribute of one group: hard negatives "one attribute off".
ATTRIBUTE_EDITS = ("colour", "move", "shape", "size")
QUESTION_KINDS = ("colour", "count", "shape", "size", "where", "exists")


def check_kinds(kinds: Sequence[str], valid: Sequence[str], what: str) -> Tuple[str, ...]:
    kinds = tuple(kinds)
    if not kinds:
        raise InputError(f"at least one {what} is needed; valid: {', '.join(valid)}")
    for k in kinds:
        if k not in valid:
            raise InputError(f"unknown {what} {k!r}; valid: {', '.join(valid)}")
    return kinds


@dataclass(frozen=True)
class Edit:
    kind: str
    shape: str                       # the group the edit refers to (for add: the new one)
    value: Optional[str] = None      # new colour / place / shape / size
    added: Optional[Group] = None    # for add
    text: str = ""

    def facts(self) -> dict:
        out = {"kind": self.kind, "shape": self.shape, "value": self.value}
        if self.added is not None:
            out["added"] = self.added.facts()
        return out


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    if edit.kind == "add":
        return scene.with_groups(scene.groups + (edit.added,))
    if edit.kind == "remove":
        return scene.with_groups(g for g in scene.groups if g.shape != edit.shape)
    field = {"colour": "colour", "move": "position", "shape": "shape", "size": "size"}[edit.kind]
    return scene.with_groups(replace(g, **{field: edit.value}) if g.shape == edit.shape else g
                             for g in scene.groups)


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _the(g: Group) -> str:
    return f"the {plural(g.shape, g.count)}"


def _candidates(rng, scene: Scene, opts: SceneOptions, kind: str, allowed) -> List[Edit]:
    """Every edit of ``kind`` applicable to ``scene`` (for add: one random new group)."""
    out: List[Edit] = []
    if kind == "add":
        free, unused = scene.free_positions(), [s for s in opts.shapes if scene.group(s) is None]
        if len(scene.groups) < opts.max_groups and free and unused:
            shape = _pick(rng, unused)
            colours = [c for c in opts.colours if allowed((c, shape))]
            if colours:
                g = sample_group(rng, opts, shape, _pick(rng, colours), _pick(rng, free))
                text = f"add {COUNT_WORDS[g.count]} {g.size} {g.colour} {plural(shape, g.count)} {AT[g.position]}"
                out.append(Edit("add", shape, None, g, sentence(text)))
        return out
    for g in scene.groups:
        if kind == "remove" and len(scene.groups) > 1:
            out.append(Edit("remove", g.shape, None, None, sentence(f"remove {_the(g)}")))
        elif kind == "colour":
            out += [Edit("colour", g.shape, c, None, sentence(f"make {_the(g)} {c}"))
                    for c in opts.colours if c != g.colour and allowed((c, g.shape))]
        elif kind == "move":
            out += [Edit("move", g.shape, p, None, sentence(f"move {_the(g)} {TOWARDS[p]}"))
                    for p in scene.free_positions()]
        elif kind == "shape":
            out += [Edit("shape", g.shape, s, None,
                         sentence(f"replace {_the(g)} with {COUNT_WORDS[g.count]} {plural(s, g.count)}"))
                    for s in opts.shapes if scene.group(s) is None and allowed((g.colour, s))]
        elif kind == "size" and g.count == 1:
            new = SIZES[1 - SIZES.index(g.size)]
            out.append(Edit("size", g.shape, new, None, sentence(f"make the {g.shape} {new}")))
    return out


def sample_edit(rng: np.random.Generator, scene: Scene, opts: SceneOptions, kinds: Sequence[str],
                allowed: Callable[[Pair], bool]) -> Optional[Edit]:
    """A random applicable edit: a kind uniformly among those that apply, then one of
    its edits uniformly. None if no kind applies."""
    for k in (kinds[i] for i in rng.permutation(len(kinds))):
        found = _candidates(rng, scene, opts, k, allowed)
        if found:
            return _pick(rng, found)
    return None


# ----------------------------------------------------------------- VQA

@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: str

    def facts(self) -> dict:
        return {"kind": self.kind, "question": self.text, "answer": self.answer}


def answer_choices(kind: str, opts: SceneOptions) -> List[str]:
    """The answers a question of this kind can have."""
    words = {"colour": list(opts.colours), "count": [NUMBER_WORDS[n] for n in range(1, opts.max_count + 1)],
             "shape": list(opts.shapes), "size": list(SIZES), "where": [AT[p] for p in AT],
             "exists": ["yes", "no"]}[kind]
    return [sentence(w) for w in words]


def answer_vocabulary(opts: SceneOptions) -> List[str]:
    """Every answer any question can have, in a fixed order (the VQA candidate pool)."""
    return [a for kind in QUESTION_KINDS for a in answer_choices(kind, opts)]


def wrong_answer(rng: np.random.Generator, question: "Question", opts: SceneOptions) -> Optional[str]:
    """A wrong answer of the same kind (the hard negative of a VQA example), if any."""
    wrong = [a for a in answer_choices(question.kind, opts) if a != question.answer]
    return _pick(rng, wrong) if wrong else None


def sample_question(rng: np.random.Generator, scene: Scene, opts: SceneOptions,
                    kinds: Sequence[str]) -> Question:
    kind = _pick(rng, kinds)
    g = _pick(rng, scene.groups)
    many = g.count > 1
    the = _the(g)
    if kind == "colour":
        return Question(kind, sentence(f"what colour {'are' if many else 'is'} {the}?"), sentence(g.colour))
    if kind == "count":
        return Question(kind, sentence(f"how many {plural(g.shape)} are there?"), sentence(NUMBER_WORDS[g.count]))
    if kind == "shape":
        return Question(kind, sentence(f"what shape is {AT[g.position]}?"), sentence(g.shape))
    if kind == "size":
        return Question(kind, sentence(f"what size {'are' if many else 'is'} {the}?"), sentence(g.size))
    if kind == "where":
        return Question(kind, sentence(f"where {'are' if many else 'is'} {the}?"), sentence(AT[g.position]))
    present = set(scene.pairs())
    if rng.random() < 0.5:
        colour, shape, answer = g.colour, g.shape, "yes"
    else:
        absent = [(c, s) for c in opts.colours for s in opts.shapes if (c, s) not in present]
        colour, shape = _pick(rng, absent)
        answer = "no"
    article = "an" if colour[0] in "aeiou" else "a"
    return Question("exists", sentence(f"is there {article} {colour} {shape}?"), sentence(answer))
