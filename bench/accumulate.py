"""GradCache accumulation on the CPU: samples/s and peak memory of one training step for optim.accumulate N = 1, 2, 4.

    python bench/accumulate.py --out runs/bench/accumulate
        # defaults: clipneg-small (64 px, width 128, 4 layers), batch 64, 4 negative captions (NegCLIP columns,
        # per-sample term, CE-CLIP rank and IMC), 6 timed steps after 1 warm-up step, 2 threads
    python bench/accumulate.py --out runs/bench/accumulate --model clipneg-tiny --batch 128 --steps 10 --lora-rank 4

Each N runs in its own process (so the process's peak RSS belongs to that N alone) on the same synthetic batch:
random images, tokenised captions and negatives, every row's negatives valid. The step is what train.py does:
forward + backward (one pass for N = 1, clipneg.train.accumulate.grad_cache_backward otherwise) and an AdamW step.
Memory is reported two ways:

- ``saved_for_backward_peak_mb``: the peak of the bytes autograd holds for backward (each saved tensor counted from
  when it is saved until its graph is freed) - the activation memory that GradCache bounds, exact and repeatable;
- ``peak_rss_mb``: the process's peak resident set (ru_maxrss), which also holds the interpreter, torch, the model,
  its gradients and AdamW state and the allocator's caching, so it falls less than the activations do.

The rate is samples / wall time of the timed steps. GradCache encodes every micro-batch twice (without and with
gradient), so expect about 1/3 more tower compute at N > 1, whatever N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class SavedForBackward:
    """Peak bytes held by autograd for backward (see the module docstring)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def pack(self, t):
        holder = _Holder(t)
        nbytes = t.numel() * t.element_size()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._free, nbytes)
        return holder

    @staticmethod
    def unpack(holder):
        return holder.t


class _Holder:
    __slots__ = ("t", "__weakref__")

    def __init__(self, t) -> None:
        self.t = t


def worker(args: argparse.Namespace) -> dict:
    """One N in this process: the timed steps, then one more step under the saved-tensor meter."""
    import torch

    from clipneg.models import load_clip
    from clipneg.schema import KIND_ID, KIND_LIST
    from clipneg.train.accumulate import grad_cache_backward
    from clipneg.train.config import LoraSettings, LossConfig, OptimConfig
    from clipneg.train.lora import apply_lora
    from clipneg.train.optim import build_optimizer
    from clipneg.train.task import ContrastiveTask

    torch.set_num_threads(args.threads)
    bundle = load_clip(args.model, seed=0)
    if args.lora_rank:
        apply_lora(bundle.model, LoraSettings(rank=args.lora_rank), seed=0)
    size = bundle.model.visual.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    b, k = args.batch, args.k_text
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(b, 3, size, size, generator=g),
             "text": bundle.tokenizer([f"a red cube left of a blue ball number {i}" for i in range(b)]),
             "neg_text": bundle.tokenizer([f"a blue cube left of a red ball number {i}" for i in range(b * k)]
                                          ).view(b, k, -1),
             "neg_text_mask": torch.ones(b, k, dtype=torch.bool),
             "neg_text_kind": torch.full((b, k), KIND_ID["swap_att"])}
    loss_cfg = LossConfig(neg_text_columns=True, hard_negative=0.5, rank=0.2, imc=0.2)
    task = ContrastiveTask(bundle.model, loss_cfg, KIND_LIST).train()
    optimizer = build_optimizer(task.model, OptimConfig(lr=1e-5))

    class Cpu:
        device = torch.device("cpu")

        @staticmethod
        def backward(loss):
            loss.backward()

        @staticmethod
        def no_sync(model):
            import contextlib

            return contextlib.nullcontext()

    def step() -> float:
        if args.n == 1:
            losses = task(batch)
            total = sum(losses.values())
            total.backward()
        else:
            total = sum(grad_cache_backward(task, batch, args.n, Cpu()).values())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total)

    step()  # warm-up: allocator, AdamW state
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    elapsed = time.perf_counter() - t0
    meter = SavedForBackward()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        step()
    return {"n": args.n, "micro_batch": b // args.n, "samples_per_s": args.steps * b / elapsed,
            "step_s": elapsed / args.steps, "saved_for_backward_peak_mb": meter.peak / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "last_loss": loss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "accumulate")
    p.add_argument("--model", default="clipneg-small")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--k-text", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--ns", default="1,2,4")
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)  # internal: run one N in this process
    args = p.parse_args()
    if args.n:
        print(json.dumps(worker(args)))
        return
    rows = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    for n in (int(x) for x in args.ns.split(",")):
        cmd = [sys.executable, __file__, "--n", str(n), "--model", args.model, "--batch", str(args.batch),
               "--k-text", str(args.k_text), "--steps", str(args.steps), "--threads", str(args.threads),
               "--lora-rank", str(args.lora_rank)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    base = rows[0]
    lines = [f"GradCache accumulation, {args.model}, batch {args.batch}, {args.k_text} negative captions, "
             f"{args.threads} threads, LoRA rank {args.lora_rank or 'off'} ({platform.processor() or 'cpu'})", "",
             "| N | micro-batch | samples/s | step s | saved for backward MB (x N=1) | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['micro_batch']} | {r['samples_per_s']:.1f} | {r['step_s']:.2f} | "
                     f"{r['saved_for_backward_peak_mb']:.1f} "
                     f"({r['saved_for_backward_peak_mb'] / base['saved_for_backward_peak_mb']:.2f}) | "
                     f"{r['peak_rss_mb']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "rows": rows}, indent=2))
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
