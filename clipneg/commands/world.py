"""``clipneg world``: render the built-in world to training shards and benchmark files."""

from __future__ import annotations

import argparse
import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

from clipneg.shards import write_shards_in_processes
from clipneg.world.config import PRESETS, WorldConfig, world_config
from clipneg.world.export import export_benchmarks, train_shard_job
from clipneg.world.generate import World

log = logging.getLogger(__name__)

EXAMPLE = """\
example:
  clipneg world --out runs/world --n-train 10000 --n-test 1000 --image-size 64 --seed 0
  clipneg world --out runs/world --preset demo           # the CPU demo's world (2 x 2 layout, 32 px, one wording)
  clipneg world --out runs/world --preset demo --world-json '{"object_probs": [0, 1, 0]}'   # any WorldConfig field

writes:
  runs/world/shards/train-000000.tar ...  (+ sizes.json, manifest.json); each sample has png, txt, json and, with
                                          --negatives, neg.json + negimg.{j}.png (one exact negative per kind)
  runs/world/benchmark/sugarcrepe/        add_att.json ... swap_obj.json + images/   (seen compositions)
  runs/world/benchmark/aro/               vg_relation.json, vg_attribution.json + images/
  runs/world/benchmark/sugarcrepe_heldout/, aro_heldout/   (compositions never shown in training)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", required=True, type=Path, help="output folder (shards/ and benchmark/ go inside)")
    parser.add_argument("--n-train", type=int, default=10000, help="training scenes (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=1000,
                        help="scenes per test split (seen and held-out; default: %(default)s)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="named WorldConfig starting point; the flags below override it (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=None, help="pixels per side, 32-224 (default: the "
                        "preset's; 64 for default, 32 for demo)")
    parser.add_argument("--grid", type=int, default=None, help="grid x grid layout cells (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="world seed: scenes, held-out set (default: %(default)s)")
    parser.add_argument("--negatives", action=argparse.BooleanOptionalAction, default=True,
                        help="attach exact negative captions and counterfactual images to training samples")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: %(default)s)")
    parser.add_argument("--texture", action=argparse.BooleanOptionalAction, default=None,
                        help="smooth background texture (default: the preset's)")
    parser.add_argument("--jitter", type=float, default=None, help="position jitter in [0, 1] (default: the preset's)")
    parser.add_argument("--world-json", default="{}", help="JSON object of any other clipneg.world.WorldConfig "
                        "fields, applied last")
    parser.add_argument("--benchmark-format", choices=("jpg", "png"), default="jpg",
                        help="benchmark image files: jpg (quality 95, 4:4:4, COCO-style names) or png")
    parser.add_argument("--workers", type=int, default=1, help="processes writing training shards")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _shard_job(cfg: WorldConfig, n: int, negatives: bool, shard_size: int, progress: bool
               ) -> tuple[range, dict[str, Any]]:
    return train_shard_job(World(cfg), n, negatives=negatives, shard_size=shard_size, progress=progress)


def run(args: argparse.Namespace) -> int:
    flags = {"seed": args.seed, "image_size": args.image_size, "grid": args.grid, "texture": args.texture,
             "jitter": args.jitter}
    try:
        extra = json.loads(args.world_json)
        if not isinstance(extra, dict):
            raise ValueError(f"--world-json must be a JSON object (got {args.world_json!r})")
        cfg = world_config(args.preset, **{k: v for k, v in flags.items() if v is not None}, **extra)
    except (ValueError, TypeError) as e:
        log.error("%s", e)
        return 2
    if args.n_train < 0 or args.n_test < 0:
        log.error("--n-train and --n-test must be >= 0")
        return 2
    world, progress = World(cfg), not args.no_progress
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = None
    if args.n_train:
        job = partial(_shard_job, cfg, args.n_train, args.negatives, args.shard_size, progress)
        manifest = write_shards_in_processes(job, out / "shards", args.workers)
    t_train = time.perf_counter() - t0
    counts = export_benchmarks(world, out / "benchmark", args.n_test, image_format=args.benchmark_format,
                               progress=progress) if args.n_test else {}
    elapsed = time.perf_counter() - t0
    n_images = 0
    if manifest:
        n_images = manifest["counts"]["written"] + sum(manifest["neg_image_kinds"].values())
    summary = {"out": str(out), "train_images": n_images, "train_seconds": round(t_train, 2),
               "train_images_per_s": round(n_images / t_train, 1) if t_train > 0 and n_images else None,
               "total_seconds": round(elapsed, 2), "benchmark": counts}
    print(json.dumps(summary, indent=1))
    return 0
