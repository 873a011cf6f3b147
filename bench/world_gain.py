"""Does hard-negative fine-tuning fix composition on the built-in world? The measurement behind the demo's claim.

    python bench/world_gain.py --out runs/bench/world_gain              # 3 seeds, 2 jobs in parallel (2-core CPU)
    python bench/world_gain.py --out runs/bench/world_gain --breakdown  # + accuracy by novelty and by edit
    python bench/world_gain.py --out runs/bench/world_gain_vit --model '{"vision_cfg": {"width": 128}}'
        # clipneg-tiny's ViT, wider
    python bench/world_gain.py --out runs/bench/wg_quick --seeds 0 --recipes clip triplet --finetune-steps 100
        # a quick look
    python bench/world_gain.py --out runs/bench/wg_gen --recipes clip triplet --negatives exact generated rules
        # the world's exact negatives vs the generators' (rules + render) vs the rule engine's captions alone

1. Renders the world (--preset, default demo, plus WorldConfig overrides in --world, like `clipneg world --preset P
   --world-json J`): training shards with the exact negatives of every SugarCrepe kind and a counterfactual image per
   negative, and benchmarks in SugarCrepe format on seen and on held-out compositions.
2. Pretrains a tiny CLIP from scratch with the plain CLIP loss (configs/demo_world_pretrain.yaml); one pretrained
   model is shared by all fine-tune seeds (--pretrain-seed -1 pretrains once per seed).
3. Per seed, fine-tunes it for the same number of steps with each recipe (configs/demo_world_{recipe}.yaml).
3b. With ``--negatives generated`` / ``rules`` the same recipes also fine-tune, same steps and seeds from the same
   pretrained model, on shards made by the generators from the world as a plain source (``clipneg world
   --no-negatives`` -> ``clipneg generate --text rules [--image render]`` with the world lexicon, as ``clipneg demo``):
   rows ``<recipe>@generated`` (rule captions + rendered counterfactuals) and ``<recipe>@rules`` (rule captions only,
   no images). ``coverage.json`` compares the generated shards with the exact ones per kind (negatives, images,
   false negatives the render stage dropped, captions the world's grammar does not parse, paraphrases).
4. Scores every model on the world benchmarks with the SugarCrepe rule (cos(img, pos) > cos(img, neg), ties wrong),
   per kind, and image-text R@1 on the positives; reports mean and spread over seeds and checks the goal:
   the plain fine-tune fails (<= 70% on replace_rel and on a swap kind), the best hard-negative recipe gains >= 20
   points on every kind where the plain one is <= 70%, loses <= 1 point elsewhere, and does not lower R@1.

Jobs run as subprocesses of train.py with one torch thread each and in-process data loading, `--jobs` at a time:
on a shared 2-core machine two single-threaded jobs are far faster than one two-threaded job (OpenMP threads spin
against each other when the cores are oversubscribed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clipneg.schema import SUGARCREPE_KINDS

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("sugarcrepe", "sugarcrepe_heldout")
SWAPS = ("swap_obj", "swap_att")
DEFAULT_WORLD = "{}"  # the demo preset as it is (clipneg.world.config.PRESETS)
# A ResNet image tower: a 2-layer ViT needed ~200 steps to find even the layout (horizontal vs vertical pair) under
# direct supervision and never learned relations from hard negatives in 300 steps; the small ResNet learns it in <100.
DEFAULT_MODEL = "clipneg-tiny-rn"


def make_world(folder: Path, preset: str, overrides: dict, n_train: int, n_test: int, jobs: int) -> None:
    """Render the world with `clipneg world` (shards written by ``jobs`` processes, then the benchmarks); the shards'
    manifest.json records the resolved WorldConfig."""
    from clipneg.commands import main as clipneg

    code = clipneg(["world", "--out", str(folder), "--preset", preset, "--world-json", json.dumps(overrides),
                    "--n-train", str(n_train), "--n-test", str(n_test), "--shard-size", str(max(1, n_train // 8)),
                    "--workers", str(jobs), "--no-progress"])
    if code:
        raise SystemExit(f"clipneg world failed (exit {code}) for --preset {preset} --world-json {overrides}")


def run_job(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({proc.returncode}); see {log}:\n" + log.read_text()[-2000:])
    return time.perf_counter() - t0


def train_cmd(recipe: str, out: Path, name: str, seed: int, world: Path, steps: int | None, batch: int | None,
              extra: list[str], workers: int = 0, shards: Path | None = None) -> list[str]:
    benches = "[" + ", ".join(str(world / "benchmark" / s) for s in SPLITS) + "]"
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / f"demo_world_{recipe}.yaml"),
            "--data.shards", str(shards or world / "shards"), "--data.num_workers", str(workers),
            "--data.seed", str(seed), "--run.seed", str(seed),
            *(["--data.batch_size", str(batch)] if batch else []), *(["--run.steps", str(steps)] if steps else []),
            "--run.out_dir", str(out / "runs"), "--run.name", name, "--run.progress", "false",
            "--eval.benchmarks", benches, *extra]


NEGATIVES = ("exact", "generated", "rules")


def row_name(recipe: str, source: str) -> str:
    """The table row (and run folder stem) of a recipe trained on a source of negatives: "triplet", "triplet@rules"."""
    return recipe if source == "exact" else f"{recipe}@{source}"


def make_generated(out: Path, world: Path, preset: str, overrides: dict, n_train: int, jobs: int,
                   images: bool) -> Path:
    """The generators' shards for the same scenes: the world as a plain source (same config and seed, so the same
    captions), then ``clipneg generate --text rules`` with the world lexicon, and ``--image render`` if ``images``."""
    from clipneg.generators.rules.world_lexicon import write_world_lexicons

    from clipneg.commands import main as clipneg
    from clipneg.world import world_config

    plain = out / "world_plain"
    if not (plain / "shards" / "manifest.json").is_file():
        code = clipneg(["world", "--out", str(plain), "--preset", preset, "--world-json", json.dumps(overrides),
                        "--n-train", str(n_train), "--n-test", "0", "--shard-size", str(max(1, n_train // 8)),
                        "--workers", str(jobs), "--no-negatives", "--no-progress"])
        if code:
            raise SystemExit(f"clipneg world --no-negatives failed (exit {code})")
    name = "shards_generated" if images else "shards_rules"
    shards = out / name
    if not (shards / "manifest.json").is_file():
        info = json.loads((world / "shards" / "manifest.json").read_text())["info"]["world"]
        lexicons = write_world_lexicons(world_config("default", **info), out / "lexicon")
        # k-text 1 and an image for each negative: what the world's exact shards carry (one per kind, each drawn)
        code = clipneg(["generate", str(plain / "shards"), "--out", str(shards), "--text", "rules",
                        *(["--image", "render", "--k-image", "7"] if images else []), "--k-text", "1",
                        "--shard-size", str(max(1, n_train // 8)), "--workers", str(jobs), "--no-progress",
                        *[x for p in lexicons for x in ("--lexicon", str(p))]])
        if code:
            raise SystemExit(f"clipneg generate failed (exit {code})")
    return shards


def coverage(world: Path, generated: Path) -> dict:
    """Per kind: negative captions and images in the exact and the generated shards, with what the generators
    rejected (false negatives dropped by the render stage, captions the world's grammar does not parse) and the
    paraphrases each carries."""
    from clipneg.commands.demo import coverage as stage_coverage
    from clipneg.sources import iter_clipneg_shards

    exact = json.loads((world / "shards" / "manifest.json").read_text())
    gen = json.loads((generated / "manifest.json").read_text())
    per_kind = stage_coverage(gen)
    paras = {}
    for label, folder in (("exact", world / "shards"), ("generated", generated)):
        paras[label] = sum(len(s.paraphrases) for s in iter_clipneg_shards(str(folder)) if hasattr(s, "paraphrases"))
    return {"samples": {"exact": exact["counts"]["written"], "generated": gen["counts"]["written"]},
            "paraphrases": paras,
            "kinds": {k: {"exact_texts": exact.get("neg_text_kinds", {}).get(k, 0),
                          "exact_images": exact.get("neg_image_kinds", {}).get(k, 0),
                          "generated_texts": gen.get("neg_text_kinds", {}).get(k, 0),
                          "generated_images": gen.get("neg_image_kinds", {}).get(k, 0), **per_kind[k]}
                      for k in SUGARCREPE_KINDS},
            "rules_extra": gen.get("stage_stats", {}).get("rules", {}).get("extra", {})}


def coverage_markdown(cov: dict) -> str:
    lines = [f"\n\ncoverage on {cov['samples']['generated']} scenes: exact vs generated negatives per kind "
             f"(paraphrases: exact {cov['paraphrases']['exact']}, generated {cov['paraphrases']['generated']})\n",
             "| kind | exact texts | exact images | generated texts | generated images | rules made | false "
             "negatives dropped | not parsed by the world |", "|---" * 8 + "|"]
    for k, c in cov["kinds"].items():
        lines.append(f"| {k} | {c['exact_texts']} | {c['exact_images']} | {c['generated_texts']} | "
                     f"{c['generated_images']} | {c['rules_kept']} | {c['false_negatives']} | {c['no_parse']} |")
    return "\n".join(lines)


def custom_model(folder: Path, overrides: dict) -> Path:
    """clipneg-tiny's config with ``overrides`` merged in, randomly initialised and written as a local-dir export.

    Pretraining reseeds nothing here: the random init is fixed (seed 0) and the seeds vary data order and training.
    """
    import open_clip
    import torch

    from clipneg.models import export_local_dir, load_clip

    base = load_clip("clipneg-tiny")
    cfg = base.model_cfg
    for k, v in overrides.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**cfg)
    model.visual.preprocess_cfg = dict(base.model.visual.preprocess_cfg)  # set by open_clip's factory otherwise
    return export_local_dir(model, folder, model_cfg=cfg, record={"overrides": overrides})


def breakdown(model: str, benchmark: Path) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Accuracy per split and kind in groups that tell failures apart (same scorer and rule as training's evaluation):

    - held-out items by what is novel in the positive caption: a held-out (shape, colour) pair ("pair"), or only a
      held-out relation triple ("triple only"): binding unseen pairs vs transferring relations;
    - replace_rel items by the edit, on both splits: the converse relation ("converse": "left of" -> "right of", which
      only the order of the two objects tells apart) or a relation on the other axis ("axis": "left of" -> "above",
      which the layout of the pair tells apart).
    """
    from clipneg.eval.scorer import Scorer, ScorerConfig
    from clipneg.eval.sugarcrepe import SugarCrepeConfig, evaluate_sugarcrepe, load_sugarcrepe

    from clipneg.models import load_clip
    from clipneg.world import parse_caption
    from clipneg.world.vocab import INVERSE

    meta = json.loads((benchmark / "world_benchmark.json").read_text())
    held = {tuple(pair) for pair in meta["heldout"]["pairs"]}  # (shape, colour)
    bundle = load_clip(model)
    scorer = Scorer(bundle.model.eval(), bundle.preprocess_val, bundle.tokenizer,
                    ScorerConfig(device="cpu", num_workers=0, progress=False))
    out = {}
    for split in SPLITS:
        folder = benchmark / split
        cfg = SugarCrepeConfig(json_dir=str(folder), image_dir=str(folder / "images"), name=split)
        result = evaluate_sugarcrepe(scorer, cfg)  # the scorer runs under inference_mode
        texts = {item.id: item.texts for item in load_sugarcrepe(cfg)[0]}
        groups: dict[str, dict[str, list[bool]]] = {}
        for pred in result.predictions:
            pos, neg = (parse_caption(t) for t in texts[pred["id"]][:2])
            names = []
            if split == SPLITS[1]:
                names.append("pair" if any((m.shape, m.colour) in held for m in pos.mentions) else "triple only")
            if pred["subset"] == "replace_rel":
                edited = [(f, g) for f, g in zip(pos.facts, neg.facts, strict=True) if f.rel != g.rel]
                names.append("converse" if INVERSE[edited[0][0].rel] == edited[0][1].rel else "axis")
            for name in names:
                groups.setdefault(pred["subset"], {}).setdefault(name, []).append(bool(pred["correct"]))
        out[split] = {kind: {g: {"accuracy": 100.0 * sum(v) / len(v), "n": len(v)} for g, v in sorted(by.items())}
                      for kind, by in groups.items()}
    return out


def summarise(results: dict[str, list[dict]]) -> dict:
    """Mean and spread (population std over seeds) of every metric, per recipe."""
    table = {}
    for recipe, runs in results.items():
        keys = sorted(set.intersection(*(set(r) for r in runs)))
        table[recipe] = {k: {"mean": statistics.fmean(r[k] for r in runs),
                             "std": statistics.pstdev([r[k] for r in runs]) if len(runs) > 1 else 0.0,
                             "values": [r[k] for r in runs]} for k in keys}
    return table


def check_goal(table: dict, baseline: str = "clip") -> dict:
    """The acceptance rule, judged on seed means, for each hard-negative recipe; the best is the one that passes with
    the largest mean gain on the failing kinds."""
    base = table[baseline]
    verdicts = {}
    failure = {s: [k for k in SUGARCREPE_KINDS if base[f"{s}/{k}"]["mean"] <= 70.0] for s in SPLITS}
    shows_failure = all(f"{s}/replace_rel" in [f"{s}/{k}" for k in failure[s]] and any(k in SWAPS for k in failure[s])
                        for s in SPLITS)
    for recipe, row in table.items():
        if recipe in (baseline, "pretrain"):
            continue
        gains, problems = {}, []
        for s in SPLITS:
            for k in SUGARCREPE_KINDS:
                key = f"{s}/{k}"
                delta = row[key]["mean"] - base[key]["mean"]
                gains[key] = delta
                if k in failure[s] and delta < 20.0:
                    problems.append(f"{key}: {delta:+.1f} < +20")
                if k not in failure[s] and delta < -1.0:
                    problems.append(f"{key}: {delta:+.1f} < -1")
            r1 = row[f"{s}/r1"]["mean"] - base[f"{s}/r1"]["mean"]
            gains[f"{s}/r1"] = r1
            if r1 < 0:
                problems.append(f"{s}/r1: {r1:+.1f} < 0")
        verdicts[recipe] = {"passes": not problems, "problems": problems, "gains": gains,
                            "mean_gain_on_failing": statistics.fmean(
                                [gains[f"{s}/{k}"] for s in SPLITS for k in failure[s]] or [0.0])}
    passing = [r for r, v in verdicts.items() if v["passes"]]
    best = max(passing or verdicts, key=lambda r: verdicts[r]["mean_gain_on_failing"]) if verdicts else None
    return {"baseline_failing_kinds": failure, "baseline_shows_failure": shows_failure, "recipes": verdicts,
            "best": best, "goal_met": bool(shows_failure and best in passing)}


def markdown(table: dict, goal: dict, timing: dict) -> str:
    lines = []
    for s in SPLITS:
        lines.append(f"\n{s} (accuracy %, mean +- std over seeds; SugarCrepe rule, ties wrong)\n")
        lines.append("| model | " + " | ".join(SUGARCREPE_KINDS) + " | R@1 |")
        lines.append("|---" * (len(SUGARCREPE_KINDS) + 2) + "|")
        for recipe, row in table.items():
            cells = [f"{row[f'{s}/{k}']['mean']:.1f} +- {row[f'{s}/{k}']['std']:.1f}" for k in SUGARCREPE_KINDS]
            cells.append(f"{row[f'{s}/r1']['mean']:.1f} +- {row[f'{s}/r1']['std']:.1f}")
            lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    lines.append(f"\nbest hard-negative recipe: {goal['best']}; goal met: {goal['goal_met']}; "
                 f"plain fine-tune shows the failure: {goal['baseline_shows_failure']}")
    for recipe, v in goal["recipes"].items():
        lines.append(f"- {recipe}: {'passes' if v['passes'] else 'fails: ' + '; '.join(v['problems'])}")
    lines.append(f"\ntiming (s): {json.dumps(timing)}")
    return "\n".join(lines)


def breakdown_markdown(found: dict[str, list[dict]]) -> str:
    def cell(runs: list[dict], split: str, kind: str, group: str) -> str:
        accs = [r[split][kind][group]["accuracy"] for r in runs if group in r[split].get(kind, {})]
        n = next((r[split][kind][group]["n"] for r in runs if group in r[split].get(kind, {})), 0)
        return f"{statistics.fmean(accs):.1f} ({n})" if accs else "-"

    novel = [(k, g) for k in SUGARCREPE_KINDS for g in ("pair", "triple only")]
    lines = ["\n\nheld-out accuracy by what is novel in the caption (mean over seeds; n items)\n",
             "| model | " + " | ".join(f"{k}: {g}" for k, g in novel) + " |", "|---" * (len(novel) + 1) + "|"]
    lines += [f"| {recipe} | " + " | ".join(cell(runs, SPLITS[1], k, g) for k, g in novel) + " |"
              for recipe, runs in found.items()]
    edits = [(s, g) for s in SPLITS for g in ("converse", "axis")]
    lines += ["\nreplace_rel by edit: the converse relation, or one on the other axis (mean over seeds; n items)\n",
              "| model | " + " | ".join(f"{s}: {g}" for s, g in edits) + " |", "|---" * (len(edits) + 1) + "|"]
    lines += [f"| {recipe} | " + " | ".join(cell(runs, s, "replace_rel", g) for s, g in edits) + " |"
              for recipe, runs in found.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=["clip", "negclip", "triplet"])
    p.add_argument("--jobs", type=int, default=2, help="training jobs at a time (one torch thread each)")
    p.add_argument("--n-train", type=int, default=15000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--preset", default="demo", help="clipneg.world preset (default: %(default)s)")
    p.add_argument("--world", default=DEFAULT_WORLD, help="JSON overrides of clipneg.world.WorldConfig on top of the "
                                                            "preset (default: %(default)s)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="default: the pretrain recipe's")
    p.add_argument("--finetune-steps", type=int, default=None, help="default: the recipes' (all equal)")
    p.add_argument("--batch-size", type=int, default=None, help="every job's batch (default: each recipe's own)")
    p.add_argument("--pretrain-seed", type=int, default=0,
                   help="one pretrained model shared by every fine-tune seed; -1 pretrains once per seed")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="start model for pretraining: a built-in name, or JSON overrides of clipneg-tiny's config "
                        "(default: %(default)s)")
    p.add_argument("--pretrain-flags", default="", help="train.py flags for every pretraining run (one string)")
    p.add_argument("--finetune-flags", default="", help="train.py flags for every fine-tune (one string)")
    p.add_argument("--breakdown", action="store_true",
                   help="also score each fine-tune's accuracy in groups: held-out items by what is novel in the "
                        "caption (an unseen shape-colour pair, or only an unseen relation triple), and replace_rel "
                        "by its edit (the converse relation, or one on the other axis); a few seconds per model")
    p.add_argument("--negatives", nargs="+", default=["exact"], choices=NEGATIVES,
                   help="training negatives, each a set of rows: exact (the world's own), generated (rules + render "
                        "on the world as a plain source), rules (rule captions only, no images); default exact")
    p.add_argument("--generated-recipes", nargs="+", default=None,
                   help="recipes run on the generated/rules shards (default: --recipes without clip, which reads no "
                        "negatives and so is the same row whatever the shards)")
    args = p.parse_args(argv)
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    t_all = time.perf_counter()

    world = out / "world"
    if not (world / "shards" / "sizes.json").is_file() or not (world / "benchmark" / SPLITS[1]).is_dir():
        t0 = time.perf_counter()
        make_world(world, args.preset, {"image_size": args.image_size, **json.loads(args.world)}, args.n_train,
                   args.n_test, args.jobs)
        timing["world"] = time.perf_counter() - t0

    pre_extra = shlex.split(args.pretrain_flags)
    if args.model and args.model.lstrip().startswith("{"):
        pre_extra += ["--model.name", "local-dir:" + str(custom_model(out / "start_model", json.loads(args.model)))]
    elif args.model:
        pre_extra += ["--model.name", args.model]

    def job(recipe: str, name: str, seed: int, steps: int | None, extra: list[str], workers: int = 0,
            shards: Path | None = None) -> float:
        if (out / "runs" / name / "eval.json").is_file():
            return 0.0  # finished earlier: reuse
        cmd = train_cmd(recipe, out, name, seed, world, steps, args.batch_size, extra, workers, shards)
        return run_job(cmd, out / "logs" / f"{name}.log")

    pre_seeds = args.seeds if args.pretrain_seed < 0 else [args.pretrain_seed]

    def start_of(seed: int) -> str:
        pre = seed if args.pretrain_seed < 0 else args.pretrain_seed
        return f"local-dir:{out / 'runs' / f'pretrain_s{pre}' / 'export'}"

    with ThreadPoolExecutor(args.jobs) as pool:
        t0 = time.perf_counter()
        # A lone pretraining job decodes its data in a worker process, on the core it would otherwise leave idle
        # (two compute threads were no faster: the step alternates between decoding and compute).
        workers = 1 if len(pre_seeds) == 1 and args.jobs > 1 else 0
        list(pool.map(lambda s: job("pretrain", f"pretrain_s{s}", s, args.pretrain_steps, pre_extra, workers),
                      pre_seeds))
        timing["pretrain"] = time.perf_counter() - t0
        sources: dict[str, Path | None] = {"exact": None} if "exact" in args.negatives else {}
        for src in ("generated", "rules"):
            if src in args.negatives:
                t0 = time.perf_counter()
                overrides = {"image_size": args.image_size, **json.loads(args.world)}
                sources[src] = make_generated(out, world, args.preset, overrides, args.n_train, args.jobs,
                                              images=src == "generated")
                timing[f"generate_{src}"] = time.perf_counter() - t0
        gen_recipes = args.generated_recipes or [r for r in args.recipes if r != "clip"]
        rows = [(r, src) for src in sources for r in (args.recipes if src == "exact" else gen_recipes)]
        if "exact" not in sources and "clip" in args.recipes:
            rows.insert(0, ("clip", "exact"))  # the plain control reads no negatives: the same for every source
        t0 = time.perf_counter()
        # Longest jobs first, so the pool does not end on one long job with a core idle.
        tasks = [(r, src, s) for r, src in sorted(rows, key=lambda rs: rs[0] == "clip") for s in args.seeds]
        list(pool.map(lambda t: job(t[0], f"{row_name(t[0], t[1])}_s{t[2]}", t[2], args.finetune_steps,
                                    ["--model.name", start_of(t[2]), *shlex.split(args.finetune_flags)],
                                    shards=sources.get(t[1])), tasks))
        timing["finetune"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_all

    results = {"pretrain": [json.loads((out / "runs" / f"pretrain_s{s}" / "eval.json").read_text())
                            for s in pre_seeds]}
    for r, src in rows:
        results[row_name(r, src)] = [json.loads((out / "runs" / f"{row_name(r, src)}_s{s}" / "eval.json").read_text())
                                     for s in args.seeds]
    table = summarise(results)
    goal = check_goal(table) if "clip" in table else {}
    report = {"seeds": args.seeds, "args": {k: str(v) for k, v in vars(args).items()}, "timing_s": timing,
              "table": table, "goal": goal}
    if sources.get("generated"):
        report["coverage"] = coverage(world, sources["generated"])
        (out / "coverage.json").write_text(json.dumps(report["coverage"], indent=1))
    if args.breakdown:
        names = [row_name(r, src) for r, src in rows]
        report["breakdown"] = {n: [breakdown(f"local-dir:{out / 'runs' / f'{n}_s{s}' / 'export'}", world / "benchmark")
                                   for s in args.seeds] for n in names}
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    text = markdown(table, goal, {k: round(v, 1) for k, v in timing.items()}) if goal else json.dumps(table)
    if args.breakdown:
        text += breakdown_markdown(report["breakdown"])
    if "coverage" in report:
        text += coverage_markdown(report["coverage"])
    (out / "summary.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
