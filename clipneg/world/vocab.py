"""The world's words: shapes, colours, sizes and spatial relations, with every phrasing the captions use.

Shapes are chosen to stay recognisable at 32 px and to be distinct from each other under rotation-free rendering
(no pentagon next to a hexagon, no rectangle next to a square). Colours are saturated and far apart in RGB, and the
background is a mid-grey tone, so both white and black objects stand out.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "diamond",
    "cross",
    "heart",
    "ring",
    "crescent",
    "hexagon",
    "semicircle",
    "arrow",
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 135, 0),
    "yellow": (250, 225, 30),
    "green": (30, 165, 60),
    "cyan": (0, 215, 225),
    "blue": (30, 70, 225),
    "purple": (135, 45, 195),
    "pink": (250, 135, 195),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "brown": (125, 70, 25),
}

# Object diameter as a fraction of a grid cell. The gap between the two keeps "small" and "large" unambiguous even
# at 32 px, and a large object plus its jitter still leaves a margin in its cell, so objects never touch.
SIZES: dict[str, float] = {"small": 0.48, "large": 0.8}

RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
INVERSE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}
# Relation r(a, b) is about the displacement from a to b: "a left of b" means b lies at larger x (image columns),
# "a above b" means b lies at larger y (image rows grow downwards).
AXIS: dict[str, int] = {"left": 0, "right": 0, "above": 1, "below": 1}
SIGN: dict[str, int] = {"left": 1, "right": -1, "above": 1, "below": -1}

# Phrasing families for relations. A caption picks one family, and its negatives re-render with the same family,
# so the relation wording never tells a positive from a negative.
REL_WORDS: tuple[dict[str, str], ...] = (
    {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"},
    {"left": "left of", "right": "right of", "above": "above", "below": "below"},
    {"left": "on the left of", "right": "on the right of", "above": "over", "below": "beneath"},
    {"left": "to the left of", "right": "to the right of", "above": "higher than", "below": "lower than"},
)

# The relation names written to ARO-format files (ARO's own VG relation names use this wording).
ARO_RELATION_NAME: dict[str, str] = {"left": "to the left of", "right": "to the right of", "above": "above",
                                     "below": "below"}


def article(word: str) -> str:
    """'an' before a vowel sound, else 'a'; computed the same way for positives and negatives, so never a cue."""
    return "an" if word[0] in "aeiou" else "a"
