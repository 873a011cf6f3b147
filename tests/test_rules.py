"""The rule generator (clipneg.generators.rules): exact edits per kind, properties over many captions, robustness,
determinism, the lexicon. spaCy is loaded once per session; nothing reads ../shared."""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import Counter

import pytest

pytest.importorskip("spacy")
pytest.importorskip("lemminflect")
pytest.importorskip("nltk")

from clipneg.generators.base import Stage  # noqa: E402
from clipneg.generators.rules import (  # noqa: E402
    ALL_KINDS,
    BUILTIN,
    SUGARCREPE_KINDS,
    LexiconError,
    RuleConfig,
    RuleGenerator,
    load_lexicon,
)
from clipneg.generators.rules.grammar import (  # noqa: E402
    article_for,
    bag_of_words,
    inflect_noun,
    inflect_verb,
    lemma,
    words,
)

from clipneg.schema import KIND_ID, KIND_LIST, Sample  # noqa: E402

# A tiny lexicon whose candidates are known, so every expected output is exact.
TINY = {
    "name": "tiny", "version": "0.1",
    "objects": {
        "groups": {"animals": {"add": True, "members": ["dog", "elephant"]},
                   "people": {"add": True, "members": ["man", "woman", "person"]},
                   "vehicles": {"add": True, "members": ["bike", "car"]},
                   "furniture": {"add": False, "members": ["mat", "bed"]}},
        "synonyms": [["man", "guy", "gentleman"]],
        "hypernyms": {"person": ["man", "woman"]},
    },
    "attributes": {"groups": {"colour": {"add": True, "applies_to": ["*"], "members": ["red", "light blue", "orange"]},
                              "number": {"number": True, "applies_to": ["*"], "members": ["two", "three"]}}},
    "relations": {"groups": {"vertical": {"pos": "ADP", "members": ["on", "under"]},
                             "posture": {"pos": "VERB", "members": ["sit", "stand"]},
                             "vehicle_use": {"pos": "VERB", "members": ["ride", "push"]}}},
}

CAPTIONS = [
    "A man riding a red bike down the street.", "Two dogs are sitting on a wooden bench.",
    "A woman holding an umbrella next to a brown horse.", "cars are stopped at a traffic light on a highway",
    "A cat laying on a bed with a black and white blanket.", "A plate of food with broccoli and carrots.",
    "A young boy throwing a frisbee in the park.", "Two giraffes standing in a grassy field near trees.",
    "A kitchen with a stainless steel refrigerator and white cabinets.", "A bus parked in front of a tall building.",
    "A little girl eating a slice of pizza.", "A herd of sheep grazing on a green hill.",
    "Three people on skis standing on a snowy slope.", "A laptop computer sitting on top of a wooden desk.",
    "A clock tower in the middle of a city.", "An elephant walking through the tall grass.",
    "A man in a light blue shirt holding a tennis racket.", "A small dog sleeping under a table.",
    "Several boats docked at a pier on a lake.", "A surfer riding a large wave in the ocean.",
    "A woman sitting at a table with a cup of coffee.", "The baseball player swings the bat at the ball.",
    "A black cat sitting inside a bathroom sink.", "A red fire hydrant on the side of the road.",
    "THERE ARE WOMEN THAT ARE LAUGHING UNDER THE UMBRELLA", "A pizza with cheese and tomatoes on a white plate!",
    "A man and a woman are cutting a cake.", "Two zebras grazing next to a giraffe.",
    "A bowl of oranges and apples on a table.", "A teddy bear sitting on a bed next to a pillow.",
    "A boy holding a kite and watching a dog.", "A young boy with a red kite on a grassy hill.",
    "A red car parked next to a blue truck.", "A white dog and a black cat on a small bed.",
]


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("lex") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="session")
def tiny_lex(tiny_path):
    return load_lexicon([tiny_path], builtin=False)


@pytest.fixture(scope="session")
def builtin_lex():
    return load_lexicon()


def tiny(nlp, tiny_lex, kind, k=5, seed=0):
    return RuleGenerator(RuleConfig(kinds=(kind,), k=k, seed=seed), nlp=nlp, lexicon=tiny_lex)


