"""Converse paraphrases of the rule engine (generators/rules/paraphrase.py) and the world's domain lexicon
(generators/rules/world_lexicon.py): exact outputs on world and real captions, bags of words, and agreement with what
the world itself writes (Example.paraphrase, Example.paraphrase_negatives)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("spacy")
pytest.importorskip("lemminflect")

from clipneg.generators.rules import RuleConfig, RuleGenerator, load_lexicon  # noqa: E402
from clipneg.generators.rules.grammar import bag_of_words  # noqa: E402
from clipneg.generators.rules.world_lexicon import world_lexicons, write_world_lexicons  # noqa: E402

from clipneg.schema import Paraphrase, Sample  # noqa: E402
from clipneg.world import World, world_config  # noqa: E402
from clipneg.world.vocab import REL_WORDS  # noqa: E402

SPATIAL = {"name": "spatial", "version": "1",
           "relations": {"converse": {"on the left of": "on the right of", "to the left of": "to the right of",
                                      "above": "below", "in front of": "behind"}}}


@pytest.fixture(scope="session")
def world_gen(nlp, tmp_path_factory):
    paths = write_world_lexicons(world_config("demo"), tmp_path_factory.mktemp("wlex"))
    return RuleGenerator(RuleConfig(kinds=("replace_rel",), lexicons=tuple(map(str, paths)), wordnet=False), nlp=nlp)


@pytest.fixture(scope="session")
def full_world_gen(nlp, tmp_path_factory):
    paths = write_world_lexicons(world_config("default"), tmp_path_factory.mktemp("wlex_full"))
    return RuleGenerator(RuleConfig(kinds=("replace_rel",), lexicons=tuple(map(str, paths)), wordnet=False), nlp=nlp)


@pytest.fixture(scope="session")
def real_gen(nlp, tmp_path_factory):
    path = tmp_path_factory.mktemp("slex") / "spatial.json"
    path.write_text(json.dumps(SPATIAL))
    return RuleGenerator(RuleConfig(kinds=("replace_obj",), lexicons=(str(path),), wordnet=False), nlp=nlp)


def one(gen: RuleGenerator, caption: str):
    (paras,) = gen.paraphrases([caption])
    return (paras[0].text, paras[0].negatives) if paras else None


@pytest.mark.parametrize("caption, paraphrase, negatives", [
    ("a red circle left of a blue square", "a blue square right of a red circle",
     ("a red circle right of a blue square", "a blue square left of a red circle")),
    ("A small heart is above a large green cross.", "A large green cross is below a small heart.",
     ("A small heart is below a large green cross.", "A large green cross is above a small heart.")),
    ("a pink star right of a circle and a white triangle", "a circle left of a pink star and a white triangle",
     ("a pink star left of a circle and a white triangle", "a circle right of a pink star and a white triangle")),
    ("a red triangle right of a small heart, and the small heart is below a purple star",
     "a purple star above a small heart, and the small heart is left of a red triangle",
     ("a red triangle left of a small heart, and the small heart is above a purple star",
      "a purple star below a small heart, and the small heart is right of a red triangle")),
])
def test_world_captions_exact(world_gen, caption, paraphrase, negatives):
    """Given a world caption with relations, when the rule engine restates it, then the text is exactly the converse
    statement (chains from their other end) and the negatives are the word-order negatives, in the world's order."""
    assert one(world_gen, caption) == (paraphrase, negatives)


@pytest.mark.parametrize("caption, paraphrase, negatives", [
    ("a cup on the left of a plate", "a plate on the right of a cup",
     ("a cup on the right of a plate", "a plate on the left of a cup")),
    ("A black dog is in front of a red car.", "A red car is behind a black dog.",
     ("A black dog is behind a red car.", "A red car is in front of a black dog.")),
    ("A lamp above a table.", "A table below a lamp.", ("A lamp below a table.", "A table above a lamp.")),
    ("the tall man to the left of the small boy", "the small boy to the right of the tall man",
     ("the tall man to the right of the small boy", "the small boy to the left of the tall man")),
])
def test_real_captions_exact(real_gen, caption, paraphrase, negatives):
    assert one(real_gen, caption) == (paraphrase, negatives)


