"""The built-in world: exact captions, exact negatives and counterfactuals, splits, writers (offline, CPU, fast)."""

from __future__ import annotations

import argparse
import io
import json
import re
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipneg.world import (
    SUGARCREPE_KINDS,
    CaptionParseError,
    Description,
    Fact,
    Mention,
    Obj,
    Renderer,
    Scene,
    World,
    WorldConfig,
    check_example,
    encode_image,
    export_benchmarks,
    meaning_key,
    parse_caption,
    same_bag_rate,
    scene_satisfies,
    world_config,
    write_train_shards,
)
from clipneg.world.captions import PREFIXES, Caption, restate
from clipneg.world.vocab import COLOURS, INVERSE, REL_WORDS, SHAPES, SIZES

N_TRAIN, N_TEST = 300, 150


@pytest.fixture(scope="session")
def world() -> World:
    return World(WorldConfig(image_size=48, seed=0))


@pytest.fixture(scope="session")
def renderer(world: World) -> Renderer:
    return Renderer(world.cfg)


@pytest.fixture(scope="session")
def examples(world: World) -> dict[str, list]:
    return {
        "train": list(world.examples("train", N_TRAIN)),
        "test": list(world.examples("test", N_TEST)),
        "test_heldout": list(world.examples("test_heldout", N_TEST)),
    }


def _negs(examples: dict[str, list], kind: str) -> list:
    return [(ex, n) for split in examples.values() for ex in split for n in ex.negatives if n.kind == kind]


# ---- vocabulary, config ------------------------------------------------------------------------------------------

def test_vocabulary_is_large_enough(world: World) -> None:
    assert len(world.cfg.shapes) == len(SHAPES) == 12
    assert len(world.cfg.colours) == len(COLOURS) == 11
    assert len(SIZES) == 2
    # Colours must be far apart so that a colour swap is visible at 32 px.
    rgb = np.array(list(COLOURS.values()), float)
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert dist[~np.eye(len(rgb), dtype=bool)].min() > 60


@pytest.mark.parametrize("bad", [dict(image_size=16), dict(image_size=512), dict(jitter=2.0),
                                 dict(shapes=("circle", "blob")), dict(object_probs=(0.5, 0.5, 0.5)),
                                 dict(rel_families=()), dict(rel_families=(4,)), dict(p_prefix=1.5)])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        WorldConfig(**bad)


def test_presets_and_wording_knobs() -> None:
    demo = world_config("demo", shapes=["circle", "square"])
    assert (demo.grid, demo.image_size, demo.jitter, demo.texture, demo.rel_families, demo.p_prefix) == (
        2, 32, 0.0, False, (1,), 0.0)
    assert demo.shapes == ("circle", "square") and world_config() == WorldConfig()
    with pytest.raises(ValueError, match="unknown world preset"):
        world_config("nope")
    with pytest.raises(ValueError, match="unknown WorldConfig fields"):
        world_config("demo", colour="red")
    # One wording family and no prefix: every relation phrase comes from REL_WORDS[1], every caption starts bare, and
    # the negatives keep the positive's wording.
    texts = [t for ex in World(world_config("demo")).examples("train", 300)
             for t in [ex.text, *(n.text for n in ex.negatives)]]
    used = {phrase for t in texts for family in REL_WORDS for phrase in family.values() if f" {phrase} " in t}
    assert used == {"left of", "right of", "above", "below"}
    assert not any(t.lower().startswith(p.strip()) for t in texts for p in PREFIXES if p)
    full = [ex.text for ex in World(WorldConfig(image_size=32)).examples("train", 300)]
    assert sum(any(t.lower().startswith(p) for p in PREFIXES if p) for t in full) > 100  # ~55 % have a prefix


# ---- truth function and caption grammar -------------------------------------------------------------------------

def _scene(*objs: Obj) -> Scene:
    return Scene(tuple(objs), (128, 128, 128), 0)