def outs(gen, caption):
    return {n.text for n in gen.generate([caption])[0]}


# ---------------------------------------------------------------------------------------------------------------------
# exact outputs per kind (tiny lexicon)


def test_replace_obj_articles_plurals_casing(nlp, tiny_lex):
    g = tiny(nlp, tiny_lex, "replace_obj")
    assert outs(g, "A dog is sleeping.") == {"An elephant is sleeping."}
    assert outs(g, "Two dogs are sleeping.") == {"Two elephants are sleeping."}
    assert outs(g, "THE DOG IS SLEEPING!") == {"THE ELEPHANT IS SLEEPING!"}
    assert outs(g, "A DOG IS SLEEPING") == {"AN ELEPHANT IS SLEEPING"}
    assert outs(g, "an elephant and a bike") == {"a dog and a bike", "an elephant and a car"}
    # a synonym or hypernym is never the replacement: guy -> woman only (never man, gentleman, person)
    assert outs(g, "A guy is sleeping.") == {"A woman is sleeping."}


def test_replace_att_multiword_and_numbers(nlp, tiny_lex):
    g = tiny(nlp, tiny_lex, "replace_att")
    assert outs(g, "A light blue car.") == {"A red car.", "An orange car."}
    assert outs(g, "An orange car.") == {"A red car.", "A light blue car."}
    assert outs(g, "Two dogs sleep.") == {"Three dogs sleep."}


def test_replace_att_never_repeats_the_other_colour_or_stacks_determiners(nlp, builtin_lex):
    g = RuleGenerator(RuleConfig(kinds=("replace_att",), k=50), nlp=nlp, lexicon=builtin_lex)
    colours = outs(g, "A black and brown dog sits on a chair.")
    assert colours and not any("brown and brown" in t or "black and black" in t for t in colours)
    numbers = outs(g, "the seven sheep are preparing to be sheered.")
    assert numbers and not any(t.startswith(("the a ", "the an ")) for t in numbers)


def test_replace_rel_keeps_verb_form(nlp, tiny_lex):
    g = tiny(nlp, tiny_lex, "replace_rel")
    assert outs(g, "A man riding a bike.") == {"A man pushing a bike."}
    assert outs(g, "The dog sits on the mat.") == {"The dog stands on the mat.", "The dog sits under the mat."}
    assert outs(g, "The dogs sat on the bed.") == {"The dogs stood on the bed.", "The dogs sat under the bed."}


def test_swaps_exact(nlp, tiny_lex):
    assert outs(tiny(nlp, tiny_lex, "swap_obj"), "A dog next to an elephant.") == {"An elephant next to a dog."}
    # conjuncts swapped say the same thing unless each has its own modifier
    assert outs(tiny(nlp, tiny_lex, "swap_obj"), "A dog and an elephant.") == set()
    assert outs(tiny(nlp, tiny_lex, "swap_obj"), "A red dog and a blue elephant.") == {
        "A red elephant and a blue dog."}
    assert outs(tiny(nlp, tiny_lex, "swap_att"), "A red car and a light blue bike.") == {
        "A light blue car and a red bike."}
    assert outs(tiny(nlp, tiny_lex, "swap_chunks"), "A man and a dog.") == {"A dog and a man."}
    assert outs(tiny(nlp, tiny_lex, "swap_tags"), "A big dog and a small cat.") == {
        "A small dog and a big cat.", "A big cat and a small dog."}
    assert outs(tiny(nlp, tiny_lex, "swap_phrases"), "A man holding a cup and petting a dog.") == {
        "A man petting a cup and holding a dog."}


