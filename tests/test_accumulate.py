"""GradCache accumulation (optim.accumulate): N micro-batches give the loss and gradients of the whole batch, for every
loss term, on one process and on two, with less memory held for backward.

Given / When / Then in each test's docstring where the setup is not obvious.
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing as mp
import weakref
from pathlib import Path

import pytest
import torch

from clipneg.schema import KIND_ID, KIND_LIST
from clipneg.train.accumulate import grad_cache_backward, split_batch
from clipneg.train.config import ConfigError, LossConfig, parse_args
from clipneg.train.task import ContrastiveTask

from .test_distributed import TERMS as DIST_TERMS

B, KT, KI, KP = 8, 2, 1, 2
TERMS = {**DIST_TERMS,
         "imc": LossConfig(contrastive=0.0, imc=0.2),
         "all_with_imc": LossConfig(neg_text_columns=True, neg_image_columns=True, triplet=1.0, hard_negative=0.5,
                                    focal_gamma=2.0, label_smoothing=0.02, rank=0.2, distill=0.5, paraphrase=0.5,
                                    imc=0.2, kind_weights={"replace_rel": 2.0, "swap_att": 0.5})}


class CpuAccelerator:
    """What grad_cache_backward needs of an Accelerator, for one process (or hand-made ranks without DDP)."""

    device = torch.device("cpu")

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model):
        return contextlib.nullcontext()


def make_batch(tokenizer, rows: int = B, seed: int = 0) -> dict:
    """Every part the loss reads, with masks and kinds that differ from row to row (and so between micro-batches)."""
    g = torch.Generator().manual_seed(seed)
    kinds = [KIND_ID["replace_rel"], KIND_ID["swap_att"], KIND_ID["replace_obj"], -1]
    return {
        "image": torch.randn(rows, 3, 32, 32, generator=g),
        "text": tokenizer([f"a red cube left of ball {seed} {i}" for i in range(rows)]),
        "neg_text": tokenizer([f"a blue ball {seed} {i}" for i in range(rows * KT)]).view(rows, KT, -1),
        "neg_text_mask": torch.rand(rows, KT, generator=g) > 0.25,
        "neg_text_kind": torch.tensor(kinds)[torch.randint(0, 4, (rows, KT), generator=g)],
        "neg_image": torch.randn(rows, KI, 3, 32, 32, generator=g),
        "neg_image_mask": torch.rand(rows, KI, generator=g) > 0.2,
        "neg_image_text": torch.randint(-1, KT, (rows, KI), generator=g),
        "para_text": tokenizer([f"ball {i} right of a red cube" for i in range(rows)]),
        "para_mask": torch.rand(rows, generator=g) > 0.2,
        "para_neg": tokenizer([f"ball right of cube {i}" for i in range(rows * KP)]).view(rows, KP, -1),
        "para_neg_mask": torch.rand(rows, KP, generator=g) > 0.2,
        "key": [f"k{i}" for i in range(rows)],
    }


def make_task(bundle, cfg: LossConfig) -> ContrastiveTask:
    task = ContrastiveTask(copy.deepcopy(bundle.model), cfg, KIND_LIST)
    if task.teacher is not None:  # a teacher that differs from the student, so the distill term has a gradient
        with torch.no_grad():
            for p in task.teacher.parameters():
                p.add_(0.01 * torch.randn_like(p))
    return task.train()


def step_grads(task: ContrastiveTask, batch: dict, n: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Loss terms and the gradient of every trained parameter after one step's backward (n = 1: one pass)."""
    task.zero_grad(set_to_none=True)
    if n == 1:
        losses = task(batch)
        sum(losses.values()).backward()
    else:
        losses = grad_cache_backward(task, batch, n, CpuAccelerator())
    grads = {k: p.grad.detach().clone() for k, p in task.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("name", list(TERMS))
@pytest.mark.parametrize("n", [2, 4])
def test_micro_batches_give_the_whole_batch_loss_and_gradients(tiny_bundle, name, n):
    """Given a batch of 8 with every part (negative captions and images, paraphrases, the EMA teacher, kind weights),
    when it is accumulated in n micro-batches with GradCache, then every loss term and every parameter's gradient
    (the logit scale's included, counted once) equal one pass over the whole batch."""
    batch = make_batch(tiny_bundle.tokenizer)
    task = make_task(tiny_bundle, TERMS[name])
    whole, g_whole = step_grads(task, batch, 1)
    acc, g_acc = step_grads(task, batch, n)
    assert acc.keys() == whole.keys()
    for k in whole:
        torch.testing.assert_close(acc[k], whole[k], rtol=1e-5, atol=1e-6, msg=k)
    assert g_acc.keys() == g_whole.keys()
    assert ("model.logit_scale" in g_whole) == (name != "distill")  # every other term multiplies by the scale
    for k in g_whole:
        torch.testing.assert_close(g_acc[k], g_whole[k], rtol=1e-4, atol=1e-6, msg=k)
    if task.teacher is not None:  # the teacher's cached features carry no graph
        assert all(p.grad is None for p in task.teacher.parameters())


def test_split_keeps_rows_in_order_and_refuses_uneven_batches(tiny_bundle):
    batch = make_batch(tiny_bundle.tokenizer)
    parts = split_batch(batch, 4)
    assert [p["key"] for p in parts] == [batch["key"][i:i + 2] for i in range(0, 8, 2)]
    assert torch.equal(torch.cat([p["neg_text"] for p in parts]), batch["neg_text"])
    with pytest.raises(ValueError, match="divide"):
        split_batch(batch, 3)
    with pytest.raises(ConfigError, match="optim.accumulate 3 must divide data.batch_size 64"):
        parse_args(["--optim.accumulate", "3"])
    with pytest.raises(ConfigError, match="optim.accumulate must be >= 1"):
        parse_args(["--optim.accumulate", "0"])


class SavedForBackward:
    """Bytes autograd holds for backward, at its peak: each saved tensor counts from when it is saved until its graph
    is freed (a holder object per saved tensor; its finaliser subtracts). What GradCache bounds: activations."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def pack(self, t: torch.Tensor):
        holder = _Holder(t)
        nbytes = t.numel() * t.element_size()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._free, nbytes)
        return holder

    @staticmethod
    def unpack(holder) -> torch.Tensor:
        return holder.t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


class _Holder:
    __slots__ = ("t", "__weakref__")

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


def test_peak_memory_held_for_backward_falls_with_the_number_of_micro_batches(tiny_bundle):
    """Given a batch of 32 through the tiny model with NegCLIP columns and the per-sample term, when the step is
    accumulated in 1, 2 and 4 micro-batches, then the peak of the activations held for backward falls (about 1/N of
    the towers' part: each micro-batch's graph is freed by its backward before the next is built)."""
    batch = make_batch(tiny_bundle.tokenizer, rows=32)
    task = make_task(tiny_bundle, LossConfig(neg_text_columns=True, hard_negative=0.5))
    peaks = {}
    for n in (1, 2, 4):
        with SavedForBackward() as meter:
            step_grads(task, batch, n)
        peaks[n] = meter.peak
    assert peaks[1] > 1.6 * peaks[2] > 1.6 * 1.6 * peaks[4] > 0, peaks


# ---------------------------------------------------------------------------------------------------------------------
# two processes: each rank accumulates its half of the global batch in micro-batches


WORLD = 2


def _worker(rank: int, store: str, out_dir: str, n: int) -> None:
    import torch.distributed as dist

    from clipneg.models import load_clip

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        bundle = load_clip("clipneg-tiny", seed=0)
        full = make_batch(bundle.tokenizer, rows=2 * B)
        local = {k: v[rank * B:(rank + 1) * B] for k, v in full.items()}
        torch.manual_seed(0)  # the teacher's perturbation (make_task) as in the one-process reference
        task = make_task(bundle, TERMS["all_with_imc"])
        losses, grads = step_grads(task, local, n)
        torch.save({"rank": dist.get_rank(), "losses": losses, "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_grads(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grad_cache_ddp")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(r, str(tmp / "store"), str(tmp), 2)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def test_two_processes_with_micro_batches_equal_one_process_on_the_whole_batch(two_rank_grads, tiny_bundle):
    """Given 2 ranks of 8 rows, each accumulating its half in 2 micro-batches of 4 with every term on, when DDP's
    averaging is applied by hand (mean over ranks), then the loss terms and every parameter's gradient equal one
    process's single pass over the 16 rows: the cross-process gathers reach the cached rows and the live rows alike."""
    ranks = two_rank_grads
    assert [r["rank"] for r in ranks] == [0, 1]
    torch.manual_seed(0)
    task = make_task(tiny_bundle, TERMS["all_with_imc"])
    whole, g_whole = step_grads(task, make_batch(tiny_bundle.tokenizer, rows=2 * B), 1)
    assert len(whole) == 7
    for k, v in whole.items():
        torch.testing.assert_close(sum(r["losses"][k] for r in ranks) / WORLD, v, rtol=1e-5, atol=1e-6, msg=k)
    for k, g in g_whole.items():
        # float rounding of sums over 16 rows in another order: 3e-6 on token-embedding entries of up to 5.8
        torch.testing.assert_close(sum(r["grads"][k] for r in ranks) / WORLD, g, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_train_py_on_two_ddp_ranks_accumulates_like_one_pass_with_lora(two_rank_world, tmp_path):
    """Given train.py on 2 DDP ranks (gloo) with the DeGLA recipe (NegCLIP columns, a negative-image column, the
    per-sample term, an EMA teacher) trained through LoRA adapters, when each step's batch of 8 is accumulated in 2
    micro-batches (DDP synchronises only the last backward), then every logged loss term, gradient norm and logit
    scale equals the one-pass run's at every step, and so do the merged exports; the frozen logit scale stays put."""
    from clipneg.models import load_clip

    from .two_ranks import launch, rows, weights

    lora = ("--model.lora.rank", "4", "--model.lora.alpha", "8", "--optim.lr", "1e-2")
    one = launch(two_rank_world, tmp_path, "one", *lora, mode="ddp")
    acc = launch(two_rank_world, tmp_path, "acc", *lora, "--optim.accumulate", "2", mode="ddp")
    a, b = rows(tmp_path / "one"), rows(tmp_path / "acc")
    assert [r["step"] for r in b] == list(range(1, 7)) and {r["train/processes"] for r in b} == {2}
    keys = [k for k in a[0] if k.endswith("_loss")] + ["train/loss", "train/grad_norm"]
    assert len(keys) >= 5
    for ra, rb in zip(a, b, strict=True):
        for key in keys:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (rb["step"], key)
    wa, wb = weights(one), weights(acc)
    start = load_clip("clipneg-tiny", seed=0).model.state_dict()
    assert wa.keys() == wb.keys() == start.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)
    assert torch.equal(wa["logit_scale"], start["logit_scale"])
    key = "transformer.resblocks.0.attn.in_proj_weight"
    assert not torch.equal(wa[key], start[key])  # the merged attention adapter


def test_deepspeed_refuses_grad_cache_and_zero3_attention_adapters_with_the_fix():
    """DeepSpeed steps inside Accelerate's backward and scales each loss by 1 / its own accumulation steps, so
    GradCache is refused there; peft's attention adapter swaps in_proj_weight, which ZeRO-3's partitioned
    placeholders do not allow. (DeepSpeed is not installed here: the backend is built on a stand-in state.)"""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from clipneg.train.backends import DeepSpeedBackend

    ds = {"zero_optimization": {"stage": 3}}
    backend = DeepSpeedBackend(SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(
        deepspeed_config=ds)), num_processes=2, distributed_type=DistributedType.DEEPSPEED))
    with pytest.raises(ValueError, match="not supported under DeepSpeed: set --optim.accumulate 1"):
        backend.configure(parse_args(["--optim.accumulate", "2", "--data.batch_size", "8"])[0])
    with pytest.raises(ValueError, match=r"ZeRO-3: use --model.lora.target_modules \[c_fc, c_proj\]"):
        backend.configure(parse_args(["--model.lora.rank", "4"])[0])
    backend.configure(parse_args(["--model.lora.rank", "4", "--model.lora.target_modules", "[c_fc, c_proj]"])[0])
    assert ds["train_micro_batch_size_per_gpu"] == 64
