"""``clipneg demo --quick``: the user's pipeline end to end through the generators, at the smallest size.

world (plain source) -> generate (rules with the world lexicon + render) -> pretrain -> fine-tunes -> eval -> report,
and the artefacts hold sane numbers.
"""

from __future__ import annotations

import json

import pytest

from clipneg.commands import main
from clipneg.commands.demo import QUICK
from clipneg.schema import SUGARCREPE_KINDS
from clipneg.sources import iter_clipneg_shards


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--jobs", "2"]) == 0
    return out


@pytest.mark.slow
def test_quick_demo_writes_every_artefact(demo, capsys):
    report = (demo / "report" / "summary.md").read_text()
    for label in ("clip", "triplet"):
        assert f"| {label} |" in report
    assert (demo / "report" / "plots" / "sugarcrepe-world-heldout.png").stat().st_size > 1000
    gallery = (demo / "gallery.html").read_text()
    assert "negative caption kind" in gallery and '<span class="kind">paraphrase</span>' in gallery
    assert '<span class="gen">rules</span>' in gallery and "data:image/png;base64" in gallery


@pytest.mark.slow
def test_quick_demo_results_are_sane(demo):
    for suffix, folder in (("world", "sugarcrepe"), ("world-heldout", "sugarcrepe_heldout")):
        n_items = {k: len(json.loads((demo / "world" / "benchmark" / folder / f"{k}.json").read_text()))
                   for k in SUGARCREPE_KINDS}
        for label in ("clip", "triplet"):
            result = json.loads((demo / "results" / f"sugarcrepe-{suffix}" / f"{label}.json").read_text())
            for kind in SUGARCREPE_KINDS:
                assert 0.0 <= result["metrics"][kind] <= 100.0
                assert result["counts"][kind]["total"] == n_items[kind]  # every benchmark item scored
            assert 0.0 <= result["metrics"]["macro"] <= 100.0


@pytest.mark.slow
def test_quick_demo_shards_carry_generated_negatives(demo):
    """The world wrote a plain source; every negative in the training shards is the generators' (with provenance),
    counterfactual images are the renderer's and depict one of them, and relation captions carry converse
    paraphrases with their word-order negatives."""
    source = json.loads((demo / "world" / "shards" / "manifest.json").read_text())
    assert not source.get("neg_text_kinds")
    manifest = json.loads((demo / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["written"] == QUICK["n_train"]
    assert [g["name"] for g in manifest["info"]["generators"]] == ["rules", "caption_filter", "render"]
    kinds, images, paraphrases = set(), 0, 0
    for s in iter_clipneg_shards(str(demo / "shards")):
        for t in s.neg_texts:
            assert t.gen == "rules" and t.seed == 0 and t.text != s.caption
            kinds.add(t.kind)
        for im in s.neg_images:
            assert im.gen == "render" and im.text is not None and 0 <= im.text < len(s.neg_texts)
            images += 1
        for p in s.paraphrases:
            assert p.gen == "rules" and len(p.negatives) >= 1
            paraphrases += 1
    assert kinds == set(SUGARCREPE_KINDS)
    assert images > QUICK["n_train"] and paraphrases > QUICK["n_train"] // 3
    coverage = json.loads((demo / "coverage.json").read_text())
    assert coverage["add_att"]["false_negatives"] > 0  # the render stage found and dropped some
    # every rule negative is in the shards or counted where it was removed
    assert all(c["in_shards"] == c["rules_kept"] - c["filtered"] - c["false_negatives"] - c["held_out"]
               for c in coverage.values())
