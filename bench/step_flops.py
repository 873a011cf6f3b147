"""How close do the world demo's two towers come to what one CPU core can compute? The arithmetic bound on the
10-minute goal for `bench/world_gain.py` (docs/BENCHMARKS.md).

    OMP_NUM_THREADS=1 python bench/step_flops.py

Counts the FLOPs of one triplet step's towers (forward + backward) with torch's FlopCounterMode: the text tower on
236 captions of 12 tokens (a step's filled caption slots, bucketed without padding as `model.text_buckets` does) and
the image tower on 96 images of 32 px (32 images + 2 counterfactual images each, channels-last). Times them on one
thread and compares the rate with fp32 matrix products of the text tower's shapes, timed in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from clipneg.models import load_clip
from clipneg.train.text_buckets import encode_text_bucketed

SOT, EOT = 49406, 49407


def median_time(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm-up: allocator and kernel selection
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def counted(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--captions", type=int, default=236)
    p.add_argument("--tokens", type=int, default=12, help="tokens per caption, start and end of text included")
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)

    n_tok = args.captions * args.tokens
    for m, k, n in [(n_tok, 128, 384), (n_tok, 128, 512), (n_tok, 512, 128)]:  # attention in, MLP up, MLP down
        a, b = torch.randn(m, k), torch.randn(k, n)
        seconds = median_time(lambda a=a, b=b: a @ b, args.rounds)
        print(f"fp32 matmul {m} x {k} x {n}: {2 * m * k * n / seconds / 1e9:.1f} GFLOP/s")

    model = load_clip("clipneg-tiny-rn", seed=0).model.train()
    model.visual.to(memory_format=torch.channels_last)
    text = torch.zeros(args.captions, 32, dtype=torch.long)
    text[:, 1:args.tokens - 1] = torch.randint(1, 1000, (args.captions, args.tokens - 2))
    text[:, 0], text[:, args.tokens - 1] = SOT, EOT
    images = torch.randn(args.images, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    def text_step() -> None:
        model.zero_grad(set_to_none=True)
        encode_text_bucketed(model, text, 4).sum().backward()

    def image_step() -> None:
        model.zero_grad(set_to_none=True)
        model.encode_image(images, normalize=True).sum().backward()

    for name, step in (("text tower", text_step), ("image tower", image_step)):
        flops, seconds = counted(step), median_time(step, args.rounds)
        print(f"{name} forward + backward: {flops / 1e9:.2f} GFLOP in {seconds * 1e3:.0f} ms = "
              f"{flops / seconds / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
