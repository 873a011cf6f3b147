"""The shared scorer: hand-built features, tie policies, encode-once caching, crops, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
from clipneg.eval.items import ImageRef, Item, make_item
from clipneg.eval.scorer import ScorerConfig, beats, decide, is_tie, rank_of
from PIL import Image

from clipneg.encoder import load_image
from tests.test_eval_support import BLUE, GREEN, RED, solid, stub_scorer

TABLE = {"red": [1, 0, 0], "red too": [1, 0, 0], "green": [0, 1, 0], "blue": [0, 0, 1], "reddish": [1, 1, 0]}


def test_decide_without_ties_ignores_policy():
    for policy in ("strict", "first", "random"):
        assert decide([0.9, 0.1], 0, policy, np.random.default_rng(0))
        assert not decide([0.1, 0.9], 0, policy, np.random.default_rng(0))


def test_ties_under_each_policy():
    # Given a positive tied with a negative at the top
    tied = [0.5, 0.5, 0.1]
    # Then strict calls it wrong (official SugarCrepe pos > neg), first calls it right (ARO-Order argmax == 0)
    assert not decide(tied, 0, "strict")
    assert decide(tied, 0, "first")
    assert not decide([0.5, 0.5], 1, "first")  # the earliest tied option wins, and that is not option 1
    # and random is a seeded coin: reproducible, and both outcomes occur
    draws = [decide(tied, 0, "random", np.random.default_rng(s)) for s in range(40)]
    assert draws == [decide(tied, 0, "random", np.random.default_rng(s)) for s in range(40)]
    assert 5 < sum(draws) < 35
    assert is_tie(tied) and not is_tie([0.6, 0.5])
    assert not beats(0.5, 0.5, "strict") and beats(0.5, 0.5, "first") and beats(0.6, 0.5, "strict")
    with pytest.raises(ValueError, match="Generator"):
        decide(tied, 0, "random")


def test_rank_of_tie_policies():
    s = np.array([0.2, 0.5, 0.5, 0.5, 0.9])
    assert rank_of(s, 1, "first") == 1  # only 0.9 above
    assert rank_of(s, 1, "strict") == 3  # the two tied negatives rank above too
    assert rank_of(s, [1, 2], "first") == 1 and rank_of(s, [1, 2], "strict") == 2
    assert rank_of(s, 1, "random", np.random.default_rng(0)) in (1, 2, 3)


def test_scorer_matrix_matches_hand_built_cosines(tmp_path):
    red, blue = solid(tmp_path / "r.png", RED), solid(tmp_path / "b.png", BLUE)
    scorer, model, tok = stub_scorer(TABLE)
    items = [make_item("a", [red], ["red", "blue", "reddish"]), make_item("b", [red, blue], ["blue", "red"])]
    a, b = scorer.score(items)
    np.testing.assert_allclose(a.image_text, [[1, 0, 1 / np.sqrt(2)]], atol=1e-6)
    np.testing.assert_allclose(b.image_text, [[0, 1], [1, 0]], atol=1e-6)
    assert a.image_text.dtype == np.float32 and a.text_text is None


def test_each_unique_image_and_text_encoded_once_in_batches(tmp_path):
    paths = [solid(tmp_path / f"{i}.png", c) for i, c in enumerate([RED, GREEN, BLUE])]
    scorer, model, tok = stub_scorer(TABLE, image_batch_size=2, text_batch_size=3)
    items = [make_item(str(i), [paths[i % 3]], ["red", "blue"]) for i in range(9)]
    scorer.score(items)
    scorer.score(items[:3])  # cached across calls
    assert model.image_batches == [2, 1]  # 3 unique images, batches of 2
    assert sorted(t for call in tok.calls for t in call) == ["blue", "red"]
    assert scorer.stats.images_encoded == 3 and scorer.stats.texts_encoded == 2


def test_identical_texts_tie_exactly(tmp_path):
    # Two different strings with the same feature must give bit-identical scores, so tie policies are exact.
    scorer, _, _ = stub_scorer(TABLE)
    (s,) = scorer.score([make_item("x", [solid(tmp_path / "r.png", RED)], ["red", "red too", "green"])])
    assert s.image_text[0, 0] == s.image_text[0, 1]
    assert not decide(s.image_text[0], 0, "strict") and decide(s.image_text[0], 0, "first")


def test_text_text_similarities(tmp_path):
    scorer, _, _ = stub_scorer(TABLE)
    item = Item("t", (ImageRef(str(solid(tmp_path / "r.png", RED))),), ("red", "reddish", "blue"), text_text=True)
    (s,) = scorer.score([item])
    h = 1 / np.sqrt(2)
    np.testing.assert_allclose(s.text_text, [[1, h, 0], [h, 1, 0], [0, 0, 1]], atol=1e-6)


def test_crop_box_selects_region(tmp_path):
    img = Image.new("RGB", (20, 10), RED)
    img.paste(Image.new("RGB", (10, 10), BLUE), (10, 0))
    img.save(tmp_path / "half.png")
    right = load_image(ImageRef(str(tmp_path / "half.png"), box=(10, 0, 10, 10)))
    assert right.size == (10, 10) and right.getpixel((5, 5)) == BLUE
    assert load_image(ImageRef(str(tmp_path / "half.png"))).size == (20, 10)
    # palette images: default passes them as opened (the transform converts), rgb_first converts first
    Image.new("P", (4, 4), 3).save(tmp_path / "p.png")
    assert load_image(ImageRef(str(tmp_path / "p.png"))).mode == "P"
    assert load_image(ImageRef(str(tmp_path / "p.png"), rgb_first=True)).mode == "RGB"


def test_dataloader_workers_give_same_features(tmp_path):
    paths = [solid(tmp_path / f"{i}.png", c) for i, c in enumerate([RED, GREEN, BLUE, (10, 20, 30)])]
    refs = [ImageRef(str(p)) for p in paths]
    a = stub_scorer(TABLE, num_workers=0)[0].encode_images(refs)
    b = stub_scorer(TABLE, num_workers=2, image_batch_size=3)[0].encode_images(refs)
    assert a.shape == (4, 3) and bool((a == b).all())


def test_config_validation_and_record():
    with pytest.raises(ValueError, match="precision"):
        ScorerConfig(precision="fp16")
    assert ScorerConfig().to_dict()["precision"] == "fp32"
    assert ScorerConfig(precision="amp").to_dict()["autocast_dtype"] == "bfloat16"  # on CPU


def test_amp_runs_on_tiny_model(tiny_bundle, tmp_path):
    from clipneg.eval.scorer import Scorer

    b = tiny_bundle
    path = solid(tmp_path / "r.png", RED, (40, 40))
    items = [make_item("a", [path], ["a red square", "a blue square"])]
    fp32 = Scorer(b.model, b.preprocess_val, b.tokenizer, ScorerConfig(num_workers=0, progress=False)).score(items)
    amp = Scorer(b.model, b.preprocess_val, b.tokenizer,
                 ScorerConfig(num_workers=0, progress=False, precision="amp")).score(items)
    np.testing.assert_allclose(fp32[0].image_text, amp[0].image_text, atol=0.05)
