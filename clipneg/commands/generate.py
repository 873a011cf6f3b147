"""``clipneg generate``: source pairs (or clipneg shards) -> shards with generated negatives and their provenance.

Resumable like ``clipneg shard`` (a rerun after a kill skips committed shards and writes byte-identical ones), every
input written or quarantined, and a summary per kind at the end: produced, rejected by each filter with the reason,
kept. Under ``accelerate launch`` (or torchrun) each process writes the chunks of its rank, and the last one to finish
writes the manifest; ``--workers N`` starts N local processes instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from functools import partial
from typing import Any

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  clipneg generate shards/coco --out shards/coco-neg --text rules --k-text 4
  clipneg generate captions_train2014.json --image-dir coco/train2014 --out shards/coco-neg --text rules \\
      --kinds replace_obj replace_att swap_att add_obj --k-text 2 --workers 2
  clipneg generate pairs.tsv --image-dir images/ --out shards/mine --text rules,llm \\
      --llm-base-url http://localhost:8000/v1 --llm-model mistralai/Mistral-7B-Instruct-v0.3
  clipneg generate shards/coco --out /dev/null --text rules --dry-run --show 20
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("source", help="anything `clipneg shard` reads (COCO captions .json, .csv/.tsv/.jsonl table, tar "
                                  "shards), or clipneg shards, whose negatives are kept and added to")
    p.add_argument("--out", required=True, help="output folder for the shards")
    p.add_argument("--kind", choices=["auto", "wds", "coco", "table", "clipneg"], default="auto",
                   help="source format (default: guessed)")
    p.add_argument("--image-dir", help="folder the COCO JSON / table image paths are relative to")
    p.add_argument("--keep-val2017", action="store_true", help="COCO: keep SugarCrepe's val2017 images")
    p.add_argument("--text", default="rules", help="caption generators, comma-separated: rules, llm (default rules)")
    p.add_argument("--k-text", type=int, default=4, help="negative captions kept per kind and caption (default 4)")
    p.add_argument("--kinds", nargs="+", default=None, help="negative kinds to make (default: each generator's own)")
    p.add_argument("--seed", type=int, default=0, help="base seed; a negative is fixed by (caption, kind, seed)")
    p.add_argument("--lexicon", action="append", default=[], help="domain lexicon file merged over the built-in one "
                                                                 "(any number; see docs/RECIPES.md)")
    p.add_argument("--require-negatives", action="store_true",
                   help="quarantine a sample that gets no negative caption (default: write it with its positive)")
    p.add_argument("--shard-size", type=int, default=1000, help="inputs per shard (default 1000)")
    p.add_argument("--prefix", default="train", help="shard file prefix (default train)")
    p.add_argument("--workers", type=int, default=1, help="local processes (default 1; under accelerate launch the "
                                                           "launcher's processes are used)")
    p.add_argument("--dry-run", action="store_true", help="print captions with their negatives; write nothing")
    p.add_argument("--show", type=int, default=20, help="--dry-run: how many samples (default 20)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("llm (--text llm)")
    g.add_argument("--llm-backend", choices=["openai", "vllm", "transformers"], default="openai",
                   help="an OpenAI-compatible server (vLLM serve, Ollama, llama.cpp, hosted), vLLM offline, or a "
                        "local transformers model")
    g.add_argument("--llm-base-url", default="http://localhost:8000/v1", help="server URL (openai backend)")
    g.add_argument("--llm-model", default=None, help="model id on the server, or a path/hub id for transformers")
    g.add_argument("--llm-api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (the key itself is never logged or recorded)")
    g.add_argument("--llm-max-in-flight", type=int, default=16, help="requests in flight (default 16)")
    g.add_argument("--llm-cache", default=None, help="response cache folder (default <out>/.llm_cache)")


def _rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (accelerate launch and torchrun set both)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def build_stages(args: argparse.Namespace) -> list[Any]:
    """The caption generators named by ``--text``, in order, built in this process (spaCy, clients)."""
    names = [n.strip() for n in args.text.split(",") if n.strip()]
    unknown = sorted(set(names) - {"rules", "llm"})
    if unknown or not names:
        raise SystemExit(f"--text: unknown generator(s) {unknown or names}; use rules, llm or rules,llm")
    stages: list[Any] = []
    for name in names:
        if name == "rules":
            from clipneg.generators.rules import RuleConfig, RuleGenerator

            kw: dict[str, Any] = {"k": args.k_text, "seed": args.seed, "lexicons": tuple(args.lexicon)}
            if args.kinds:
                kw["kinds"] = tuple(args.kinds)
            stages.append(RuleGenerator(RuleConfig(**kw)))
        else:
            from clipneg.generators.llm import LLMConfig, LLMRewriter

            if not args.llm_model:
                raise SystemExit("--text llm needs --llm-model (the model id the server serves, or a local path)")
            kw = {"backend": args.llm_backend, "base_url": args.llm_base_url, "model": args.llm_model,
                  "api_key_env": args.llm_api_key_env, "k": args.k_text, "seed": args.seed,
                  "max_in_flight": args.llm_max_in_flight,
                  "cache_dir": args.llm_cache or os.path.join(args.out, ".llm_cache")}
            if args.kinds:
                kw["kinds"] = tuple(args.kinds)
            stages.append(LLMRewriter(LLMConfig(**kw)))
    return stages


def _items(args: argparse.Namespace) -> Any:
    from clipneg.sources import guess_source_kind, open_source

    kind = guess_source_kind(args.source) if args.kind == "auto" else args.kind
    kw: dict[str, Any] = {}
    if kind == "coco" and args.keep_val2017:
        kw["drop_ids"] = set()
    return kind, open_source(kind, args.source, image_dir=args.image_dir, **kw)


def _job(args: argparse.Namespace, progress: bool) -> tuple[Any, dict[str, Any]]:
    from clipneg.generators.pipeline import StagePipeline

    kind, items = _items(args)
    pipeline = StagePipeline(build_stages(args), require_negatives=args.require_negatives)
    info = {"source": {"kind": kind, "path": args.source, "image_dir": args.image_dir},
            "generators": pipeline.manifest(), "seed": args.seed, "k_text": args.k_text,
            "require_negatives": args.require_negatives, "command": "generate"}
    return items, {"process_batch": pipeline, "shard_size": args.shard_size, "prefix": args.prefix, "info": info,
                   "progress": progress}


def summary_table(stage_stats: dict[str, Any]) -> str:
    """Per generator and kind: produced, rejected (by filter and reason) and kept, as aligned text."""
    lines = []
    for name, stats in stage_stats.items():
        if not isinstance(stats, dict) or "produced" not in stats:
            continue
        lines.append(f"{name}:")
        kinds = sorted(set(stats.get("produced", {})) | set(stats.get("kept", {})) | set(stats.get("rejected", {})))
        for kind in kinds:
            rejected = stats.get("rejected", {}).get(kind, {})
            lines.append(f"  {kind:<28} produced {stats.get('produced', {}).get(kind, 0):>7}  "
                         f"rejected {sum(rejected.values()):>7}  kept {stats.get('kept', {}).get(kind, 0):>7}")
            for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1]):
                lines.append(f"      {n:>7}  {reason}")
    if "samples_without_negatives" in stage_stats:
        lines.append(f"samples without any negative caption: {stage_stats['samples_without_negatives']}")
    return "\n".join(lines)


def _dry_run(args: argparse.Namespace) -> int:
    from itertools import islice

    from clipneg.generators.pipeline import StagePipeline

    _, items = _items(args)
    pipeline = StagePipeline(build_stages(args), require_negatives=args.require_negatives)
    for item in islice(items, args.show):
        # One sample per call, so the rejections printed under it are its own.
        result = pipeline([item])[0]
        stats = pipeline.take_stats()
        if not hasattr(result, "caption"):
            print(f"[quarantined] {getattr(result, 'key', '?')}: {result.reason}\n")
            continue
        print(f"{result.key}: {result.caption}")
        for t in result.neg_texts:
            print(f"  {t.kind:<26} {t.text}   ({t.gen}, seed {t.seed})")
        for name, s in stats.items():
            for kind, reasons in (s.get("rejected", {}) if isinstance(s, dict) else {}).items():
                for reason, n in reasons.items():
                    print(f"  x {kind:<24} {name}: {reason}" + (f" (x{n})" if n > 1 else ""))
        print()
    return 0


def run(args: argparse.Namespace) -> int:
    from clipneg.shards import write_shards, write_shards_in_processes

    if args.k_text < 1:
        print("--k-text must be >= 1", file=sys.stderr)
        return 2
    if args.dry_run:
        return _dry_run(args)
    progress = not args.no_progress
    rank, world_size = _rank()
    if world_size > 1:
        items, kwargs = _job(args, progress and rank == 0)
        manifest = write_shards(items, args.out, rank=rank, world_size=world_size, **kwargs)
        if manifest is None:
            log.info("rank %d done; the last process to finish writes the manifest", rank)
            return 0
    else:
        manifest = write_shards_in_processes(partial(_job, args, progress), args.out, args.workers)
    print(summary_table(manifest.get("stage_stats", {})))
    print(json.dumps(manifest["counts"]))
    return 0