def test_adds_exact(nlp, tiny_lex):
    assert outs(tiny(nlp, tiny_lex, "add_obj"), "A man riding a bike.") == {
        "A man and a woman riding a bike.", "A man riding a bike and a car."}
    # a singular subject keeps its verb: "with", not "and"; a plural one takes "and"
    assert outs(tiny(nlp, tiny_lex, "add_obj"), "A dog is sleeping.") == {"A dog with an elephant is sleeping."}
    assert outs(tiny(nlp, tiny_lex, "add_obj"), "Two dogs are sleeping.") == {"Two dogs and an elephant are sleeping."}
    assert outs(tiny(nlp, tiny_lex, "add_att"), "A dog sleeps.") == {
        "A red dog sleeps.", "A light blue dog sleeps.", "An orange dog sleeps."}
    assert outs(tiny(nlp, tiny_lex, "add_att"), "Dogs sleep.") == {
        "Red dogs sleep.", "Light blue dogs sleep.", "Orange dogs sleep."}
    # a noun that already has a colour gets no second one
    assert outs(tiny(nlp, tiny_lex, "add_att"), "A red dog sleeps.") == set()


def test_a_noun_phrase_named_twice_is_edited_at_both_mentions(nlp, tiny_lex):
    """ "a red dog ..., and the red dog ..." names one dog twice: an edit of it is made at both mentions (or the
    caption would name a third thing), and edits are never chosen in the repeat alone."""
    cap = "A man next to a red dog, and the red dog is on a bed."
    assert outs(tiny(nlp, tiny_lex, "replace_obj"), cap) == {
        "A man next to a red elephant, and the red elephant is on a bed.",
        "A woman next to a red dog, and the red dog is on a bed.",
        "A man next to a red dog, and the red dog is on a mat."}
    assert outs(tiny(nlp, tiny_lex, "replace_att"), cap) == {
        "A man next to a light blue dog, and the light blue dog is on a bed.",
        "A man next to an orange dog, and the orange dog is on a bed."}
    # a swap moves the word at every mention of the moved thing, though the counts in the bag change
    assert outs(tiny(nlp, tiny_lex, "swap_obj"), cap) == {"A dog next to a red man, and the red man is on a bed."}
    # an added attribute goes to both mentions; an added object is named once
    bare = "A man next to a dog, and the dog is on a bed."
    assert "A man next to a red dog, and the red dog is on a bed." in outs(tiny(nlp, tiny_lex, "add_att"), bare)
    assert not any("the red dog" in n and "a red dog" not in n for n in outs(tiny(nlp, tiny_lex, "add_att"), bare))
    assert outs(tiny(nlp, tiny_lex, "add_obj"), cap) == {
        "A man with a woman next to a red dog, and the red dog is on a bed."}


def test_a_relation_phrase_is_replaced_as_the_lexicon_says_not_as_spacy_tags_it(nlp, tmp_path):
    """spaCy tags "left" in "a cube left of a ball" as a verb; the phrase belongs to an ADP group, so it is replaced
    whole, never inflected ("righted of")."""
    from clipneg.generators.rules.world_lexicon import write_world_lexicons

    from clipneg.world import world_config

    lex = load_lexicon(write_world_lexicons(world_config("default"), tmp_path))
    g = RuleGenerator(RuleConfig(kinds=("replace_rel",), k=5), nlp=nlp, lexicon=lex)
    got = outs(g, "a picture of a green triangle left of a small pink ring")
    assert got == {f"a picture of a green triangle {r} a small pink ring" for r in ("right of", "above", "below")}


def test_order_kinds_are_aro_perturbations(nlp, tiny_lex):
    from clipneg.text import nltk_tokenize

    cap = "A man in a t-shirt riding a red bike."
    for kind in ("shuffle_within_trigrams", "shuffle_trigrams"):
        for t in outs(tiny(nlp, tiny_lex, kind, k=3), cap):
            assert sorted(t.split(" ")) == sorted(nltk_tokenize(cap))
    for kind in ("shuffle_nouns_and_adj", "shuffle_allbut_nouns_and_adj"):
        for t in outs(tiny(nlp, tiny_lex, kind, k=3), cap):
            assert sorted(t.split(" ")) == sorted(tok.text for tok in nlp(cap))


def test_no_candidate_and_stats(nlp, tiny_lex):
    g = tiny(nlp, tiny_lex, "replace_obj", k=1)
    s = Sample("a", b"x", "jpg", "Clouds drift slowly.")
    (out,) = g([s])
    assert out is s and s.neg_texts == []
    assert g.stats.rejected[("replace_obj", "rules", "no candidate")] == 1 and g.stats.samples_without == 1


# ---------------------------------------------------------------------------------------------------------------------
# grammar helpers


