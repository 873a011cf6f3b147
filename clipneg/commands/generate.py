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
    p.add_argument("--duplicates", choices=["quarantine", "keep"], default="quarantine",
                   help="an exact repeat of an earlier (image, caption) pair: quarantine it (default) or keep it")
    p.add_argument("--text", default="rules", help="caption generators, comma-separated: rules, llm, or none "
                                                   "(keep the source's captions negatives only; default rules)")
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
    g = p.add_argument_group("caption filters")
    g.add_argument("--caption-filter", choices=["structural", "none"], default="structural",
                   help="structural checks on every negative caption: not the positive or a paraphrase, length, "
                        "CLIP tokens, one slot per replace, one span per add, the bag kept by swaps (default on)")
    g.add_argument("--min-words", type=int, default=2, help="caption filter: fewest words (default 2)")
    g.add_argument("--max-tokens", type=int, default=77, help="caption filter: most CLIP tokens (default 77)")
    g.add_argument("--paraphrase-filter", action="store_true",
                   help="reject negatives whose sentence embedding is within --paraphrase-threshold of the positive "
                        "(a false negative; sentence-transformers, installed with clipneg[filters])")
    g.add_argument("--paraphrase-model", default=None, help="sentence-transformers id or folder (default: the "
                                                             "bundled all-MiniLM-L6-v2)")
    g.add_argument("--paraphrase-threshold", type=float, default=0.9, help="reject cosine above this (default 0.9)")
    g.add_argument("--paraphrase-kinds", nargs="+", default=["llm_free"],
                   help="kinds checked (default llm_free: minimal edits embed near their positive by design)")
    g.add_argument("--refine-bias", action="store_true",
                   help="SugarCrepe's adversarial refinement: a first pass fits blind text-only scorers on every "
                        "negative, the second keeps a subset on which they are at chance (see docs/RECIPES.md)")
    p.add_argument("--image", default="", help="image generators after the captions, comma-separated: render (the "
                   "built-in world), diffusion, mined, flip (default: none)")
    p.add_argument("--k-image", type=int, default=1, help="negative images per sample and generator (default 1)")
    p.add_argument("--filter-images", action="store_true",
                   help="keep a counterfactual only if the reference CLIP (--ref-model) sees it as its caption")
    p.add_argument("--ref-model", default=None, help="reference open_clip model for --image mined and "
                                                     "--filter-images (a name, or local-dir:PATH)")
    p.add_argument("--ref-pretrained", default=None, help="its pretrained tag or checkpoint file")
    p.add_argument("--device", default="cpu", help="device for the reference model and diffusion (default cpu)")
    p.add_argument("--world-json", default=None, help="render: the world's WorldConfig fields as JSON (default: "
                                                       "the source shards' manifest info.world)")
    g = p.add_argument_group("diffusion (--image diffusion)")
    g.add_argument("--diffusion-model", default=None, help="hub id or local folder of a diffusers pipeline")
    g.add_argument("--diffusion-mode", default="text2img", help="text2img, img2img, instruct or inpaint (or "
                                                                 "several, comma-separated, tried in order)")
    g.add_argument("--diffusion-steps", type=int, default=None, help="denoising steps (default: the family's)")
    g.add_argument("--diffusion-guidance", type=float, default=None, help="guidance scale (default: the family's)")
    g.add_argument("--diffusion-strength", type=float, default=None, help="img2img/inpaint strength")
    g.add_argument("--diffusion-batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    g.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: per device)")
    g.add_argument("--cpu-offload", action="store_true", help="diffusers' model CPU offload (CUDA only)")
    g = p.add_argument_group("mined (--image mined)")
    g.add_argument("--mine-range-min", type=int, default=0, help="skip this many nearest neighbours (default 0)")
    g.add_argument("--mine-range-max", type=int, default=None, help="rank window end (default: as "
                                                                     "sentence-transformers' mine_hard_negatives)")
    g.add_argument("--mine-max-score", type=float, default=0.98, help="drop neighbours above this image-image "
                                                                       "cosine: near-duplicates (default 0.98)")
    g.add_argument("--mine-margin", type=float, default=None, help="drop a neighbour whose image matches the "
                                                                    "sample's caption within this margin of the "
                                                                    "sample's own image")
    g.add_argument("--mine-sampling", choices=["top", "random"], default="top", help="pick from the window")
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
    names = [n.strip() for n in args.text.split(",") if n.strip() and n.strip() != "none"]
    unknown = sorted(set(names) - {"rules", "llm"})
    if unknown:
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


