"""WorldConfig: every knob of the synthetic world in one frozen dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from clipneg.world.vocab import COLOURS, REL_WORDS, SHAPES


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
    # Caption wording: which relation phrasing families (indices into vocab.REL_WORDS) captions use, and how often a
    # caption gets a prefix ("a picture of ..."). Fewer phrasings are fewer synonyms for a small model to learn.
    rel_families: tuple[int, ...] = (0, 1, 2, 3)
    p_prefix: float = 0.55
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
        if not self.rel_families or any(not 0 <= f < len(REL_WORDS) for f in self.rel_families):
            raise ValueError(f"rel_families must be indices into the {len(REL_WORDS)} phrasing families of "
                             f"clipneg.world.vocab.REL_WORDS (got {self.rel_families})")
        if not 0.0 <= self.p_prefix <= 1.0:
            raise ValueError(f"p_prefix must be in [0, 1] (got {self.p_prefix})")
        if self.heldout_colours_per_shape >= len(self.colours):
            raise ValueError("heldout_colours_per_shape must leave at least one colour per shape for training")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"], d["colours"], d["object_probs"] = list(self.shapes), list(self.colours), list(self.object_probs)
        d["rel_families"] = list(self.rel_families)
        return d


# Named starting points for WorldConfig (explicit fields override them). "demo" is the world on which a tiny CLIP
# trained from scratch on 2 CPU cores learns composition in a CPU budget (docs/BENCHMARKS.md, bench/world_gain.py):
# a 2 x 2 layout at 32 px without jitter or texture, one relation wording, no caption prefixes, and 6 shapes x 9
# colours. With all 12 x 11 types colour-shape binding moved a few points in the same steps; with 6 colours (each
# shape seen in 5) the model bound unseen shape-colour pairs far worse (held-out R@1 48 vs 66 after pretraining).
# "default" is the full world (3 x 3 jittered layout, 12 x 11 types, 4 wordings, prefixes); the tiny model does not
# learn it in a CPU budget (replace_obj stayed near chance).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "demo": {"image_size": 32, "grid": 2, "jitter": 0.0, "texture": False, "rel_families": (1,), "p_prefix": 0.0,
             "shapes": ("circle", "square", "triangle", "star", "heart", "cross"),
             "colours": ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black")},
}


def world_config(preset: str = "default", **overrides: Any) -> WorldConfig:
    """WorldConfig from a named preset plus field overrides (lists become tuples, as JSON gives them)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown world preset {preset!r}; choose from {sorted(PRESETS)}")
    fields = {**PRESETS[preset], **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}}
    unknown = sorted(set(fields) - set(WorldConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown WorldConfig fields {unknown}; see clipneg.world.config.WorldConfig")
    return WorldConfig(**fields)

