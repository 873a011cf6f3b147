"""``clipneg demo``: the user's whole pipeline on the built-in world, on a CPU, through the generators.

1. ``clipneg world --no-negatives``: images and captions as a plain source (no negatives), and the held-out benchmark
   in SugarCrepe and ARO formats (seen compositions and unseen ones).
2. ``clipneg generate SOURCE --text rules --image render``: the rule engine on the world's captions, with the world's
   vocabulary as a domain lexicon (generators/rules/world_lexicon.py: shapes, colours, sizes, relation phrases and
   their converses, so the engine also writes the converse paraphrases the triplet recipe's paraphrase term reads),
   then the world's renderer draws the exact counterfactual image of each negative caption and drops the false
   negatives. Shards with every negative's provenance.
3. ``train.py`` with configs/demo_world_pretrain.yaml: a tiny CLIP trained from scratch with the plain CLIP loss.
4. ``train.py`` fine-tunes of equal length from it: plain CLIP (the control) and the hard-negative recipe(s), default
   configs/demo_world_triplet.yaml (the full comparison is bench/world_gain.py).
5. ``clipneg eval`` on the world benchmarks through the SugarCrepe adapter, ``clipneg report`` for tables and plots,
   ``clipneg inspect --html`` for a gallery of the generated shards; the final table is printed.

``clipneg demo --quick`` runs the same stages at the smallest size (under a minute; the test suite uses it).
train.py and configs/ live in the source checkout (the training script is an application, not library code), so the
demo runs from a clone of the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ("clip", "negclip", "triplet")
BENCHMARKS = ("sugarcrepe", "sugarcrepe_heldout")
KINDS = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")
# Rough rates on 2 shared CPU cores (measured; docs/RECIPES.md), for the stage ETAs printed before each stage. The
# training bars show the live rate and ETA.
RATE = {"world": 1200.0, "generate": 150.0, "pretrain": 4.5, "finetune": 2.0, "eval": 1500.0}
QUICK = {"n_train": 192, "n_test": 24, "pretrain_steps": 6, "finetune_steps": 6}
_BAR = re.compile(r"(\d+)/(\d+) \[")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true",
                   help=f"the smallest run of every stage, under a minute ({QUICK}; the flags below override it)")
    p.add_argument("--n-train", type=int, default=None, help="training scenes (default 15000)")
    p.add_argument("--n-test", type=int, default=None, help="benchmark scenes per split (default 500)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the pretrain recipe's steps")
    p.add_argument("--finetune-steps", type=int, default=None, help="override the fine-tune recipes' steps")
    p.add_argument("--recipes", nargs="+", default=["clip", "triplet"], choices=RECIPES,
                   help="fine-tune recipes; 'clip' is the plain control (default: clip triplet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="fine-tunes run in parallel, one thread each (default: min(2, CPUs))")
    p.add_argument("--k-text", type=int, default=1, help="rule negatives per kind and caption (default 1, as the "
                                                         "world's exact shards)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (periodic lines instead)")


def _repo_file(rel: str) -> Path:
    path = ROOT / rel
    if not path.exists():
        raise FileNotFoundError(f"clipneg demo runs from a clone of the repository: {path} is missing "
                                "(an installed wheel has no train.py/configs; clone the repo and `make demo`)")
    return path


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Stages:
    """One line per stage with its estimated time, and the time it took."""

    def __init__(self, names: list[str]) -> None:
        self.names, self.i, self.t0 = names, 0, time.perf_counter()
        self.took: dict[str, float] = {}

    def start(self, name: str, eta: float, what: str) -> float:
        self.i += 1
        print(f"[{self.i}/{len(self.names)}] {name}: {what} (ETA ~{_fmt(eta)}; "
              f"elapsed {_fmt(time.perf_counter() - self.t0)})", flush=True)
        return time.perf_counter()

    def done(self, name: str, t: float) -> None:
        self.took[name] = time.perf_counter() - t
        print(f"      {name} done in {_fmt(self.took[name])}", flush=True)


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class _Bars:
    """Progress of the training subprocesses, read from their logs (tqdm writes ``n/total [...]``): one bar per job
    in a terminal, or a line per job every ``every`` seconds elsewhere."""

    def __init__(self, progress: bool, every: float = 30.0) -> None:
        self.progress, self.every = progress and sys.stderr.isatty(), every
        self.jobs: dict[str, tuple[Path, int]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, name: str, log_path: Path, total: int) -> None:
        with self.lock:
            self.jobs[name] = (log_path, total)

    def remove(self, name: str) -> None:
        with self.lock:
            self.jobs.pop(name, None)

    def __enter__(self) -> _Bars:
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join()

    @staticmethod
    def _step(path: Path) -> int | None:
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 4096))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        found = _BAR.findall(tail)
        return int(found[-1][0]) if found else None

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        bars: dict[str, Any] = {}
        started: dict[str, tuple[float, int]] = {}
        last_line = time.perf_counter()
        while not self.stop.wait(1.0):
            with self.lock:
                jobs = dict(self.jobs)
            now = time.perf_counter()
            lines = []
            for name, (path, total) in jobs.items():
                step = self._step(path)
                if step is None:
                    continue
                t0, s0 = started.setdefault(name, (now, step))
                if self.progress:
                    if name not in bars:
                        bars[name] = tqdm(total=total, desc=f"train {name}", unit="step", position=len(bars),
                                          dynamic_ncols=True, leave=True)
                    bars[name].update(step - bars[name].n)
                else:
                    rate = (step - s0) / max(now - t0, 1e-9)
                    eta = (total - step) / rate if rate > 0 else float("nan")
                    lines.append(f"{name} {step}/{total} steps" + (f", ETA {_fmt(eta)}" if rate > 0 else ""))
            for name in [n for n in bars if n not in jobs]:
                bars[name].update(bars[name].total - bars[name].n)
                bars.pop(name).close()
            if lines and now - last_line >= self.every:
                print("      training: " + "; ".join(lines), flush=True)
                last_line = now
        for bar in bars.values():
            bar.close()


def _train(recipe: str, out: Path, shards: Path, world: Path, seed: int, steps: int, model: str | None,
           threads: int, workers: int, bars: _Bars, quick: bool = False) -> Path:
    benches = "[" + ", ".join(str(world / "benchmark" / b) for b in BENCHMARKS) + "]"
    name = recipe
    config = _repo_file(f"configs/demo_world_{recipe}.yaml")
    cmd = [sys.executable, str(_repo_file("train.py")), "--config", str(config),
           "--data.shards", str(shards), "--data.num_workers", str(workers), "--data.seed", str(seed),
           "--run.seed", str(seed), "--run.out_dir", str(out / "runs"), "--run.name", name,
           "--run.progress", "true", "--eval.benchmarks", benches, "--run.steps", str(steps)]
    if model:
        cmd += ["--model.name", model]
    if not model or quick:  # R@1 (train.py's end-of-run scorer) for full-size fine-tunes only
        cmd += ["--eval.at_end", "false"]
    log_path = out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bars.add(name, log_path, steps)
    try:
        with log_path.open("w") as f:
            proc = subprocess.run(cmd, cwd=ROOT, env=_env(threads), stdout=f, stderr=subprocess.STDOUT)
    finally:
        bars.remove(name)
    if proc.returncode:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"train.py {recipe} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return out / "runs" / name / "export"


def _steps(recipe: str, override: int | None) -> int:
    if override:
        return override
    import yaml

    return int(yaml.safe_load(_repo_file(f"configs/demo_world_{recipe}.yaml").read_text())["run"]["steps"])


def coverage(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per kind, from a ``clipneg generate`` manifest: captions kept by the rules, removed by the caption filter,
    false negatives and held-out compositions the render stage dropped, counterfactual images drawn, and negatives
    that did not parse in the world's grammar (kept, without an image)."""
    stats = manifest.get("stage_stats", {})
    rules, render = stats.get("rules", {}), stats.get("render", {})
    filtered = stats.get("caption_filter", {}).get("rejected", {})
    out = {}
    for kind in KINDS:
        rejected = render.get("rejected", {}).get(kind, {})
        out[kind] = {"rules_kept": rules.get("kept", {}).get(kind, 0),
                     "filtered": sum(filtered.get(kind, {}).values()),
                     "false_negatives": sum(n for r, n in rejected.items() if "false negative" in r),
                     "held_out": sum(n for r, n in rejected.items() if "held-out line: the caption states" in r),
                     "no_parse": sum(n for r, n in rejected.items() if "does not parse" in r),
                     "no_counterfactual": sum(n for r, n in rejected.items() if "counterfactual" in r
                                              or "stays true" in r),
                     "images": render.get("kept", {}).get(kind, 0),
                     "in_shards": manifest.get("neg_text_kinds", {}).get(kind, 0)}
    return out