def test_scene_satisfies_relations_strict_and_lenient() -> None:
    red_circle = Obj("circle", "red", "large", (0, 0))
    blue_square = Obj("square", "blue", "small", (0, 2))
    green_star = Obj("star", "green", "small", (1, 1))  # diagonal to both: loosely below-right of the circle
    scene = _scene(red_circle, blue_square, green_star)
    rc, bs, gs = Mention("circle", "red"), Mention("square", "blue"), Mention("star", "green")
    assert scene_satisfies(scene, Description((rc, bs), (Fact(0, "left", 1),)))
    assert scene_satisfies(scene, Description((bs, rc), (Fact(0, "right", 1),)))
    assert not scene_satisfies(scene, Description((bs, rc), (Fact(0, "left", 1),)), strict=False)
    assert not scene_satisfies(scene, Description((rc, bs), (Fact(0, "above", 1),)), strict=False)
    # Diagonal neighbours: neither strictly "above" nor strictly "left of", but loosely both.
    for rel in ("above", "left"):
        d = Description((rc, gs), (Fact(0, rel, 1),))
        assert not scene_satisfies(scene, d, strict=True) and scene_satisfies(scene, d, strict=False)
    # Attributes bind to their own object; mentions need distinct objects.
    assert not scene_satisfies(scene, Description((Mention("circle", "blue"),)), strict=False)
    assert scene_satisfies(scene, Description((Mention("circle", None, "large"),)))
    assert not scene_satisfies(scene, Description((Mention("circle", None, "small"),)), strict=False)
    assert not scene_satisfies(scene, Description((rc, Mention("circle"))), strict=False)


def test_parse_inverts_render(examples: dict[str, list]) -> None:
    n = 0
    for split in examples.values():
        for ex in split:
            assert parse_caption(ex.text) == ex.caption.desc, ex.text
            for neg in ex.negatives:
                assert parse_caption(neg.text) == neg.caption.desc, neg.text
                n += 1
    assert n > 1500
    for bad in ("a red circle left of", "the red circle", "a orange circle", "a red circle left of a blue blob"):
        with pytest.raises(CaptionParseError):
            parse_caption(bad)


def test_paraphrase_restates_the_caption_exactly(examples: dict[str, list]) -> None:
    """The paraphrase states the same facts from the other end and is true of the scene; its negatives are false of
    it; all of them (one fact: also the converse negative "a R' b") hold the caption's words up to the relation."""
    n_one = n_chain = 0
    for ex in examples["train"]:
        desc = ex.caption.desc
        if not desc.facts:
            assert ex.paraphrase is None and ex.paraphrase_negatives == ()
            continue
        words = lambda text: sorted(re.findall(r"\w+", text.lower()))  # noqa: E731
        assert len(ex.paraphrase_negatives) in (1, 2)
        for n in ex.paraphrase_negatives:
            assert not scene_satisfies(ex.scene, parse_caption(n), strict=False), n
            assert words(n) in (words(ex.text), words(ex.paraphrase)), n
        back = parse_caption(ex.paraphrase)
        assert back == restate(desc) and restate(back) == desc and ex.paraphrase != ex.text
        assert scene_satisfies(ex.scene, back, strict=True)
        assert len(back.mentions) == len(desc.mentions) and set(back.mentions) == set(desc.mentions)
        if len(desc.facts) == 1:
            n_one += 1
            (f,) = desc.facts
            assert back.mentions[:2] == desc.mentions[1::-1] and back.facts == (Fact(0, INVERSE[f.rel], 1),)
            converse = Caption(Description(desc.mentions, (Fact(0, INVERSE[f.rel], 1),)), ex.caption.style).text
            assert words(converse) == words(ex.paraphrase)
        else:
            n_chain += 1
            assert back.mentions[:3] == desc.mentions[2::-1]
    assert n_one > 50 and n_chain > 20
    assert restate(Description((Mention("circle"),))) is None


