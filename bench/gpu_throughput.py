"""Training throughput on one GPU: our loop vs open_clip's own trainer on ViT-B-32 (random init), bf16, batch 256,
and the model FLOPs utilisation (MFU).

    python bench/gpu_throughput.py --out runs/bench/gpu_throughput  # 120 steps of 256, 8 loader workers, 2 repeats

Rows, each run `--repeats` times interleaved (median and best reported):
- open_clip_train with `--dataset-type synthetic` (the issue's reference: one image, re-transformed per sample);
- open_clip_train with `--dataset-type csv` on the same 224 px JPEG files we read (same data, same decode work);
- our train.py on webdataset shards of those JPEGs (no negatives), and with K = 4 NegCLIP text negatives;
- our ContrastiveTask step on one batch already on the GPU (no loader): the ceiling the loader leaves us.
Both trainers use autocast bf16 (open_clip's `amp_bf16`, Accelerate's `bf16`), fused AdamW, no grad checkpointing, no
torch.compile. Rates are steady ones: the first `--skip` steps (start-up, cuDNN autotuning) are left out of both.

MFU = achieved FLOP/s over the peak, with the FLOPs of one training step counted by torch's FlopCounterMode (matrix
products, convolutions and attention, forward and backward, at batch 256) and the peak both as the H100 SXM datasheet's
dense bf16 rate (989.4 TFLOP/s) and as an 8192^3 bf16 matrix product measured on the card in the same run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASHEET_TFLOPS = {"H100": 989.4, "H200": 989.4}  # dense bf16, SXM (NVIDIA H100/H200 datasheets)


def _jpeg(spec: tuple[int, tuple, tuple]) -> bytes:
    from PIL import Image

    size, c1, c2 = spec
    im = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    for x0, c in ((size // 16, c1), (size // 2 + size // 16, c2)):
        im.paste(c, (x0, size // 3, x0 + 3 * size // 8, 2 * size // 3))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_data(out: Path, n: int, size: int = 224) -> tuple[Path, Path, Path]:
    """n JPEGs of two coloured boxes on a gradient with captions: a CSV (open_clip_train), shards without negatives and
    shards whose samples carry 4 negative captions."""
    from multiprocessing import Pool

    from clipneg.schema import NegText, Sample
    from clipneg.shards import write_shards

    rng = random.Random(0)
    (out / "images").mkdir(parents=True, exist_ok=True)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    names = [rng.sample(colours, 2) for _ in range(n)]
    specs = [(size, tuple(rng.randrange(256) for _ in range(3)), tuple(rng.randrange(256) for _ in range(3)))
             for _ in range(n)]
    with Pool() as pool:
        images = pool.map(_jpeg, specs, chunksize=64)
    rows, plain, negs = [], [], []
    for i, ((a, b), data) in enumerate(zip(names, images, strict=True)):
        path = out / "images" / f"{i:06d}.jpg"
        path.write_bytes(data)
        cap = f"a photo of a {a} box to the left of a {b} box on a grey gradient"
        rows.append({"filepath": str(path), "title": cap})
        plain.append(Sample(key=f"g{i:06d}", image=data, image_ext="jpg", caption=cap))
        texts = [NegText(f"a photo of a {b} box to the left of a {a} box on a grey gradient", "swap_att", "bench"),
                 NegText(f"a photo of a {a} box to the right of a {b} box on a grey gradient", "replace_rel", "bench"),
                 NegText(f"a photo of a {a} ball to the left of a {b} box on a grey gradient", "replace_obj", "bench"),
                 NegText(f"a photo of a {a} box to the left of a {b} box on a white wall", "replace_att", "bench")]
        negs.append(Sample(key=f"g{i:06d}", image=data, image_ext="jpg", caption=cap, neg_texts=texts))
    csv_path = out / "train.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filepath", "title"])
        w.writeheader()
        w.writerows(rows)
    shard_size = max(1, n // 32)  # enough shards for every loader worker
    write_shards(plain, out / "shards_plain", shard_size=shard_size, progress=False)
    write_shards(negs, out / "shards_neg", shard_size=shard_size, progress=False)
    return csv_path, out / "shards_plain", out / "shards_neg"


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_open_clip(args: argparse.Namespace, data: list[str], tag: str) -> float:
    """open_clip_train.main for args.steps steps; steady rate from its logged mean batch times."""
    cmd = [sys.executable, "-m", "open_clip_train.main", *data, "--train-num-samples",
           str(args.steps * args.batch_size), "--model", args.model, "--batch-size", str(args.batch_size),
           "--epochs", "1", "--workers", str(args.workers), "--precision", "amp_bf16", "--lr", "5e-4",
           "--warmup", "10", "--wd", "0.1", "--log-every-n-steps", str(args.skip), "--save-frequency", "0",
           "--report-to", "", "--logs", str(args.out / "open_clip_logs"), "--name", tag, "--seed", "0"]
    proc = subprocess.run(cmd, cwd=args.out, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("open_clip_train failed:\n" + proc.stdout[-1500:] + proc.stderr[-3000:])
    text = proc.stdout + proc.stderr
    # A line is logged at step 0 and then every `skip` steps with the mean batch time since the previous line; drop
    # the first two (step 0, then the window that holds cuDNN autotuning and loader start-up).
    times = [float(m) for m in re.findall(r"Batch \(t\): ([0-9.]+),", text)][2:]
    if len(times) < 2:
        raise RuntimeError(f"could not parse open_clip_train's batch times:\n{text[-2000:]}")
    return args.batch_size / statistics.fmean(times)


def run_ours(args: argparse.Namespace, shards: Path, tag: str, extra: list[str]) -> float:
    from clipneg.train.trackers import read_jsonl

    run_dir = args.out / "runs"
    cmd = [sys.executable, str(ROOT / "train.py"), "--model.name", args.model, "--model.pretrained", "null",
           "--data.shards", str(shards), "--data.batch_size", str(args.batch_size), "--data.num_workers",
           str(args.workers), "--data.k_text", "0", "--data.k_image", "0", "--run.steps", str(args.steps),
           "--run.mixed_precision", "bf16", "--run.log_every", str(args.skip), "--run.progress", "false",
           "--run.export", "false", "--run.trackers", "[jsonl]", "--run.out_dir", str(run_dir), "--run.name", tag,
           "--optim.lr", "5e-4", "--optim.warmup_steps", "10", "--optim.grad_clip_norm", "null",
           "--eval.benchmarks", "[]", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("train.py failed:\n" + proc.stderr[-3000:])
    # Each logged row holds the rate over the `skip` steps since the previous one; drop the first (start-up).
    rates = [r["train/samples_per_s"] for r in read_jsonl(run_dir / tag / "log.jsonl")][1:]
    return len(rates) / sum(1 / r for r in rates)  # equal samples per window: the harmonic mean is samples / time


def model_only(args: argparse.Namespace, k_text: int = 0) -> tuple[float, float]:
    """(samples/s, training FLOPs per sample) of our task on one batch resident on the GPU."""
    from torch.utils.flop_counter import FlopCounterMode

    from clipneg.models import load_clip
    from clipneg.train.config import LossConfig, OptimConfig
    from clipneg.train.optim import build_optimizer
    from clipneg.train.task import ContrastiveTask

    torch.manual_seed(0)
    bundle = load_clip(args.model, device="cuda")
    loss_cfg = LossConfig(neg_text_columns=k_text > 0)
    task = ContrastiveTask(bundle.model, loss_cfg).cuda().train()
    opt = build_optimizer(task.model, OptimConfig(lr=5e-4))
    b, ctx = args.batch_size, bundle.tokenizer.context_length
    batch = {"image": torch.randn(b, 3, 224, 224, device="cuda"),
             "text": bundle.tokenizer([f"a photo of a box number {i}" for i in range(b)]).cuda()}
    if k_text:
        batch["neg_text"] = batch["text"][torch.randperm(b)].unsqueeze(1).repeat(1, k_text, 1)
        batch["neg_text_mask"] = torch.ones(b, k_text, dtype=torch.bool, device="cuda")
    assert batch["text"].shape[1] == ctx

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sum(task(batch).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops() / b
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 30
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return n * b / (time.perf_counter() - t0), flops


def measured_peak_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * 8192**3 * 20 / (start.elapsed_time(end) / 1e3) / 1e12


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--skip", type=int, default=10, help="log interval; the first window is left out as start-up")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU; bench/train_throughput.py is the CPU one")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in ("runs", "open_clip_logs", "data"):  # both trainers refuse to reuse a run name
        shutil.rmtree(args.out / old, ignore_errors=True)
    t0 = time.perf_counter()
    csv_path, plain, negs = make_data(args.out / "data", args.steps * args.batch_size)
    print(f"data: {args.steps * args.batch_size} JPEGs in {time.perf_counter() - t0:.0f} s", flush=True)
    gpu = torch.cuda.get_device_name()
    peak_measured = measured_peak_tflops()
    rows: dict[str, list[float]] = {}
    oc_csv = ["--dataset-type", "csv", "--train-data", str(csv_path), "--csv-img-key", "filepath",
              "--csv-caption-key", "title", "--csv-separator", ","]
    for rep in range(args.repeats):
        rows.setdefault("open_clip_train, synthetic", []).append(
            run_open_clip(args, ["--dataset-type", "synthetic"], f"s{rep}"))
        rows.setdefault("open_clip_train, csv (same JPEGs)", []).append(run_open_clip(args, oc_csv, f"c{rep}"))
        rows.setdefault("ours, shards (same JPEGs)", []).append(run_ours(args, plain, f"o{rep}", []))
        rows.setdefault("ours, K=4 text negatives", []).append(
            run_ours(args, negs, f"n{rep}", ["--data.k_text", "4", "--loss.neg_text_columns", "true"]))
        print(json.dumps({k: [round(x) for x in v] for k, v in rows.items()}), flush=True)
    rate0, flops0 = model_only(args)
    rate4, flops4 = model_only(args, k_text=4)
    med = {k: statistics.median(v) for k, v in rows.items()}
    peak_sheet = next((v for k, v in DATASHEET_TFLOPS.items() if k in gpu), float("nan"))

    def mfu(rate: float, flops: float) -> dict[str, float]:
        achieved = rate * flops / 1e12
        return {"tflops": round(achieved, 1), "mfu_datasheet": round(achieved / peak_sheet, 3),
                "mfu_measured_peak": round(achieved / peak_measured, 3)}

    flops_of = {k: (flops4 if "K=4" in k else flops0) for k in med}
    report = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": f"{gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores",
        "settings": {"model": args.model + " (random init)", "batch": args.batch_size, "precision": "autocast bf16",
                     "steps": args.steps, "skip": args.skip, "workers": args.workers, "repeats": args.repeats,
                     "date": time.strftime("%Y-%m-%d")},
        "train_gflops_per_sample": {"no negatives": round(flops0 / 1e9, 2),
                                    "K=4 text negatives": round(flops4 / 1e9, 2)},
        "peak_tflops": {"datasheet": peak_sheet, "measured_8192_matmul": round(peak_measured, 1)},
        "samples_per_s": {k: {"median": round(v, 1), "best": round(max(rows[k]), 1),
                              "runs": [round(x, 1) for x in rows[k]], **mfu(v, flops_of[k])} for k, v in med.items()},
        "model_only_samples_per_s": {"no negatives": {"rate": round(rate0, 1), **mfu(rate0, flops0)},
                                     "K=4 text negatives": {"rate": round(rate4, 1), **mfu(rate4, flops4)}},
        "ours_vs_open_clip_synthetic": round(med["ours, shards (same JPEGs)"] / med["open_clip_train, synthetic"], 3),
        "ours_vs_open_clip_csv": round(med["ours, shards (same JPEGs)"] / med["open_clip_train, csv (same JPEGs)"], 3),
    }
    (args.out / "gpu_throughput.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
