"""Exact counterfactual images for the built-in world: parse a negative caption, render the scene that makes it true.

For a world sample (its metadata names the split and index, so the scene and the caption's binding of words to
objects are regenerated exactly) and any negative caption (the rule engine's, an LLM's), the caption is parsed with
the world's grammar and :func:`clipneg.world.negatives.counterfactual` makes the minimally edited scene of which it is
strictly true; the image is rendered with the world's own renderer, so a rule-engine swap_att negative gets the very
pixels of the world's exact swap_att counterfactual. This is where the generators are checked against known truth:

- a negative caption that does not parse gets no image ("does not parse");
- one that is true of the positive scene, even read loosely, is a false negative: it gets no image, and with
  ``drop_false_negatives`` it is removed from the sample's negative captions (the world knows; real data does not);
- one that no minimal edit makes true gets no image, with the reason;
- the held-out line is kept as the world keeps it for its own negatives: on the train and test splits a negative
  caption that states a held-out composition is removed, and a counterfactual scene that shows one gets no image (no
  leak into training, no "unfamiliar, so false" cue in the seen benchmark); on test_heldout a negative must state one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clipneg.schema import NegImage, NegText, Sample
from clipneg.shards import Quarantined
from clipneg.world import World, parse_caption, scene_satisfies, world_config
from clipneg.world.captions import CaptionParseError
from clipneg.world.negatives import NoCounterfactual, counterfactual
from clipneg.world.render import Renderer, encode_image

from ..base import StageStats, config_hash, stable_seed

GEN = "render"
HELDOUT_DRAWS = 16  # redraws of an edit's random part before giving up on its image


@dataclass(frozen=True)
class RenderConfig:
    """world: the WorldConfig fields the shards were made with (their manifest's ``info.world``)."""

    world: Mapping[str, Any] = field(default_factory=dict)
    k_image: int = 1  # images per sample, for its first negative captions that get one
    kinds: tuple[str, ...] | None = None  # negative kinds to depict (None: every kind)
    seed: int = 0
    drop_false_negatives: bool = True

    def __post_init__(self) -> None:
        if self.k_image < 0:
            raise ValueError(f"k_image must be >= 0 (got {self.k_image})")


class WorldRender:
    """A Stage (clipneg.generators.base): world samples in, with exact counterfactual images of their negatives."""

    name = GEN
    version = "1"

    def __init__(self, config: RenderConfig) -> None:
        self.config = config
        self.world = World(world_config("default", **dict(config.world)))
        self.renderer = Renderer(self.world.cfg)
        self.stats = StageStats()

    def manifest(self) -> dict[str, Any]:
        return {"world": self.world.cfg.to_json(), "world_hash": config_hash(self.world.cfg.to_json()),
                "k_image": self.config.k_image, "kinds": self.config.kinds, "seed": self.config.seed,
                "drop_false_negatives": self.config.drop_false_negatives}

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample | Quarantined]:
        return [self._one(s) for s in chunk]

    def _one(self, sample: Sample) -> Sample:
        meta = sample.meta or {}
        if "split" not in meta or "index" not in meta:
            self.stats.samples_without += 1
            self.stats.reject("all", GEN, "not a world sample (no split/index in its metadata)")
            return sample
        ex = self.world.example(meta["split"], int(meta["index"]), negatives=False)
        if ex.text != sample.caption:
            self.stats.samples_without += 1
            self.stats.reject("all", GEN, "caption differs from the world's (another world config?)")
            return sample
        kept: list[NegText] = []
        remap: dict[int, int] = {}
        images: list[tuple[int, bytes, str]] = []  # (index into kept, data, kind)
        for j, neg in enumerate(sample.neg_texts):
            try:
                desc = parse_caption(neg.text)
            except CaptionParseError:
                desc = None
            if desc is not None and scene_satisfies(ex.scene, desc, strict=False):
                self.stats.reject(neg.kind, GEN, "false negative: true of the positive scene")
                if self.config.drop_false_negatives:
                    continue
            if desc is not None and self.world.heldout.desc_unseen(desc) != (ex.split == "test_heldout"):
                self.stats.reject(neg.kind, GEN, "held-out line: the caption states a held-out composition"
                                  if ex.split != "test_heldout" else "held-out line: no held-out composition stated")
                continue
            remap[j] = len(kept)
            kept.append(neg)
            wanted = self.config.kinds is None or neg.kind in self.config.kinds
            if len(images) >= self.config.k_image or not wanted or any(im.text == j for im in sample.neg_images):
                continue
            self.stats.produced[neg.kind] += 1
            if desc is None:
                self.stats.reject(neg.kind, GEN, "does not parse")
                continue
            cf, reason = self._counterfactual(sample, ex, neg, desc)
            if cf is None:
                self.stats.reject(neg.kind, GEN, reason)
                continue
            data = encode_image(self.renderer.render(cf), "png", png_level=self.world.cfg.png_level)
            images.append((len(kept) - 1, data, neg.kind))
        # Images already attached keep depicting the same captions (a dropped caption takes its image along).
        old_images = [NegImage(im.data, im.ext, im.kind, im.gen, im.seed, remap.get(im.text) if im.text is not None
                               else None, im.score)
                      for im in sample.neg_images if im.text is None or im.text in remap]
        sample.neg_texts = kept
        sample.neg_images = old_images + [NegImage(data, "png", kind, GEN, self.config.seed, text=t)
                                          for t, data, kind in images]
        for _, _, kind in images:
            self.stats.kept[kind] += 1
        if not images:
            self.stats.samples_without += 1
        return sample

    def _counterfactual(self, sample: Sample, ex: Any, neg: NegText, desc: Any) -> tuple[Any, str]:
        """The scene to draw, or None and the reason. The random part of an edit (where an added object goes, which
        way a moved one steps) is drawn again when it would show a held-out composition, as the world's own
        negatives are; the first draw keeps the seed of (sample, caption, kind, seed)."""
        for draw in range(HELDOUT_DRAWS):
            extra = (draw,) if draw else ()
            rng = random.Random(stable_seed(sample.key, neg.text, neg.kind, self.config.seed, *extra))
            try:
                cf = counterfactual(ex.scene, ex.caption, desc, self.world.cfg, rng)
            except NoCounterfactual as e:
                return None, f"no counterfactual: {e}"
            if not neg.kind.startswith("add_") and scene_satisfies(cf, ex.caption.desc, strict=False):
                return None, "the positive stays true of the counterfactual"
            if ex.split == "test_heldout" or not self.world.heldout.scene_unseen(cf):
                return cf, ""
        return None, "held-out line: every counterfactual drawn shows a held-out composition"