def test_several_phrasings_occur(examples: dict[str, list]) -> None:
    # Mask the content words: what is left is the template.
    words = "|".join(sorted([*SHAPES, *COLOURS, *SIZES], key=len, reverse=True))
    templates = Counter(re.sub(rf"\b({words})\b", "W", ex.text) for ex in examples["train"])
    assert len(templates) >= 40
    assert templates.most_common(1)[0][1] < 0.2 * N_TRAIN
    texts = [ex.text for ex in examples["train"]]
    for pattern in (r"^a .* to the left of ", r" is (left|right) of ", r"^there is ", r", and the ", r"\.$", r"^A ",
                    r" (higher|lower) than ", r" together with "):
        assert any(re.search(pattern, t) for t in texts), pattern
    # Three-object scenes: two relations (a chain) or one relation plus an extra object.
    descs = [ex.caption.desc for ex in examples["train"] if len(ex.scene.objects) == 3]
    assert any(len(d.facts) == 2 for d in descs) and any(len(d.facts) == 1 for d in descs)


# ---- exact negatives ---------------------------------------------------------------------------------------------

def test_every_negative_is_exact(examples: dict[str, list]) -> None:
    kinds: Counter = Counter()
    for split in examples.values():
        for ex in split:
            assert check_example(ex) == [], (ex.text, check_example(ex))
            present = {n.kind for n in ex.negatives}
            assert [n.kind for n in ex.negatives] == [k for k in SUGARCREPE_KINDS if k in present]
            meanings = {meaning_key(d) for d in [ex.caption.desc] + [n.caption.desc for n in ex.negatives]}
            assert len(meanings) == 1 + len(ex.negatives)  # no two negatives say the same thing
            for neg in ex.negatives:
                assert neg.text != ex.text
                # False for the positive scene, judged on the parsed words, even read loosely.
                assert not scene_satisfies(ex.scene, parse_caption(neg.text), strict=False)
                assert scene_satisfies(neg.scene, parse_caption(neg.text), strict=True)
                kinds[neg.kind] += 1
    assert set(kinds) == set(SUGARCREPE_KINDS)
    assert min(kinds.values()) > 100, kinds


def test_negatives_keep_the_template(examples: dict[str, list]) -> None:
    for ex in examples["test"]:
        for neg in ex.negatives:
            assert neg.caption.style == ex.caption.style
            assert neg.text[0].isupper() == ex.text[0].isupper() and neg.text.endswith(".") == ex.text.endswith(".")
            if neg.kind.startswith(("swap", "replace_obj", "replace_att")):
                assert len(neg.text.split()) == len(ex.text.split()), (ex.text, neg.text)


def test_swap_att_exchanges_colours_pixel_wise(examples: dict[str, list], renderer: Renderer) -> None:
    checked = 0
    for ex, neg in _negs(examples, "swap_att")[:40]:
        pos_objs, cf_objs = ex.scene.objects, neg.scene.objects
        changed = [i for i, (a, b) in enumerate(zip(pos_objs, cf_objs, strict=True)) if a != b]
        if len(changed) != 2 or pos_objs[changed[0]].colour == cf_objs[changed[0]].colour:
            continue  # a size swap
        i, j = changed
        assert (cf_objs[i].colour, cf_objs[j].colour) == (pos_objs[j].colour, pos_objs[i].colour)
        pos, cf = renderer.render(ex.scene), renderer.render(neg.scene)
        for k, other in ((i, j), (j, i)):
            full = renderer.object_mask(pos_objs[k]) == 255
            assert full.sum() > 0  # even a small star at 48 px has fully covered pixels
            assert (pos[full] == COLOURS[pos_objs[k].colour]).all()
            assert (cf[full] == COLOURS[pos_objs[other].colour]).all()
        # Nothing else moved: pixels outside every object are identical.
        outside = np.ones(pos.shape[:2], bool)
        for o in pos_objs:
            outside &= renderer.object_mask(o) == 0
        assert (pos[outside] == cf[outside]).all()
        checked += 1
    assert checked >= 15


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    w = mask[ys, xs].astype(float)
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])


