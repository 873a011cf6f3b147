"""``clipneg demo``: the whole loop on the built-in world, on a CPU, in a few minutes.

1. ``clipneg world``: training shards with exact negatives and counterfactual images, and the held-out benchmark in
   SugarCrepe and ARO formats (seen compositions and unseen ones).
2. ``train.py`` with configs/demo_world_pretrain.yaml: a tiny CLIP trained from scratch with the plain CLIP loss.
3. ``train.py`` fine-tunes of equal length from that model: plain CLIP (the control) and the hard-negative recipes.
4. ``clipneg eval`` on the world benchmarks, ``clipneg report`` for tables and plots, ``clipneg inspect`` for a
   gallery of the training data.

train.py and configs/ live in the source checkout (the training script is an application, not library code), so the
demo runs from a clone of the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ("clip", "negclip", "triplet")
BENCHMARKS = ("sugarcrepe", "sugarcrepe_heldout")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--n-train", type=int, default=15000, help="training scenes (default 15000)")
    p.add_argument("--n-test", type=int, default=500, help="benchmark scenes per split (default 500)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the pretrain recipe's steps")
    p.add_argument("--finetune-steps", type=int, default=None, help="override the fine-tune recipes' steps")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES,
                   help="fine-tune recipes; 'clip' is the plain control (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="fine-tunes run in parallel, one thread each (default: min(2, CPUs))")


def _repo_file(rel: str) -> Path:
    path = ROOT / rel
    if not path.exists():
        raise FileNotFoundError(f"clipneg demo runs from a clone of the repository: {path} is missing "
                                "(an installed wheel has no train.py/configs; clone the repo and `make demo`)")
    return path


def _run(cmd: list[str], log_path: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); log {log_path}:\n{tail}")


def _train(recipe: str, out: Path, world: Path, seed: int, steps: int | None, model: str | None, threads: int,
           workers: int) -> Path:
    benches = "[" + ", ".join(str(world / "benchmark" / b) for b in BENCHMARKS) + "]"
    config = _repo_file(f"configs/demo_world_{recipe}.yaml")
    cmd = [sys.executable, str(_repo_file("train.py")), "--config", str(config),
           "--data.shards", str(world / "shards"), "--data.num_workers", str(workers), "--data.seed", str(seed),
           "--run.seed", str(seed), "--run.out_dir", str(out / "runs"), "--run.name", recipe,
           "--run.progress", "false", "--eval.benchmarks", benches, "--eval.at_end", "false"]
    if steps:
        cmd += ["--run.steps", str(steps)]
    if model:
        cmd += ["--model.name", model]
    t0 = time.perf_counter()
    _run(cmd, out / "logs" / f"{recipe}.log", threads)
    log.info("trained %s in %.0f s", recipe, time.perf_counter() - t0)
    return out / "runs" / recipe / "export"


def run(args: argparse.Namespace) -> int:
    from clipneg.commands import main as clipneg

    out = Path(args.out).resolve()
    world = out / "world"
    t0 = time.perf_counter()
    if not (world / "shards" / "manifest.json").exists():
        # The demo preset: the world a tiny CLIP learns on a CPU in minutes (clipneg.world.config.PRESETS).
        clipneg(["world", "--out", str(world), "--n-train", str(args.n_train), "--n-test", str(args.n_test),
                 "--preset", "demo", "--seed", str(args.seed), "--shard-size", str(max(1, args.n_train // 8))])
    clipneg(["inspect", str(world / "shards"), "--html", str(out / "gallery.html"), "--limit", "40"])

    log.info("pretraining the tiny CLIP with the plain loss")
    threads = max(1, (os.cpu_count() or 1))
    # One core for the loader worker, the rest for compute (bench/world_gain.py pretrains the same way). On 2 cores, 2
    # compute threads + 1 worker took 199 s for the 600 steps, 1 thread + 2 workers 171 s, 1 thread + 1 worker 151 s.
    pretrained = _train("pretrain", out, world, args.seed, args.pretrain_steps, None, max(1, threads - 1), workers=1)

    log.info("fine-tuning from it: %s", ", ".join(args.recipes))
    model = f"local-dir:{pretrained}"
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        # The plain control is the fastest: start it last so the pool does not end on one long job with a core idle.
        order = sorted(args.recipes, key=lambda r: r == "clip")
        futures = {r: pool.submit(_train, r, out, world, args.seed, args.finetune_steps, model,
                                  max(1, threads // args.jobs), 0) for r in order}
        exports = {r: futures[r].result() for r in args.recipes}

    results = out / "results"
    for label, export in [("pretrain", pretrained), *exports.items()]:
        for bench in BENCHMARKS:
            suffix = "world-heldout" if bench.endswith("heldout") else "world"
            clipneg(["eval", "sugarcrepe", "--sugarcrepe", str(world / "benchmark" / bench), "--name-suffix", suffix,
                     "--model", f"local-dir:{export}", "--label", label, "--out", str(results), "--num-workers", "0",
                     "--no-progress"])
    clipneg(["report", str(results), "--out", str(out / "report"), "--baseline", "clip"])
    summary = (out / "report" / "summary.md").read_text()
    print(summary)
    print(json.dumps({"out": str(out), "minutes": round((time.perf_counter() - t0) / 60, 1),
                      "report": str(out / "report" / "summary.md"), "gallery": str(out / "gallery.html")}))
    return 0
