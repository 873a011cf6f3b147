"""Sampling examples: a scene, its positive caption, and its exact negatives, reproducibly per (seed, split, index).

Every example draws from its own generator, seeded by :func:`clipneg.world.splits.scene_seed`, so scene i is the
same whether 10 or 10 million are generated, and shards can be written in any order or resumed.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from clipneg.world.captions import (
    CONNECTORS,
    PREFIXES,
    Caption,
    Description,
    Fact,
    Mention,
    Style,
    converse,
    order_negatives,
    restate,
    scene_satisfies,
)
from clipneg.world.config import WorldConfig
from clipneg.world.negatives import Negative, make_negatives
from clipneg.world.scene import Obj, Scene, relation_holds, sample_cells, sample_offset
from clipneg.world.splits import HeldOut, build_heldout, scene_seed
from clipneg.world.vocab import RELATIONS, SIZES

MAX_RESAMPLE = 1000  # rejection sampling for split constraints; acceptance is ~70 % (seen), ~25 % (held-out)


@dataclass(frozen=True)
class Example:
    split: str
    index: int
    seed: int
    scene: Scene
    caption: Caption
    negatives: tuple[Negative, ...] = ()

    @property
    def text(self) -> str:
        return self.caption.text

    @property
    def key(self) -> str:
        return f"world_{self.split}_{self.index:08d}"

    @property
    def paraphrase(self) -> str | None:
        """The caption restated from its other end (captions.restate), in the caption's style; None without facts."""
        desc = restate(self.caption.desc)
        return None if desc is None else Caption(desc, self.caption.style).text

    @property
    def paraphrase_negatives(self) -> tuple[str, ...]:
        """The caption's and the paraphrase's words in an order that is false of the scene (captions.order_negatives),
        in the caption's style."""
        return tuple(Caption(d, self.caption.style).text for d in order_negatives(self.caption.desc)
                     if not scene_satisfies(self.scene, d, strict=False))


def _zipf(n: int, a: float, order: np.ndarray) -> np.ndarray:
    """Probabilities over n items, the item at order[r] getting weight 1 / (r + 1) ** a."""
    p = np.empty(n)
    p[order] = 1.0 / np.arange(1, n + 1) ** a
    return p / p.sum()