def test_replace_rel_counterfactual_satisfies_new_relation_by_centroids(examples: dict[str, list],
                                                                        renderer: Renderer) -> None:
    cell = renderer.cell
    pairs = _negs(examples, "replace_rel")
    assert len(pairs) > 100
    for ex, neg in pairs[:60]:
        (changed,) = [g for f, g in zip(ex.caption.desc.facts, neg.caption.desc.facts, strict=True) if f != g]
        a = neg.scene.objects[neg.caption.binding[changed.a]]
        b = neg.scene.objects[neg.caption.binding[changed.b]]
        d = _centroid(renderer.object_mask(b)) - _centroid(renderer.object_mask(a))
        axis = 0 if changed.rel in ("left", "right") else 1
        sign = 1 if changed.rel in ("left", "above") else -1
        assert d[axis] * sign > 0.5 * cell, (neg.text, d)
        assert abs(d[1 - axis]) < 0.45 * cell, (neg.text, d)
        # Same objects, same background: only cells changed.
        assert sorted((o.shape, o.colour, o.size, o.offset) for o in ex.scene.objects) == \
            sorted((o.shape, o.colour, o.size, o.offset) for o in neg.scene.objects)
        assert (neg.scene.tone, neg.scene.bg_seed) == (ex.scene.tone, ex.scene.bg_seed)


def test_swap_obj_is_not_swap_att(examples: dict[str, list]) -> None:
    both = 0
    for split in examples.values():
        for ex in split:
            by_kind = {n.kind: n for n in ex.negatives}
            if "swap_obj" in by_kind:
                so = by_kind["swap_obj"]
                # The nouns trade places; every adjective stays where it was in the sentence.
                pos_m, neg_m = ex.caption.desc.mentions, so.caption.desc.mentions
                assert [(m.colour, m.size) for m in pos_m] == [(m.colour, m.size) for m in neg_m]
                assert sorted(m.shape for m in pos_m) == sorted(m.shape for m in neg_m)
            if "swap_obj" in by_kind and "swap_att" in by_kind and len(ex.caption.desc.facts) >= 1:
                so, sa = by_kind["swap_obj"], by_kind["swap_att"]
                assert meaning_key(so.caption.desc) != meaning_key(sa.caption.desc)
                assert so.scene != sa.scene
                both += 1
    assert both > 50


def test_add_kinds_add_something_the_positive_image_lacks(examples: dict[str, list], renderer: Renderer) -> None:
    for ex, neg in _negs(examples, "add_obj")[:40]:
        assert len(neg.scene.objects) == len(ex.scene.objects) + 1
        new = neg.scene.objects[-1]
        assert all((o.shape, o.colour) != (new.shape, new.colour) for o in ex.scene.objects)
        # The positive image shows background where the counterfactual draws the added object.
        mask = renderer.object_mask(new) > 0
        pos, cf = renderer.render(ex.scene), renderer.render(neg.scene)
        assert (pos[mask] == renderer.background(ex.scene)[mask]).all()
        assert (cf[renderer.object_mask(new) == 255] == COLOURS[new.colour]).all()
    for ex, neg in _negs(examples, "add_att")[:40]:
        (k,) = [k for k, (m, n) in enumerate(zip(ex.caption.desc.mentions, neg.caption.desc.mentions, strict=True))
                if m != n]
        added = neg.caption.desc.mentions[k]
        obj = ex.scene.objects[ex.caption.binding[k]]
        assert not added.matches(obj) and added.matches(neg.scene.objects[ex.caption.binding[k]])


# ---- splits, determinism -----------------------------------------------------------------------------------------

