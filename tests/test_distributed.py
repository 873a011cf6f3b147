"""Two real processes (gloo on the CPU) must give the loss and gradients of one process on the concatenated batch.

What DDP optimises is the mean over processes of each process's loss, with gradients averaged over processes. So for
every term: mean_r loss_r == loss(one process, whole batch), and grad_r / world == the rows of the one-process gradient
that belong to process r (the all_gather backward sums every process's contribution onto the owner of a row).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipneg.schema import KIND_LIST
from clipneg.train.config import LossConfig
from clipneg.train.losses import HardNegativeLoss

from .test_losses import make_batch

WORLD = 2
TERMS = {
    "clip": LossConfig(),
    "negclip": LossConfig(neg_text_columns=True),
    "neg_image_columns": LossConfig(neg_image_columns=True),
    "triplet": LossConfig(contrastive=0.0, triplet=1.0),
    "per_sample_fsc": LossConfig(contrastive=0.0, hard_negative=0.5, focal_gamma=2.0, label_smoothing=0.02),
    "rank": LossConfig(contrastive=0.0, rank=0.2),
    "distill": LossConfig(contrastive=0.0, distill=0.5),
    "paraphrase": LossConfig(contrastive=0.0, paraphrase=1.0),
    "all": LossConfig(neg_text_columns=True, neg_image_columns=True, triplet=1.0, hard_negative=0.5, focal_gamma=2.0,
                      label_smoothing=0.02, rank=0.2, distill=0.005, paraphrase=0.5,
                      kind_weights={"replace_rel": 2.0}),
}


def global_batch() -> dict[str, torch.Tensor]:
    """6 anchors x 2 = 12 rows; masks differ between the halves so the masked normalisations are really tested."""
    a, b = make_batch(seed=0), make_batch(seed=10)
    batch = {k: (torch.cat([a[k], b[k]]) if k != "logit_scale" else a[k]) for k in a}
    batch["neg_text_mask"][6:, :2] = False  # the second process has far fewer valid negatives
    batch["para_mask"][6:9] = False  # and fewer paraphrases
    batch["para_neg_mask"][6:, 1] = False
    batch["teacher_image_features"] = torch.roll(batch["image_features"], 1, 0)
    batch["teacher_text_features"] = torch.roll(batch["text_features"], 1, 0)
    return batch


def loss_and_grads(cfg: LossConfig, batch: dict[str, torch.Tensor]):
    feats = [k for k in batch if k.endswith("_features") and not k.startswith("teacher")]
    inputs = {k: (v.clone().requires_grad_(True) if k in feats else v) for k, v in batch.items()}
    out = HardNegativeLoss(cfg, KIND_LIST)(**inputs)
    total = sum(out.values())
    grads = torch.autograd.grad(total, [inputs[k] for k in feats], allow_unused=True)
    return ({k: v.detach() for k, v in out.items()},
            {k: (g if g is not None else torch.zeros_like(inputs[k])) for k, g in zip(feats, grads, strict=True)})


def _worker(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        full = global_batch()
        n = full["image_features"].shape[0] // WORLD
        local = {k: (v[rank * n:(rank + 1) * n] if v.ndim > 0 else v) for k, v in full.items()}
        results = {name: loss_and_grads(cfg, local) for name, cfg in TERMS.items()}
        info = {"rank": dist.get_rank(), "world": dist.get_world_size(), "pid": os.getpid()}
        torch.save({"info": info, "results": results}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    ctx = mp.get_context("fork")  # no re-import of torch in the children: the test stays fast
    procs = [ctx.Process(target=_worker, args=(r, str(tmp / "store"), str(tmp))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def test_two_processes_really_ran(two_process_results):
    infos = [r["info"] for r in two_process_results]
    assert [i["rank"] for i in infos] == [0, 1] and all(i["world"] == WORLD for i in infos)
    assert len({i["pid"] for i in infos}) == WORLD and os.getpid() not in {i["pid"] for i in infos}


@pytest.mark.parametrize("name", list(TERMS))
def test_two_processes_equal_one_process_on_the_whole_batch(two_process_results, name):
    single_loss, single_grads = loss_and_grads(TERMS[name], global_batch())
    per_rank = [r["results"][name] for r in two_process_results]
    for term, value in single_loss.items():
        mean = sum(losses[term] for losses, _ in per_rank) / WORLD
        torch.testing.assert_close(mean, value, rtol=1e-5, atol=1e-6, msg=f"{name}/{term}")
    for feat, grad in single_grads.items():
        n = grad.shape[0] // WORLD
        for r, (_, grads) in enumerate(per_rank):
            torch.testing.assert_close(grads[feat] / WORLD, grad[r * n:(r + 1) * n], rtol=1e-4, atol=1e-6,
                                       msg=f"{name}: grad of {feat} on rank {r}")
        if name == "all":
            assert grad.abs().sum() > 0, feat


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=1 runs train.py on two ranks."""
    from .test_train import make_shards

    shards = make_shards(tmp_path / "shards", n=128, shard_size=32)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(root / "train.py"),
           "--config", str(root / "configs" / "demo_world_triplet.yaml"), "--model.name", "clipneg-tiny",
           "--data.shards", str(shards),
           "--data.batch_size", "8", "--data.num_workers", "1", "--run.steps", "3", "--run.log_every", "1",
           "--run.out_dir", str(tmp_path / "runs"), "--run.name", "ddp", "--run.progress", "false",
           "--eval.benchmarks", "[]"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from clipneg.train.trackers import read_jsonl

    rows = read_jsonl(tmp_path / "runs" / "ddp" / "log.jsonl")
    assert rows[-1]["step"] == 3
    # Two ranks x batch 8 per step (the trap: `--cpu --num_processes 2` silently runs one process).
    assert rows[-1]["train/processes"] == 2 and rows[-1]["train/samples_seen"] == 3 * 2 * 8
    assert (tmp_path / "runs" / "ddp" / "export" / "open_clip_config.json").is_file()
