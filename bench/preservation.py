"""Zero-shot preservation on the built-in world: what each preservation method keeps of the pretrained model while the
best hard-negative recipe teaches composition.

    python bench/preservation.py --out runs/bench/preservation               # seed 0, 2 jobs (2-core CPU)
    python bench/preservation.py --out runs/bench/preservation --seeds 0 1 2
    python bench/preservation.py --out runs/bench/pres_quick --finetune-steps 200   # a quick look
    python bench/preservation.py --out runs/bench/preservation --reuse runs/bench/world_gain
        # reuse a world_gain folder's world and pretrained model (same --preset / --world)

Same world, pretrained model, data and steps as bench/world_gain.py (its helpers make the world and the jobs), then
per seed the best world recipe (``--recipe``, default triplet: docs/BENCHMARKS.md) fine-tuned five ways:

| row           | what                                                                                       |
|---------------|--------------------------------------------------------------------------------------------|
| none          | the recipe as it is                                                                        |
| ema_distill   | + DeGLA's EMA-teacher feature distillation (loss.distill 0.005, decay 0.9996: published)   |
| wise_0.5      | WiSE-FT: the ``none`` run's weights interpolated halfway to the pretrained ones (no run)    |
| lora_r4       | LoRA rank 4 (alpha 8) on the text tower only, lr x3 (the world's image tower is a ResNet,  |
|               | which has no transformer blocks, so it stays frozen: LoRA here is also a locked image)     |
| lock_image    | the image tower frozen, the text tower fully trained                                        |

Each model (and the pretrained one) is scored on:

- composition: the world's SugarCrepe-format benchmarks (seen and held-out compositions), accuracy per kind with the
  official rule, and the gain over the pretrained model per kind;
- retention: zero-shot classification from prompts on single-object images rendered for this bench (every shape x
  colour of the world, 4 renders each: both sizes, random cells and grey tones), against the prompts
  "a {colour} {shape}" for all pairs: shape accuracy, colour accuracy and pair accuracy of the top prompt; and
  image-text R@1 on the benchmarks' positive pairs (train.py's evaluation).

Writes ``summary.json`` and ``summary.md`` under --out. Numbers from one seed are one sample: run 3 seeds before
drawing conclusions.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import world_gain  # noqa: E402  (bench/world_gain.py: world, jobs)

VARIANTS = {
    "none": ["--run.wise_alpha", "0.5"],  # its export_wise is the wise_0.5 row
    "ema_distill": ["--loss.distill", "0.005", "--loss.distill_ema", "0.9996"],
    "lora_r4": ["--model.lora.rank", "4", "--model.lora.alpha", "8", "--model.lora.towers", "[text]",
                "--optim.lr", "3e-3"],
    "lock_image": ["--model.lock_image", "true"],
}
ROWS = ("pretrained", "none", "ema_distill", "wise_0.5", "lora_r4", "lock_image")


def classification_set(preset: str, overrides: dict, per_pair: int = 4, seed: int = 0):
    """Single-object images of every (shape, colour) of the world with their labels."""
    import numpy as np

    from clipneg.world import world_config
    from clipneg.world.render import Renderer
    from clipneg.world.scene import Obj, Scene

    cfg = world_config(preset, **overrides)
    renderer, rng = Renderer(cfg), random.Random(seed)
    images, labels = [], []
    for shape in cfg.shapes:
        for colour in cfg.colours:
            for i in range(per_pair):
                cell = (rng.randrange(cfg.grid), rng.randrange(cfg.grid))
                grey = rng.randrange(100, 156)
                scene = Scene((Obj(shape, colour, ("small", "large")[i % 2], cell),), (grey, grey, grey),
                              rng.getrandbits(31))
                images.append(np.asarray(renderer.render(scene)))
                labels.append((shape, colour))
    return cfg, images, labels


def classify(model_name: str, cfg, images, labels) -> dict[str, float]:
    """Top-1 shape, colour and pair accuracy of the prompt "a {colour} {shape}" with the highest cosine."""
    import torch
    from PIL import Image

    from clipneg.models import load_clip

    bundle = load_clip(model_name)
    model = bundle.model.eval()
    pairs = [(s, c) for s in cfg.shapes for c in cfg.colours]
    with torch.no_grad():
        text = model.encode_text(bundle.tokenizer([f"a {c} {s}" for s, c in pairs]), normalize=True)
        x = torch.stack([bundle.preprocess_val(Image.fromarray(im)) for im in images])
        img = torch.cat([model.encode_image(chunk, normalize=True) for chunk in x.split(256)])
    top = (img @ text.T).argmax(1).tolist()
    hits = [(pairs[t][0] == s, pairs[t][1] == c) for t, (s, c) in zip(top, labels, strict=True)]
    n = len(hits)
    return {"shape": 100 * sum(a for a, _ in hits) / n, "colour": 100 * sum(b for _, b in hits) / n,
            "pair": 100 * sum(a and b for a, b in hits) / n}


def composition(eval_json: dict, prefix: str = "") -> dict[str, float]:
    """Per-kind accuracies and R@1 of train.py's eval.json (``prefix`` "wise/" for the WiSE-FT export)."""
    return {k.removeprefix(prefix): v for k, v in eval_json.items()
            if k.startswith(prefix) and (prefix or not k.startswith("wise/"))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--recipe", default="triplet", help="configs/demo_world_{recipe}.yaml (default: %(default)s)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--n-train", type=int, default=15000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--preset", default="demo")
    p.add_argument("--world", default=world_gain.DEFAULT_WORLD)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--reuse", type=Path, default=None, help="a bench/world_gain.py --out folder to take the world "
                                                            "and pretrain_s0 from")
    args = p.parse_args(argv)
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    overrides = {"image_size": args.image_size, **json.loads(args.world)}
    timing: dict[str, float] = {}
    t_all = time.perf_counter()
    world = out / "world"
    if args.reuse is not None and not world.exists():
        shutil.copytree(args.reuse / "world", world)
        shutil.copytree(args.reuse / "runs" / "pretrain_s0", out / "runs" / "pretrain_s0")
    if not (world / "shards" / "sizes.json").is_file():
        t0 = time.perf_counter()
        world_gain.make_world(world, args.preset, overrides, args.n_train, args.n_test, args.jobs)
        timing["world"] = time.perf_counter() - t0

    def job(recipe: str, name: str, seed: int, steps: int | None, extra: list[str], workers: int = 0) -> float:
        if (out / "runs" / name / "eval.json").is_file():
            return 0.0
        cmd = world_gain.train_cmd(recipe, out, name, seed, world, steps, None, extra, workers)
        return world_gain.run_job(cmd, out / "logs" / f"{name}.log")

    t0 = time.perf_counter()
    job("pretrain", "pretrain_s0", 0, args.pretrain_steps, ["--model.name", world_gain.DEFAULT_MODEL],
        1 if args.jobs > 1 else 0)
    timing["pretrain"] = time.perf_counter() - t0
    start = f"local-dir:{out / 'runs' / 'pretrain_s0' / 'export'}"
    t0 = time.perf_counter()
    tasks = [(v, s) for v in args.variants for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda vs: job(args.recipe, f"{vs[0]}_s{vs[1]}", vs[1], args.finetune_steps,
                                     ["--model.name", start, *VARIANTS[vs[0]]]), tasks))
    timing["finetune"] = time.perf_counter() - t0

    cfg, images, labels = classification_set(args.preset, overrides)
    from clipneg.train.config import EvalConfig
    from clipneg.train.evaluation import evaluate

    def eval_export(path: Path) -> dict[str, float]:
        from clipneg.models import load_clip

        bundle = load_clip(f"local-dir:{path}")
        benches = tuple(str(world / "benchmark" / s) for s in world_gain.SPLITS)
        return evaluate(bundle.model, bundle, EvalConfig(benchmarks=benches), "cpu")

    rows: dict[str, list[dict]] = {r: [] for r in ROWS}
    pre_path = out / "runs" / "pretrain_s0" / "export"
    pre = {"comp": eval_export(pre_path), "cls": classify(f"local-dir:{pre_path}", cfg, images, labels)}
    rows["pretrained"] = [pre for _ in args.seeds]
    for v in args.variants:
        for s in args.seeds:
            run = out / "runs" / f"{v}_s{s}"
            ev = json.loads((run / "eval.json").read_text())
            rows[v].append({"comp": composition(ev), "cls": classify(f"local-dir:{run / 'export'}", cfg, images,
                                                                     labels)})
            if v == "none" and (run / "export_wise").is_dir():
                rows["wise_0.5"].append({"comp": composition(ev, "wise/"),
                                         "cls": classify(f"local-dir:{run / 'export_wise'}", cfg, images, labels)})
    timing["total"] = time.perf_counter() - t_all

    def mean(vals: list[float]) -> float:
        return statistics.fmean(vals) if vals else float("nan")

    table = {}
    kinds = sorted(k for k in pre["comp"] if k.count("/") == 1 and not k.endswith(("r1", "macro")))
    r1_keys = sorted(k for k in pre["comp"] if k.endswith("r1"))
    for r, entries in rows.items():
        if not entries:
            continue
        table[r] = {**{f"gain/{k}": mean([e["comp"].get(k, float("nan")) - pre["comp"][k] for e in entries])
                       for k in kinds},
                    **{k: mean([e["comp"].get(k, float("nan")) for e in entries]) for k in r1_keys},
                    **{f"cls/{k}": mean([e["cls"][k] for e in entries]) for k in ("shape", "colour", "pair")}}
        # the spread over seeds of the headline number: one seed's gain is one sample
        micro = [e["comp"][f"{world_gain.SPLITS[1]}/micro"] - pre["comp"][f"{world_gain.SPLITS[1]}/micro"]
                 for e in entries]
        table[r]["seed_range"] = f"{min(micro):+.1f}..{max(micro):+.1f}"
    report = {"seeds": args.seeds, "recipe": args.recipe, "args": {k: str(v) for k, v in vars(args).items()},
              "timing_s": timing, "pretrained": pre, "table": table}
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    # The markdown keeps the held-out kinds, both splits' micro means and R@1, and the classification; summary.json
    # has every split's every kind.
    held = world_gain.SPLITS[1]
    cols = [c for c in next(iter(table.values()))
            if (c.startswith(f"gain/{held}/") and not c.endswith(("/add", "/replace", "/swap")))
            or c in (f"gain/{world_gain.SPLITS[0]}/micro", f"{world_gain.SPLITS[0]}/r1", f"{held}/r1")
            or c.startswith("cls/") or c == "seed_range"]
    lines = [f"Preservation on the world ({args.recipe}, seeds {args.seeds}; gain = points over the pretrained "
             f"model on {held} unless named; cls = zero-shot classification from prompts, %)", "",
             "| row | " + " | ".join(c.replace(f"gain/{held}/", "").replace("sugarcrepe", "sc") for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for r, vals in table.items():
        lines.append(f"| {r} | " + " | ".join(vals[c] if c == "seed_range" else f"{vals[c]:+.1f}"
                                              if c.startswith("gain/") else f"{vals[c]:.1f}" for c in cols) + " |")
    lines += ["", f"timing (s): {json.dumps({k: round(v) for k, v in timing.items()})}"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