def test_grammar_helpers():
    assert [article_for(w) for w in ("elephant", "unicorn", "hour", "dog", "umbrella", "one-way")] == [
        "an", "a", "an", "a", "an", "a"]
    assert inflect_noun("hot dog", True) == "hot dogs"
    assert inflect_noun("person", True, {"person": "people"}) == "people"
    assert inflect_verb("lie", "VBG") == "lying" and inflect_verb("take off", "VBZ") == "takes off"
    assert bag_of_words("A elephant.") == bag_of_words("an Elephant")


# ---------------------------------------------------------------------------------------------------------------------
# properties over many captions (built-in lexicon)


@pytest.fixture(scope="session")
def all_negs(nlp, builtin_lex):
    gen = RuleGenerator(RuleConfig(kinds=ALL_KINDS, k=3, seed=0), nlp=nlp, lexicon=builtin_lex)
    return gen, gen.generate(CAPTIONS)


def _diff(a: str, b: str):
    # an article re-agreed next to the edit is part of the edit, not a second slot: a and an compare equal
    wa, wb = (["a" if w == "an" else w for w in words(t)] for t in (a, b))
    ops = [op for op in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes() if op[0] != "equal"]
    return ops, wa, wb


def test_properties_of_every_kind(all_negs):
    gen, negs = all_negs
    seen_kinds = set()
    for cap, ns in zip(CAPTIONS, negs, strict=True):
        texts = [n.text for n in ns]
        assert len(texts) == len(set(texts)), "duplicates within a caption"
        for n in ns:
            seen_kinds.add(n.kind)
            assert n.text != cap and n.gen == "rules" and n.seed == 0 and n.score is None and n.kind in KIND_ID
            if n.kind.startswith("swap_"):
                assert bag_of_words(n.text) == bag_of_words(cap), (cap, n.text)
            if n.kind.startswith("replace_"):
                ops, _, _ = _diff(cap, n.text)
                assert len(ops) == 1 and ops[0][0] == "replace", (cap, n.text, ops)
            if n.kind.startswith("add_"):
                ops, wa, wb = _diff(cap, n.text)
                inserts = [op for op in ops if op[0] == "insert"]
                assert len(inserts) == 1 and len(wb) > len(wa), (cap, n.text, ops)
                assert 1 <= inserts[0][4] - inserts[0][3] <= 4  # one word or phrase ("and a dog", "light blue")
            if not n.kind.startswith("shuffle_"):
                assert n.text[-1:] == cap[-1:] if not cap[-1].isalnum() else True  # final punctuation kept
                assert n.text[0].isupper() == cap[0].isupper()
    assert seen_kinds == set(ALL_KINDS)
    for kind in SUGARCREPE_KINDS:  # each kind applies to most of these captions
        covered = sum(any(n.kind == kind for n in ns) for ns in negs)
        assert covered >= (3 if kind in ("swap_att", "swap_obj") else 15), kind


def test_replacements_are_never_synonyms_or_hypernyms(all_negs, builtin_lex):
    _, negs = all_negs
    section = {"replace_obj": builtin_lex.objects, "replace_att": builtin_lex.attributes}
    n_checked = 0
    for cap, ns in zip(CAPTIONS, negs, strict=True):
        for n in ns:
            if n.kind not in section:
                continue
            ops, wa, wb = _diff(cap, n.text)
            old, new = " ".join(wa[ops[0][1]:ops[0][2]]), " ".join(wb[ops[0][3]:ops[0][4]])
            lo, ln = lemma(old, "NOUN"), lemma(new, "NOUN")
            assert not section[n.kind].related(lo, ln), (cap, n.text)
            n_checked += 1
    assert n_checked > 30


def test_stage_protocol_and_manifest(all_negs, builtin_lex):
    gen, _ = all_negs
    assert isinstance(gen, Stage) and gen.name == "rules" and gen.version
    m = gen.manifest()
    assert m["lexicon"]["version"] == builtin_lex.version and m["lexicon"]["hash"] == builtin_lex.hash
    assert m["spacy"]["model"].startswith("en_core_web_sm") and "parser" in m["spacy"]["pipes"]
    assert m["config"]["kinds"] == list(ALL_KINDS) and m["config"]["k"] == 3
    assert m["order_tokenizers"]["shuffle_trigrams"].startswith("nltk")
    json.dumps(m)
    stats = gen.stats.to_json()
    assert sum(stats["kept"].values()) > 0 and "swap_att" in stats["rejected"]


