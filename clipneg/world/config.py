"""WorldConfig: every knob of the synthetic world in one frozen dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from clipneg.world.vocab import COLOURS, SHAPES


@dataclass(frozen=True)
class WorldConfig:
    """How the world samples, describes and renders scenes.

    The defaults are sized so that a plainly trained CLIP rarely meets a minimal pair inside a batch (see
    ``same_bag_rate``): 12 shapes x 11 colours x 2 sizes, 1-3 objects, Zipf-skewed shape frequencies and per-shape
    colour preferences in the training split (real captions say "yellow banana" far more than "blue banana").
    Stronger skew is more realistic but concentrates the mass on fewer captions and so raises the minimal-pair
    rate (zipf 0 / 0.6 / 0.9: about 1.4 / 3 / 6 % of batches of 128); 0.6 keeps a 4x frequency range.
    Test splits are sampled uniformly by default so that the benchmark carries no plausibility prior a text-only model
    could exploit (SugarCrepe's lesson).
    """

    seed: int = 0
    image_size: int = 64
    grid: int = 3  # objects sit in distinct cells of a grid x grid layout
    supersample: int = 4  # draw at this factor, then box-downscale (exact-coverage antialiasing)
    jitter: float = 1.0  # 0 puts every object at its cell centre; 1 is the full safe jitter
    texture: bool = True  # smooth low-frequency background texture
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    object_probs: tuple[float, float, float] = (0.15, 0.40, 0.45)  # P(1 object), P(2), P(3)
    p_size_word: float = 0.35  # chance a mention says "small"/"large"
    p_no_colour: float = 0.08  # chance a mention omits its colour ("a circle"), which makes add_att possible
    p_no_relation: float = 0.12  # chance a multi-object caption lists objects without a relation
    p_chain: float = 0.5  # for 3 objects with a relation: two relations (chain) rather than relation + extra object
    zipf: float = 0.6  # skew exponent of the training split (0 = uniform); see same_bag_rate for the trade-off
    test_zipf: float = 0.0  # skew of the test splits
    heldout_colours_per_shape: int = 1  # (shape, colour) pairs held out: this many colours per shape
    heldout_triple_frac: float = 0.08  # fraction of (shape, relation, shape) triples held out
    png_level: int = 1  # zlib level of the PNGs: 1 is ~4x faster than 6 at a ~25% larger file

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 224:
            raise ValueError(f"image_size must be in [32, 224] (got {self.image_size})")
        if self.grid < 2:
            raise ValueError(f"grid must be >= 2 so that relations exist (got {self.grid})")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1 (got {self.supersample})")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1] (got {self.jitter})")
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown or len(self.shapes) < 2 or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"shapes must be >= 2 distinct names from {SHAPES} (got {self.shapes})")
        unknown = [c for c in self.colours if c not in COLOURS]
        if unknown or len(self.colours) < 2 or len(set(self.colours)) != len(self.colours):
            raise ValueError(f"colours must be >= 2 distinct names from {tuple(COLOURS)} (got {self.colours})")
        if len(self.object_probs) != 3 or min(self.object_probs) < 0 or abs(sum(self.object_probs) - 1) > 1e-6:
            raise ValueError(f"object_probs must be 3 non-negative numbers summing to 1 (got {self.object_probs})")
        if self.heldout_colours_per_shape >= len(self.colours):
            raise ValueError("heldout_colours_per_shape must leave at least one colour per shape for training")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"], d["colours"], d["object_probs"] = list(self.shapes), list(self.colours), list(self.object_probs)
        return d