class TypeSampler:
    """Draws (shape, colour) types with Zipf-skewed shape frequencies and per-shape Zipf colour preferences.

    The skew is what real captions look like: some objects are common, and each has its usual colours. It is not
    what keeps minimal pairs rare (concentrating mass on fewer captions makes them slightly more common; see
    WorldConfig.zipf); the size of the combinatorial space does that.
    """

    def __init__(self, cfg: WorldConfig, zipf: float) -> None:
        rng = np.random.default_rng([cfg.seed, 0x5A495046])  # preferences are a property of the world, not a split
        self.shapes, self.colours = cfg.shapes, cfg.colours
        self.p_shape = _zipf(len(self.shapes), zipf, rng.permutation(len(self.shapes)))
        self.p_colour = np.stack([_zipf(len(self.colours), zipf, rng.permutation(len(self.colours)))
                                  for _ in self.shapes])
        self.c_shape = np.cumsum(self.p_shape).tolist()
        self.c_colour = np.cumsum(self.p_colour, axis=1).tolist()

    def sample(self, rng: random.Random, n: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        while len(out) < n:
            s = _draw(self.c_shape, rng.random())
            c = _draw(self.c_colour[s], rng.random())
            if (self.shapes[s], self.colours[c]) not in out:
                out.append((self.shapes[s], self.colours[c]))
        return out


def _relation(a: Obj, b: Obj) -> str:
    rel = [r for r in RELATIONS if relation_holds(a, b, r, strict=True)]
    assert len(rel) == 1, f"linked objects must be aligned: {a} {b}"
    return rel[0]


def _draw(cdf: Sequence[float], u: float) -> int:
    """Inverse-CDF draw (clamped against the last cumulative sum rounding below 1)."""
    return min(bisect.bisect_right(cdf, u), len(cdf) - 1)


@functools.cache
def _prefix_cdf(p_prefix: float) -> tuple[float, ...]:
    # The bare template ("a red circle left of a blue square") is the most common (p_prefix 0.55 leaves it 45 %), as
    # in real alt-text and COCO; the prefixes share the rest evenly. Cached: every scene draws from it.
    n = len(PREFIXES) - 1
    return tuple(itertools.accumulate([1.0 - p_prefix] + [p_prefix / n] * n))


def sample_style(rng: random.Random, cfg: WorldConfig) -> Style:
    prefix = _draw(_prefix_cdf(cfg.p_prefix), rng.random())
    return Style(
        prefix=prefix,
        verb=prefix == 0 and rng.random() < 0.5,  # "there is a circle is left of ..." is not English
        rel_words=cfg.rel_families[rng.randrange(len(cfg.rel_families))],
        connector=rng.randrange(len(CONNECTORS)),
        capital=rng.random() < 0.3,
        period=rng.random() < 0.3,
    )


def sample_scene(rng: random.Random, cfg: WorldConfig, types: TypeSampler) -> tuple[Scene, Caption]:
    """A scene and a positive caption that mentions every object (strictly true by construction)."""
    n = _draw(list(itertools.accumulate(cfg.object_probs)), rng.random()) + 1
    if n == 1 or rng.random() < cfg.p_no_relation:
        structure = "list"
    elif n == 2:
        structure = "pair"
    else:
        structure = "chain" if rng.random() < cfg.p_chain else "pair"
    links = {"list": [], "pair": [(0, 1)], "chain": [(0, 1), (1, 2)]}[structure]
    cells = sample_cells(rng, cfg.grid, n, links)
    sizes = list(SIZES)
    objs = []
    for (shape, colour), cell in zip(types.sample(rng, n), cells, strict=True):
        size = sizes[rng.randrange(len(sizes))]
        objs.append(Obj(shape, colour, size, cell, sample_offset(rng, size, cfg.jitter)))
    grey = rng.randrange(100, 156)  # mid-grey, so that white and black objects both stand out
    r, g, b = (grey + rng.randrange(-8, 9) for _ in range(3))
    scene = Scene(tuple(objs), (r, g, b), rng.getrandbits(31))

    # Sentence order: state each fact from either end ("a left of b" or "b right of a"), so neither the subject
    # position nor the relation word predicts which object is where.
    if structure == "list":
        order = rng.sample(range(n), n)
        facts: list[Fact] = []
    else:
        order = list(range(n))
        facts = [Fact(i, _relation(objs[i], objs[j]), j) for i, j in links]
        if rng.random() < 0.5:
            if structure == "chain":  # read the chain from the other end: c r2' b, b r1' a
                order = [2, 1, 0]
                facts = [Fact(0, converse(facts[1]).rel, 1), Fact(1, converse(facts[0]).rel, 2)]
            else:
                order = [1, 0] + order[2:]
                facts = [Fact(0, converse(facts[0]).rel, 1)]
    mentions = []
    for i in order:
        o = objs[i]
        colour = None if rng.random() < cfg.p_no_colour else o.colour
        size = o.size if rng.random() < cfg.p_size_word else None
        mentions.append(Mention(o.shape, colour, size))
    caption = Caption(Description(tuple(mentions), tuple(facts)), sample_style(rng, cfg), tuple(order))
    assert scene_satisfies(scene, caption.desc, strict=True), (scene, caption)
    return scene, caption


class World:
    """A configured world: ``World(cfg).example("train", 7)`` is always the same example."""

    def __init__(self, cfg: WorldConfig | None = None) -> None:
        self.cfg = cfg or WorldConfig()
        self.heldout: HeldOut = build_heldout(self.cfg)
        self._types = {"train": TypeSampler(self.cfg, self.cfg.zipf),
                       "test": TypeSampler(self.cfg, self.cfg.test_zipf)}

    def _accept(self, split: str, scene: Scene, caption: Caption) -> bool:
        if split == "test_heldout":
            return self.heldout.desc_unseen(caption.desc)
        return not self.heldout.scene_unseen(scene)

    def _clean(self, neg: Description, cf: Scene) -> bool:
        return not self.heldout.desc_unseen(neg) and not self.heldout.scene_unseen(cf)

    def _unseen(self, neg: Description, cf: Scene) -> bool:
        return self.heldout.desc_unseen(neg)

    def example(self, split: str, index: int, *, negatives: bool = True) -> Example:
        seed = scene_seed(self.cfg.seed, split, index)
        rng = random.Random(seed)
        types = self._types["train" if split == "train" else "test"]
        for _ in range(MAX_RESAMPLE):
            scene, caption = sample_scene(rng, self.cfg, types)
            if self._accept(split, scene, caption):
                break
        else:
            raise RuntimeError(f"no {split} scene satisfied the held-out constraints in {MAX_RESAMPLE} draws; "
                               "lower heldout_triple_frac / heldout_colours_per_shape")
        negs: tuple[Negative, ...] = ()
        if negatives:
            # Negatives draw from their own stream, so a scene is identical with and without them.
            neg_rng = random.Random(seed ^ 0x6E6567)
            # Negatives stay on their split's side of the held-out line: seen splits never show a held-out
            # composition (no leak into training; no "unfamiliar, so false" cue in the seen benchmark), and held-out
            # negatives state one too, so that familiarity does not tell the positive from the negative there either.
            accept = self._unseen if split == "test_heldout" else self._clean
            negs = make_negatives(scene, caption, self.cfg, neg_rng, accept)
        return Example(split, index, seed, scene, caption, negs)

    def examples(self, split: str, n: int, *, start: int = 0, negatives: bool = True) -> Iterator[Example]:
        for i in range(start, start + n):
            yield self.example(split, i, negatives=negatives)


def check_example(ex: Example) -> list[str]:
    """What is wrong with an example (empty when it is exact); the invariants every example must keep."""
    problems = []
    if not scene_satisfies(ex.scene, ex.caption.desc, strict=True):
        problems.append(f"positive is not true of its scene: {ex.text!r}")
    back = restate(ex.caption.desc)
    if back is not None and not scene_satisfies(ex.scene, back, strict=True):
        problems.append(f"paraphrase {ex.paraphrase!r} is not true of the scene")
    for neg in ex.negatives:
        if neg.text == ex.text:
            problems.append(f"{neg.kind}: negative equals the positive")
        if scene_satisfies(ex.scene, neg.caption.desc, strict=False):
            problems.append(f"{neg.kind}: negative {neg.text!r} is true of the positive scene")
        if not scene_satisfies(neg.scene, neg.caption.desc, strict=True):
            problems.append(f"{neg.kind}: counterfactual does not show {neg.text!r}")
        if not neg.kind.startswith("add_") and scene_satisfies(neg.scene, ex.caption.desc, strict=False):
            problems.append(f"{neg.kind}: the positive {ex.text!r} is still true of the counterfactual")
    return problems