@pytest.mark.parametrize("caption", ["", "   ", "!!! ???", "😀😀😀", "🐶 on a 🛹", "x" * 5000,
                                     "a " * 600 + "dog.", "Ein Hund läuft über die Straße.", "Café crème à côté.",
                                     "12 34 56", "\n\t", "A", "a dog\u200b on a\u00a0mat", "...dog...", "'s"])
def test_never_crashes(nlp, builtin_lex, caption):
    gen = RuleGenerator(RuleConfig(kinds=ALL_KINDS, k=2), nlp=nlp, lexicon=builtin_lex)
    s = Sample("k", b"x", "jpg", caption)
    out = gen([s])
    assert out == [s] and gen.stats.extra["errors"] == 0
    assert all(n.text.strip() and n.text != caption for n in s.neg_texts)
    if not s.neg_texts:
        assert gen.stats.samples_without == 1


def test_chunk_in_order_never_drops_and_keeps_existing(nlp, builtin_lex):
    from clipneg.schema import NegText

    gen = RuleGenerator(RuleConfig(kinds=("replace_obj",), k=1), nlp=nlp, lexicon=builtin_lex)
    samples = [Sample(f"k{i}", b"x", "jpg", c) for i, c in enumerate(["", "A dog on a bed.", "😀"])]
    old = NegText("A cat on a bed.", "replace_obj", "llm")
    samples[1].neg_texts.append(old)
    out = gen(samples)
    assert out == samples and samples[1].neg_texts[0] is old and len(samples[1].neg_texts) == 2
    assert samples[1].neg_texts[1].text != old.text  # an existing negative is not made again
    assert gen.stats.samples_without == 2 and gen.stats.extra["skipped: empty"] == 1


def test_deterministic_for_caption_kind_seed(nlp, builtin_lex):
    def run(seed, caps):
        gen = RuleGenerator(RuleConfig(kinds=ALL_KINDS, k=2, seed=seed), nlp=nlp, lexicon=builtin_lex)
        return [[(n.kind, n.text) for n in ns] for ns in gen.generate(caps)]

    caps = CAPTIONS[:12]
    a = run(0, caps)
    assert a == run(0, caps)
    assert a != run(1, caps)
    # a caption's negatives do not depend on the other captions of its chunk
    assert run(0, caps[3:5]) == a[3:5]


def test_seeded_order_is_a_uniform_deterministic_permutation():
    from clipneg.generators.base import seeded_order

    for n in (0, 1, 2, 7, 300):
        order = list(seeded_order(12345, n))
        assert sorted(order) == list(range(n))
        assert order == list(seeded_order(12345, n))
        for limit in (0, 1, 3, n + 2):  # a limit stops the same order early
            assert list(seeded_order(12345, n, limit)) == order[:limit]
    assert list(seeded_order(1, 50)) != list(seeded_order(2, 50))
    # every index equally likely first and second: 6,000 seeds over 6 choices, 1,000 expected each (sd ~29)
    first, second = Counter(), Counter()
    for seed in range(6000):
        it = seeded_order(seed * 0x9E3779B1, 6)
        first[next(it)] += 1
        second[next(it)] += 1
    assert set(first) == set(second) == set(range(6))
    assert all(880 < first[i] < 1120 and 880 < second[i] < 1120 for i in range(6)), (first, second)


# ---------------------------------------------------------------------------------------------------------------------
# lexicon


def test_builtin_lexicon_hash_version_and_coverage(builtin_lex):
    again = load_lexicon()
    assert again.hash == builtin_lex.hash and builtin_lex.version.startswith("clipneg-en-core@")
    assert builtin_lex.sources[0]["sha256"] == hashlib.sha256(BUILTIN.read_bytes()).hexdigest()
    coco = """person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign
    parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie
    suitcase frisbee skis snowboard ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle
    wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair
    couch plant bed table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink refrigerator
    book clock vase scissors teddy_bear hair_drier toothbrush""".split()
    assert len(coco) == 80
    obj = builtin_lex.objects
    missing = [w for w in (c.replace("_", " ") for c in coco) if w not in obj and w != "person"]
    assert missing == []
    assert all(obj.candidates(w.replace("_", " ")) for w in coco if w != "person")


