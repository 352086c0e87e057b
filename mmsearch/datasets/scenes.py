"""Scenes of coloured shapes: sampling, captions and rendering with Pillow.

A scene is 1-3 *groups*; a group is ``count`` identical shapes of one colour and
one size in one of five places (left, right, top, bottom, centre), e.g. "two small
red circles on the left". A scene never holds two groups of the same shape, so
"the circle" always names one group, and each group has its own place, so groups
never overlap. Large groups hold one shape; small ones up to ``max_count``.

The canvas is a 3x3 grid of cells; the five places are the middle row and the
middle column. Every shape stays inside its cell, so a change to one group only
changes the pixels of that group's cell (the composed-retrieval tests rely on it).

Jitter (a per-group colour tint and centre offset, a per-scene background shade)
is part of the scene, so a scene renders to the same pixels every time, and an
edit that leaves a group alone leaves its pixels alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError

Pair = Tuple[str, str]  # (colour, shape)

PALETTE: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (35, 160, 55),
    "cyan": (25, 195, 215),
    "blue": (35, 65, 215),
    "purple": (135, 50, 195),
    "pink": (245, 115, 190),
    "brown": (125, 75, 30),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
DEFAULT_COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
DEFAULT_SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
CELLS = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "centre": (1, 1)}
AT = {"left": "on the left", "right": "on the right", "top": "at the top",
      "bottom": "at the bottom", "centre": "in the centre"}
TOWARDS = {"left": "to the left", "right": "to the right", "top": "to the top",
           "bottom": "to the bottom", "centre": "to the centre"}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
NUMBER_WORDS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
PLURALS = {"cross": "crosses"}
BACKGROUND = (236, 236, 236)

# Geometry in cell units (a cell is a third of the image side).
RADIUS = {"small": 0.18, "large": 0.36}
LAYOUTS = {1: ((0.0, 0.0),), 2: ((-0.24, 0.0), (0.24, 0.0)),
           3: ((-0.24, -0.22), (0.24, -0.22), (0.0, 0.24))}


def plural(shape: str, count: int = 2) -> str:
    return shape if count == 1 else PLURALS.get(shape, shape + "s")


def sentence(text: str) -> str:
    """Capitalised, ending in a full stop (as M-BEIR's format_string leaves text)."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


@dataclass(frozen=True)
class SceneOptions:
    """What scenes may contain. Unknown names raise with the valid ones."""

    shapes: Tuple[str, ...] = DEFAULT_SHAPES
    colours: Tuple[str, ...] = DEFAULT_COLOURS
    max_groups: Optional[int] = None      # None: 3, or fewer if fewer shapes
    max_count: int = 3                    # small groups; a large group is one shape
    group_weights: Tuple[float, ...] = (0.2, 0.4, 0.4)  # P(1 group), P(2), P(3)
    colour_jitter: int = 12               # +- per RGB channel, per group
    position_jitter: float = 0.05         # +- cell units, per group
    background_jitter: int = 8            # +- grey level, per scene

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "colours", tuple(self.colours))
        _check_names("shape", self.shapes, SHAPES)
        _check_names("colour", self.colours, tuple(PALETTE))
        if self.max_groups is None:
            object.__setattr__(self, "max_groups", min(3, len(self.shapes)))
        if not isinstance(self.max_groups, int) or not 1 <= self.max_groups <= 3:
            raise InputError(f"max_groups must be 1, 2 or 3, got {self.max_groups!r}")
        if self.max_groups > len(self.shapes):
            raise InputError(f"max_groups={self.max_groups} needs at least as many shapes, got {self.shapes}")
        if not isinstance(self.max_count, int) or not 1 <= self.max_count <= 3:
            raise InputError(f"max_count must be 1, 2 or 3, got {self.max_count!r}")
        weights = tuple(float(w) for w in self.group_weights)
        if len(weights) < self.max_groups or any(w < 0 for w in weights) or sum(weights[:self.max_groups]) <= 0:
            raise InputError(f"group_weights needs {self.max_groups} non-negative weights, got {self.group_weights!r}")
        object.__setattr__(self, "group_weights", weights)
        if not 0 <= self.colour_jitter <= 30 or not 0 <= self.background_jitter <= 20:
            raise InputError("colour_jitter must be in [0, 30] and background_jitter in [0, 20]")
        if not 0 <= self.position_jitter <= 0.06:
            raise InputError(f"position_jitter must be in [0, 0.06] cell units, got {self.position_jitter!r}")

    def pairs(self) -> List[Pair]:
        return [(c, s) for c in self.colours for s in self.shapes]


def _check_names(kind: str, names: Sequence[str], valid: Sequence[str]) -> None:
    if not names:
        raise InputError(f"at least one {kind} is needed; valid: {', '.join(valid)}")
    for name in names:
        if name not in valid:
            raise InputError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise InputError(f"duplicate {kind} in {list(names)}")


@dataclass(frozen=True)
class Group:
    shape: str
    colour: str
    size: str
    count: int
    position: str
    tint: Tuple[int, int, int] = (0, 0, 0)        # added to the palette colour
    offset: Tuple[float, float] = (0.0, 0.0)      # centre jitter, cell units

    @property
    def pair(self) -> Pair:
        return (self.colour, self.shape)

    @property
    def rgb(self) -> Tuple[int, int, int]:
        base = PALETTE[self.colour]
        return tuple(int(min(255, max(0, b + t))) for b, t in zip(base, self.tint))

    def phrase(self) -> str:
        return f"{COUNT_WORDS[self.count]} {self.size} {self.colour} {plural(self.shape, self.count)} {AT[self.position]}"

    def facts(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size,
                "count": self.count, "position": self.position}


