"""Training throughput on the CPU: our loop vs open_clip's own trainer, then the cost of hard negatives.

    python bench/train_throughput.py --out runs/bench/train_throughput
        # defaults: tiny CLIP, batch 128, fp32, 40 steps
    python bench/train_throughput.py --out runs/bench/train_throughput --threads 2 --workers 2 --repeats 3

Same model (clipneg-tiny exported to a local-dir folder, so both trainers build it the same way), same 32 px PNG
images, batch, precision, threads and loader workers. open_clip_train reads them from a CSV (its `--dataset-type csv`,
PIL decode per file); we read the same images from webdataset shards without negatives, and, for the rows with
negatives, from shards whose samples carry 4 negative captions and 1 negative image (also read with K = 0, to show
what carrying them costs the loader). The rate is the steady one: samples / wall
time from the end of the first step to the end of the last (worker start-up excluded), data waiting included, which
is what open_clip_train's per-step `Batch (t)` measures too.

Then our loop with NegCLIP text negatives (K = 1 and 4 extra image-to-text columns, each negative encoded by the
text tower) and with one negative image (an extra text-to-image column, encoded by the image tower), relative to none.
Each configuration runs `--repeats` times, interleaved; the median and the best run are reported (on a shared
machine the best run is the least disturbed one).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_data(out: Path, n: int, size: int = 32) -> tuple[Path, Path, Path]:
    """n random two-square images with captions: a CSV (open_clip_train), shards without negatives, and shards where
    each sample also carries 4 negative captions and 1 negative image."""
    from PIL import Image

    from clipneg.schema import NegImage, NegText, Sample
    from clipneg.shards import write_shards

    rng = random.Random(0)
    (out / "images").mkdir(parents=True, exist_ok=True)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]

    def png(c1: tuple, c2: tuple) -> bytes:
        im = Image.new("RGB", (size, size), (128, 128, 128))
        im.paste(c1, (2, 10, 14, 22))
        im.paste(c2, (18, 10, 30, 22))
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return buf.getvalue()

    rows, samples = [], []
    for i in range(n):
        a, b = rng.sample(colours, 2)
        c1, c2 = tuple(rng.randrange(256) for _ in range(3)), tuple(rng.randrange(256) for _ in range(3))
        data = png(c1, c2)
        path = out / "images" / f"{i:06d}.png"
        path.write_bytes(data)
        cap = f"a {a} square to the left of a {b} square"
        rows.append({"filepath": str(path), "title": cap})
        negs = [NegText(f"a {b} square to the left of a {a} square", "swap_att", "bench"),
                NegText(f"a {a} square to the right of a {b} square", "replace_rel", "bench"),
                NegText(f"a {a} circle to the left of a {b} square", "replace_obj", "bench"),
                NegText(f"a {a} square to the left of a {rng.choice([c for c in colours if c not in (a, b)])} square",
                        "replace_att", "bench")]
        samples.append(Sample(key=f"b{i:06d}", image=data, image_ext="png", caption=cap, neg_texts=negs,
                              neg_images=[NegImage(png(c2, c1), "png", "swap_att", "bench", text=0)]))
    csv_path = out / "train.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filepath", "title"])
        w.writeheader()
        w.writerows(rows)
    shards = out / "shards"
    write_shards(samples, shards, shard_size=max(1, n // 4), progress=False)
    plain = out / "shards_plain"
    write_shards((Sample(key=s.key, image=s.image, image_ext=s.image_ext, caption=s.caption) for s in samples), plain,
                 shard_size=max(1, n // 4), progress=False)
    return csv_path, plain, shards


def export_tiny(out: Path) -> Path:
    from clipneg.models import export_local_dir, load_clip

    bundle = load_clip("clipneg-tiny", seed=0)
    return export_local_dir(bundle.model, out / "tiny", model_cfg=bundle.model_cfg)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_for(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}


def run_open_clip(args: argparse.Namespace, csv_path: Path, model_dir: Path, tag: str) -> float:
    """open_clip_train.main on the CSV for exactly args.steps steps; steady rate from its per-step batch times."""
    logs = args.out / "open_clip_logs"
    cmd = [sys.executable, "-m", "open_clip_train.main", "--dataset-type", "csv", "--train-data", str(csv_path),
           "--csv-img-key", "filepath", "--csv-caption-key", "title", "--csv-separator", ",",
           "--train-num-samples", str(args.steps * args.batch_size), "--model", f"local-dir:{model_dir}",
           "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", str(args.workers),
           "--precision", "fp32", "--lr", "1e-4", "--warmup", "5", "--wd", "0.1", "--log-every-n-steps", "1",
           "--save-frequency", "0", "--report-to", "", "--logs", str(logs), "--name", tag, "--device", "cpu",
           "--seed", "0"]
    proc = subprocess.run(cmd, cwd=args.out, env=env_for(args.threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("open_clip_train failed:\n" + proc.stdout[-1500:] + proc.stderr[-3000:])
    text = proc.stdout + proc.stderr
    times = [float(m) for m in re.findall(r"Batch \(t\): ([0-9.]+),", text)]
    # Line i reports the mean batch time since the previous line (log every step -> one batch each); drop the
    # first (worker start-up), as for our loop.
    steady = times[1:]
    if len(steady) < 3:
        raise RuntimeError(f"could not parse open_clip_train's batch times ({len(times)} lines):\n{text[-2000:]}")
    return args.batch_size * len(steady) / sum(steady)


def run_ours(args: argparse.Namespace, shards: Path, model_dir: Path, tag: str, extra: list[str]) -> float:
    out_dir = args.out / "runs"
    cmd = [sys.executable, str(ROOT / "train.py"), "--model.name", f"local-dir:{model_dir}",
           "--data.shards", str(shards), "--data.batch_size", str(args.batch_size), "--data.num_workers",
           str(args.workers), "--data.k_text", "0", "--data.k_image", "0", "--run.steps", str(args.steps),
           "--run.mixed_precision", "no", "--run.log_every", str(args.steps), "--run.progress", "false",
           "--run.export", "false", "--run.out_dir", str(out_dir), "--run.name", tag, "--optim.lr", "1e-4",
           "--optim.warmup_steps", "5", "--optim.grad_clip_norm", "null", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for(args.threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("train.py failed:\n" + proc.stderr[-3000:])
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    return float(result["samples_per_s"])


CONFIGS = {
    "ours, no negatives": [],
    "ours, K=0 on shards that carry negatives": [],
    "ours, K=1 text negative (NegCLIP)": ["--data.k_text", "1", "--loss.neg_text_columns", "true"],
    "ours, K=4 text negatives (NegCLIP)": ["--data.k_text", "4", "--loss.neg_text_columns", "true"],
    "ours, 1 negative image (t2i column)": ["--data.k_image", "1", "--loss.neg_image_columns", "true"],
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (OMP_NUM_THREADS)")
    p.add_argument("--workers", type=int, default=1, help="data loader workers, both trainers")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.rmtree(args.out / "runs", ignore_errors=True)
    shutil.rmtree(args.out / "open_clip_logs", ignore_errors=True)
    csv_path, plain, shards = make_data(args.out / "data", args.steps * args.batch_size)
    model_dir = export_tiny(args.out)
    rates: dict[str, list[float]] = {"open_clip_train, no negatives": [], **{k: [] for k in CONFIGS}}
    for rep in range(args.repeats):
        rates["open_clip_train, no negatives"].append(run_open_clip(args, csv_path, model_dir, f"oc{rep}"))
        for i, (name, extra) in enumerate(CONFIGS.items()):
            rates[name].append(run_ours(args, plain if name == "ours, no negatives" else shards, model_dir,
                                        f"r{rep}c{i}", extra))
        print(json.dumps({k: [round(x, 1) for x in v] for k, v in rates.items()}), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["ours, no negatives"]
    report = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPU cores, no GPU",
        "settings": {"model": "clipneg-tiny (32 px, width 64, 2+2 layers, embed 64)", "batch": args.batch_size,
                     "precision": "fp32", "steps": args.steps, "threads": args.threads, "workers": args.workers,
                     "repeats": args.repeats, "date": time.strftime("%Y-%m-%d")},
        "samples_per_s": {k: {"median": round(v, 1), "best": round(max(rates[k]), 1),
                              "runs": [round(x, 1) for x in rates[k]]} for k, v in med.items()},
        "ours_vs_open_clip": round(base / med["open_clip_train, no negatives"], 3),
        "ours_vs_open_clip_best_of_runs": round(max(rates["ours, no negatives"])
                                                / max(rates["open_clip_train, no negatives"]), 3),
        "relative_to_no_negatives": {k: round(med[k] / base, 3) for k in CONFIGS},
    }
    (args.out / "throughput.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
