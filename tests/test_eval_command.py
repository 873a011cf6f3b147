"""`clipneg eval` / `report` / `data` run functions end to end with a tiny model, and the model-loading checks."""

from __future__ import annotations

import argparse
import json

import pytest
from clipneg.eval.model_checks import find_manifests, leakage_findings, leakage_warnings, quickgelu_warnings

from clipneg.commands.data import add_arguments as add_data_arguments
from clipneg.commands.data import run as run_data
from clipneg.commands.eval import add_arguments as add_eval_arguments
from clipneg.commands.eval import run as run_eval
from clipneg.commands.report import add_arguments as add_report_arguments
from clipneg.commands.report import run as run_report
from tests.test_eval_sugarcrepe import make_sugarcrepe
from tests.test_eval_support import solid, write_json


def parse(add, argv):
    p = argparse.ArgumentParser()
    add(p)
    return p.parse_args(argv)


def test_eval_then_report_with_tiny_model(tmp_path, capsys):
    root = make_sugarcrepe(tmp_path / "sc")
    aro = tmp_path / "aro"
    solid(aro / "images" / "r.jpg", (200, 10, 10))
    write_json(aro / "visual_genome_relation.json", [
        {"image_path": "r.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 8, "bbox_h": 8, "true_caption": "a red square",
         "false_caption": "a square red", "relation_name": "on"}])
    out = tmp_path / "results"
    argv = ["sugarcrepe", "aro-vg-relation", "--model", "clipneg-tiny", "--sugarcrepe", str(root), "--aro", str(aro),
            "--out", str(out), "--num-workers", "0", "--no-progress", "--predictions", "--label", "tiny"]
    assert run_eval(parse(add_eval_arguments, argv)) == 0
    doc = json.loads((out / "sugarcrepe" / "tiny.json").read_text())
    assert doc["protocol"]["precision"] == "fp32" and doc["protocol"]["tie_policy"] == "strict"
    assert doc["model"]["activation"] == "gelu" and len(doc["model"]["weights_sha256"]) == 64
    assert doc["counts"]["micro"]["total"] == 7 and (out / "sugarcrepe" / "tiny.predictions.jsonl").exists()
    assert json.loads((out / "aro-vg-relation" / "tiny.json").read_text())["counts"]["micro"]["total"] == 1
    capsys.readouterr()
    assert run_eval(parse(add_eval_arguments, [*argv, "--skip-existing"])) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run_report(parse(add_report_arguments, [str(out), "--out", str(tmp_path / "rep")])) == 0
    assert (tmp_path / "rep" / "summary.md").exists() and (tmp_path / "rep" / "plots" / "sugarcrepe.png").exists()


def test_eval_fails_fast_on_missing_data(tmp_path):
    args = parse(add_eval_arguments, ["sugarcrepe", "--model", "clipneg-tiny", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--sugarcrepe DIR"):
        run_eval(args)
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_eval(parse(add_eval_arguments, ["nope", "--model", "clipneg-tiny"]))


def test_data_list_and_verify(tmp_path, capsys):
    assert run_data(parse(add_data_arguments, ["list"])) == 0
    assert "sugarcrepe" in capsys.readouterr().out
    assert run_data(parse(add_data_arguments, ["verify", "sugarcrepe", "--out", str(tmp_path)])) == 1
    assert "missing" in capsys.readouterr().err


def test_quickgelu_trap_warnings(tmp_path):
    ckpt = tmp_path / "negclip.pt"
    ckpt.write_bytes(b"x")
    assert quickgelu_warnings("ViT-B-32", str(ckpt), {"activation": "gelu"})
    assert not quickgelu_warnings("ViT-B-32-quickgelu", str(ckpt), {"activation": "quick_gelu"})
    assert quickgelu_warnings("ViT-B-32", "openai", {"activation": "gelu"})
    export = {"activation": "gelu", "export": {"base_pretrained": "openai", "activation": "gelu"}}
    assert any("export record" in w for w in quickgelu_warnings("local-dir:x", None, export))


def test_leakage_found_in_run_manifests(tmp_path):
    run = tmp_path / "runs" / "r1"
    shards = tmp_path / "shards" / "coco"
    write_json(shards / "manifest.json", {"source": {"kind": "coco", "coco_dropped_leakage": {"annotations": 0,
                                                                                              "images": 0}}})
    write_json(run / "manifest.json", {"data": str(shards)})
    (run / "export").mkdir()
    identity = {"export": {"data": str(shards)}}
    findings = leakage_findings(find_manifests(f"local-dir:{run / 'export'}", None, identity))
    assert findings["uses_coco"] and not findings["dropped"]
    assert leakage_warnings(findings, "sugarcrepe") and not leakage_warnings(findings, "aro-vg-relation")
    write_json(shards / "manifest.json", {"source": {"kind": "coco", "coco_dropped_leakage": {"annotations": 7800,
                                                                                              "images": 1560}}})
    findings = leakage_findings(find_manifests(f"local-dir:{run / 'export'}", None, identity))
    assert findings["dropped"] == 1560 and not leakage_warnings(findings, "sugarcrepe")
    assert leakage_warnings({"overlap": 12, "sources": ["m"]}, "sugarcrepe")