def test_heldout_compositions_never_appear_in_train(world: World, examples: dict[str, list]) -> None:
    held = world.heldout
    assert len(held.pairs) == len(SHAPES) and len(held.triples) > 20
    seen_pairs = set()
    for ex in examples["train"]:
        assert not held.scene_unseen(ex.scene) and not held.desc_unseen(ex.caption.desc)
        for neg in ex.negatives:  # nothing leaks through negatives either
            assert not held.scene_unseen(neg.scene) and not held.desc_unseen(neg.caption.desc), neg.text
        seen_pairs |= {(o.shape, o.colour) for o in ex.scene.objects}
    assert not seen_pairs & held.pairs
    # Every shape and every colour still occurs in training.
    assert {s for s, _ in seen_pairs} == set(SHAPES) and {c for _, c in seen_pairs} == set(COLOURS)
    # Seen benchmark: nothing held out, negatives included. Held-out benchmark: positives and negatives both state
    # a held-out composition, so familiarity alone cannot tell them apart.
    for ex in examples["test"]:
        assert not held.scene_unseen(ex.scene)
        assert not any(held.desc_unseen(n.caption.desc) or held.scene_unseen(n.scene) for n in ex.negatives)
    for ex in examples["test_heldout"]:
        assert held.desc_unseen(ex.caption.desc) and all(held.desc_unseen(n.caption.desc) for n in ex.negatives)
    kinds = Counter("pair" if any((m.shape, m.colour) in held.pairs for m in ex.caption.desc.mentions) else "triple"
                    for ex in examples["test_heldout"])
    assert kinds["pair"] > 20 and kinds["triple"] > 20


def test_same_seed_same_world_in_any_order(world: World, renderer: Renderer) -> None:
    again = World(WorldConfig(image_size=48, seed=0))
    forward = list(again.examples("train", 6, start=20))
    assert forward[::-1] == [world.example("train", i) for i in range(25, 19, -1)]
    assert world.example("train", 23, negatives=False).scene == forward[3].scene  # negatives use their own stream
    ex = forward[0]
    assert renderer.render(ex.scene).tobytes() == Renderer(again.cfg).render(ex.scene).tobytes()
    other = World(WorldConfig(image_size=48, seed=1))
    assert [other.example("train", i).text for i in range(5)] != [world.example("train", i).text for i in range(5)]
    assert other.heldout != world.heldout
    assert world.example("test", 3) != world.example("train", 3)


def test_same_bag_rate_is_low_but_detects_a_small_world(world: World) -> None:
    # Batches of 128 from the default training split rarely hold a minimal pair (measured ~3 % on 10k scenes).
    rate = same_bag_rate(list(world.examples("train", 3000, negatives=False)), 128, n_batches=300)
    assert rate < 0.10, rate
    small = WorldConfig(shapes=SHAPES[:6], colours=tuple(COLOURS)[:6], object_probs=(0.0, 1.0, 0.0), zipf=0.0,
                        p_size_word=0.0, p_no_colour=0.0, p_no_relation=0.0, image_size=32)
    small_rate = same_bag_rate(list(World(small).examples("train", 600, negatives=False)), 128, n_batches=100)
    assert small_rate > 0.9, small_rate


# ---- rendering ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 224])
def test_render_sizes_and_exact_png(size: int) -> None:
    w = World(WorldConfig(image_size=size, seed=3))
    r = Renderer(w.cfg)
    ex = w.example("test", 0)
    img = r.render(ex.scene)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(img, "png"))).convert("RGB"))
    assert (decoded == img).all()
    jpg = np.asarray(Image.open(io.BytesIO(encode_image(img, "jpg"))).convert("RGB")).astype(int)
    assert np.abs(jpg - img).mean() < 3
    # Antialiased edges: partial coverage exists, and objects keep their exact colour inside.
    masks = [r.object_mask(o) for o in ex.scene.objects]
    assert any(((m > 0) & (m < 255)).any() for m in masks)
    for o, m in zip(ex.scene.objects, masks, strict=True):
        assert (img[m == 255] == COLOURS[o.colour]).all()


