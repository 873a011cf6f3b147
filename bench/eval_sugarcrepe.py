"""Parity and speed of clipneg's SugarCrepe evaluator against a reference loop written from PROTOCOLS.md §1.

The reference does exactly what the official script (RAIVNLab/sugar-crepe main_eval.py) does, one pair at a time:
`Image.open(path)` -> eval transform -> encode_image (batch of 1), encode the caption and the negative separately,
L2-normalise, `correct = pos > neg` strictly. Ours: clipneg.eval.sugarcrepe (unique images decoded by DataLoader
workers and encoded once, unique texts once, batched).

Real SugarCrepe JSONs, placeholder images: one 640x480 JPEG per filename the JSONs name, generated into a temp dir
with distinct deterministic content (smooth noise seeded by the file name), so decoding costs what COCO costs.

    HF_HUB_OFFLINE=1 python bench/eval_sugarcrepe.py --sugarcrepe /work/shared/data/sugarcrepe
    HF_HUB_OFFLINE=1 python bench/eval_sugarcrepe.py --sugarcrepe DIR --clip-benchmark   # also LAION CLIP_benchmark

Prints a JSON summary (and writes it with --json-out): agreement on every pair, accuracies, timings, speedup.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clipneg.schema import SUGARCREPE_KINDS


def make_placeholder_images(json_dir: Path, out_dir: Path, size: tuple[int, int] = (640, 480)) -> int:
    """One JPEG per filename named in the JSONs; content seeded by the name (distinct, deterministic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted({rec["filename"] for p in sorted(json_dir.glob("*.json"))
                    for rec in json.loads(p.read_text()).values()})
    for name in names:
        path = out_dir / name
        if path.exists():
            continue
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, size=(size[1], size[0], 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
    return len(names)


def reference_loop(model, preprocess, tokenizer, json_dir: Path, image_dir: Path) -> tuple[dict[str, bool], dict]:
    """PROTOCOLS.md §1, one pair at a time, as the official script works."""
    import torch

    decisions, margins = {}, {}
    with torch.no_grad():
        for path in sorted(json_dir.glob("*.json")):
            subset = path.stem
            for key, rec in json.loads(path.read_text(encoding="utf-8")).items():
                image = Image.open(image_dir / rec["filename"])
                pos = model.encode_text(tokenizer(rec["caption"]), normalize=True)
                neg = model.encode_text(tokenizer(rec["negative_caption"]), normalize=True)
                img = model.encode_image(preprocess(image).unsqueeze(0), normalize=True)
                pos_score, neg_score = (pos @ img.t()).item(), (neg @ img.t()).item()
                decisions[f"{subset}/{key}"] = pos_score > neg_score
                margins[f"{subset}/{key}"] = pos_score - neg_score
    return decisions, margins


def accuracies(decisions: dict[str, bool]) -> dict[str, float]:
    subsets = sorted({k.split("/")[0] for k in decisions})
    return {s: round(100 * np.mean([v for k, v in decisions.items() if k.startswith(s + "/")]), 4) for s in subsets}


def run_clip_benchmark(model, preprocess, tokenizer, image_dir: Path, json_dir: Path, num_workers: int) -> dict:
    """LAION CLIP_benchmark's SugarCrepe task with amp=False (its `--no_amp`), on the same model object and data.

    Uses its own dataset class, collate function and image_caption_selection metric, which is what its CLI runs for
    `--dataset sugar_crepe/<subset>`; the CLI itself also imports captioning metrics (pycocoevalcap, scikit-learn)
    that this venv does not carry, so we call the same functions directly.
    """
    try:
        from clip_benchmark.datasets.builder import image_captions_collate_fn
        from clip_benchmark.datasets.sugar_crepe import SugarCrepe
        from clip_benchmark.metrics.image_caption_selection import evaluate
    except ImportError:
        return {"skipped": "clip_benchmark is not installed (pip install --no-deps clip-benchmark)"}
    from importlib.metadata import version

    from torch.utils.data import DataLoader

    out: dict = {"version": version("clip-benchmark")}
    for subset in SUGARCREPE_KINDS:
        ds = SugarCrepe(root=str(image_dir), ann_file=str(json_dir / f"{subset}.json"), transform=preprocess)
        dl = DataLoader(ds, batch_size=64, num_workers=num_workers, collate_fn=image_captions_collate_fn)
        t0 = time.perf_counter()
        metrics = evaluate(model, dl, tokenizer, "cpu", amp=False)
        out[subset] = {"acc": 100 * metrics["acc"], "correct": round(metrics["acc"] * len(ds)), "n": len(ds),
                       "seconds": round(time.perf_counter() - t0, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sugarcrepe", required=True, help="folder of the 7 official SugarCrepe JSONs")
    ap.add_argument("--model", default="clipneg-tiny", help="a built-in tiny config or open_clip name (random init)")
    ap.add_argument("--workdir", default=None, help="where placeholder images go (default: a temp dir)")
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--clip-benchmark", action="store_true", help="also run LAION CLIP_benchmark (--no_amp)")
    ap.add_argument("--skip-reference", action="store_true", help="skip the slow one-pair-at-a-time reference")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from clipneg.eval.scorer import Scorer, ScorerConfig
    from clipneg.eval.sugarcrepe import SugarCrepeConfig, evaluate_sugarcrepe

    from clipneg.models import load_clip

    load_before = os.getloadavg()
    json_dir = Path(args.sugarcrepe)
    tmp = tempfile.TemporaryDirectory(prefix="clipneg-bench-") if args.workdir is None else None
    work = Path(args.workdir or tmp.name)
    image_dir = work / "val2017"
    t0 = time.perf_counter()
    n_images = make_placeholder_images(json_dir, image_dir)
    t_gen = time.perf_counter() - t0
    bundle = load_clip(args.model, seed=0)
    model, preprocess, tokenizer = bundle.model.eval(), bundle.preprocess_val, bundle.tokenizer

    t0 = time.perf_counter()
    scorer = Scorer(model, preprocess, tokenizer, ScorerConfig(num_workers=args.num_workers,
                                                               image_batch_size=args.batch_size, progress=False))
    result = evaluate_sugarcrepe(scorer, SugarCrepeConfig(str(json_dir), str(image_dir)))
    t_ours = time.perf_counter() - t0
    ours = {p["id"]: bool(p["correct"]) for p in result.predictions}

    t0 = time.perf_counter()
    if args.skip_reference:  # compare against ours (only useful to time the other paths)
        ref = dict(ours)
        margins = {p["id"]: p["pos"] - p["neg"] for p in result.predictions}
    else:
        ref, margins = reference_loop(model, preprocess, tokenizer, json_dir, image_dir)
    t_ref = time.perf_counter() - t0

    disagree = sorted(k for k in ref if ref[k] != ours.get(k))
    abs_margins = np.abs(np.array(list(margins.values())))
    summary = {
        "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch "
                   f"{torch.__version__}, threads {torch.get_num_threads()}",
        "model": args.model, "pairs": len(ref), "images": n_images, "placeholder_generation_s": round(t_gen, 1),
        "identical_decisions": len(ref) - len(disagree), "disagreements": [
            {"id": k, "reference": ref[k], "ours": ours.get(k), "ref_margin": margins[k]} for k in disagree[:20]],
        "reference_ties": int(sum(m == 0 for m in margins.values())),
        "ours_tied_items": [p["id"] for p in result.predictions if p["tie"]],
        "smallest_abs_margin": float(abs_margins.min()),
        "ours_s": round(t_ours, 2), "reference_s": round(t_ref, 2), "speedup": round(t_ref / t_ours, 2),
        "ours_pairs_per_s": round(len(ref) / t_ours, 1), "reference_pairs_per_s": round(len(ref) / t_ref, 1),
        "accuracy_ours": {k: round(result.metrics[k], 4) for k in result.columns},
        "accuracy_reference": accuracies(ref),
        "scorer_stats": scorer.stats.to_dict(),
        "num_workers": args.num_workers, "batch_size": args.batch_size,
        "load_average_1_5_15_min": {"start": [round(x, 2) for x in load_before],
                                    "end": [round(x, 2) for x in os.getloadavg()]},
    }
    if args.clip_benchmark:
        t0 = time.perf_counter()
        cb = run_clip_benchmark(model, preprocess, tokenizer, image_dir, json_dir, args.num_workers)
        summary["clip_benchmark"] = cb
        if "skipped" not in cb:
            summary["clip_benchmark_s"] = round(time.perf_counter() - t0, 2)
            # CLIP_benchmark counts a tie as correct (argmax picks the first of tied captions): compare its correct
            # counts with ours under the `first` policy (pos >= neg), and list how far each is from the strict rule.
            first = {}
            for p in result.predictions:
                first.setdefault(p["subset"], []).append(p["pos"] >= p["neg"])
            summary["clip_benchmark_agreement"] = {
                s: {"clip_benchmark_correct": cb[s]["correct"], "ours_first_correct": int(sum(first[s])),
                    "ours_strict_correct": result.counts[s]["correct"], "ties": result.counts[s]["ties"],
                    "equal_to_ours_first": cb[s]["correct"] == int(sum(first[s]))}
                for s in first}
    print(json.dumps(summary, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if not disagree else 1


if __name__ == "__main__":
    sys.exit(main())