def test_lexicon_relations_are_clean(builtin_lex):
    obj, att, rel = builtin_lex.objects, builtin_lex.attributes, builtin_lex.relations
    assert "cat" in obj.candidates("dog") and "elephant" in obj.candidates("dog")
    for bad in ("puppy", "animal", "pet", "sandwich", "dog"):
        assert bad not in obj.candidates("dog")
    assert obj.related("man", "guy") and obj.related("man", "person") and obj.related("gentleman", "person")
    assert not {"guy", "gentleman", "person", "people"} & set(obj.candidates("man"))
    assert "small" in att.candidates("big") and "large" not in att.candidates("big")
    assert "light blue" in att and "blue" not in att.candidates("light blue") and "red" in att.candidates("light blue")
    assert "behind" in rel.candidates("in front of") and "under" in rel.candidates("on")
    assert "walk" in rel.candidates("ride") or "push" in rel.candidates("ride")
    for section in (obj, att, rel):  # no group member's candidates include a listed synonym or hypernym of it
        for g in section.groups.values():
            for w in g["members"]:
                for c in section.candidates(w):
                    assert c not in section.synonyms_of(w) and not section.related(w, c)


def test_user_domain_lexicon_merges_over_builtin(tmp_path, nlp, builtin_lex):
    med = {"name": "medical", "version": "2",
           "objects": {"groups": {"instruments": {"add": True, "members": ["scalpel", "stethoscope"]}},
                       "synonyms": [["stethoscope", "steth"]]},
           "remove": ["elephant"]}
    path = tmp_path / "medical.json"
    path.write_text(json.dumps(med))
    lex = load_lexicon([path])
    assert lex.version == builtin_lex.version + "+medical@2" and lex.hash != builtin_lex.hash
    assert lex.objects.candidates("scalpel") == ["stethoscope"] and "elephant" not in lex.objects.candidates("dog")
    gen = RuleGenerator(RuleConfig(kinds=("replace_obj",), k=40, lexicons=(str(path),)), nlp=nlp)
    assert "A doctor holding a stethoscope." in outs(gen, "A doctor holding a scalpel.")
    assert gen.manifest()["lexicon"]["files"][1]["name"] == "medical"


@pytest.mark.parametrize("bad", [{"version": "1"}, {"name": "x", "version": "1", "objects": {"groups": {
    "g": {"members": ["Dog"]}}}}, {"name": "x", "version": "1", "objects": {"hypernyms": {"dog": ["dog"]}}}])
def test_bad_lexicon_is_a_clear_error(tmp_path, bad):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(LexiconError, match="bad.json"):
        load_lexicon([path])


def test_config_and_schema_kinds():
    assert set(ALL_KINDS) <= set(KIND_LIST)
    assert KIND_LIST[-3:] == ("swap_chunks", "swap_phrases", "swap_tags")
    with pytest.raises(ValueError, match="unknown"):
        RuleConfig(kinds=("replace_everything",))
    with pytest.raises(ValueError, match=">= 1"):
        RuleConfig(k=0)


class FakeWordNet:
    """Stands in for NLTK's WordNet (its data is not installable offline): the generator's use of it is tested."""

    version = "fake-3.0"

    def cohyponyms(self, noun):
        return {"lizard": ("snake", "turtle")}.get(noun, ())

    def antonyms(self, adjective):
        return {"noisy": ("quiet",)}.get(adjective, ())


