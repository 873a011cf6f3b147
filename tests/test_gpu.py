"""On a CUDA machine: train.py under FSDP2 through Accelerate's own launcher, with the DeGLA EMA teacher, the export
and resume. Skipped without CUDA (CI has none); on a GPU machine: `pytest -m gpu tests/test_gpu.py`.

Accelerate applies FSDP only to a distributed (torchrun-launched) process, so even on one GPU these runs go through
`accelerate launch --use_fsdp`, which starts a one-process group; on one rank the sharded run computes the same
function as the plain one, which is what makes the comparisons below exact up to kernel non-determinism.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from clipneg.world import World, WorldConfig, export_benchmarks, write_train_shards

    out = tmp_path_factory.mktemp("world")
    w = World(WorldConfig(image_size=32, grid=2, seed=0))
    write_train_shards(w, out / "shards", 96, shard_size=16, progress=False)
    export_benchmarks(w, out / "benchmark", 8, progress=False)
    return out


def launch(world: Path, out: Path, name: str, *extra: str, fsdp: bool, precision: str = "no") -> dict:
    """train.py with the DeGLA recipe on a tiny model: NegCLIP columns, the per-sample term and an EMA teacher that
    moves fast enough (decay 0.5) for a wrong teacher update to show in the distillation loss."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", "1",
                "--mixed_precision", precision, "--dynamo_backend", "no"]
    if fsdp:
        launcher += ["--use_fsdp", "--fsdp_version", "2"]
    cmd = [*launcher, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "degla_vitb32.yaml"),
           "--model.name", "clipneg-tiny", "--model.pretrained", "null", "--data.shards", str(world / "shards"),
           "--data.batch_size", "16", "--data.num_workers", "2", "--data.shuffle_buffer", "32",
           "--data.k_image", "1", "--loss.neg_image_columns", "true", "--loss.distill_ema", "0.5",
           "--loss.distill", "1.0", "--optim.lr", "1e-3", "--optim.warmup_steps", "1", "--run.steps", "8",
           "--run.log_every", "1", "--run.save_every", "4", "--run.mixed_precision", precision,
           "--run.progress", "false", "--run.trackers", "[jsonl]", "--run.out_dir", str(out), "--run.name", name,
           "--eval.benchmarks", f"[{world / 'benchmark' / 'sugarcrepe'}]", "--eval.image_root", "null",
           "--eval.every", "0", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def weights(result: dict) -> dict[str, torch.Tensor]:
    return load_file(Path(result["export"]) / "open_clip_model.safetensors")


def test_fsdp2_trains_like_one_plain_gpu_and_exports_for_open_clip(world, tmp_path):
    """Given the same seed and data, when a run uses FSDP2 (fp32), then every logged loss term (the distillation
    towards the EMA teacher included) and the exported weights match the plain single-GPU run, and the export (gathered
    from the shards) loads with open_clip and is what the end-of-run evaluation scored."""
    import open_clip

    plain = launch(world, tmp_path, "plain", fsdp=False)
    sharded = launch(world, tmp_path, "fsdp", fsdp=True)
    assert plain["distributed_type"] == "NO" and sharded["distributed_type"] == "FSDP"
    for key in ("train/contrastive_loss", "train/hard_negative_loss", "train/distill_loss", "train/loss"):
        assert sharded[key] == pytest.approx(plain[key], rel=2e-3, abs=1e-5), key
    assert sharded["train/distill_loss"] > 0
    a, b = weights(plain), weights(sharded)
    assert a.keys() == b.keys() and not any(k.startswith("teacher") for k in b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=2e-3, atol=2e-4, msg=k)
    model, _, _ = open_clip.create_model_and_transforms("local-dir:" + sharded["export"])
    assert all(torch.equal(v, b[k]) for k, v in model.state_dict().items())
    scored = {name: json.loads((Path(res["run_dir"]) / "eval.json").read_text())
              for name, res in (("plain", plain), ("fsdp", sharded))}
    assert "sugarcrepe/swap_att" in scored["fsdp"]
    for key, value in scored["plain"].items():  # 8 scenes a kind: one flipped item is 12.5 points
        assert scored["fsdp"][key] == pytest.approx(value, abs=13.0), key


def test_fsdp2_bf16_run_killed_and_resumed_matches_the_whole_run(world, tmp_path):
    """Given an 8-step bf16 FSDP2 run with sharded checkpoints at steps 4 and 8, when the step-8 checkpoint and the
    export are removed and the run resumes from step 4 (model, EMA teacher, optimizer, RNG and data position), then it
    ends where the uninterrupted run ended."""
    whole = launch(world, tmp_path, "whole", fsdp=True, precision="bf16")
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", run)
    shutil.rmtree(run / "checkpoints" / "step-00000008")
    shutil.rmtree(run / "export")
    resumed = launch(world, tmp_path, "resumed", "--resume", fsdp=True, precision="bf16")
    assert resumed["step"] == 8 and resumed["samples_seen"] == whole["samples_seen"] == 8 * 16
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    # The log is appended to: the killed run's 8 rows, then the resumed run's, which start after step 4.
    assert [r["step"] for r in rows if "train/loss" in r] == [*range(1, 9), 5, 6, 7, 8]
    assert resumed["train/distill_loss"] == pytest.approx(whole["train/distill_loss"], rel=1e-2, abs=1e-5)
    a, b = weights(whole), weights(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-2, atol=1e-3, msg=k)
