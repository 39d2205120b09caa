r"""Scenes of the embedded shapes dataset and the exact caption grammar over them.

A :class:`Scene` holds one or two :class:`SceneObject` (shape, color, size, grid cell). A caption
is a string of a small, fixed language; :func:`parse` maps it to :class:`Constraints` (what the
caption asserts), and :func:`is_true` checks them against a scene. Both directions are
one-to-many: a scene has dozens to hundreds of true captions (:func:`all_true_captions`), and a
caption leaves attributes free, so it is true of many scenes.

The language (tokens after :func:`flowkit.data.vocab.tokenize`; ``[x]`` is optional)::

    caption := NP [POS] | "there is" NP [POS] | "an image of" NP [POS] | POS "there is" NP
             | "only one shape" NP [POS]                  (exactly one object)
             | NP REL NP | "there is" NP REL NP            (two distinct objects)
             | NP "and" NP | "two shapes" NP "and" NP      (two distinct objects; exactly two)
    NP      := "a" [SIZE] [COLOR] (SHAPE | "shape")       ("shape" needs a size or a color)
    POS     := "at the" ROW COL (not "middle center") | "in the center"
             | "in the" ROW "row" | "in the" COL "column"
    REL     := "to the left of" | "to the right of" | "above" | "below"

Semantics: a caption is existential ("a red circle" is true if some object is a red circle,
whatever else is in the image). ``A to the left of B`` means A's grid column is left of B's
(rows free); ``A above B`` means A's grid row is above B's (columns free). "only one shape" and
"two shapes" fix the number of objects. Strings outside the language (or with a wrong
article, word order, ...) are not captions: :func:`parse` returns None and :func:`is_true`
False, never an exception.
"""

from __future__ import annotations

import enum
import functools
import itertools
from dataclasses import dataclass, field, replace

import numpy as np

from flowkit.data.vocab import tokenize

__all__ = [
    "SHAPES",
    "COLORS",
    "SIZES",
    "ROWS",
    "COLS",
    "RELATIONS",
    "Phrasing",
    "SceneObject",
    "Scene",
    "ObjectSpec",
    "Constraints",
    "parse",
    "is_true",
    "render",
    "all_true_captions",
    "all_true_constraints",
    "sample_captions",
    "canonical",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES: tuple[str, ...] = ("small", "large")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "center", "right")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")

_REL_WORDS = {
    "left": ("to", "the", "left", "of"),
    "right": ("to", "the", "right", "of"),
    "above": ("above",),
    "below": ("below",),
}
_ATTRS = ("shape", "color", "size", "row", "col")


class Phrasing(enum.IntEnum):
    r"""How a caption is phrased: the syntax variant, not part of its meaning.

    Single-object phrasings are 0..4, relations 10..11, conjunctions 20..21 (the values are
    stable: seeded caption sampling draws them by position).

    Example:
        >>> render(Constraints((ObjectSpec(shape="star"),), template=Phrasing.THERE_IS))
        'there is a star'
    """

    PLAIN = 0  # NP [POS]
    THERE_IS = 1  # there is NP [POS]
    AN_IMAGE_OF = 2  # an image of NP [POS]
    POSITION_FIRST = 3  # POS there is NP
    ONLY_ONE = 4  # only one shape: NP [POS]
    RELATION = 10  # NP REL NP
    THERE_IS_RELATION = 11  # there is NP REL NP
    AND = 20  # NP and NP
    TWO_SHAPES = 21  # two shapes: NP and NP


_SINGLE = (Phrasing.PLAIN, Phrasing.THERE_IS, Phrasing.AN_IMAGE_OF, Phrasing.POSITION_FIRST, Phrasing.ONLY_ONE)
_REL = (Phrasing.RELATION, Phrasing.THERE_IS_RELATION)
_AND = (Phrasing.AND, Phrasing.TWO_SHAPES)
_PREFIX = {Phrasing.PLAIN: "", Phrasing.THERE_IS: "there is ", Phrasing.AN_IMAGE_OF: "an image of "}
_COUNT = {Phrasing.ONLY_ONE: 1, Phrasing.TWO_SHAPES: 2}  # phrasings that fix the number of objects