@dataclass(frozen=True)
class Scene:
    """Groups in caption order, plus the background grey level."""

    groups: Tuple[Group, ...]
    background: int = BACKGROUND[0]

    def key(self) -> tuple:
        """What the caption says, order-free: two scenes with one key are the same scene."""
        return tuple(sorted((g.shape, g.colour, g.size, g.count, g.position) for g in self.groups))

    def caption(self) -> str:
        phrases = [g.phrase() for g in self.groups]
        text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return sentence(text)

    def group(self, shape: str) -> Optional[Group]:
        return next((g for g in self.groups if g.shape == shape), None)

    def pairs(self) -> List[Pair]:
        return [g.pair for g in self.groups]

    def free_positions(self) -> List[str]:
        taken = {g.position for g in self.groups}
        return [p for p in POSITIONS if p not in taken]

    def facts(self) -> dict:
        return {"groups": [g.facts() for g in self.groups]}

    def with_groups(self, groups: Sequence[Group]) -> "Scene":
        return replace(self, groups=tuple(groups))


# ----------------------------------------------------------------- sampling

def sample_group(rng: np.random.Generator, opts: SceneOptions, shape: str, colour: str,
                 position: str) -> Group:
    u = rng.random(7).tolist()  # one draw per group keeps sampling fast
    size = SIZES[int(u[0] * 2)]
    count = 1 if size == "large" else 1 + int(u[1] * opts.max_count)
    cj, pj = opts.colour_jitter, opts.position_jitter
    tint = tuple(int(v * (2 * cj + 1)) - cj for v in u[2:5])
    offset = tuple(round((2 * v - 1) * pj, 3) for v in u[5:7])
    return Group(shape, colour, size, count, position, tint, offset)


def sample_scene(rng: np.random.Generator, opts: SceneOptions, allowed: Callable[[Pair], bool],
                 require: Optional[Pair] = None) -> Optional[Scene]:
    """A random scene whose (colour, shape) pairs pass ``allowed``, except ``require``,
    which is always one of its groups; None when the draw fails, so callers redraw."""
    weights = np.asarray(opts.group_weights[:opts.max_groups])
    n = int(rng.choice(len(weights), p=weights / weights.sum())) + 1
    shapes = [opts.shapes[i] for i in rng.permutation(len(opts.shapes))]
    colours = []
    if require is not None:
        shapes = [require[1]] + [s for s in shapes if s != require[1]]
        colours.append(require[0])
    shapes = shapes[:n]
    for shape in shapes[len(colours):]:
        choices = [c for c in opts.colours if allowed((c, shape))]
        if not choices:
            return None
        colours.append(choices[int(rng.integers(len(choices)))])
    positions = [POSITIONS[i] for i in rng.permutation(len(POSITIONS))[:n]]
    groups = [sample_group(rng, opts, s, c, p) for s, c, p in zip(shapes, colours, positions)]
    order = rng.permutation(n)
    bj = opts.background_jitter
    background = BACKGROUND[0] + int(rng.integers(-bj, bj + 1))
    return Scene(tuple(groups[i] for i in order), background)


# ----------------------------------------------------------------- rendering

@dataclass(frozen=True)
class Mark:
    """One drawn shape: centre and radius in pixels."""

    shape: str
    x: float
    y: float
    r: float
    rgb: Tuple[int, int, int] = field(default=(0, 0, 0))


def marks(scene: Scene, size: int) -> List[Mark]:
    """Every shape of the scene as drawn on a ``size`` x ``size`` canvas."""
    cell = size / 3.0
    out = []
    for g in scene.groups:
        col, row = CELLS[g.position]
        cx, cy = (col + 0.5 + g.offset[0]) * cell, (row + 0.5 + g.offset[1]) * cell
        for dx, dy in LAYOUTS[g.count]:
            out.append(Mark(g.shape, cx + dx * cell, cy + dy * cell, RADIUS[g.size] * cell, g.rgb))
    return out


def cell_box(position: str, size: int) -> Tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), end-exclusive, of a place's cell."""
    col, row = CELLS[position]
    edges = [round(i * size / 3.0) for i in range(4)]
    return edges[col], edges[row], edges[col + 1], edges[row + 1]


def render_scene(scene: Scene, size: int = 112) -> Image.Image:
    bg = scene.background
    img = Image.new("RGB", (size, size), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    for m in marks(scene, size):
        _draw(draw, m)
    return img


def _polygon(x: float, y: float, radii: Sequence[float], start_deg: float) -> List[Tuple[float, float]]:
    step = 360.0 / len(radii)
    return [(x + r * math.cos(math.radians(start_deg + i * step)), y + r * math.sin(math.radians(start_deg + i * step)))
            for i, r in enumerate(radii)]


def _draw(draw: ImageDraw.ImageDraw, m: Mark) -> None:
    x, y, r, fill = m.x, m.y, m.r, m.rgb
    if m.shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif m.shape == "square":
        h = 0.82 * r
        draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
    elif m.shape == "triangle":  # apex up, centroid at the centre
        draw.polygon(_polygon(x, y + 0.12 * r, [1.1 * r] * 3, -90.0), fill=fill)
    elif m.shape == "star":
        draw.polygon(_polygon(x, y + 0.05 * r, [r, 0.5 * r] * 5, -90.0), fill=fill)
    elif m.shape == "cross":
        a, h = 0.33 * r, 0.95 * r
        draw.rectangle((x - h, y - a, x + h, y + a), fill=fill)
        draw.rectangle((x - a, y - h, x + a, y + h), fill=fill)
    elif m.shape == "diamond":
        draw.polygon(_polygon(x, y, [r] * 4, -90.0), fill=fill)
    else:  # pragma: no cover - SceneOptions rejects unknown shapes
        raise InputError(f"unknown shape {m.shape!r}; valid: {', '.join(SHAPES)}")
