"""FSDP2 through Accelerate's own launcher, on two CPU processes (gloo): the same run as DDP, resumable.

Accelerate 1.15 turns FSDP on only for GPU-type process groups, so these runs go through tests/fsdp_on_cpu.py, which
lifts that one check; the sharding, Accelerate's FSDP2 prepare and sharded checkpoints, and train.py's FSDP code are
the real ones.
"""

from __future__ import annotations

import pytest

from tests.two_ranks import check_against_ddp_and_resume, check_bf16_against_ddp, check_like_ddp, launch

pytestmark = pytest.mark.slow


def test_fsdp2_on_two_cpu_processes_trains_like_ddp_clamps_and_resumes(two_rank_world, hot_start, tmp_path):
    check_against_ddp_and_resume(two_rank_world, tmp_path, "fsdp", hot_start)
    # Accelerate's FSDP checkpoint: the model and optimizer as torch.distributed.checkpoint folders of shards
    assert (tmp_path / "fsdp" / "checkpoints" / "step-00000003" / "pytorch_model_fsdp_0").is_dir()


def test_fsdp2_resnet_tower_with_batchnorm_and_text_buckets_trains_like_ddp(two_rank_world, tmp_path):
    """The world demo's model: a ResNet image tower, whose BatchNorm statistics are persistent buffers (Accelerate's
    rank-0 broadcast of the weights failed on them, so train.py turns it off), with captions encoded in length
    buckets. No EMA teacher here: DDP broadcasts rank 0's buffers at every forward and FSDP does not, so a teacher in
    eval mode sees other running statistics on rank 1 (its term differed by up to 0.3% in 6 steps)."""
    resnet = ("--model.name", "clipneg-tiny-rn", "--model.channels_last", "false", "--model.text_buckets", "4")
    _, exported = check_like_ddp(two_rank_world, tmp_path, "fsdp", *resnet, "--loss.distill", "0",
                                 "--run.save_every", "0")
    assert "visual.bn1.running_mean" in exported  # rank 0's statistics, as DDP exports them


def test_fsdp2_bf16_tracks_ddp_and_exports_fp32(two_rank_world, hot_start, tmp_path):
    """FSDP2's bf16 policy computes with bf16 copies of the fp32 shards (and rounds the task's outputs, the loss
    terms, to bf16)."""
    check_bf16_against_ddp(two_rank_world, tmp_path, "fsdp", hot_start, rel=2e-2)


def test_fsdp2_refuses_channels_last_with_the_reason(two_rank_world, tmp_path):
    """fully_shard cannot shard an NHWC weight (not contiguous): the run stops before training and says what to set."""
    proc = launch(two_rank_world, tmp_path, "nhwc", "--model.name", "clipneg-tiny-rn", "--model.channels_last", "true",
                  mode="fsdp", check=False)
    assert proc.returncode != 0
    assert "model.channels_last cannot be used with FSDP: set --model.channels_last false" in proc.stderr