def _count(t: Phrasing) -> int | None:
    # The number of objects a phrasing fixes, or None.
    return _COUNT.get(t)


@dataclass(frozen=True)
class SceneObject:
    r"""One object of a scene.

    Arguments:
        shape: One of :data:`SHAPES`.
        color: One of :data:`COLORS`.
        size: One of :data:`SIZES`.
        row: Grid row, 0 (top), 1 (middle) or 2 (bottom).
        col: Grid column, 0 (left), 1 (center) or 2 (right).

    Example:
        >>> SceneObject("circle", "red", "small", 0, 0).cell
        0
    """

    shape: str
    color: str
    size: str
    row: int
    col: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.color not in COLORS or self.size not in SIZES:
            raise ValueError(f"unknown attribute in {self!r}")
        if self.row not in (0, 1, 2) or self.col not in (0, 1, 2):
            raise ValueError(f"row and col must be in 0..2, got {self!r}")

    @property
    def cell(self) -> int:
        r"""The grid cell index ``3 * row + col`` (0 = top left, 8 = bottom right)."""
        return 3 * self.row + self.col


@dataclass(frozen=True)
class Scene:
    r"""The content of one image: one or two objects in distinct grid cells.

    Arguments:
        objects: The objects, ordered by cell (the constructor sorts them).

    Example:
        >>> s = Scene((SceneObject("star", "blue", "large", 1, 1),))
        >>> is_true("a blue star in the center", s)
        True
    """

    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        objects = tuple(sorted(self.objects, key=lambda o: o.cell))
        if not 1 <= len(objects) <= 2:
            raise ValueError(f"a scene has one or two objects, got {len(objects)}")
        if len({o.cell for o in objects}) != len(objects):
            raise ValueError("two objects never share a grid cell")
        object.__setattr__(self, "objects", objects)


@dataclass(frozen=True)
class ObjectSpec:
    r"""What a caption says about one object; None leaves an attribute free.

    Arguments:
        shape, color, size: Attribute names or None.
        row, col: Grid row / column or None (both set for a cell).
    """

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    row: int | None = None
    col: int | None = None

    def matches(self, obj: SceneObject) -> bool:
        r"""Whether ``obj`` has every attribute this spec names."""
        return all(getattr(self, a) is None or getattr(self, a) == getattr(obj, a) for a in _ATTRS)

    def free(self) -> tuple[str, ...]:
        r"""The attributes left free, among ``shape, color, size, row, col``."""
        return tuple(a for a in _ATTRS if getattr(self, a) is None)


@dataclass(frozen=True)
class Constraints:
    r"""The meaning of a caption.

    Arguments:
        objects: One or two object specs; two specs need two distinct objects.
        relation: For two specs joined by a relation, one of :data:`RELATIONS`: objects[0] is
            left of / right of / above / below objects[1]. None otherwise.
        count: The exact number of objects when the caption fixes it, else None.
        template: How the caption is phrased, a :class:`Phrasing` (ints are converted); not
            part of the meaning, ignored by equality.
    """

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None
    count: int | None = None
    template: Phrasing = field(default=Phrasing.PLAIN, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "template", Phrasing(self.template))

    def holds(self, scene: Scene) -> bool:
        r"""Whether the caption is true of ``scene``."""
        return self.assignment(scene) is not None

    def assignment(self, scene: Scene) -> tuple[SceneObject, ...] | None:
        r"""Distinct scene objects matching ``objects`` (and the relation), or None."""
        if self.count is not None and self.count != len(scene.objects):
            return None
        for objs in itertools.permutations(scene.objects, len(self.objects)):
            if all(s.matches(o) for s, o in zip(self.objects, objs)):
                if self.relation is None or _related(objs[0], objs[1], self.relation):
                    return objs
        return None


def _related(a: SceneObject, b: SceneObject, relation: str) -> bool:
    if relation == "left":
        return a.col < b.col
    if relation == "right":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    return a.row > b.row  # below


_FLIP = {"right": "left", "below": "above"}


