"""SugarCrepe adapter on fixture files in the official format (non-contiguous keys, pinned-hash checks)."""

from __future__ import annotations

import math

import pytest
from clipneg.eval.sugarcrepe import SugarCrepeConfig, evaluate_sugarcrepe, load_sugarcrepe, resolve_paths

from tests.test_eval_support import BLUE, GREEN, RED, solid, stub_scorer, write_json

TABLE = {"red": [1, 0, 0], "green": [0, 1, 0], "blue": [0, 0, 1], "also red": [1, 0, 0]}
COLORS = {"r.jpg": RED, "g.jpg": GREEN, "b.jpg": BLUE}


def make_sugarcrepe(root, subsets=None):
    """Official layout: {subset}.json keyed by string indices that skip numbers, images named by filename."""
    for name, color in COLORS.items():
        solid(root / "val2017" / name, color)
    subsets = subsets or {
        # replace_obj: 3 items, keys 0, 2, 7 (skipping): correct, wrong, correct
        "replace_obj": {"0": ("r.jpg", "red", "blue"), "2": ("g.jpg", "blue", "green"), "7": ("b.jpg", "blue", "red")},
        # replace_att: a tie (identical features): wrong under strict
        "replace_att": {"1": ("r.jpg", "red", "also red")},
        "swap_obj": {"0": ("g.jpg", "green", "red"), "5": ("b.jpg", "blue", "green")},
        "add_att": {"3": ("r.jpg", "green", "red")},
    }
    for subset, items in subsets.items():
        write_json(root / "data" / f"{subset}.json", {k: {"filename": f, "caption": c, "negative_caption": n}
                                                      for k, (f, c, n) in items.items()})
    return root


def test_per_subset_group_and_macro_views(tmp_path):
    root = make_sugarcrepe(tmp_path)
    json_dir, image_dir = resolve_paths(root)
    assert json_dir == root / "data" and image_dir == root / "val2017"
    scorer, _, _ = stub_scorer(TABLE)
    res = evaluate_sugarcrepe(scorer, SugarCrepeConfig(str(json_dir), str(image_dir)))
    m = res.metrics
    assert m["replace_obj"] == pytest.approx(200 / 3) and m["replace_att"] == 0.0
    assert m["swap_obj"] == 100.0 and m["add_att"] == 0.0
    # REPLACE pools items (2 of 4), the macro mean averages subsets
    assert m["replace"] == 50.0 and res.counts["replace"] == {"correct": 2, "total": 4, "ties": 1}
    assert m["swap"] == 100.0 and m["add"] == 0.0
    assert m["macro"] == pytest.approx((200 / 3 + 0 + 100 + 0) / 4)
    assert res.counts["replace_att"]["ties"] == 1
    ids = [p["id"] for p in res.predictions]
    assert ids[:3] == ["replace_obj/0", "replace_obj/2", "replace_obj/7"]  # keys iterated, not range(len)
    assert res.data["official"] is False and any("only 4 of 7" in w for w in res.warnings)
    assert res.protocol["tie_policy"] == "strict"


def test_tie_policy_first_counts_the_tie(tmp_path):
    root = make_sugarcrepe(tmp_path)
    scorer, _, _ = stub_scorer(TABLE)
    res = evaluate_sugarcrepe(scorer, SugarCrepeConfig(str(root / "data"), str(root / "val2017")), "first")
    assert res.metrics["replace_att"] == 100.0


def test_pinned_hash_mismatch_and_old_swap_obj_warn(tmp_path):
    items = {str(i): ("r.jpg", "red", "blue") for i in range(247) if i != 108}  # 246 items, key "108" skipped
    root = make_sugarcrepe(tmp_path, {"swap_obj": items})
    _, data, warnings = load_sugarcrepe(SugarCrepeConfig(str(root / "data"), str(root / "val2017")))
    assert data["items_per_subset"] == {"swap_obj": 246}
    assert any("pre-Nov-2023 swap_obj with 246 items" in w for w in warnings)
    assert len(data["files"]["swap_obj.json"]) == 64


def test_missing_images_error_says_what_to_do(tmp_path):
    root = make_sugarcrepe(tmp_path)
    (root / "val2017" / "g.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="--sugarcrepe-images"):
        load_sugarcrepe(SugarCrepeConfig(str(root / "data"), str(root / "val2017")))
    with pytest.raises(FileNotFoundError, match="clipneg data download sugarcrepe"):
        resolve_paths(tmp_path / "nowhere")


def test_separate_json_and_image_folders_and_custom_subsets(tmp_path):
    # A benchmark in SugarCrepe's format with its own subset name (as the built-in world may write)
    make_sugarcrepe(tmp_path / "a", {"spatial": {"4": ("r.jpg", "red", "green")}, "replace_rel": {"9": (
        "b.jpg", "red", "blue")}})
    json_dir, image_dir = resolve_paths(None, tmp_path / "a" / "data", tmp_path / "a" / "val2017")
    scorer, _, _ = stub_scorer(TABLE)
    res = evaluate_sugarcrepe(scorer, SugarCrepeConfig(str(json_dir), str(image_dir), name="sugarcrepe-world"))
    assert res.benchmark == "sugarcrepe-world"
    assert res.metrics["spatial"] == 100.0 and res.metrics["replace_rel"] == 0.0
    assert "spatial" in res.columns and math.isclose(res.metrics["macro"], 50.0)


def test_real_tiny_model_end_to_end(tiny_bundle, tmp_path):
    from clipneg.eval.scorer import Scorer, ScorerConfig

    root = make_sugarcrepe(tmp_path)
    b = tiny_bundle
    scorer = Scorer(b.model, b.preprocess_val, b.tokenizer, ScorerConfig(num_workers=0, progress=False))
    res = evaluate_sugarcrepe(scorer, SugarCrepeConfig(str(root / "data"), str(root / "val2017")))
    assert res.counts["micro"]["total"] == 7
    for p in res.predictions:  # decisions agree with the recorded scores under the strict rule
        assert p["correct"] == (p["pos"] > p["neg"])
