"""DeepSpeed ZeRO-2 through Accelerate's own launcher, on two CPU processes (gloo): the same run as DDP, resumable.

Skipped where DeepSpeed is not installed (CI does not install it: an sdist that builds against the installed torch,
plus transformers, which Accelerate's DeepSpeed integration imports). To run it:
`pip install deepspeed transformers tokenizers && pytest -m deepspeed tests/test_deepspeed.py`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow,
              pytest.mark.skipif(find_spec("deepspeed") is None or find_spec("transformers") is None,
                                 reason="needs deepspeed and transformers")]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from clipneg.world import World, WorldConfig, write_train_shards

    out = tmp_path_factory.mktemp("world")
    write_train_shards(World(WorldConfig(image_size=32, grid=2, seed=0)), out / "shards", 128, shard_size=16,
                       progress=False)
    return out


@pytest.fixture(scope="module")
def hot_start(tmp_path_factory) -> Path:
    """The tiny model with exp(logit_scale) = e^5 = 148, above CLIP's clamp at 100: the first step must clamp it."""
    from clipneg.models import export_local_dir, load_clip

    bundle = load_clip("clipneg-tiny", seed=0)
    with torch.no_grad():
        bundle.model.logit_scale.fill_(5.0)
    return Path(export_local_dir(bundle.model, tmp_path_factory.mktemp("hot") / "export", model_cfg=bundle.model_cfg))


def launch(world: Path, out: Path, name: str, *extra: str, deepspeed: bool, precision: str = "no", check: bool = True):
    """train.py on two CPU ranks with the DeGLA recipe on a tiny model: NegCLIP columns, a negative image column, the
    per-sample term and an EMA teacher that moves fast enough (decay 0.5) for a wrong update to show."""
    from tests.test_distributed import _free_port

    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", "2",
                "--mixed_precision", precision, "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if deepspeed:
        launcher += ["--use_deepspeed", "--zero_stage", "2"]
    else:
        launcher += ["--multi_gpu"]
        env["ACCELERATE_USE_CPU"] = "1"  # DDP over gloo (`--cpu --num_processes 2` would run one process)
    cmd = [*launcher, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "degla_vitb32.yaml"),
           "--model.name", "clipneg-tiny", "--model.pretrained", "null", "--data.shards", str(world / "shards"),
           "--data.batch_size", "8", "--data.num_workers", "1", "--data.shuffle_buffer", "32",
           "--data.k_image", "1", "--loss.neg_image_columns", "true", "--loss.distill_ema", "0.5",
           "--loss.distill", "1.0", "--optim.lr", "1e-3", "--optim.warmup_steps", "1", "--run.steps", "6",
           "--run.log_every", "1", "--run.save_every", "3", "--run.progress", "false", "--run.trackers", "[jsonl]",
           "--run.mixed_precision", precision, "--run.out_dir", str(out), "--run.name", name,
           "--eval.benchmarks", "[]", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr[-4000:]
    results, decoder, at = [], json.JSONDecoder(), proc.stdout.find("{")
    while at >= 0:  # each rank prints its result; the main process's carries the export
        obj, end = decoder.raw_decode(proc.stdout, at)
        results.append(obj)
        at = proc.stdout.find("{", end)
    return next(r for r in results if "export" in r)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"train/loss"' in line]


def weights(result: dict) -> dict[str, torch.Tensor]:
    return load_file(Path(result["export"]) / "open_clip_model.safetensors")


def test_zero2_on_two_cpu_processes_trains_like_ddp_and_resumes(world, tmp_path):
    """Given the same seed and data on two ranks, when one run uses DeepSpeed ZeRO-2 and one DDP, then every logged
    loss term and gradient norm agrees at every step, and so do the exported weights (loadable by open_clip with
    logit_scale back to a scalar); when the ZeRO-2 run's step-6 checkpoint and export are removed and it resumes
    from step 3 (sharded optimizer, EMA teacher, RNG, data position), it ends with the same weights."""
    ddp = launch(world, tmp_path, "ddp", deepspeed=False)
    zero = launch(world, tmp_path, "zero2", deepspeed=True)
    assert ddp["distributed_type"] == "MULTI_CPU" and zero["distributed_type"] == "DEEPSPEED"
    a, b = rows(tmp_path / "ddp"), rows(tmp_path / "zero2")
    assert [r["step"] for r in b] == list(range(1, 7)) and {r["train/processes"] for r in b} == {2}
    assert b[-1]["train/samples_seen"] == 6 * 2 * 8
    for ra, rb in zip(a, b, strict=True):
        for key in ("train/contrastive_loss", "train/hard_negative_loss", "train/distill_loss", "train/loss",
                    "train/grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (rb["step"], key)
    assert b[-1]["train/distill_loss"] > 0
    wa, wb = weights(ddp), weights(zero)
    assert wb["logit_scale"].shape == () and wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{zero['export']}")
    assert model.logit_scale.shape == ()

    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "zero2", run)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    shutil.rmtree(run / "export")
    resumed = launch(world, tmp_path, "resumed", "--resume", deepspeed=True)
    assert resumed["step"] == 6 and resumed["samples_seen"] == 6 * 2 * 8
    # The log is appended to: the whole run's 6 rows, then the resumed run's, which start after step 3.
    assert [r["step"] for r in rows(run)] == [*range(1, 7), 4, 5, 6]
    wr = weights(resumed)
    for k in wb:
        torch.testing.assert_close(wr[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def test_zero2_bf16_tracks_ddp_and_exports_clamped_fp32_masters(world, hot_start, tmp_path):
    """DeepSpeed's bf16 casts the weights (and the task casts the images to them) where DDP runs under autocast: the
    arithmetic differs, so the losses agree to bf16 precision only. The export holds DeepSpeed's fp32 masters (not
    the bf16 working copy), and the logit-scale clamp reaches the master (a start above the clamp stays clamped)."""
    start = ("--model.name", f"local-dir:{hot_start}")
    ddp = launch(world, tmp_path, "ddp", *start, deepspeed=False, precision="bf16")
    zero = launch(world, tmp_path, "zero2", *start, deepspeed=True, precision="bf16")
    assert zero["distributed_type"] == "DEEPSPEED"
    for ra, rb in zip(rows(tmp_path / "ddp"), rows(tmp_path / "zero2"), strict=True):
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], rel=2e-2), rb["step"]
    wa, wb = weights(ddp), weights(zero)
    assert wb.keys() == wa.keys()
    bf16_exact = [torch.equal(w, w.bfloat16().float()) for w in wb.values() if w.is_floating_point() and w.numel() > 1]
    assert not all(bf16_exact)  # fp32 masters: most weights are not bf16 numbers
    assert float(wa["logit_scale"]) <= math.log(100) + 1e-6
    assert float(wb["logit_scale"]) == pytest.approx(float(wa["logit_scale"]), abs=1e-3)


def test_zero2_refuses_channels_last_with_the_reason(world, tmp_path):
    proc = launch(world, tmp_path, "nhwc", "--model.channels_last", "true", deepspeed=True, check=False)
    assert proc.returncode != 0 and "model.channels_last cannot be used with DeepSpeed" in proc.stderr