def canonical(c: Constraints) -> Constraints:
    r"""A normal form of a meaning: captions that say the same thing map to equal values.

    Phrasing is dropped, "B to the right of A" becomes "A to the left of B" (likewise below ->
    above), and the two specs of an "and" caption are sorted.

    Example:
        >>> canonical(parse("a square to the right of a circle")) == canonical(
        ...     parse("there is a circle to the left of a square"))
        True
    """
    objects, relation = c.objects, c.relation
    if relation in _FLIP:
        objects, relation = (objects[1], objects[0]), _FLIP[relation]
    elif relation is None and len(objects) == 2:
        objects = tuple(sorted(objects, key=_spec_key))
    return Constraints(objects, relation, c.count, Phrasing.PLAIN)


def _spec_key(s: ObjectSpec) -> tuple:
    return tuple("" if v is None else str(v) for v in (s.shape, s.color, s.size, s.row, s.col))


# ---------------------------------------------------------------------------------------------
# Rendering meanings as strings, phrased by their :class:`Phrasing`.


def _np(s: ObjectSpec) -> str:
    words = ["a"]
    if s.size is not None:
        words.append(s.size)
    if s.color is not None:
        words.append(s.color)
    words.append(s.shape if s.shape is not None else "shape")
    return " ".join(words)


def _pos(s: ObjectSpec) -> str:
    if s.row is not None and s.col is not None:
        if s.row == 1 and s.col == 1:
            return "in the center"
        return f"at the {ROWS[s.row]} {COLS[s.col]}"
    if s.row is not None:
        return f"in the {ROWS[s.row]} row"
    if s.col is not None:
        return f"in the {COLS[s.col]} column"
    return ""


def render(c: Constraints) -> str:
    r"""The caption string of a meaning, phrased by ``c.template``.

    Arguments:
        c: Constraints as returned by :func:`parse` (or built by hand).

    Example:
        >>> render(parse("a small red circle at the top left"))
        'a small red circle at the top left'
    """
    t = c.template
    if len(c.objects) == 1:
        s = c.objects[0]
        np_, pos = _np(s), _pos(s)
        tail = f" {pos}" if pos else ""
        if t == Phrasing.POSITION_FIRST and pos:
            return f"{pos} there is {np_}"
        if t == Phrasing.ONLY_ONE or c.count == 1:
            return f"only one shape: {np_}{tail}"
        return _PREFIX.get(t, "") + np_ + tail
    a, b = c.objects
    if c.relation is not None:
        rel = " ".join(_REL_WORDS[c.relation])
        return ("there is " if t == Phrasing.THERE_IS_RELATION else "") + f"{_np(a)} {rel} {_np(b)}"
    return ("two shapes: " if c.count == 2 else "") + f"{_np(a)} and {_np(b)}"


