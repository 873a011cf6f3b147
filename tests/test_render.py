"""The world render stage: any negative caption of a world sample gets the exact counterfactual image, checked
against the world's own exact negatives, and false or unparseable negatives are counted, not drawn."""

from __future__ import annotations

from pathlib import Path

import pytest
from clipneg.generators.images.render import RenderConfig, WorldRender

from clipneg.schema import NegText, members_to_sample
from clipneg.shards import write_shards
from clipneg.world import Renderer, World, example_to_sample, parse_caption, scene_satisfies, world_config
from clipneg.world.negatives import counterfactual

DEMO = world_config("demo").to_json()
# Kinds whose exact counterfactual has no random part (replace_rel breaks ties between equally short moves at
# random, add_obj draws the new object's cell): the render stage must give their very pixels.
DETERMINISTIC = ("replace_obj", "replace_att", "swap_obj", "swap_att", "add_att")


@pytest.fixture(scope="module")
def world() -> World:
    return World(world_config("demo"))


def _plain(sample, texts):
    sample.neg_texts, sample.neg_images, sample.paraphrases = list(texts), [], []
    return sample


def test_rule_negatives_render_the_worlds_own_counterfactual_pixels(world: World) -> None:
    # Given world samples whose exact negatives came with the world's counterfactual images
    renderer = Renderer(world.cfg)
    stage = WorldRender(RenderConfig(world=DEMO, k_image=7))
    checked = {k: 0 for k in DETERMINISTIC}
    for i in range(120):
        truth = example_to_sample(world.example("train", i), renderer)
        expected = {t.kind: im.data for im in truth.neg_images for t in [truth.neg_texts[im.text]]}
        # When the same captions arrive as another generator's negatives, without images
        texts = [NegText(t.text, t.kind, "rules", 0) for t in truth.neg_texts]
        out = stage([_plain(example_to_sample(world.example("train", i), renderer, negatives=False), texts)])[0]
        # Then every deterministic kind gets exactly the world's image, paired with its caption
        for im in out.neg_images:
            assert im.gen == "render" and out.neg_texts[im.text].kind == im.kind
            if im.kind in DETERMINISTIC:
                assert im.data == expected[im.kind], (i, im.kind)
                checked[im.kind] += 1
        # and every kind gets an image that shows its caption
        assert len(out.neg_images) == len(texts)
    assert min(checked.values()) >= 10, checked


def test_any_parsed_edit_gets_a_scene_that_makes_it_true(world: World) -> None:
    import random

    ex = next(e for e in (world.example("train", i, negatives=False) for i in range(50)) if e.caption.desc.facts)
    neg = parse_caption(ex.text.replace(" left of ", " right of ") if " left of " in ex.text
                        else ex.text.replace(ex.caption.desc.mentions[0].shape, "heart", 1))
    cf = counterfactual(ex.scene, ex.caption, neg, world.cfg, random.Random(0))
    assert scene_satisfies(cf, neg, strict=True) and not scene_satisfies(ex.scene, neg, strict=False)


def test_false_unparseable_and_foreign_negatives_are_counted(world: World) -> None:
    renderer = Renderer(world.cfg)
    ex = world.example("train", 3, negatives=False)
    sample = example_to_sample(ex, renderer, negatives=False)
    sample.neg_texts = [NegText(ex.text.rstrip(".") + ".", "replace_att", "rules", 0),  # true of the scene
                        NegText("a photo of a cat on a sofa", "replace_obj", "rules", 0),  # not the world's grammar
                        NegText(next(n.text for n in world.example("train", 3).negatives), "swap_att", "rules", 0)]
    sample.caption = ex.text
    stage = WorldRender(RenderConfig(world=DEMO, k_image=3))
    out = stage([sample])[0]
    rejected = stage.stats.to_json()["rejected"]
    assert rejected["replace_att"] == {"render: false negative: true of the positive scene": 1}
    assert rejected["replace_obj"] == {"render: does not parse": 1}
    # The false negative is dropped; the unparseable one stays (no truth to judge it by) but gets no image.
    assert [t.gen for t in out.neg_texts] == ["rules", "rules"] and len(out.neg_images) == 1
    assert out.neg_texts[out.neg_images[0].text].kind == "swap_att"
    # A sample that is not from this world passes through, counted.
    foreign = example_to_sample(ex, renderer, negatives=False)
    foreign.meta = {}
    assert stage([foreign])[0] is foreign and stage.stats.samples_without >= 1


def test_pairing_survives_the_shards(world: World, tmp_path: Path) -> None:
    renderer = Renderer(world.cfg)
    samples = []
    for i in range(6):
        truth = example_to_sample(world.example("train", i), renderer)
        plain = example_to_sample(world.example("train", i), renderer, negatives=False)
        samples.append(_plain(plain, [NegText(t.text, t.kind, "rules", 0) for t in truth.neg_texts]))
    manifest = write_shards(samples, tmp_path, process_batch=WorldRender(RenderConfig(world=DEMO, k_image=2)),
                            shard_size=3, progress=False)
    assert manifest["counts"]["written"] == 6 and sum(manifest["neg_image_kinds"].values()) > 6
    import tarfile

    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        members: dict = {}
        for info in tar:
            key, _, ext = info.name.partition(".")
            members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(info).read()
    for m in members.values():
        s = members_to_sample(m)
        assert all(s.neg_texts[im.text].kind == im.kind for im in s.neg_images)


def _articles(text: str) -> str:
    """'a' or 'an' by the next word, as the world's grammar writes them."""
    words = text.split(" ")
    for i, w in enumerate(words[:-1]):
        if w.lower() in ("a", "an"):
            an = words[i + 1][0] in "aeiou"
            words[i] = (w[0] + ("n" if an else "")) if w[0] in "aA" else w
    return " ".join(words)


def test_negatives_stating_a_held_out_composition_never_reach_training(world: World) -> None:
    # Given train samples whose negative gives the first object a colour held out for its shape
    renderer = Renderer(world.cfg)
    stage = WorldRender(RenderConfig(world=DEMO, k_image=2))
    tried = 0
    for i in range(200):
        ex = world.example("train", i, negatives=False)
        m = ex.caption.desc.mentions[0]
        held = sorted(c for s, c in world.heldout.pairs if s == m.shape)
        if m.colour is None or f"{m.colour} {m.shape}" not in ex.text or not held:
            continue
        leak = _articles(ex.text.replace(f"{m.colour} {m.shape}", f"{held[0]} {m.shape}"))
        assert world.heldout.desc_unseen(parse_caption(leak))
        seen = next(c for c in world.cfg.colours if c != m.colour and (m.shape, c) not in world.heldout.pairs)
        fine = _articles(ex.text.replace(f"{m.colour} {m.shape}", f"{seen} {m.shape}"))
        texts = [NegText(leak, "replace_att", "rules", 0), NegText(fine, "replace_att", "rules", 0)]
        out = stage([_plain(example_to_sample(ex, renderer, negatives=False), texts)])[0]
        # Then the leaking caption is removed and the other one keeps its place, paired with its image
        assert [t.text for t in out.neg_texts] == [fine]
        assert all(out.neg_texts[im.text].text == fine for im in out.neg_images)
        tried += 1
    assert tried >= 20
    assert stage.stats.rejected[("replace_att", "render", "held-out line: the caption states a held-out "
                                                          "composition")] == tried