def final_table(results: Path, runs: Path, baseline: str, best: str) -> str:
    """Plain vs the best recipe per kind, seen and held-out, the gain, and R@1 (train.py's end-of-run scorer)."""
    lines = []
    for bench, suffix in (("sugarcrepe", "world"), ("sugarcrepe_heldout", "world-heldout")):
        rows = {}
        for label in (baseline, best):
            data = json.loads((results / f"sugarcrepe-{suffix}" / f"{label}.json").read_text())
            rows[label] = data["metrics"]
            ev = runs / label / "eval.json"
            if ev.is_file():
                rows[label]["R@1"] = json.loads(ev.read_text()).get(f"{bench}/r1", float("nan"))
        title = "seen compositions" if bench == "sugarcrepe" else "held-out compositions"
        lines += [f"\n{title} ({bench}; accuracy %, SugarCrepe rule, ties wrong)",
                  f"{'kind':<14}{baseline:>10}{best:>10}{'gain':>8}"]
        for kind in (*KINDS, "macro", "R@1"):
            if kind not in rows[baseline]:
                continue
            a, b = rows[baseline][kind], rows[best].get(kind, float("nan"))
            lines.append(f"{kind:<14}{a:>10.1f}{b:>10.1f}{b - a:>+8.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from clipneg.commands import main as clipneg
    from clipneg.generators.rules.world_lexicon import write_world_lexicons
    from clipneg.world.config import world_config

    q = QUICK if args.quick else {}
    n_train = args.n_train or q.get("n_train", 15000)
    n_test = args.n_test or q.get("n_test", 500)
    pre_steps = _steps("pretrain", args.pretrain_steps or q.get("pretrain_steps"))
    ft_steps = {r: _steps(r, args.finetune_steps or q.get("finetune_steps")) for r in args.recipes}
    progress = not args.no_progress
    quiet = [] if progress else ["--no-progress"]
    out = Path(args.out).resolve()
    world, shards = out / "world", out / "shards"
    stages = Stages(["world", "generate", "pretrain", "fine-tune", "eval", "report"])
    t_all = time.perf_counter()

    t = stages.start("world", (n_train + 14 * n_test) / RATE["world"],
                     f"{n_train} training scenes as a plain source (no negatives), benchmark of {n_test} per split")
    if not (world / "shards" / "manifest.json").exists():
        # The demo preset: the world a tiny CLIP learns on a CPU in minutes (clipneg.world.config.PRESETS).
        code = clipneg(["world", "--out", str(world), "--n-train", str(n_train), "--n-test", str(n_test),
                        "--preset", "demo", "--seed", str(args.seed), "--no-negatives",
                        "--shard-size", str(max(1, n_train // 8)), *quiet])
        if code:
            raise SystemExit(f"clipneg world failed (exit {code})")
    stages.done("world", t)

    t = stages.start("generate", n_train / RATE["generate"],
                     "rule negatives and converse paraphrases with the world lexicon, then rendered counterfactuals")
    manifest_path = shards / "manifest.json"
    if not manifest_path.exists():
        cfg = world_config("default", **json.loads((world / "shards" / "manifest.json").read_text())["info"]["world"])
        lexicons = write_world_lexicons(cfg, out / "lexicon")
        # One rendered image per negative caption (7 kinds x k-text), as the world's exact shards carry.
        code = clipneg(["generate", str(world / "shards"), "--out", str(shards), "--text", "rules", "--image",
                        "render", "--k-text", str(args.k_text), "--k-image", str(7 * args.k_text),
                        "--seed", str(args.seed), "--shard-size", str(max(1, n_train // 8)),
                        *[x for p in lexicons for x in ("--lexicon", str(p))], *quiet])
        if code:
            raise SystemExit(f"clipneg generate failed (exit {code})")
    manifest = json.loads(manifest_path.read_text())
    cover = coverage(manifest)
    (out / "coverage.json").write_text(json.dumps(cover, indent=1))
    clipneg(["inspect", str(shards), "--html", str(out / "gallery.html"), "--limit", "40"])
    stages.done("generate", t)

    threads = max(1, (os.cpu_count() or 1))
    t = stages.start("pretrain", pre_steps / RATE["pretrain"],
                     f"a tiny CLIP from scratch, plain CLIP loss, {pre_steps} steps")
    with _Bars(progress) as bars:
        # One core for the loader worker, the rest for compute (bench/world_gain.py pretrains the same way).
        pretrained = _train("pretrain", out, shards, world, args.seed, pre_steps, None, max(1, threads - 1), 1, bars)
        stages.done("pretrain", t)

        longest = max(ft_steps.values())
        t = stages.start("fine-tune", longest / RATE["finetune"] * max(1, len(args.recipes) / args.jobs),
                         f"{', '.join(args.recipes)} from the pretrained model, {longest} steps each, "
                         f"{args.jobs} at a time")
        model = f"local-dir:{pretrained}"
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            # The plain control is the fastest: start it last so the pool does not end on one long job.
            order = sorted(args.recipes, key=lambda r: r == "clip")
            futures = {r: pool.submit(_train, r, out, shards, world, args.seed, ft_steps[r], model,
                                      max(1, threads // args.jobs), 0, bars, args.quick) for r in order}
            exports = {r: futures[r].result() for r in args.recipes}
        stages.done("fine-tune", t)

    results = out / "results"
    # --quick skips the pretrained model's scores (the report compares the fine-tunes; seconds count there)
    labels = [*([] if args.quick else [("pretrain", pretrained)]), *exports.items()]
    t = stages.start("eval", len(labels) * 2 * 8 * n_test / RATE["eval"],
                     f"{len(labels)} models on the seen and held-out world benchmarks (SugarCrepe adapter)")
    for label, export in labels:
        for bench in BENCHMARKS:
            suffix = "world-heldout" if bench.endswith("heldout") else "world"
            code = clipneg(["eval", "sugarcrepe", "--sugarcrepe", str(world / "benchmark" / bench), "--name-suffix",
                            suffix, "--model", f"local-dir:{export}", "--label", label, "--out", str(results),
                            "--num-workers", "0", *quiet])
            if code:
                raise SystemExit(f"clipneg eval failed (exit {code}) for {label} on {bench}")
    stages.done("eval", t)

    t = stages.start("report", 5, "tables and plots")
    clipneg(["report", str(results), "--out", str(out / "report"), "--baseline", "clip"])
    stages.done("report", t)

    best = next((r for r in ("triplet", "negclip") if r in args.recipes), args.recipes[-1])
    print(final_table(results, out / "runs", "clip" if "clip" in args.recipes else "pretrain", best))
    print("\ngenerated negatives per kind (rules kept / false negatives dropped by render / not parsed / images):")
    for kind, c in cover.items():
        print(f"  {kind:<12} {c['rules_kept']:>7} / {c['false_negatives']:>5} / {c['no_parse']:>5} / "
              f"{c['images']:>7}")
    minutes = (time.perf_counter() - t_all) / 60
    print(f"\nreport:  {out / 'report' / 'summary.md'} (charts in {out / 'report' / 'plots'})")
    print(f"gallery: {out / 'gallery.html'}   shards: {shards}   coverage: {out / 'coverage.json'}")
    print(json.dumps({"out": str(out), "minutes": round(minutes, 1), "stages_s": {k: round(v, 1) for k, v in
                                                                                 stages.took.items()},
                      "report": str(out / "report" / "summary.md"), "gallery": str(out / "gallery.html"),
                      "shards": str(shards), "coverage": str(out / "coverage.json")}))
    return 0
