"""SugarCrepe++, Winoground, VALSE, zero-shot classification and retrieval adapters on fixture files."""

from __future__ import annotations

import json

import pytest
from clipneg.eval.retrieval import RetrievalConfig, evaluate_retrieval
from clipneg.eval.sugarcrepe_pp import SugarCrepePPConfig, evaluate_sugarcrepe_pp
from clipneg.eval.valse import ValseConfig, evaluate_valse
from clipneg.eval.winoground import WinogroundConfig, evaluate_winoground
from clipneg.eval.zeroshot import ZeroShotConfig, evaluate_zeroshot

from tests.test_eval_support import BLUE, GREEN, RED, solid, stub_scorer, write_json

TABLE = {"red": [1, 0, 0], "crimson": [0.9, 0.1, 0], "blue": [0, 0, 1], "navy": [0.1, 0, 0.9], "green": [0, 1, 0],
         "scarlet": [1, 0.05, 0], "azure": [0, 0.05, 1], "reddish": [1, 0.6, 0]}


def test_sugarcrepe_pp_itt_and_tot(tmp_path):
    solid(tmp_path / "img" / "r.jpg", RED)
    write_json(tmp_path / "json" / "replace_att.json", [
        # both positives beat the negative (ITT); P1~P2 closer than either to N (TOT)
        {"id": 0, "filename": "r.jpg", "caption": "red", "caption2": "crimson", "negative_caption": "blue"},
        # P2 loses to N on the image (ITT wrong); TOT: cos(P1,P2)=0 < cos(P1,N) (wrong)
        {"id": 1, "filename": "r.jpg", "caption": "red", "caption2": "blue", "negative_caption": "reddish"},
    ])
    res = evaluate_sugarcrepe_pp(stub_scorer(TABLE)[0], SugarCrepePPConfig(str(tmp_path / "json"),
                                                                           str(tmp_path / "img")))
    assert res.metrics["replace_att/itt"] == 50.0 and res.metrics["replace_att/tot"] == 50.0
    assert res.metrics["itt"] == 50.0 and res.predictions[0]["itt"] and not res.predictions[1]["tot"]


def test_winoground_text_image_group(tmp_path):
    d = tmp_path / "wino"
    solid(d / "images" / "ex_0.png", RED)
    solid(d / "images" / "ex_1.png", BLUE)
    solid(d / "images" / "ex_2.png", GREEN)
    rows = [
        {"id": 0, "image_0": "ex_0", "image_1": "ex_1", "caption_0": "red", "caption_1": "blue", "tag": "Object",
         "collapsed_tag": "Object"},  # all three right
        # text: s(red,i0)=1 > s(crimson,i0)=.99 and s(crimson,i1)=.11 > s(red,i1)=0 -> right;
        # image: s(crimson,i1)=.11 > s(crimson,i0)=.99 fails -> image (and group) wrong
        {"id": 1, "image_0": "ex_0", "image_1": "ex_2", "caption_0": "red", "caption_1": "crimson", "tag": "Relation",
         "collapsed_tag": "Relation"},
    ]
    (d / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = evaluate_winoground(stub_scorer(TABLE)[0], WinogroundConfig(str(d)))
    assert res.metrics == {"text": 100.0, "image": 50.0, "group": 50.0}
    assert res.details["by_tag"]["Object"]["group"]["accuracy"] == 100.0


def test_valse_valid_subset_and_pieces(tmp_path):
    solid(tmp_path / "images" / "coco" / "1.jpg", RED)
    write_json(tmp_path / "json" / "existence.json", {
        "a": {"dataset": "coco", "image_file": "1.jpg", "caption": "red", "foil": "blue",
              "mturk": {"caption": 3, "foil": 0, "other": 0}},
        "b": {"dataset": "coco", "image_file": "1.jpg", "caption": "blue", "foil": "red",
              "mturk": {"caption": 1, "foil": 2, "other": 0}},  # invalid: dropped
    })
    write_json(tmp_path / "json" / "plurals.json", {
        "c": {"dataset": "coco", "image_file": "1.jpg", "caption": "blue", "foil": "red",
              "mturk": {"caption": 2, "foil": 1, "other": 0}}})
    res = evaluate_valse(stub_scorer(TABLE)[0], ValseConfig(str(tmp_path / "json"), str(tmp_path / "images")))
    assert res.metrics["existence"] == 100.0 and res.metrics["plurals"] == 0.0 and res.metrics["macro"] == 50.0
    assert res.data["dropped_invalid"] == {"existence": 1, "plurals": 0}
    every = evaluate_valse(stub_scorer(TABLE)[0], ValseConfig(str(tmp_path / "json"), str(tmp_path / "images"),
                                                              valid_only=False))
    assert every.counts["existence"]["total"] == 2


def test_zeroshot_prompt_ensembling(tmp_path):
    for cls, color in (("red", RED), ("blue", BLUE)):
        for i in range(2):
            solid(tmp_path / "data" / cls / f"{i}.png", color)
    solid(tmp_path / "data" / "blue" / "odd.png", RED)  # a red image labelled blue: wrong
    (tmp_path / "t.txt").write_text("{c}\n")
    res = evaluate_zeroshot(stub_scorer(TABLE)[0], ZeroShotConfig(str(tmp_path / "data"), templates=str(
        tmp_path / "t.txt")))
    assert res.metrics["top1"] == pytest.approx(80.0) and res.metrics["top5"] == 100.0
    assert res.metrics["mean_per_class_recall"] == pytest.approx((100 + 200 / 3) / 2)


def test_retrieval_recall_both_ways(tmp_path):
    solid(tmp_path / "img" / "r.jpg", RED)
    solid(tmp_path / "img" / "b.jpg", BLUE)
    write_json(tmp_path / "k.json", [{"image": "r.jpg", "caption": ["red", "scarlet"]},
                                     {"image": "b.jpg", "caption": ["navy", "crimson"]}])
    res = evaluate_retrieval(stub_scorer(TABLE)[0], RetrievalConfig(str(tmp_path / "k.json"), str(tmp_path / "img")))
    # i2t: red image -> "red" top (hit); blue image -> "navy" top (hit)
    assert res.metrics["i2t_R@1"] == 100.0
    # t2i: "crimson" belongs to the blue image but is closer to the red one: 3 of 4 at R@1, all at R@5
    assert res.metrics["t2i_R@1"] == 75.0 and res.metrics["t2i_R@5"] == 100.0
    assert res.counts["t2i_R@1"] == {"correct": 3, "total": 4}
