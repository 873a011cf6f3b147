"""ARO VG-Relation / VG-Attribution adapter: [false, true] order, box crop, symmetric exclusion, 25-item threshold."""

from __future__ import annotations

import pytest
from clipneg.eval.aro import AroConfig, evaluate_aro, load_aro, load_excluded_relations, resolve_paths
from PIL import Image

from tests.test_eval_support import BLUE, RED, stub_scorer, write_json

TABLE = {"red": [1, 0, 0], "blue": [0, 0, 1], "also blue": [0, 0, 1]}


def half_image(path):
    """Left half red, right half blue: the box decides what the model sees."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (40, 20), RED)
    img.paste(Image.new("RGB", (20, 20), BLUE), (20, 0))
    img.save(path)


LEFT = {"bbox_x": 0, "bbox_y": 0, "bbox_w": 20, "bbox_h": 20}
RIGHT = {"bbox_x": 20, "bbox_y": 0, "bbox_w": 20, "bbox_h": 20}


def case(box, true, false, **extra):
    return {"image_path": "1.jpg", **box, "true_caption": true, "false_caption": false, **extra}


def test_packaged_symmetric_list():
    names, sha = load_excluded_relations()
    assert len(names) == 157 and "between" in names and "on" not in names
    assert sha == "1fd32d69e73531ad3e8b0907686d3f46e1faafee69e0ba5756fd800593d525a3"


def test_relation_order_crop_and_symmetric_exclusion(tmp_path):
    half_image(tmp_path / "images" / "1.jpg")
    cases = [
        case(RIGHT, "blue", "red", relation_name="on"),  # crop shows blue: correct
        case(LEFT, "blue", "red", relation_name="on"),  # crop shows red: wrong
        case(LEFT, "red", "blue", relation_name="holding"),  # correct
        case(RIGHT, "blue", "also blue", relation_name="holding"),  # exact tie: wrong (official argmax picks false)
        case(LEFT, "blue", "red", relation_name="between"),  # wrong, but "between" is symmetric: excluded
    ]
    write_json(tmp_path / "visual_genome_relation.json", cases)
    json_path, image_dir = resolve_paths("vg_relation", tmp_path)
    assert image_dir == tmp_path / "images"
    items, _, _ = load_aro(AroConfig("vg_relation", str(json_path), str(image_dir)))
    assert items[0].texts == ("blue", "red")  # positive first, although the official order is [false, true]
    assert items[0].images[0].crop_box() == (20.0, 0.0, 40.0, 20.0)
    scorer, _, _ = stub_scorer(TABLE)
    res = evaluate_aro(scorer, AroConfig("vg_relation", str(json_path), str(image_dir)))
    per = res.details["per_relation"]
    assert per["on"]["accuracy"] == 50.0 and per["holding"]["accuracy"] == 50.0 and per["holding"]["ties"] == 1
    assert per["between"]["excluded"] and not per["on"]["excluded"]
    assert res.metrics["macro"] == 50.0  # mean of on, holding
    assert res.metrics["macro_all"] == pytest.approx(100 / 3)  # with between (0 %)
    assert res.metrics["micro"] == 40.0 and res.metrics["micro_kept"] == 50.0
    assert res.data["relations_kept"] == 2 and res.headline == "macro"


def test_attribution_pairs_below_25_items_are_dropped(tmp_path):
    half_image(tmp_path / "images" / "1.jpg")
    # pair red_blue: 25 items, all correct; pair blue_red: 24 items, all wrong (kept out of the headline)
    cases = [case(LEFT, "red", "blue", attributes=["red", "blue"]) for _ in range(25)]
    cases += [case(LEFT, "blue", "red", attributes=["blue", "red"]) for _ in range(24)]
    write_json(tmp_path / "aro" / "visual_genome_attribution.json", cases)
    json_path, image_dir = resolve_paths("vg_attribution", tmp_path)  # finds aro/visual_genome_attribution.json
    scorer, _, _ = stub_scorer(TABLE)
    res = evaluate_aro(scorer, AroConfig("vg_attribution", str(json_path), str(image_dir)))
    assert res.metrics["macro"] == 100.0 and res.metrics["macro_all"] == 50.0
    assert res.details["per_pair"]["blue_red"] == {"correct": 0, "total": 24, "ties": 0, "accuracy": 0.0,
                                                   "kept": False}
    assert res.data["pairs_kept"] == 1
    assert scorer.stats.images_encoded == 1  # one (file, box) pair, encoded once for 49 items


def test_missing_json_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="clipneg data download aro-vg-relation"):
        resolve_paths("vg_relation", tmp_path)