# ---------------------------------------------------------------------------------------------
# Parsing.
class _Fail(Exception):
    """Raised inside the parser when a caption leaves the grammar; parse() returns None."""


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def eat(self, *words: str) -> None:
        for w in words:
            if self.peek() != w:
                raise _Fail
            self.i += 1

    def at(self, *words: str) -> bool:
        return tuple(self.t[self.i : self.i + len(words)]) == words

    def end(self) -> None:
        if self.i != len(self.t):
            raise _Fail

    def np(self) -> ObjectSpec:
        self.eat("a")
        size = color = shape = None
        if self.peek() in SIZES:
            size = self.t[self.i]
            self.i += 1
        if self.peek() in COLORS:
            color = self.t[self.i]
            self.i += 1
        w = self.peek()
        if w in SHAPES:
            shape = w
        elif w != "shape" or (size is None and color is None):
            raise _Fail
        self.i += 1
        return ObjectSpec(shape=shape, color=color, size=size)

    def starts_pos(self) -> bool:
        return self.peek() in ("at", "in")

    def pos(self) -> dict[str, int]:
        if self.at("in", "the", "center") and self.peek(3) != "column":
            self.i += 3
            return {"row": 1, "col": 1}
        if self.at("at", "the"):
            self.i += 2
            r, c = self.peek(), self.peek(1)
            if r not in ROWS or c not in COLS or (r, c) == ("middle", "center"):
                raise _Fail
            self.i += 2
            return {"row": ROWS.index(r), "col": COLS.index(c)}
        self.eat("in", "the")
        w, kind = self.peek(), self.peek(1)
        self.i += 2
        if w in ROWS and kind == "row":
            return {"row": ROWS.index(w)}
        if w in COLS and kind == "column":
            return {"col": COLS.index(w)}
        raise _Fail

    def rel(self) -> str | None:
        for name, words in _REL_WORDS.items():
            if self.at(*words):
                self.i += len(words)
                return name
        return None

    def caption(self) -> Constraints:
        if self.at("only", "one", "shape"):
            self.i += 3
            s = self.np()
            if self.starts_pos():
                s = replace(s, **self.pos())
            self.end()
            return Constraints((s,), None, 1, Phrasing.ONLY_ONE)
        if self.at("two", "shapes"):
            self.i += 2
            a = self.np()
            self.eat("and")
            b = self.np()
            self.end()
            return Constraints((a, b), None, 2, Phrasing.TWO_SHAPES)
        if self.starts_pos():
            p = self.pos()
            self.eat("there", "is")
            s = replace(self.np(), **p)
            self.end()
            return Constraints((s,), None, None, Phrasing.POSITION_FIRST)
        template = Phrasing.PLAIN
        if self.at("there", "is"):
            self.i += 2
            template = Phrasing.THERE_IS
        elif self.at("an", "image", "of"):
            self.i += 3
            template = Phrasing.AN_IMAGE_OF
        a = self.np()
        if self.peek() is None:
            return Constraints((a,), None, None, template)
        if self.starts_pos():
            a = replace(a, **self.pos())
            self.end()
            return Constraints((a,), None, None, template)
        if template == Phrasing.AN_IMAGE_OF:
            raise _Fail
        relation = self.rel()
        if relation is not None:
            b = self.np()
            self.end()
            rel_phrasing = Phrasing.THERE_IS_RELATION if template == Phrasing.THERE_IS else Phrasing.RELATION
            return Constraints((a, b), relation, None, rel_phrasing)
        if template == Phrasing.PLAIN and self.peek() == "and":
            self.i += 1
            b = self.np()
            self.end()
            return Constraints((a, b), None, None, Phrasing.AND)
        raise _Fail


def parse(caption: str) -> Constraints | None:
    r"""The meaning of a caption, or None when the string is not in the caption language.

    Case and punctuation are ignored (the caption is tokenized like the vocabulary does).

    Arguments:
        caption: A caption string.

    Example:
        >>> parse("A circle to the left of a blue square.").relation
        'left'
        >>> parse("circle red a") is None
        True
    """
    if not isinstance(caption, str):
        return None
    try:
        return _Parser(tokenize(caption)).caption()
    except _Fail:
        return None


def is_true(caption: str, scene: Scene) -> bool:
    r"""Whether ``caption`` is a caption of the language and true of ``scene``.

    Arguments:
        caption: A caption string (anything: ungrammatical input gives False).
        scene: The scene.

    Example:
        >>> s = Scene((SceneObject("circle", "red", "small", 0, 0), SceneObject("square", "blue", "large", 0, 2)))
        >>> is_true("a circle to the left of a blue square", s), is_true("a red circle above a square", s)
        (True, False)
    """
    c = parse(caption)
    return c is not None and c.holds(scene)


# ---------------------------------------------------------------------------------------------
# Enumeration and sampling of true captions.
_NP_MASKS = tuple(m for m in itertools.product((False, True), repeat=3) if any(m))  # size, color, shape


def _specs(o: SceneObject) -> list[ObjectSpec]:
    return [
        ObjectSpec(shape=o.shape if sh else None, color=o.color if co else None, size=o.size if si else None) for si, co, sh in _NP_MASKS
    ]


def _positions(o: SceneObject) -> list[dict[str, int]]:
    return [{}, {"row": o.row, "col": o.col}, {"row": o.row}, {"col": o.col}]


def _true_relations(a: SceneObject, b: SceneObject) -> list[str]:
    return [r for r in RELATIONS if _related(a, b, r)]


