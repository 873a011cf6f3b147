"""train.py on two CPU processes through `accelerate launch`: DDP, DeepSpeed ZeRO-2 / ZeRO-3 or FSDP2, and the checks
that test_deepspeed and test_fsdp share."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
# What each mode adds to `accelerate launch`, and the script it runs.
MODES = {
    "ddp": (["--multi_gpu"], ROOT / "train.py"),  # with ACCELERATE_USE_CPU=1: DDP over gloo
    "zero2": (["--use_deepspeed", "--zero_stage", "2"], ROOT / "train.py"),
    "zero3": (["--use_deepspeed", "--zero_stage", "3"], ROOT / "train.py"),
    # ZeRO-Offload: optimizer states and parameters kept in host memory (Accelerate swaps in DeepSpeedCPUAdam)
    "zero3_offload": (["--use_deepspeed", "--zero_stage", "3", "--offload_optimizer_device", "cpu",
                       "--offload_param_device", "cpu"], ROOT / "train.py"),
    "fsdp": (["--use_fsdp", "--fsdp_version", "2"], ROOT / "tests" / "fsdp_on_cpu.py"),
}


def make_world(out: Path) -> Path:
    """128 world samples in 8 shards: enough for 2 ranks x 1 worker x 6 steps of 8."""
    from clipneg.world import World, WorldConfig, write_train_shards

    write_train_shards(World(WorldConfig(image_size=32, grid=2, seed=0)), out / "shards", 128, shard_size=16,
                       progress=False)
    return out


def make_hot_start(out: Path) -> Path:
    """The tiny model with exp(logit_scale) = e^5 = 148, above CLIP's clamp at 100: the first step must clamp it."""
    from clipneg.models import export_local_dir, load_clip

    bundle = load_clip("clipneg-tiny", seed=0)
    with torch.no_grad():
        bundle.model.logit_scale.fill_(5.0)
    return Path(export_local_dir(bundle.model, out / "export", model_cfg=bundle.model_cfg))


def launch(world: Path, out: Path, name: str, *extra: str, mode: str, precision: str = "no", check: bool = True):
    """train.py on two CPU ranks with the DeGLA recipe on a tiny model: NegCLIP columns, a negative image column, the
    per-sample term and an EMA teacher that moves fast enough (decay 0.5) for a wrong update to show. Returns the
    main process's result (the one with the export), or the CompletedProcess when ``check`` is false."""
    from tests.test_distributed import _free_port

    flags, script = MODES[mode]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", "2",
                "--mixed_precision", precision, "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if not mode.startswith("zero"):
        env["ACCELERATE_USE_CPU"] = "1"  # gloo ranks (`--cpu --num_processes 2` would run one process)
    cmd = [*launcher, str(script), "--config", str(ROOT / "configs" / "degla_vitb32.yaml"),
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


def check_like_ddp(world: Path, tmp_path: Path, mode: str, *extra: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Run ``mode`` and DDP with the same seed, data and flags: every logged loss term, gradient norm and logit scale
    agrees at every step, and so do the exported weights and buffers (gathered, logit_scale back to a 0-d tensor,
    loadable by open_clip). Returns the run's result and exported weights."""
    import open_clip

    ddp = launch(world, tmp_path, "ddp", *extra, mode="ddp")
    run = launch(world, tmp_path, mode, *extra, mode=mode)
    assert ddp["distributed_type"] == "MULTI_CPU" and run["distributed_type"] == ("FSDP" if mode == "fsdp"
                                                                                    else "DEEPSPEED")
    a, b = rows(tmp_path / "ddp"), rows(tmp_path / mode)
    assert [r["step"] for r in b] == list(range(1, 7)) and {r["train/processes"] for r in b} == {2}
    assert b[-1]["train/samples_seen"] == 6 * 2 * 8
    keys = [k for k in a[0] if k.endswith("_loss")] + ["train/loss", "train/grad_norm", "train/logit_scale"]
    assert len(keys) >= 5 and a[0].keys() == b[0].keys()
    for ra, rb in zip(a, b, strict=True):
        for key in keys:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (rb["step"], key)
    wa, wb = weights(ddp), weights(run)
    assert wb["logit_scale"].shape == () and wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
    assert open_clip.create_model_and_transforms(f"local-dir:{run['export']}")[0].logit_scale.shape == ()
    return run, wb


def check_against_ddp_and_resume(world: Path, tmp_path: Path, mode: str, start: Path) -> None:
    """Given the same seed, data and a start above the logit-scale clamp on two ranks, ``mode`` trains like DDP
    (check_like_ddp) and clamps the scale to 100; when the run's step-6 checkpoint and export are removed and it
    resumes from its step-3 checkpoint (sharded model and optimizer, EMA teacher, RNG, data position), it ends with
    the same weights."""
    model = ("--model.name", f"local-dir:{start}")
    run, wb = check_like_ddp(world, tmp_path, mode, *model)
    logged = rows(tmp_path / mode)
    assert logged[0]["train/logit_scale"] <= 100 + 1e-3 and logged[-1]["train/distill_loss"] > 0
    assert float(wb["logit_scale"]) <= math.log(100) + 1e-6

    again = tmp_path / "resumed"
    shutil.copytree(tmp_path / mode, again)
    shutil.rmtree(again / "checkpoints" / "step-00000006")
    shutil.rmtree(again / "export")
    resumed = launch(world, tmp_path, "resumed", *model, "--resume", mode=mode)
    assert resumed["step"] == 6 and resumed["samples_seen"] == 6 * 2 * 8
    # The log is appended to: the whole run's 6 rows, then the resumed run's, which start after step 3.
    assert [r["step"] for r in rows(again)] == [*range(1, 7), 4, 5, 6]
    wr = weights(resumed)
    for k in wb:
        torch.testing.assert_close(wr[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def check_bf16_against_ddp(world: Path, tmp_path: Path, mode: str, start: Path, rel: float) -> None:
    """bf16 under ``mode`` computes with bf16 weights where DDP runs under autocast, so the losses agree within
    ``rel`` only; the export holds fp32 weights (most are not bf16 numbers), and the logit scale stays clamped."""
    model = ("--model.name", f"local-dir:{start}")
    ddp = launch(world, tmp_path, "ddp", *model, mode="ddp", precision="bf16")
    run = launch(world, tmp_path, mode, *model, mode=mode, precision="bf16")
    for ra, rb in zip(rows(tmp_path / "ddp"), rows(tmp_path / mode), strict=True):
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], rel=rel), rb["step"]
    wa, wb = weights(ddp), weights(run)
    assert wb.keys() == wa.keys() and all(w.dtype == torch.float32 for w in wb.values() if w.is_floating_point())
    bf16_exact = [torch.equal(w, w.bfloat16().float()) for w in wb.values() if w.is_floating_point() and w.numel() > 1]
    assert sum(bf16_exact) <= len(bf16_exact) // 10, sum(bf16_exact)
    assert float(wb["logit_scale"]) <= math.log(100) + 1e-6
    assert float(wb["logit_scale"]) == pytest.approx(float(wa["logit_scale"]), abs=1e-3)