@pytest.mark.parametrize("caption, why", [
    ("a cat on a couch", "no converse"),                      # a relation, but no converse in the lexicon
    ("a cat sitting on the left of a dog", "several relations"),
    ("two cats are above a dog", "agreement"),                # "a dog are below two cats"
    ("a bowl of fruit on the left of a plate", "noun phrase inside a larger one"),
    ("a cup on the left of a plate of food", "noun phrase inside a larger one"),
    ("a dog and a cat", "no relation"),
])
def test_real_captions_without_paraphrase(real_gen, caption, why):
    before = real_gen.stats.extra[f"paraphrase: {why}"]
    assert one(real_gen, caption) is None
    assert real_gen.stats.extra[f"paraphrase: {why}"] == before + 1


def test_negatives_keep_the_bags_of_words(world_gen, real_gen):
    """The first negative has the paraphrase's words, the second the caption's: only word order tells them apart."""
    world = World(world_config("demo"))
    captions = [ex.text for ex in world.examples("train", 80, negatives=False)]
    captions += ["a cup on the left of a plate", "A black dog is in front of a red car."]
    n = 0
    for gen in (world_gen, real_gen):
        for caption, paras in zip(captions, gen.paraphrases(captions), strict=True):
            for p in paras:
                n += 1
                assert bag_of_words(p.negatives[0]) == bag_of_words(p.text)
                assert bag_of_words(p.negatives[1]) == bag_of_words(caption)
                assert p.gen == "rules" and p.seed == 0
    assert n > 50


@pytest.mark.parametrize("preset", ["demo", "default"])
def test_world_captions_match_the_world(preset, world_gen, full_world_gen):
    """On 300 world captions (demo: one wording; default: four wordings and prefixes), the rule engine's paraphrase is
    the world's own (Example.paraphrase) for every caption with a relation, and its negatives contain the world's
    word-order negatives (the world drops one that is true of the scene; the rules cannot see the scene)."""
    gen = world_gen if preset == "demo" else full_world_gen
    world = World(world_config(preset))
    exs = list(world.examples("train", 300, negatives=False))
    paras = gen.paraphrases([ex.text for ex in exs])
    with_rel = 0
    for ex, ps in zip(exs, paras, strict=True):
        if ex.paraphrase is None:
            assert ps == []
            continue
        with_rel += 1
        assert len(ps) == 1, ex.text
        assert ps[0].text == ex.paraphrase
        assert set(ex.paraphrase_negatives) <= set(ps[0].negatives), ex.text
    assert with_rel > 150


def test_samples_keep_existing_paraphrases(world_gen):
    """A sample that already has the paraphrase (clipneg world shards) does not get it twice."""
    ex = next(e for e in World(world_config("demo")).examples("train", 40, negatives=False) if e.paraphrase)
    s = Sample(key="k", image=b"x", image_ext="png", caption=ex.text)
    s.paraphrases.append(Paraphrase(ex.paraphrase, "world", 0, ex.paraphrase_negatives))
    world_gen([s])
    assert [p.gen for p in s.paraphrases] == ["world"]


def test_world_lexicon_files(tmp_path):
    """The shipped files are what the builder makes for the full world, and load over the built-in lexicon with the
    world's words in the world's groups only."""
    from clipneg.generators.rules.lexicon import BUILTIN

    free, world = world_lexicons(world_config("default"))
    folder = BUILTIN.parent
    assert json.loads((folder / "world_free.json").read_text()) == free
    assert json.loads((folder / "world.json").read_text()) == world
    lex = load_lexicon([folder / "world_free.json", folder / "world.json"])
    assert lex.attributes.candidates("red") == sorted(c for c in world_config("default").colours if c != "red")
    assert lex.attributes.candidates("small") == ["large"]
    assert lex.objects.groups_of("ring") == {"world_shapes"}
    # With all four wordings "above" meets other families' phrases (and "over", its built-in synonym, family 2's);
    # a world of one wording (the demo's) gets only its own, as its negatives do.
    phrases = {p for fam in REL_WORDS for p in fam.values()}
    assert "below" in lex.relations.candidates("above") and set(lex.relations.candidates("above")) <= phrases
    demo = load_lexicon([tmp_path / n for n in ("world_free.json", "world.json")]
                        if write_world_lexicons(world_config("demo"), tmp_path) else [])
    assert demo.relations.candidates("above") == ["below", "left of", "right of"]
    assert demo.relations.candidates("left of") == ["above", "below", "right of"]
    assert lex.relations.extra["converse"]["left of"] == "right of"