def build_filter_stages(args: argparse.Namespace) -> list[Any]:
    """The caption filters, after the caption generators and before any image is made for a caption."""
    stages: list[Any] = []
    if args.caption_filter == "structural":
        from clipneg.generators.filters import CaptionFilter, CaptionFilterConfig

        stages.append(CaptionFilter(CaptionFilterConfig(min_words=args.min_words, max_tokens=args.max_tokens)))
    if args.paraphrase_filter:
        from clipneg.generators.filters import BUNDLED_MINILM, ParaphraseFilter, ParaphraseFilterConfig

        stages.append(ParaphraseFilter(ParaphraseFilterConfig(
            model=args.paraphrase_model or BUNDLED_MINILM, threshold=args.paraphrase_threshold,
            kinds=tuple(args.paraphrase_kinds), device=args.device)))
    return stages


def build_refiner(args: argparse.Namespace) -> Any:
    """Pass 1 of --refine-bias: every caption negative of the run (the source's and the generators', filtered; the
    generators are deterministic per (caption, kind, seed), and the LLM's answers are cached), fitted at once."""
    from clipneg.generators.bias import BiasConfig, BiasRefiner
    from clipneg.generators.pipeline import StagePipeline
    from clipneg.schema import Sample

    refiner = BiasRefiner(BiasConfig(seed=args.seed))
    pipeline = StagePipeline(build_stages(args) + build_filter_stages(args))
    samples: list[Sample] = []
    chunk: list[Any] = []
    for item in (*_items(args)[1], None):
        if item is not None and not hasattr(item, "reason"):  # Quarantined inputs never reach the stages
            chunk.append(item)
        if chunk and (item is None or len(chunk) == args.shard_size):
            samples += [s for s in pipeline(chunk) if isinstance(s, Sample)]
            chunk = []
    report = refiner.fit(samples)
    log.info("refine-bias: keeping %d of %d caption negatives", report["kept"], report["n"])
    return refiner


def _encoder(args: argparse.Namespace) -> Any:
    from clipneg.encoder import Encoder, EncoderConfig
    from clipneg.models import load_clip

    if not args.ref_model:
        raise SystemExit("--image mined and --filter-images need --ref-model (e.g. ViT-B-32-quickgelu with "
                         "--ref-pretrained openai, or local-dir:PATH)")
    bundle = load_clip(args.ref_model, args.ref_pretrained, device=args.device)
    return Encoder(bundle.model, bundle.preprocess_val, bundle.tokenizer,
                   EncoderConfig(device=args.device, num_workers=0, progress=False))


def _world_fields(args: argparse.Namespace) -> dict[str, Any]:
    if args.world_json:
        return json.loads(args.world_json)
    from pathlib import Path

    manifest = Path(args.source) / "manifest.json"
    world = json.loads(manifest.read_text()).get("info", {}).get("world") if manifest.is_file() else None
    if world is None:
        raise SystemExit("--image render needs the world's config: pass --world-json, or a source folder whose "
                         "manifest.json has info.world (shards written by `clipneg world`)")
    return world