def test_objects_do_not_overlap(examples: dict[str, list], renderer: Renderer) -> None:
    for ex in examples["train"][:80]:
        for scene in [ex.scene] + [n.scene for n in ex.negatives]:
            cover = sum((renderer.object_mask(o) > 0).astype(int) for o in scene.objects)
            assert cover.max() <= 1


# ---- writers -----------------------------------------------------------------------------------------------------

def _read_tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            f = tar.extractfile(m)
            assert f is not None
            samples[key][ext] = f.read()
    return samples


def test_shard_round_trip_with_negatives(world: World, renderer: Renderer, tmp_path: Path) -> None:
    from clipneg.schema import members_to_sample

    manifest = write_train_shards(world, tmp_path / "neg", 12, shard_size=5, progress=False)
    assert manifest is not None and manifest["counts"] == {"inputs": 12, "written": 12, "quarantined": 0}
    sizes = json.loads((tmp_path / "neg" / "sizes.json").read_text())
    assert sizes == {"train-000000.tar": 5, "train-000001.tar": 5, "train-000002.tar": 2}
    n_negs = 0
    for shard in sizes:
        for key, members in _read_tar_samples(tmp_path / "neg" / shard).items():
            index = int(key.rsplit("_", 1)[1])
            ex = world.example("train", index)
            neg = json.loads(members["neg.json"])
            assert [t["text"] for t in neg["texts"]] == [n.text for n in ex.negatives]
            assert [t["kind"] for t in neg["texts"]] == [n.kind for n in ex.negatives]
            assert all(t["gen"] == "world" and t["seed"] == ex.seed for t in neg["texts"])
            for j, im in enumerate(neg["images"]):
                assert im["text"] == j and im["kind"] == neg["texts"][j]["kind"] and im["member"] in members
                cf = np.asarray(Image.open(io.BytesIO(members[im["member"]])).convert("RGB"))
                assert (cf == renderer.render(ex.negatives[j].scene)).all()
            pos = np.asarray(Image.open(io.BytesIO(members["png"])).convert("RGB"))
            assert (pos == renderer.render(ex.scene)).all()
            assert members["txt"].decode() == ex.text
            assert neg.get("paraphrases", []) == ([{"text": ex.paraphrase, "gen": "world", "seed": ex.seed,
                                                    "negatives": list(ex.paraphrase_negatives)}]
                                                  if ex.paraphrase else [])
            sample = members_to_sample({"__key__": key, **members})
            assert len(sample.neg_images) == len(sample.neg_texts) == len(ex.negatives)
            n_negs += len(ex.negatives)
    assert sum(manifest["neg_text_kinds"].values()) == n_negs

    plain = write_train_shards(world, tmp_path / "plain", 4, negatives=False, shard_size=10, progress=False)
    assert plain is not None and plain["neg_text_kinds"] == {}
    members = _read_tar_samples(tmp_path / "plain" / "train-000000.tar")
    assert all(set(m) == {"png", "txt", "json"} for m in members.values())


