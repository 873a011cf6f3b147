"""``HorizontalFlip``: CounterCurate's left/right counterfactual, the positive image mirrored.

    from clipneg.generators.images.flip import FlipConfig, HorizontalFlip
    samples = HorizontalFlip()(samples)   # a mirrored image for each negative caption that is the caption mirrored

Mirroring an image turns every "left" into "right" and back, and nothing else, so it depicts a negative caption only
when that caption is the positive with EVERY left/right word swapped and no other change (token by token, case
ignored): "a cup to the left of a plate" -> "a cup to the right of a plate" gets one; a caption that also changes a
colour, swaps only one of two left/right words, or edits "leftover" does not. Captions that mention text, signs,
numbers, clocks and the like (``skip_words``) get none, because mirrored writing is false; so do captions with other
laterality words that a swap would not fix (``lateral_words``: "leftmost", "clockwise" ...).

The image is ``ImageOps.mirror`` of the decoded positive, written losslessly (PNG by default) so it is the mirror
pixel for pixel. ``kind`` is "spatial" (CounterCurate's family), or the caption's own kind with ``kind=None``.
Reference: Zhang et al. 2024, "CounterCurate: Enhancing Physical and Semantic Visio-Linguistic Compositional
Reasoning via Counterfactual Examples" (flipped images for left/right).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageOps

from clipneg.schema import NegImage, Sample
from clipneg.shards import Quarantined

from ..base import StageStats, config_hash

VERSION = "1.0.0"
GEN = "flip"
FILTER = "flip"
_SWAP = {"left": "right", "right": "left"}
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_FORMATS = {"png": "PNG", "webp": "WEBP"}  # lossless only: a JPEG re-encode would not be the mirror pixel for pixel

SKIP_WORDS: tuple[str, ...] = (
    "text", "sign", "signboard", "signage", "word", "letter", "lettering", "number", "numeral", "digit", "reading",
    "read", "writing", "written", "write", "say", "saying", "logo", "label", "clock", "caption", "title", "banner",
    "poster", "book", "newspaper", "magazine", "menu", "license", "jersey", "screen", "billboard", "graffiti",
    "scoreboard", "keyboard", "calendar", "map",
)
LATERAL_WORDS: tuple[str, ...] = (
    "leftmost", "rightmost", "lefthand", "righthand", "leftward", "leftwards", "rightward", "rightwards", "lefty",
    "clockwise", "counterclockwise", "anticlockwise", "counter-clockwise", "anti-clockwise", "east", "west",
    "eastward", "westward",
)


def tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens ("to the left-hand side" -> to, the, left, -, hand, side)."""
    return _TOKEN.findall(text.lower())


def _base(tok: str) -> str:
    """A crude singular for the word lists ("signs" -> "sign", "says" -> "say")."""
    return tok[:-1] if len(tok) > 3 and tok.endswith("s") and not tok.endswith("ss") else tok


def mirror_caption_edit(caption: str, negative: str) -> bool:
    """True iff ``negative`` is ``caption`` with every left/right token swapped and nothing else changed."""
    a, b = tokens(caption), tokens(negative)
    if len(a) != len(b) or not any(t in _SWAP for t in a):
        return False
    return all((y == _SWAP[x]) if x in _SWAP else (x == y) for x, y in zip(a, b, strict=True))


def flip_reason(caption: str, negative: str, skip_words: frozenset[str], lateral_words: frozenset[str]) -> str | None:
    """Why no mirrored image may depict ``negative`` (None: it may). "not left/right" when no left/right word
    changed at all (not this stage's business, not counted as a rejection)."""
    a, b = tokens(caption), tokens(negative)
    if [t for t in a if t in _SWAP] == [t for t in b if t in _SWAP]:
        return "not left/right"
    if not mirror_caption_edit(caption, negative):
        return "not a pure left/right mirror"
    words = set(a) | {_base(t) for t in a}
    if words & skip_words:
        return "mentions text or numbers"
    if words & lateral_words or re.search(r"\b(?:left|right)[- ]?(?:most|ward|wards|hand(?:ed)?)\b", caption.lower()):
        return "other laterality words"
    return None


def mirror_image(data: bytes, fmt: str = "png") -> bytes:
    """``ImageOps.mirror`` of the decoded image, encoded losslessly as ``fmt``."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        out = ImageOps.mirror(im if im.mode in ("RGB", "RGBA", "L", "LA", "P", "I;16") else im.convert("RGB"))
    buf = io.BytesIO()
    out.save(buf, _FORMATS[fmt], **({"lossless": True} if fmt == "webp" else {}))
    return buf.getvalue()


@dataclass(frozen=True)
class FlipConfig:
    """kind: the NegImage kind ("spatial"; None: the negative caption's kind); fmt: "png" or "webp" (lossless);
    skip_words / lateral_words: captions with these words get no mirrored image (see the module docstring)."""

    kind: str | None = "spatial"
    fmt: str = "png"
    skip_words: tuple[str, ...] = SKIP_WORDS
    lateral_words: tuple[str, ...] = LATERAL_WORDS

    def __post_init__(self) -> None:
        if self.fmt not in _FORMATS:
            raise ValueError(f"fmt must be one of {sorted(_FORMATS)} (lossless, so the flip is exact; got "
                             f"{self.fmt!r})")


class HorizontalFlip:
    """Adds the mirrored positive for every negative caption that is the positive caption mirrored."""

    name = "flip"
    version = VERSION

    def __init__(self, config: FlipConfig | None = None) -> None:
        self.config = config or FlipConfig()
        self.stats = StageStats()
        self._skip = frozenset(w.lower() for w in self.config.skip_words)
        self._lateral = frozenset(w.lower() for w in self.config.lateral_words)

    def manifest(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        return {"name": self.name, "version": self.version, "config": cfg, "config_hash": config_hash(cfg)}

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample | Quarantined]:
        out: list[Sample | Quarantined] = []
        for s in chunk:
            out.append(s)
            depicted = {im.text for im in s.neg_images if im.text is not None}
            flipped: bytes | None = None
            made = 0
            for t, neg in enumerate(s.neg_texts):
                kind = self.config.kind or neg.kind
                reason = flip_reason(s.caption, neg.text, self._skip, self._lateral)
                if reason == "not left/right":
                    continue
                if reason is not None:
                    self.stats.reject(kind, FILTER, reason)
                    continue
                if t in depicted:
                    self.stats.extra["caption already has an image"] += 1
                    continue
                if flipped is None:
                    try:
                        flipped = mirror_image(s.image, self.config.fmt)
                    except (OSError, ValueError) as e:  # PIL's errors for undecodable or unsavable images
                        self.stats.reject(kind, FILTER, f"undecodable positive ({type(e).__name__})")
                        break
                s.neg_images.append(NegImage(flipped, self.config.fmt, kind, GEN, None, t))
                self.stats.produced[kind] += 1
                self.stats.kept[kind] += 1
                made += 1
            if not made:
                self.stats.samples_without += 1
        return out
