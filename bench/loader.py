"""Loader throughput: clipneg.train.data (K text + image negatives) vs a plain webdataset decode + transform pipeline.

Both read the same shards with the same workers, batch size, transform and tokenizer, in one run; rounds alternate
between the two so that machine noise hits both. The plain pipeline decodes and transforms the positive image and
tokenizes the positive caption only: the ratio is what the negatives and the batch contract cost.

    python bench/loader.py                        # builds world shards in a temp dir (64 px, K=4 text, 1 image)
    python bench/loader.py --shards runs/world/shards --workers 2 --batches 60
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import webdataset as wds  # noqa: E402

from clipneg.models import load_clip  # noqa: E402
from clipneg.shards import list_shards  # noqa: E402
from clipneg.train.config import LoaderConfig  # noqa: E402
from clipneg.train.data import build_loader  # noqa: E402


def plain_loader(shards, preprocess, tokenizer, batch_size, workers):
    def tokenize(caption):
        return tokenizer([caption])[0]

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list_shards(shards)),
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(),
        wds.shuffle(1000, initial=100),
        wds.decode("pil"),
        wds.to_tuple("png;jpg", "txt"),
        wds.map_tuple(preprocess, tokenize),
        wds.batched(batch_size, partial=False),
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None)


def timed(loader, n_batches):
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    n = 0
    for _ in range(n_batches):
        try:
            next(it)
        except StopIteration:
            break
        n += 1
    return n / (time.perf_counter() - t0)


def make_world_shards(out, n, image_size):
    from clipneg.commands import main as clipneg_main

    clipneg_main(["world", "--out", out, "--n-train", str(n), "--n-test", "8", "--image-size", str(image_size),
                "--shard-size", str(max(n // 8, 1))])
    return os.path.join(out, "shards")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards")
    p.add_argument("--n", type=int, default=4096, help="samples to generate when --shards is not given")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--model", default="clipneg-small")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--k-text", type=int, default=4)
    p.add_argument("--k-image", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bundle = load_clip(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or make_world_shards(tmp, args.n, args.image_size)
        cfg = LoaderConfig(shards=shards, batch_size=args.batch_size, k_text=args.k_text, k_image=args.k_image,
                           num_workers=args.workers)
        ours, plain = [], []
        for _ in range(args.rounds):
            plain.append(timed(plain_loader(shards, bundle.preprocess_train, bundle.tokenizer, args.batch_size,
                                            args.workers), args.batches))
            ours.append(timed(build_loader(cfg, preprocess=bundle.preprocess_train, tokenizer=bundle.tokenizer),
                              args.batches))
    o, b = statistics.median(ours), statistics.median(plain)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"batch {args.batch_size}, workers {args.workers}, K_text {args.k_text}, K_image {args.k_image}, "
          f"model {args.model}, rounds {args.rounds} x {args.batches} batches")
    print(f"plain webdataset: {b:.2f} batches/s  ({b * args.batch_size:.0f} samples/s)  rounds {plain}")
    print(f"clipneg.train.data:     {o:.2f} batches/s  ({o * args.batch_size:.0f} samples/s)  rounds {ours}")
    print(f"ratio clipneg/plain: {o / b:.2f}x")


if __name__ == "__main__":
    main()
