"""Result JSONs and the report built from them: tables in the published layouts, deltas, PNG bar charts."""

from __future__ import annotations

import csv
import json

import pytest
from clipneg.eval.report import ReportConfig, build_report, split_benchmark
from clipneg.eval.results import BenchmarkResult, load_results, result_path, safe_label, write_result

from clipneg.schema import SUGARCREPE_KINDS

SUBSETS = SUGARCREPE_KINDS


def sugarcrepe_result(base: float) -> BenchmarkResult:
    metrics = {s: base + i for i, s in enumerate(SUBSETS)}
    metrics.update({"replace": base, "swap": base + 3.5, "add": base + 5.5, "macro": base + 3, "micro": base})
    return BenchmarkResult("sugarcrepe", metrics, [*SUBSETS, "replace", "swap", "add", "macro"], "macro",
                           counts={"replace_obj": {"correct": 1, "total": 2, "ties": 0}},
                           protocol={"tie_policy": "strict", "precision": "fp32"}, data={"official": True},
                           predictions=[{"id": "replace_obj/0", "correct": True}])


def test_write_and_load_result(tmp_path):
    model = {"name": "ViT-B-32-quickgelu", "activation": "quick_gelu", "weights_sha256": "ab" * 32}
    path = write_result(sugarcrepe_result(50), tmp_path, "ViT-B-32-quickgelu/openai", model=model, predictions=True,
                        extra_warnings=["w1"])
    assert path == result_path(tmp_path, "sugarcrepe", "ViT-B-32-quickgelu/openai")
    assert path.name == "ViT-B-32-quickgelu__openai.json" == safe_label("ViT-B-32-quickgelu/openai") + ".json"
    doc = json.loads(path.read_text())
    assert doc["model"]["activation"] == "quick_gelu" and doc["warnings"] == ["w1"] and doc["headline"] == "macro"
    assert (tmp_path / "sugarcrepe" / doc["predictions"]).read_text().count("\n") == 1
    (tmp_path / "other.json").write_text("{}")  # not a result: ignored
    assert [d["label"] for d in load_results(tmp_path)] == ["ViT-B-32-quickgelu__openai"]


def test_report_two_models_with_deltas_and_plots(tmp_path):
    res = tmp_path / "results"
    write_result(sugarcrepe_result(50), res, "base", model={"activation": "quick_gelu"})
    write_result(sugarcrepe_result(60), res, "tuned", model={"activation": "quick_gelu"},
                 extra_warnings=["training data overlaps"])
    aro = BenchmarkResult("aro-vg-relation", {"macro": 59.9, "micro": 55.0}, ["macro", "micro"], "macro",
                          protocol={"tie_policy": "strict"})
    write_result(aro, res, "base", model={})
    world = BenchmarkResult("sugarcrepe-world", {"replace_obj": 70.0, "macro": 70.0}, ["replace_obj", "macro"],
                            "macro")
    write_result(world, res, "tuned", model={})
    paths = build_report(ReportConfig(str(res), str(tmp_path / "report"), baseline="base"))
    names = {p.name for p in paths}
    assert {"summary.md", "summary.csv", "summary_delta.csv", "sugarcrepe.png", "aro.png",
            "sugarcrepe-world.png"} <= names
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    rows = list(csv.reader(open(tmp_path / "report" / "summary.csv")))
    header = rows[0]
    assert header[:3] == ["model", "SugarCrepe: replace-obj", "SugarCrepe: replace-att"]
    assert "ARO: VG-Relation" in header and "SugarCrepe (world): replace-obj" in header
    by_model = {r[0]: dict(zip(header, r, strict=True)) for r in rows[1:]}
    assert float(by_model["tuned"]["SugarCrepe: macro-7"]) == 63.0
    assert by_model["tuned"]["ARO: VG-Relation"] == ""  # not evaluated
    deltas = {r[0]: r for r in csv.reader(open(tmp_path / "report" / "summary_delta.csv"))}
    assert deltas["tuned"][1] == "+10.0000"
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "| tuned | +10.00 |" in md and "REPLACE" in md and "training data overlaps" in md
    assert "![SugarCrepe](plots/sugarcrepe.png)" in md
    with pytest.raises(ValueError, match="--baseline"):
        build_report(ReportConfig(str(res), str(tmp_path / "r2"), baseline="nope"))


def test_split_benchmark_names():
    assert split_benchmark("sugarcrepe") == ("sugarcrepe", "")
    assert split_benchmark("sugarcrepe-pp") == ("sugarcrepe-pp", "")
    assert split_benchmark("sugarcrepe-world") == ("sugarcrepe", "world")
    assert split_benchmark("aro-vg-relation-heldout") == ("aro-vg-relation", "heldout")
