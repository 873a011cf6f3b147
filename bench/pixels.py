"""Loader delivery at 224 px: float images vs uint8 images finished per batch, against open_clip's synthetic loader.

On an H100 (docs/BENCHMARKS.md, GPU section) ViT-B-32 training was bound by its 8 loader workers, and
open_clip_train's synthetic dataset (the GPU goal's reference: one blank image, re-transformed per sample, no JPEG
decoding) trained at 2567 samples/s against our 2297 (0.89x). This measures, on the CPU, what each loader
delivers with the same workers, batch and transform (ViT-B-32's training transform, open_clip tokenizer, 224 px JPEG
shards without negatives):

- clipneg.train.data with the whole transform per image (float32 batches, ``data.uint8_images: false``);
- clipneg.train.data stopping before ToTensor + Normalize (uint8 batches), with ``PixelNormalizer`` finishing each
  batch in the consuming process, on the CPU cores the workers use too;
- the same uint8 batches unfinished: what a GPU run's loader delivers, since train.py finishes them on the device;
- open_clip_train's ``SyntheticDataset`` in a torch DataLoader, as `--dataset-type synthetic` builds it.

Rounds alternate between the four so that machine noise hits all; medians are reported.

    python bench/pixels.py --n 2048 --batch-size 128 --workers 2 --batches 15 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_throughput import make_data  # noqa: E402

from clipneg.train.config import LoaderConfig  # noqa: E402
from clipneg.train.data import build_loader  # noqa: E402
from clipneg.train.pixels import split_pixel_steps  # noqa: E402


def rate(loader, n_batches: int, finish=None) -> float:
    """Samples a second over ``n_batches`` after the first (worker start-up is not throughput)."""
    it = iter(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(n_batches):
        batch = next(it, None)
        if batch is None:
            break
        if finish is not None:
            batch = finish(batch)
        n += len(batch["image"] if isinstance(batch, dict) else batch[0])
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from open_clip_train.data import SyntheticDataset

    transform = open_clip.image_transform(224, is_train=True, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    pil_part, finish = split_pixel_steps(transform)
    rates: dict[str, list[float]] = {"ours, float": [], "ours, uint8 + PixelNormalizer": [], "ours, uint8": [],
                                     "open_clip synthetic": []}
    with tempfile.TemporaryDirectory() as tmp:
        _, shards, _ = make_data(Path(tmp), args.n)
        cfg = LoaderConfig(shards=str(shards), batch_size=args.batch_size, k_text=0, num_workers=args.workers)
        synthetic = SyntheticDataset(transform=transform, image_size=(224, 224), dataset_size=args.n,
                                     tokenizer=tokenizer)
        for _ in range(args.rounds):
            rates["ours, float"].append(rate(build_loader(cfg, preprocess=transform, tokenizer=tokenizer),
                                             args.batches))
            rates["ours, uint8 + PixelNormalizer"].append(
                rate(build_loader(cfg, preprocess=pil_part, tokenizer=tokenizer), args.batches, finish))
            rates["ours, uint8"].append(rate(build_loader(cfg, preprocess=pil_part, tokenizer=tokenizer),
                                             args.batches))
            rates["open_clip synthetic"].append(rate(torch.utils.data.DataLoader(
                synthetic, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True),
                args.batches))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ref = med["open_clip synthetic"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"224 px JPEG shards ({args.n} samples), batch {args.batch_size}, {args.workers} workers, ViT-B-32 training "
          f"transform, {args.rounds} rounds x {args.batches} batches")
    for k, v in rates.items():
        print(f"{k:32s} {med[k]:7.1f} samples/s  ({med[k] / ref:.2f}x synthetic)  rounds {[round(x) for x in v]}")
    paired = [u / f for u, f in zip(rates["ours, uint8 + PixelNormalizer"], rates["ours, float"], strict=True)]
    print(f"uint8 + PixelNormalizer / float, paired rounds: {[round(x, 2) for x in paired]}")
    return {"rates": rates, "median": med}


if __name__ == "__main__":
    main()