@functools.lru_cache(maxsize=8192)
def _enumerate(scene: Scene) -> tuple[tuple[str, Constraints], ...]:
    out: dict[str, Constraints] = {}
    n = len(scene.objects)
    for o in scene.objects:
        for s in _specs(o):
            for p in _positions(o):
                sp = replace(s, **p)
                for t in _SINGLE:
                    if (t == Phrasing.POSITION_FIRST and not p) or (t == Phrasing.ONLY_ONE and n != 1):
                        continue
                    c = Constraints((sp,), None, _count(t), t)
                    out.setdefault(render(c), c)
    if n == 2:
        for a, b in itertools.permutations(scene.objects, 2):
            rels = _true_relations(a, b)
            for sa in _specs(a):
                for sb in _specs(b):
                    for r in rels:
                        for t in _REL:
                            c = Constraints((sa, sb), r, None, t)
                            out.setdefault(render(c), c)
                    for t in _AND:
                        c = Constraints((sa, sb), None, _count(t), t)
                        out.setdefault(render(c), c)
    return tuple(sorted(out.items()))


def all_true_captions(scene: Scene) -> list[str]:
    r"""Every caption of the language that is true of ``scene``, sorted.

    Arguments:
        scene: The scene.

    Example:
        >>> caps = all_true_captions(Scene((SceneObject("circle", "red", "small", 0, 0),)))
        >>> len(caps), "a red circle" in caps
        (133, True)
    """
    return [s for s, _ in _enumerate(scene)]


def all_true_constraints(scene: Scene) -> frozenset[Constraints]:
    r"""The canonical meanings (:func:`canonical`) of every true caption of ``scene``."""
    return _canonical_set(scene)


@functools.lru_cache(maxsize=8192)
def _canonical_set(scene: Scene) -> frozenset[Constraints]:
    return frozenset(canonical(c) for _, c in _enumerate(scene))


def _random_spec(o: SceneObject, rng: np.random.Generator, position: bool) -> ObjectSpec:
    while True:
        si, co, sh = rng.random(3) < (0.5, 0.7, 0.85)
        if si or co or sh:
            break
    s = ObjectSpec(shape=o.shape if sh else None, color=o.color if co else None, size=o.size if si else None)
    if position:
        k = rng.choice(4, p=(0.4, 0.3, 0.15, 0.15))
        s = replace(s, **_positions(o)[k])
    return s


def _random_caption(scene: Scene, rng: np.random.Generator) -> str:
    objs = scene.objects
    if len(objs) == 2 and rng.random() < 0.5:
        a, b = (objs[0], objs[1]) if rng.random() < 0.5 else (objs[1], objs[0])
        sa, sb = _random_spec(a, rng, False), _random_spec(b, rng, False)
        if rng.random() < 0.6:
            rels = _true_relations(a, b)
            r = rels[rng.integers(len(rels))]
            return render(Constraints((sa, sb), r, None, _REL[int(rng.choice(len(_REL)))]))
        t = _AND[int(rng.choice(len(_AND), p=(0.6, 0.4)))]
        return render(Constraints((sa, sb), None, _count(t), t))
    o = objs[rng.integers(len(objs))]
    s = _random_spec(o, rng, True)
    has_pos = s.row is not None or s.col is not None
    weights = np.array([0.35, 0.25, 0.15, 0.15 if has_pos else 0.0, 0.1 if len(objs) == 1 else 0.0])  # by _SINGLE
    t = _SINGLE[int(rng.choice(len(_SINGLE), p=weights / weights.sum()))]
    return render(Constraints((s,), None, _count(t), t))


def sample_captions(scene: Scene, n: int, rng: np.random.Generator) -> list[str]:
    r"""``n`` true captions of ``scene``, distinct whenever the scene has enough.

    Syntax and the mentioned attributes are drawn at random (shape and color more often than
    size, position in about 60% of single-object captions, relations and conjunctions in
    half of the captions of two-object scenes). Every caption is in :func:`all_true_captions`.

    Arguments:
        scene: The scene.
        n: The number of captions.
        rng: A numpy random generator.

    Example:
        >>> s = Scene((SceneObject("circle", "red", "small", 0, 0),))
        >>> caps = sample_captions(s, 5, np.random.default_rng(0))
        >>> all(is_true(c, s) for c in caps)
        True
    """
    out: list[str] = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        c = _random_caption(scene, rng)
        if c not in out:
            out.append(c)
    while len(out) < n:
        out.append(_random_caption(scene, rng))
    return out
