"""Synthetic images and questions for the tiny MiniCPM-V fixture (tools/train_tiny.py).

Images are flat coloured shapes (circle, square, triangle) on a pale background, sized so that at
the fixture's ``scale_resolution`` 112 they need 1 to 10 slices. Three question kinds, each with
one fixed phrasing and a one-word answer: ``color`` (one shape: which colour), ``count`` (1-4
shapes: how many), ``presence`` (1-3 shapes: is there a shape of a named colour, yes or no).
Shape names and positions are not asked: a model of this size did not learn them on this CPU in
the time available (minicpmv-e2e.md section 8).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (145, 55, 195),
}
SHAPES = ("circle", "square", "triangle")
KINDS = ("color", "count", "presence")
NUMBERS = ("1", "2", "3", "4")
QUESTIONS = {
    "color": "What color is the shape?",
    "count": "How many shapes are there?",
}


def presence_question(color: str) -> str:
    return f"Is there a {color} shape?"


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # one of COLORS
    cx: float  # centre, as a fraction of the width
    cy: float  # centre, as a fraction of the height
    size: float  # half the side / radius, as a fraction of min(W, H)


@dataclass(frozen=True)
class Case:
    kind: str
    width: int
    height: int
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]
    question: str
    answer: str
    seed: int  # the per-pixel colour jitter of the drawing

    def key(self) -> tuple[object, ...]:
        """What makes two cases the same picture with the same question."""
        return (self.width, self.height, self.background, self.shapes, self.question)


def _size(rng: random.Random) -> tuple[int, int]:
    """Area log-uniform from ~100x100 to ~400x400 px, aspect 1:2.2 .. 2.2:1, sides 60..480."""
    while True:
        area = math.exp(rng.uniform(math.log(95 * 95), math.log(400 * 400)))
        aspect = math.exp(rng.uniform(-math.log(2.2), math.log(2.2)))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 60 <= w <= 480 and 60 <= h <= 480:
            return w, h


def _place(rng: random.Random, n: int, width: int, height: int) -> list[tuple[float, float, float]]:
    """n non-overlapping (cx, cy, size) in fractions: shapes are 9-22% of the short side."""
    short = min(width, height)
    for _ in range(1000):
        out: list[tuple[float, float, float]] = []
        for _ in range(n):
            s = rng.uniform(0.09, 0.22) if n > 1 else rng.uniform(0.12, 0.3)
            rx, ry = s * short / width, s * short / height
            cx, cy = rng.uniform(rx + 0.02, 1 - rx - 0.02), rng.uniform(ry + 0.02, 1 - ry - 0.02)
            ok = all(
                math.hypot((cx - ox) * width, (cy - oy) * height) > (s + os_) * short * 1.25
                for ox, oy, os_ in out
            )
            if not ok:
                break
            out.append((cx, cy, s))
        if len(out) == n:
            return out
    raise RuntimeError(f"cannot place {n} shapes on {width}x{height}")


def make_case(rng: random.Random, kind: str) -> Case:
    width, height = _size(rng)
    grey = rng.randint(205, 250)
    background = tuple(min(255, max(0, grey + rng.randint(-8, 8))) for _ in range(3))
    if kind == "color":
        n = 1
    elif kind == "count":
        n = rng.choice((1, 2, 3, 4))
    else:
        n = rng.choice((1, 2, 3))
    colors = [rng.choice(list(COLORS)) for _ in range(n)]
    shapes = tuple(
        Shape(rng.choice(SHAPES), c, round(cx, 4), round(cy, 4), round(s, 4))
        for c, (cx, cy, s) in zip(colors, _place(rng, n, width, height))
    )
    if kind == "color":
        question, answer = QUESTIONS["color"], colors[0]
    elif kind == "count":
        question, answer = QUESTIONS["count"], str(n)
    else:
        asked = rng.choice(colors) if rng.random() < 0.5 else rng.choice(list(COLORS))
        question = presence_question(asked)
        answer = "yes" if asked in colors else "no"
    return Case(kind, width, height, background, shapes, question, answer, rng.randrange(2**31))


def render(case: Case) -> Image.Image:
    img = Image.new("RGB", (case.width, case.height), case.background)
    draw = ImageDraw.Draw(img)
    rng = random.Random(case.seed)
    short = min(case.width, case.height)
    for s in case.shapes:
        base = COLORS[s.color]
        fill = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in base)
        cx, cy, r = s.cx * case.width, s.cy * case.height, s.size * short
        if s.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif s.kind == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def held_out(n_per_kind: int, seed: int = 20261201) -> list[Case]:
    rng = random.Random(seed)
    return [make_case(rng, kind) for kind in KINDS for _ in range(n_per_kind)]


def tokenizer_corpus() -> list[str]:
    """Text the BPE merges are learned from: everything the model reads or writes, plus a few
    general words so the vocabulary is a few hundred merges, as a real BPE's would be."""
    words = [
        "What color is the shape?",
        "How many shapes are there?",
        *(presence_question(c) for c in COLORS),
        *COLORS,
        *SHAPES,
        *NUMBERS,
        "yes",
        "no",
        "You are a helpful assistant.",
        "system",
        "user",
        "assistant",
        "What is in this image? Describe the picture in one word.",
        "There is a red circle, a blue square and a green triangle on a grey background.",
        "The answer is yes. The answer is no. One, two, three, four, five shapes.",
        "left right top bottom middle center small large big colour colours image images",
        "Which shape is on the left? Which shape is on the right? Is it a circle or a square?",
        "zero one two three four five six seven eight nine ten 0123456789",
        "orange pink white black brown cyan magenta gray grey",
    ]
    return [w for w in words for _ in range(50)]