def test_wordnet_extends_the_lexicon_when_present(nlp, tiny_lex):
    from clipneg.generators.rules.wordnet import WordNet

    cfg = RuleConfig(kinds=("replace_obj", "replace_att"), k=10)
    gen = RuleGenerator(cfg, nlp=nlp, lexicon=tiny_lex, wordnet=FakeWordNet())
    got = {(n.kind, n.text) for n in gen.generate(["A lizard on a noisy mat."])[0]}
    assert {("replace_obj", "A snake on a noisy mat."), ("replace_obj", "A turtle on a noisy mat."),
            ("replace_att", "A lizard on a quiet mat.")} <= got
    assert gen.manifest()["wordnet"] == "fake-3.0"
    off = RuleGenerator(RuleConfig(kinds=cfg.kinds, k=10, wordnet=False), nlp=nlp, lexicon=tiny_lex)
    assert off.wordnet is None and off.manifest()["wordnet"] is None
    assert not {t for t in outs(off, "A lizard on a noisy mat.") if "snake" in t or "quiet" in t}
    wn = WordNet.load()  # never downloads: None here, a WordNet where NLTK's data is installed
    assert wn is None or wn.cohyponyms("dog")


def test_on_the_world_every_negative_parses_and_is_false_of_its_scene(nlp, tmp_path):
    """Where the truth is known: with the world's lexicon every rule negative of a world caption parses under the
    world's grammar, and the replace and add_obj ones are all false of the scene. A swap can be true by coincidence
    (two objects that share what is swapped, seen from the other side) and an added attribute can be the one the
    caption left out: text alone cannot know, so the render stage judges them against the scene (test_render.py)."""
    from clipneg.generators.rules.world_lexicon import write_world_lexicons

    from clipneg.world import World, parse_caption, scene_satisfies, world_config

    cfg = world_config("default")
    gen = RuleGenerator(RuleConfig(kinds=SUGARCREPE_KINDS, k=2), nlp=nlp,
                        lexicon=load_lexicon(write_world_lexicons(cfg, tmp_path)))
    world = World(cfg)
    examples = [world.example("train", i, negatives=False) for i in range(120)]
    made, true, covered = Counter(), Counter(), Counter()
    for ex, negs in zip(examples, gen.generate([e.caption.text for e in examples]), strict=True):
        covered.update({n.kind for n in negs})
        for n in negs:
            made[n.kind] += 1
            true[n.kind] += scene_satisfies(ex.scene, parse_caption(n.text), strict=False)  # raises if unparsed
    for kind in ("replace_obj", "replace_att", "replace_rel", "add_obj"):
        assert true[kind] == 0 and covered[kind] >= 80, (kind, made[kind], true[kind], covered[kind])
    for kind in ("swap_obj", "swap_att"):
        assert true[kind] <= 0.05 * made[kind] and covered[kind] >= 60, (kind, made[kind], true[kind])
    assert 0 < true["add_att"] < made["add_att"]


def test_the_generators_word_and_bag_keys_agree_with_words_and_bag_of_words():
    """The checks' fast keys (bytes.translate for ASCII, the regex otherwise) say "same words" and "same bag" when
    grammar.words and grammar.bag_of_words do, on random text over ASCII, accents, emoji and a Kelvin sign."""
    import random

    from clipneg.generators.rules.grammar import bag_key as _bag_key
    from clipneg.generators.rules.grammar import word_key as _word_key

    rng = random.Random(0)
    alphabet = [chr(c) for c in range(32, 127)] + list("aan  éÉß🙂Σ\u212a") * 3
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))) for _ in range(3000)]
    texts += ["A dog and an apple.", "an apple and a dog", "a dog and a apple", "Café au lait", "cafe au lait"]
    for t in texts:  # a capital sigma lowers by context (final or not), text by text rather than word by word
        if "Σ" not in t:
            assert [w.decode() for w in _word_key(t)] == words(t)
    pairs = list(zip(texts, texts[1:] + texts[:1], strict=True))
    pairs += [(texts[-5], texts[-4]), (texts[-4], texts[-3]), (texts[-2], texts[-1])]
    for a, b in pairs:
        assert (_word_key(a) == _word_key(b)) == (words(a) == words(b))
        assert (_bag_key(a) == _bag_key(b)) == (bag_of_words(a) == bag_of_words(b))
    assert _bag_key("A dog and an apple.") == _bag_key("an apple and a dog")
    assert _word_key("A dog and an apple.") != _word_key("an apple and a dog")
