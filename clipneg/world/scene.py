"""Scenes: objects on a grid, their geometry, and the spatial relations that hold between them.

Positions are in grid-cell units: an object in cell (row, col) with offset (dx, dy) has its centre at
x = col + 0.5 + dx, y = row + 0.5 + dy (y grows downwards, like image rows). Objects occupy distinct cells and an
object plus its jitter stays inside its cell, so scenes are overlap-free by construction.

Relations are judged on centres, with two readings (see :func:`relation_holds`):
- strict: what a positive caption may claim. The displacement along the relation's axis is at least 0.6 cells and
  at least twice the displacement across it, so nobody would argue with "left of".
- lenient: what a negative caption must not be, even loosely. Any displacement of more than 0.35 cells along the
  axis counts. A negative is only accepted if it is false under this reading, so diagonal neighbours (which are
  arguably both "left of" and "above") never make a negative that a human would call true.
Jitter is bounded by 0.15 cells per object, so two objects in the same row differ by at most 0.3 cells vertically:
below the lenient threshold, and a same-row pair (at least 0.7 cells apart horizontally) is strictly left/right.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from clipneg.world.vocab import AXIS, SIGN, SIZES

STRICT_MIN = 0.6
STRICT_RATIO = 2.0
LENIENT_MIN = 0.35
MAX_OFFSET = 0.15
# Free space kept between an object and its cell border: 0.06 cells per side is a gap of 0.12 cells (1.28 px at
# 32 px) between neighbours, so even after sub-pixel quantisation no pixel is touched by two objects.
CELL_MARGIN = 0.06


class Obj(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: negatives build thousands of edited copies per second, and
    # tuple construction is several times cheaper than dataclasses.replace.
    shape: str
    colour: str
    size: str
    cell: tuple[int, int]  # (row, col)
    offset: tuple[float, float] = (0.0, 0.0)  # (dx, dy) in cell units, |d| <= max_offset(size)

    @property
    def centre(self) -> tuple[float, float]:
        return self.cell[1] + 0.5 + self.offset[0], self.cell[0] + 0.5 + self.offset[1]

    def resized(self, size: str) -> Obj:
        """The same object at another size; the jitter is clamped so a grown object still fits in its cell."""
        m = max_offset(size)
        dx, dy = (min(max(v, -m), m) for v in self.offset)
        return Obj(self.shape, self.colour, size, self.cell, (dx, dy))

    def to_json(self) -> dict[str, Any]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "cell": list(self.cell),
                "offset": [round(v, 6) for v in self.offset]}


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    tone: tuple[int, int, int]  # background base colour
    bg_seed: int  # seeds the background texture, so a counterfactual keeps the exact background

    def with_objects(self, objects: Sequence[Obj]) -> Scene:
        return Scene(tuple(objects), self.tone, self.bg_seed)

    def to_json(self) -> dict[str, Any]:
        return {"objects": [o.to_json() for o in self.objects], "tone": list(self.tone), "bg_seed": self.bg_seed}


def max_offset(size: str) -> float:
    """Largest jitter (cell units) that keeps an object of this size inside its cell, capped for relation safety."""
    return min(MAX_OFFSET, (1.0 - SIZES[size]) / 2 - CELL_MARGIN)


def relation_holds(a: Obj, b: Obj, rel: str, *, strict: bool) -> bool:
    """Whether "a <rel> b" holds (rel in left/right/above/below); strict for positives, lenient for negatives."""
    # Centres differ by (cell + offset) differences; the +0.5 of both centres cancels.
    d = (b.cell[1] + b.offset[0] - a.cell[1] - a.offset[0], b.cell[0] + b.offset[1] - a.cell[0] - a.offset[1])
    axis = AXIS[rel]
    along = d[axis] * SIGN[rel]
    if not strict:
        return along > LENIENT_MIN
    return along >= STRICT_MIN and along >= STRICT_RATIO * abs(d[1 - axis])


def lenient_relations(a: Obj, b: Obj) -> list[str]:
    """Every relation that "a <rel> b" could loosely be said to have (0, 1 or 2 of them)."""
    dx = b.cell[1] + b.offset[0] - a.cell[1] - a.offset[0]
    dy = b.cell[0] + b.offset[1] - a.cell[0] - a.offset[1]
    out = []
    if abs(dx) > LENIENT_MIN:
        out.append("left" if dx > 0 else "right")
    if abs(dy) > LENIENT_MIN:
        out.append("above" if dy > 0 else "below")
    return out


def is_valid(scene: Scene, grid: int) -> bool:
    """Distinct cells inside the grid and distinct (colour, shape) per object, so every full mention is unique."""
    cells = [o.cell for o in scene.objects]
    types = [(o.colour, o.shape) for o in scene.objects]
    inside = all(0 <= r < grid and 0 <= c < grid for r, c in cells)
    return inside and len(set(cells)) == len(cells) and len(set(types)) == len(types)


def sample_offset(rng: random.Random, size: str, jitter: float) -> tuple[float, float]:
    m = max_offset(size) * jitter
    if m == 0:
        return 0.0, 0.0
    return rng.uniform(-m, m), rng.uniform(-m, m)


def sample_cells(rng: random.Random, grid: int, n: int, links: Sequence[tuple[int, int]]
                 ) -> list[tuple[int, int]]:
    """Distinct cells for n objects; each link (i, j) with i placed first puts j in i's row or column.

    An aligned pair is exactly one of left/right/above/below under the strict reading, which is what lets a caption
    state its relation without ambiguity.
    """
    all_cells = [(r, c) for r in range(grid) for c in range(grid)]
    anchor = {j: i for i, j in links}
    cells: list[tuple[int, int]] = []
    for k in range(n):
        if k in anchor:
            ar, ac = cells[anchor[k]]
            options = [(r, c) for r, c in all_cells if (r == ar) != (c == ac) and (r, c) not in cells]
        else:
            options = [cell for cell in all_cells if cell not in cells]
        cells.append(options[rng.randrange(len(options))])
    return cells


def free_cells(scene: Scene, grid: int) -> list[tuple[int, int]]:
    used = {o.cell for o in scene.objects}
    return [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in used]