def test_benchmark_export_formats(world: World, tmp_path: Path) -> None:
    counts = export_benchmarks(world, tmp_path, 20, progress=False)
    for name in ("sugarcrepe", "sugarcrepe_heldout"):
        folder = tmp_path / name
        assert sorted(p.name for p in folder.glob("*.json")) == sorted(f"{k}.json" for k in SUGARCREPE_KINDS)
        for kind in SUGARCREPE_KINDS:
            items = json.loads((folder / f"{kind}.json").read_text())
            assert isinstance(items, dict) and len(items) == counts[name][kind]
            for key, item in items.items():
                assert isinstance(key, str) and key.isdigit()
                assert set(item) == {"filename", "caption", "negative_caption"}
                assert re.fullmatch(r"000000\d{6}\.jpg", item["filename"])
                assert (folder / "images" / item["filename"]).exists()
                assert item["caption"] != item["negative_caption"]
        assert counts[name]["swap_att"] > 0 and counts[name]["replace_rel"] > 0
    for name in ("aro", "aro_heldout"):
        folder = tmp_path / name
        rel = json.loads((folder / "vg_relation.json").read_text())
        att = json.loads((folder / "vg_attribution.json").read_text())
        assert len(rel) > 5 and len(att) > 5
        for item in rel + att:
            with Image.open(folder / "images" / item["image_path"]) as im:
                w, h = im.size
            assert 0 <= item["bbox_x"] and item["bbox_x"] + item["bbox_w"] <= w
            assert 0 <= item["bbox_y"] and item["bbox_y"] + item["bbox_h"] <= h
            assert item["bbox_w"] > 0 and item["bbox_h"] > 0
            assert item["true_caption"] != item["false_caption"]
            assert sorted(item["true_caption"].split()) == sorted(item["false_caption"].split())
        assert all(set(i) == {"image_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "true_caption",
                              "false_caption", "relation_name"} for i in rel)
        assert all(len(i["attributes"]) == 2 and "relation_name" not in i for i in att)
        assert {i["relation_name"] for i in rel} <= {"to the left of", "to the right of", "above", "below"}


def test_cli_writes_shards_and_benchmarks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from clipneg.commands import world as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert "clipneg world --out" in parser.format_help()
    args = parser.parse_args(["--out", str(tmp_path), "--n-train", "6", "--n-test", "8", "--image-size", "32",
                              "--shard-size", "4", "--no-progress"])
    assert args.negatives is True
    assert command.run(args) == 0
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert (tmp_path / "shards" / "manifest.json").exists()
    for name in ("sugarcrepe", "sugarcrepe_heldout", "aro", "aro_heldout"):
        assert any((tmp_path / "benchmark" / name / "images").iterdir())
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_images"] > 6
    bad = parser.parse_args(["--out", str(tmp_path / "x"), "--image-size", "8"])
    assert command.run(bad) == 2
    # A preset, a flag over it, and any other field as JSON; the manifest records the resolved config.
    demo = parser.parse_args(["--out", str(tmp_path / "demo"), "--n-train", "4", "--n-test", "0", "--preset", "demo",
                              "--grid", "3", "--world-json", '{"object_probs": [0, 1, 0]}', "--no-progress"])
    assert command.run(demo) == 0
    cfg = json.loads((tmp_path / "demo" / "shards" / "manifest.json").read_text())["info"]["world"]
    assert (cfg["grid"], cfg["image_size"], cfg["rel_families"], cfg["object_probs"]) == (3, 32, [1], [0, 1, 0])
    for wrong in ('{"nope": 1}', "[1]", "{bad json"):
        assert command.run(parser.parse_args(["--out", str(tmp_path / "y"), "--world-json", wrong])) == 2


def test_cli_with_two_processes_writes_the_same_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Given the same world written by one process and by two (clipneg.shards.write_shards_in_processes)
    from clipneg.commands import world as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    for workers in (1, 2):
        args = parser.parse_args(["--out", str(tmp_path / f"w{workers}"), "--n-train", "10", "--n-test", "0",
                                  "--image-size", "32", "--shard-size", "3", "--no-progress", "--workers",
                                  str(workers)])
        assert command.run(args) == 0
    # Then every shard and the manifest's counts are the same
    one, two = (sorted((tmp_path / f"w{w}" / "shards").glob("*.tar")) for w in (1, 2))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 4
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two, strict=True))
    m1, m2 = (json.loads((tmp_path / f"w{w}" / "shards" / "manifest.json").read_text()) for w in (1, 2))
    assert m1["counts"] == m2["counts"] == {"inputs": 10, "written": 10, "quarantined": 0}
    assert m1["neg_text_kinds"] == m2["neg_text_kinds"] and m1["info"] == m2["info"]
