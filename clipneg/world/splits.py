"""Held-out compositions and per-example seeds: what each split may contain.

- ``train``: never contains a held-out (shape, colour) pair or a held-out (shape, relation, shape) triple, not in
  the positive scene, not in any relation that holds even loosely between any two of its objects, and not in its
  negatives (captions or counterfactual images), so nothing about a held-out composition leaks into training.
- ``test``: the same compositions as training ("seen"), different scenes.
- ``test_heldout``: every positive caption states at least one held-out composition ("unseen"), to measure
  compositional generalisation.

Held-out triples are closed under the converse: holding out "circle left of square" also holds out
"square right of circle", since both describe the same picture.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from clipneg.world.captions import Description
from clipneg.world.config import WorldConfig
from clipneg.world.scene import Scene, lenient_relations
from clipneg.world.vocab import INVERSE

SPLITS: tuple[str, ...] = ("train", "test", "test_heldout")
_SPLIT_CODE = {"train": 0, "test": 1, "test_heldout": 2}
_HELDOUT_STREAM = 0x48454C44  # a fixed stream id, so the held-out set depends on the seed only


def scene_seed(seed: int, split: str, index: int) -> int:
    """The seed of scene ``index`` of ``split``: independent of how many scenes are generated, or in what order.

    A hash (stable across runs and platforms, unlike ``hash()``) of (seed, split, index), 63 bits.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS} (got {split!r})")
    digest = hashlib.blake2b(f"clipneg.world:{seed}:{split}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class HeldOut:
    pairs: frozenset[tuple[str, str]]  # (shape, colour)
    triples: frozenset[tuple[str, str, str]]  # (shape, relation, shape)

    def scene_unseen(self, scene: Scene) -> bool:
        """True if the scene shows a held-out composition anywhere (relations read loosely, all object pairs)."""
        objs = scene.objects
        if any((o.shape, o.colour) in self.pairs for o in objs):
            return True
        for i, a in enumerate(objs):
            for b in objs[i + 1:]:
                # Triples are closed under the converse, so one direction per pair suffices.
                if any((a.shape, r, b.shape) in self.triples for r in lenient_relations(a, b)):
                    return True
        return False

    def desc_unseen(self, desc: Description) -> bool:
        """True if the description states a held-out composition."""
        ms = desc.mentions
        if any(m.colour is not None and (m.shape, m.colour) in self.pairs for m in ms):
            return True
        return any((ms[f.a].shape, f.rel, ms[f.b].shape) in self.triples for f in desc.facts)

    def to_json(self) -> dict[str, list[list[str]]]:
        return {"pairs": sorted(list(p) for p in self.pairs), "triples": sorted(list(t) for t in self.triples)}


def build_heldout(cfg: WorldConfig) -> HeldOut:
    """Hold out ``heldout_colours_per_shape`` colours of every shape (spread evenly over colours, so every colour
    and every shape still occurs in training) and a fraction of the relation triples."""
    rng = np.random.default_rng([cfg.seed, _HELDOUT_STREAM])
    shapes, colours = list(cfg.shapes), list(cfg.colours)
    shape_order = rng.permutation(len(shapes))
    colour_order = rng.permutation(len(colours))
    pairs = {
        (shapes[s], colours[colour_order[(rank + t * len(shapes)) % len(colours)]])
        for rank, s in enumerate(shape_order)
        for t in range(cfg.heldout_colours_per_shape)
    }
    canonical = [(a, r, b) for a in shapes for r in ("left", "above") for b in shapes]
    n = int(round(cfg.heldout_triple_frac * len(canonical)))
    chosen = [canonical[i] for i in rng.choice(len(canonical), size=n, replace=False)]
    triples = {t for a, r, b in chosen for t in ((a, r, b), (b, INVERSE[r], a))}
    return HeldOut(frozenset(pairs), frozenset(triples))
