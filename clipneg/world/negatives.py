"""Exact hard negatives of every SugarCrepe kind, each with its counterfactual scene.

Every kind edits the positive's Description and makes the matching edit to the scene, keeping everything else
(positions, sizes, jitter, background) unless the kind needs it changed:

| kind        | caption edit                                 | counterfactual scene                                 |
|-------------|----------------------------------------------|------------------------------------------------------|
| replace_obj | one mention's shape -> another shape          | that object's shape changes                           |
| replace_att | one mention's colour (or size) -> another     | that object's colour (or size) changes                |
| replace_rel | one fact's relation -> another relation       | the two objects move (fewest cell moves) so it holds  |
| swap_obj    | two mentions exchange shapes, adjectives stay | the two objects exchange shapes; colours, sizes stay  |
| swap_att    | two mentions exchange colours (or sizes)      | the two objects exchange colours (or sizes)           |
| add_obj     | an extra object "... and a green star" (*)    | that object is added in a free cell                   |
| add_att     | a bare mention gains a size/colour it lacks   | the object takes that size/colour                     |

swap_obj follows SugarCrepe (the nouns trade places, adjectives keep their positions in the sentence): from "a red
circle left of a blue square" it makes "a red square left of a blue circle". That is a different claim from
swap_att's "a blue circle left of a red square" (which object is on the left differs), and the two counterfactual
images differ accordingly.

(*) only for captions of 1-2 objects: a positive never names 4 objects, so a 4-object negative would be a text cue.

A candidate is accepted only if it is exact (see :func:`check`): the negative is false in the positive scene even
under the lenient reading, true in its counterfactual under the strict reading, and (replace_* and swap_*) the
positive is false in the counterfactual, so the counterfactual and the positive form a clean pair in both
directions. For add_* the counterfactual still contains everything the positive says (it only adds), as in
SugarCrepe.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from clipneg.schema import SUGARCREPE_KINDS
from clipneg.world.captions import Caption, Description, Fact, Mention, meaning_key, scene_satisfies
from clipneg.world.config import WorldConfig
from clipneg.world.scene import STRICT_MIN, STRICT_RATIO, Obj, Scene, free_cells, is_valid, sample_offset
from clipneg.world.vocab import AXIS, RELATIONS, SIGN, SIZES

MAX_TRIES = 24  # candidates tried per kind before giving up on it for this scene
MAX_MENTIONS = 3  # the most objects a positive caption mentions (scenes have 1-3 objects)

# (negative description, counterfactual scene)
Candidate = tuple[Description, Scene]
Filter = Callable[[Description, Scene], bool]


@dataclass(frozen=True)
class Negative:
    kind: str
    caption: Caption  # same style and binding as the positive
    scene: Scene  # the counterfactual scene that the negative caption describes

    @property
    def text(self) -> str:
        return self.caption.text


def check(kind: str, scene: Scene, positive: Description, neg: Description, cf: Scene, grid: int) -> bool:
    """Whether (neg, cf) is an exact negative of kind ``kind`` for the positive (scene, description)."""
    if neg == positive or not is_valid(cf, grid):
        return False
    if scene_satisfies(scene, neg, strict=False):  # the negative must be false, even read loosely
        return False
    if not scene_satisfies(cf, neg, strict=True):  # and plainly true in its counterfactual
        return False
    if not kind.startswith("add_") and scene_satisfies(cf, positive, strict=False):
        return False
    return True


def _set(objs: tuple[Obj, ...], i: int, obj: Obj) -> tuple[Obj, ...]:
    out = list(objs)
    out[i] = obj
    return tuple(out)


def _shuffled(rng: random.Random, items: list) -> list:
    """A random order of (at most MAX_TRIES of) ``items``: no kind ever tries more candidates than that."""
    return rng.sample(items, min(len(items), MAX_TRIES))


def _replace_obj(scene: Scene, cap: Caption, cfg: WorldConfig, rng: random.Random) -> Iterator[Candidate]:
    ms, objs = cap.desc.mentions, scene.objects
    options = [(k, s) for k in range(len(ms)) for s in cfg.shapes if s != ms[k].shape]
    for k, s in _shuffled(rng, options):
        i = cap.binding[k]
        yield (cap.desc.with_mention(k, ms[k]._replace(shape=s)),
               scene.with_objects(_set(objs, i, objs[i]._replace(shape=s))))


def _replace_att(scene: Scene, cap: Caption, cfg: WorldConfig, rng: random.Random) -> Iterator[Candidate]:
    ms, objs = cap.desc.mentions, scene.objects
    colour = [(k, c) for k in range(len(ms)) if ms[k].colour for c in cfg.colours if c != ms[k].colour]
    size = [(k, s) for k in range(len(ms)) if ms[k].size for s in SIZES if s != ms[k].size]
    # Colour first: it is the attribute a bag-of-words model most often gets away with ignoring.
    for k, c in _shuffled(rng, colour):
        i = cap.binding[k]
        yield (cap.desc.with_mention(k, ms[k]._replace(colour=c)),
               scene.with_objects(_set(objs, i, objs[i]._replace(colour=c))))
    for k, s in _shuffled(rng, size):
        i = cap.binding[k]
        yield cap.desc.with_mention(k, ms[k]._replace(size=s)), scene.with_objects(_set(objs, i, objs[i].resized(s)))


def _holds_at(a: Obj, na: tuple[int, int], b: Obj, nb: tuple[int, int], rel: str) -> bool:
    """relation_holds(strict) for a and b moved to cells na and nb, without building the moved objects."""
    d = (nb[1] + b.offset[0] - na[1] - a.offset[0], nb[0] + b.offset[1] - na[0] - a.offset[1])
    along = d[AXIS[rel]] * SIGN[rel]
    return along >= STRICT_MIN and along >= STRICT_RATIO * abs(d[1 - AXIS[rel]])


def _placements(scene: Scene, ia: int, ib: int, rel: str, cfg: WorldConfig, rng: random.Random
                ) -> Iterator[Scene]:
    """Scenes with objects ia and ib moved so that ``rel`` holds strictly between them, fewest cell moves first.

    Move as little as possible: new cells for the two objects ordered by total Manhattan distance moved (random
    tie-break). Offsets travel with their objects, so only cells change.
    """
    objs = scene.objects
    a, b = objs[ia], objs[ib]
    cells = [(r, c) for r in range(cfg.grid) for c in range(cfg.grid)]
    others = {o.cell for j, o in enumerate(objs) if j not in (ia, ib)}
    free = [c for c in cells if c not in others]
    moves = [(na, nb) for na in free for nb in free if na != nb and _holds_at(a, na, b, nb, rel)]
    cost = [abs(na[0] - a.cell[0]) + abs(na[1] - a.cell[1]) + abs(nb[0] - b.cell[0]) + abs(nb[1] - b.cell[1])
            for na, nb in moves]
    for m in sorted(range(len(moves)), key=lambda m: (cost[m], rng.random())):
        na, nb = moves[m]
        yield scene.with_objects(_set(_set(objs, ia, a._replace(cell=na)), ib, b._replace(cell=nb)))


def _replace_rel(scene: Scene, cap: Caption, cfg: WorldConfig, rng: random.Random) -> Iterator[Candidate]:
    desc = cap.desc
    options = [(f, r) for f in range(len(desc.facts)) for r in RELATIONS if r != desc.facts[f].rel]
    for f, rel in _shuffled(rng, options):
        fact = desc.facts[f]
        facts = list(desc.facts)
        facts[f] = Fact(fact.a, rel, fact.b)
        neg = Description(desc.mentions, tuple(facts))
        found = 0
        for cf in _placements(scene, cap.binding[fact.a], cap.binding[fact.b], rel, cfg, rng):
            if scene_satisfies(cf, neg, strict=True):  # the other fact of a chain must survive the move
                yield neg, cf
                found += 1
                if found == 3:  # a few cheapest placements per relation; then try another relation
                    break


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def _swap(cap: Caption, scene: Scene, k: int, m: int, field: str) -> Candidate:
    """Mentions k and m exchange ``field`` in the caption, and their objects exchange it in the scene."""
    ms, objs = cap.desc.mentions, scene.objects
    desc = cap.desc.with_mention(k, ms[k]._replace(**{field: getattr(ms[m], field)}))
    desc = desc.with_mention(m, ms[m]._replace(**{field: getattr(ms[k], field)}))
    i, j = cap.binding[k], cap.binding[m]
    if field == "size":
        oi, oj = objs[i].resized(objs[j].size), objs[j].resized(objs[i].size)
    else:
        oi = objs[i]._replace(**{field: getattr(objs[j], field)})
        oj = objs[j]._replace(**{field: getattr(objs[i], field)})
    return desc, scene.with_objects(_set(_set(objs, i, oi), j, oj))


def _swap_obj(scene: Scene, cap: Caption, cfg: WorldConfig, rng: random.Random) -> Iterator[Candidate]:
    ms = cap.desc.mentions
    for k, m in _shuffled(rng, [(k, m) for k, m in _pairs(len(ms)) if ms[k].shape != ms[m].shape]):
        yield _swap(cap, scene, k, m, "shape")


def _swap_att(scene: Scene, cap: Caption, cfg: WorldConfig, rng: random.Random) -> Iterator[Candidate]:
    ms = cap.desc.mentions
    pairs = _pairs(len(ms))
    colour = [(k, m) for k, m in pairs if ms[k].colour and ms[m].colour and ms[k].colour != ms[m].colour]
    size = [(k, m) for k, m in pairs if ms[k].size and ms[m].size and ms[k].size != ms[m].size]
    for k, m in _shuffled(rng, colour):
        yield _swap(cap, scene, k, m, "colour")
    for k, m in _shuffled(rng, size):
        yield _swap(cap, scene, k, m, "size")


def _add_obj(scene: Scene, cap: Caption, cfg: WorldConfig, rng: random.Random) -> Iterator[Candidate]:
    # Positives mention at most MAX_MENTIONS objects. A negative with one more would be spotted by counting nouns,
    # a text-only shortcut, so add_obj only applies to captions with room for another object.
    if len(cap.desc.mentions) >= MAX_MENTIONS:
        return
    present = {(o.shape, o.colour) for o in scene.objects}
    cells = free_cells(scene, cfg.grid)
    options = [(s, c) for s in cfg.shapes for c in cfg.colours if (s, c) not in present]
    if not cells:
        return
    for s, c in _shuffled(rng, options):
        size = list(SIZES)[rng.randrange(len(SIZES))]
        cell = cells[rng.randrange(len(cells))]
        mention = Mention(s, c, size if rng.random() < cfg.p_size_word else None)
        new = Obj(s, c, size, cell, sample_offset(rng, size, cfg.jitter))
        yield Description(cap.desc.mentions + (mention,), cap.desc.facts), scene.with_objects(scene.objects + (new,))


def _add_att(scene: Scene, cap: Caption, cfg: WorldConfig, rng: random.Random) -> Iterator[Candidate]:
    ms, objs = cap.desc.mentions, scene.objects
    options: list[tuple[int, str, str]] = []
    for k, m in enumerate(ms):
        obj = objs[cap.binding[k]]
        if m.size is None:
            options += [(k, "size", s) for s in SIZES if s != obj.size]
        if m.colour is None:
            options += [(k, "colour", c) for c in cfg.colours if c != obj.colour]
    for k, what, value in _shuffled(rng, options):
        i = cap.binding[k]
        obj = objs[i].resized(value) if what == "size" else objs[i]._replace(colour=value)
        yield cap.desc.with_mention(k, ms[k]._replace(**{what: value})), scene.with_objects(_set(objs, i, obj))


_GENERATORS = {
    "replace_obj": _replace_obj,
    "replace_att": _replace_att,
    "replace_rel": _replace_rel,
    "swap_obj": _swap_obj,
    "swap_att": _swap_att,
    "add_obj": _add_obj,
    "add_att": _add_att,
}


def make_negative(kind: str, scene: Scene, cap: Caption, cfg: WorldConfig, rng: random.Random,
                  accept: Filter | None = None) -> Negative | None:
    """The first exact candidate of ``kind`` that ``accept`` also allows (e.g. no held-out composition), or None."""
    for n, (neg, cf) in enumerate(_GENERATORS[kind](scene, cap, cfg, rng)):
        if n >= MAX_TRIES:
            break
        if check(kind, scene, cap.desc, neg, cf, cfg.grid) and (accept is None or accept(neg, cf)):
            binding = cap.binding + ((len(cf.objects) - 1,) if kind == "add_obj" else ())
            return Negative(kind, Caption(neg, cap.style, binding), cf)
    return None


def make_negatives(scene: Scene, cap: Caption, cfg: WorldConfig, rng: random.Random,
                   accept: Filter | None = None, kinds: tuple[str, ...] = SUGARCREPE_KINDS) -> tuple[Negative, ...]:
    """At most one negative per kind, in ``kinds`` order; kinds that cannot apply (swap with one object) are absent.

    The negatives of one scene all mean different things. This matters for swap_obj and swap_att: when two objects
    stand in the same relation to a third ("a X left of b, and b right of a Y"), exchanging their nouns and
    exchanging their adjectives say the same thing, and a second copy of a negative teaches nothing new.
    """
    out: list[Negative] = []
    meanings = {meaning_key(cap.desc)}

    def distinct(neg: Description, cf: Scene) -> bool:
        return meaning_key(neg) not in meanings and (accept is None or accept(neg, cf))

    # swap_att goes before swap_obj: where the two coincide (objects listed without relations), keep the attribute
    # swap, the canonical binding test.
    for kind in sorted(kinds, key=lambda k: (k == "swap_obj", SUGARCREPE_KINDS.index(k))):
        found = make_negative(kind, scene, cap, cfg, rng, distinct)
        if found is not None:
            out.append(found)
            meanings.add(meaning_key(found.caption.desc))
    return tuple(sorted(out, key=lambda n: kinds.index(n.kind)))


class NoCounterfactual(ValueError):
    """A description that no minimal edit of the scene makes true (the reason says which part failed)."""


def counterfactual(scene: Scene, cap: Caption, neg: Description, cfg: WorldConfig, rng: random.Random) -> Scene:
    """The minimally edited scene of which ``neg`` is strictly true, for a negative made by anyone (a rule engine, an
    LLM): the inverse of reading a caption off a scene, as the exact negatives above do for their own edits.

    Mentions are aligned with the positive's by position (one extra trailing mention is an added object). Each
    aligned object takes the shape, colour and size its mention now names (so exchanging two mentions' colours
    exchanges the objects' colours, as swap_att's own counterfactual does); a changed relation moves its two objects
    the fewest cells, as replace_rel does; an added object is drawn into a free cell. Raises NoCounterfactual when
    the mentions or facts cannot be aligned or the edited scene is not valid or not true.
    """
    pos = cap.desc
    if len(neg.mentions) not in (len(pos.mentions), len(pos.mentions) + 1):
        raise NoCounterfactual(f"{len(neg.mentions)} objects named where the scene's caption names "
                               f"{len(pos.mentions)}")
    if [(f.a, f.b) for f in neg.facts] != [(f.a, f.b) for f in pos.facts]:
        raise NoCounterfactual("the relations link other objects than the caption's")
    objs = list(scene.objects)
    for k, m in enumerate(neg.mentions[:len(pos.mentions)]):
        i = cap.binding[k]
        obj = objs[i]._replace(shape=m.shape, colour=m.colour or objs[i].colour)
        objs[i] = obj.resized(m.size) if m.size and m.size != obj.size else obj
    if len(neg.mentions) > len(pos.mentions):
        free = free_cells(scene, cfg.grid)
        if not free:
            raise NoCounterfactual("no free cell for the added object")
        m = neg.mentions[-1]
        size = m.size or list(SIZES)[rng.randrange(len(SIZES))]
        colour = m.colour or cfg.colours[rng.randrange(len(cfg.colours))]
        objs.append(Obj(m.shape, colour, size, free[rng.randrange(len(free))], sample_offset(rng, size, cfg.jitter)))
    cf = scene.with_objects(tuple(objs))
    changed = [f for f, (old, new) in enumerate(zip(pos.facts, neg.facts, strict=True)) if old.rel != new.rel]
    if len(changed) > 1:
        raise NoCounterfactual("more than one relation changed")
    if changed:
        fact = neg.facts[changed[0]]
        cf = next((c for c in _placements(cf, cap.binding[fact.a], cap.binding[fact.b], fact.rel, cfg, rng)
                   if scene_satisfies(c, neg, strict=True)), None)
        if cf is None:
            raise NoCounterfactual(f"no placement makes {fact.rel!r} hold")
    if not is_valid(cf, cfg.grid):
        raise NoCounterfactual("the edited scene is not valid (objects overlap or leave the grid)")
    if not scene_satisfies(cf, neg, strict=True):
        raise NoCounterfactual("the edited scene still does not show the caption")
    return cf
