from __future__ import annotations

import json

import pytest

from clipneg.commands import main


@pytest.mark.slow
def test_demo_runs_the_whole_loop(tmp_path, capsys):
    """world -> gallery -> pretrain -> fine-tune -> eval (seen + held-out) -> report, at the smallest size."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-train", "256", "--n-test", "40", "--pretrain-steps", "2",
                 "--finetune-steps", "2", "--recipes", "clip", "negclip", "--jobs", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["report"].endswith("summary.md")
    report = (out / "report" / "summary.md").read_text()
    for label in ("pretrain", "clip", "negclip"):
        assert f"| {label} |" in report
    assert (out / "report" / "plots" / "sugarcrepe-world-heldout.png").stat().st_size > 1000
    gallery = (out / "gallery.html").read_text()
    assert "negative caption kind" in gallery and '<span class="kind">paraphrase</span>' in gallery
    result = json.loads((out / "results" / "sugarcrepe-world" / "negclip.json").read_text())
    assert result["model"]["activation"] == "gelu"
    assert 0 <= result["metrics"]["macro"] <= 100