def build_image_stages(args: argparse.Namespace) -> list[Any]:
    """The image generators named by ``--image``, then the consistency filter with ``--filter-images``."""
    names = [n.strip() for n in args.image.split(",") if n.strip()]
    unknown = sorted(set(names) - {"render", "diffusion", "mined", "flip"})
    if unknown:
        raise SystemExit(f"--image: unknown generator(s) {unknown}; use render, diffusion, mined, flip")
    stages: list[Any] = []
    encoder = _encoder(args) if "mined" in names or args.filter_images else None
    for name in names:
        if name == "render":
            from clipneg.generators.images.render import RenderConfig, WorldRender

            stages.append(WorldRender(RenderConfig(world=_world_fields(args), k_image=args.k_image, seed=args.seed)))
        elif name == "diffusion":
            from clipneg.generators.images.diffusion import DiffusionConfig, DiffusionGenerator

            if not args.diffusion_model:
                raise SystemExit("--image diffusion needs --diffusion-model (a hub id or a local pipeline folder)")
            modes = tuple(m.strip() for m in args.diffusion_mode.split(","))
            kw: dict[str, Any] = {"model": args.diffusion_model, "mode": modes[0] if len(modes) == 1 else modes,
                                  "k_image": args.k_image, "seed": args.seed, "batch_size": args.diffusion_batch_size,
                                  "device": args.device, "cpu_offload": args.cpu_offload}
            for key, value in (("steps", args.diffusion_steps), ("guidance", args.diffusion_guidance),
                               ("strength", args.diffusion_strength), ("dtype", args.dtype)):
                if value is not None:
                    kw[key] = value
            stages.append(DiffusionGenerator(DiffusionConfig(**kw)))
        elif name == "mined":
            from clipneg.generators.images.mined import MinedConfig, MinedNeighbours

            miner = MinedNeighbours(MinedConfig(num_negatives=args.k_image, range_min=args.mine_range_min,
                                                range_max=args.mine_range_max, max_score=args.mine_max_score,
                                                margin=args.mine_margin, sampling_strategy=args.mine_sampling,
                                                seed=args.seed,
                                                # one process: search all rows at once (half the multiply-adds)
                                                precompute=_rank()[1] == 1 and args.workers <= 1),
                                    encoder=encoder, model_name=_model_name(args))
            # NegCLIP's neighbours come from the dataset itself: every sample is embedded before the first chunk.
            from clipneg.generators.pipeline import to_sample
            from clipneg.shards import Quarantined, QuarantineError

            def readable(items: Any) -> Any:
                for item in items:
                    if isinstance(item, Quarantined):
                        continue
                    try:
                        yield to_sample(item)
                    except QuarantineError:
                        continue

            n = miner.index(readable(_items(args)[1]))
            log.info("mined: indexed %d images with %s", n, _model_name(args))
            stages.append(miner)
        else:
            from clipneg.generators.images.flip import HorizontalFlip

            stages.append(HorizontalFlip())
    if args.filter_images:
        from clipneg.generators.images.filters import ImageConsistencyFilter

        stages.append(ImageConsistencyFilter(encoder=encoder, model_name=_model_name(args)))
    return stages


def _model_name(args: argparse.Namespace) -> str:
    return f"{args.ref_model}__{args.ref_pretrained}" if args.ref_pretrained else str(args.ref_model)


def _items(args: argparse.Namespace) -> Any:
    from clipneg.sources import filter_duplicates, guess_source_kind, open_source

    kind = guess_source_kind(args.source) if args.kind == "auto" else args.kind
    kw: dict[str, Any] = {}
    if kind == "coco" and args.keep_val2017:
        kw["drop_ids"] = set()
    items = open_source(kind, args.source, image_dir=args.image_dir, **kw)
    return kind, filter_duplicates(items, policy=getattr(args, "duplicates", "quarantine"))


def _all_stages(args: argparse.Namespace) -> list[Any]:
    refine = [build_refiner(args)] if args.refine_bias else []
    return build_stages(args) + build_filter_stages(args) + refine + build_image_stages(args)


def _job(args: argparse.Namespace, progress: bool) -> tuple[Any, dict[str, Any]]:
    from clipneg.generators.pipeline import StagePipeline

    kind, items = _items(args)
    pipeline = StagePipeline(_all_stages(args), require_negatives=args.require_negatives)
    info = {"source": {"kind": kind, "path": args.source, "image_dir": args.image_dir},
            "generators": pipeline.manifest(), "seed": args.seed, "k_text": args.k_text,
            "require_negatives": args.require_negatives, "command": "generate"}
    return items, {"process_batch": pipeline, "shard_size": args.shard_size, "prefix": args.prefix, "info": info,
                   "progress": progress, "total": _count(kind, args.source)}


def _count(kind: str, source: str) -> int | None:
    """The number of inputs when it is cheap to know (for the progress bar's ETA), else None."""
    from pathlib import Path

    path = Path(source)
    if kind in ("clipneg", "wds") and path.is_dir():
        sizes = path / "sizes.json"
        manifest = path / "manifest.json"
        if manifest.is_file() and kind == "clipneg":
            return json.loads(manifest.read_text())["counts"]["written"]
        if sizes.is_file():
            return sum(json.loads(sizes.read_text()).values())
    if kind == "table" and path.is_file() and path.suffix != ".jsonl":
        with path.open("rb") as f:
            return max(0, sum(1 for _ in f) - 1)
    return None


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
    pipeline = StagePipeline(_all_stages(args), require_negatives=args.require_negatives)
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
        for im in result.neg_images:
            depicts = result.neg_texts[im.text].text if im.text is not None else "(no caption)"
            score = "" if im.score is None else f", score {im.score:.3f}"
            print(f"  [image {im.gen}{score}] {depicts}")
        for s in stats.values():
            for kind, reasons in (s.get("rejected", {}) if isinstance(s, dict) else {}).items():
                for reason, n in reasons.items():
                    print(f"  x {kind:<24} {reason}" + (f" (x{n})" if n > 1 else ""))
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
