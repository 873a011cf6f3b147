"""``clipneg eval``: score a model on SugarCrepe, ARO and other benchmarks with the official protocols.

Imports here stay light (argparse, stdlib) so that `clipneg --help` is fast; torch and open_clip load inside ``run``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone

from clipneg.eval import registry

logger = logging.getLogger(__name__)

EVAL_EXAMPLES = """examples:
  # the official SugarCrepe protocol (fp32, strict ties) on OpenAI ViT-B/32
  clipneg eval sugarcrepe --sugarcrepe data/sugarcrepe --coco-val2017 data/coco/val2017 \\
      --model ViT-B-32-quickgelu --pretrained openai --out results/

  # everything `clipneg data download` fetched, for a fine-tuned export, with per-item predictions
  clipneg eval sugarcrepe aro --data-root data/ --model local-dir:runs/negclip/export --out results/ --predictions

  # the built-in world's benchmark (SugarCrepe + ARO formats), results named sugarcrepe-world, aro-vg-relation-world
  clipneg eval sugarcrepe aro-vg-relation --sugarcrepe runs/world/bench/sugarcrepe --aro runs/world/bench/aro \\
      --name-suffix world --model local-dir:runs/demo/export --out results/

  # zero-shot ImageNet and COCO retrieval, to measure what the fine-tune cost
  clipneg eval zeroshot retrieval-coco --zeroshot-root imagenet/val --classnames imagenet --templates openai \\
      --karpathy data/karpathy --coco-images data/coco --model ViT-B-32-quickgelu --pretrained openai --out results/

benchmarks: sugarcrepe, aro (= aro-vg-relation aro-vg-attribution aro-coco-order aro-flickr30k-order),
  sugarcrepe-pp, winoground, valse, zeroshot, retrieval-coco, retrieval-flickr30k, retrieval (custom Karpathy JSON).
Tie policy "official" means each benchmark's own rule: strict (a tie is wrong) everywhere except ARO-Order, whose
official argmax counts a tie with an identical perturbation as correct (first).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EVAL_EXAMPLES
    parser.add_argument("benchmarks", nargs="+", metavar="BENCH", help="benchmarks to run (see below)")
    m = parser.add_argument_group("model")
    m.add_argument("--model", required=True,
                   help="open_clip model name (ViT-B-32-quickgelu), local-dir:PATH (an export), or a built-in config")
    m.add_argument("--pretrained", default=None, help="pretrained tag (openai, laion2b_s34b_b79k) or checkpoint file")
    m.add_argument("--force-quick-gelu", action="store_true", help="build the model with QuickGELU")
    m.add_argument("--label", default=None,
                   help="name of the model in results and reports (default: model__pretrained)")
    o = parser.add_argument_group("output")
    o.add_argument("--out", default="results", help="results folder; writes OUT/<benchmark>/<label>.json")
    o.add_argument("--skip-existing", action="store_true", help="skip benchmarks whose result file already exists")
    o.add_argument("--predictions", action="store_true",
                   help="also write per-item decisions as OUT/<benchmark>/<label>.predictions.jsonl")
    o.add_argument("--name-suffix", default=None,
                   help="append to benchmark names (a custom folder in a benchmark's format, e.g. 'world')")
    p = parser.add_argument_group("protocol")
    p.add_argument("--precision", choices=("fp32", "amp"), default="fp32",
                   help="fp32 (official, default) or amp (autocast fp16 on CUDA / bf16 on CPU); recorded")
    p.add_argument("--tie-policy", choices=("official", "strict", "first", "random"), default="official",
                   help="how a tie between the positive and a negative is decided (default: each benchmark's own)")
    p.add_argument("--seed", type=int, default=0, help="seed for --tie-policy random")
    p.add_argument("--limit", type=int, default=None, help="first N items per subset (smoke runs; recorded)")
    r = parser.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    r.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    r.add_argument("--text-batch-size", type=int, default=256, help="captions per forward pass (default 256)")
    r.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader workers decoding images (default: min(8, CPUs))")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    d = parser.add_argument_group("data", "folders several benchmarks read; each benchmark's own flags follow")
    d.add_argument("--data-root", default=None,
                   help="the folder `clipneg data download --out` filled (sugarcrepe/, coco/, aro/, karpathy/)")
    d.add_argument("--coco-val2017", "--coco-dir", dest="coco_val2017", default=None,
                   help="COCO val2017 image folder (SugarCrepe, SugarCrepe++)")
    d.add_argument("--karpathy", default=None, help="folder with coco_karpathy_test.json and flickr30k_test.json")
    d.add_argument("--coco-images", default=None, help="COCO root holding val2014/ (COCO-Order, COCO retrieval)")
    d.add_argument("--flickr-images", default=None, help="Flickr30k root holding flickr30k-images/")
    for adapter in registry.ADAPTERS:  # then each benchmark family's own flags, in a group named after it
        adapter.add_options(parser.add_argument_group(adapter.title, adapter.description))


def _device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def run(args: argparse.Namespace) -> int:
    from clipneg.eval.results import result_path, safe_label

    names = registry.expand(args.benchmarks)
    specs = [registry.build_spec(n, args) for n in names]  # resolve data before loading the model
    label = safe_label(args.label or (f"{args.model}__{args.pretrained}" if args.pretrained else args.model))
    todo = []
    for spec in specs:
        path = result_path(args.out, spec.name, label)
        if args.skip_existing and path.exists():
            logger.info("skip %s (exists: %s)", spec.name, path)
            continue
        todo.append(spec)
    if not todo:
        print("nothing to do: every result exists (drop --skip-existing to recompute)")
        return 0

    import open_clip
    import torch

    from clipneg.eval.model_checks import find_manifests, leakage_findings, leakage_warnings, quickgelu_warnings
    from clipneg.eval.results import write_result
    from clipneg.eval.scorer import Scorer, ScorerConfig
    from clipneg.models import load_clip

    device = _device(args.device)
    t0 = time.perf_counter()
    bundle = load_clip(args.model, args.pretrained, device=device, precision="fp32",
                       force_quick_gelu=args.force_quick_gelu)
    identity = {**bundle.identity, "label": label}
    model_warnings = quickgelu_warnings(args.model, args.pretrained, identity)
    findings = leakage_findings(find_manifests(args.model, args.pretrained, identity))
    identity["training_data_checks"] = findings
    for w in model_warnings:
        logger.warning("%s", w)
    scorer = Scorer(bundle.model, bundle.preprocess_val, bundle.tokenizer,
                    ScorerConfig(device=device, precision=args.precision, image_batch_size=args.batch_size,
                                 text_batch_size=args.text_batch_size, num_workers=args.num_workers,
                                 progress=not args.no_progress))
    logger.info("loaded %s (%s, %s) in %.1fs", label, identity.get("activation"), device, time.perf_counter() - t0)
    for spec in todo:
        policy = spec.official_tie_policy if args.tie_policy == "official" else args.tie_policy
        t1 = time.perf_counter()
        result = spec.run(scorer, policy, args.seed)
        result.protocol.update({**scorer.config.to_dict(), "tie_policy_requested": args.tie_policy})
        extra = model_warnings + leakage_warnings(findings, spec.name)
        for w in extra:
            logger.warning("%s: %s", spec.name, w)
        runtime = {"seconds": round(time.perf_counter() - t1, 3), "device": device,
                   "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else
                   platform.processor() or platform.machine(),
                   "num_workers": args.num_workers, "image_batch_size": args.batch_size,
                   "text_batch_size": args.text_batch_size, "scorer": scorer.stats.to_dict(),
                   "versions": _versions(open_clip, torch), "command": " ".join(sys.argv),
                   "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        path = write_result(result, args.out, label, model=identity, runtime=runtime, predictions=args.predictions,
                            extra_warnings=extra)
        print(result.summary_line())
        print(f"  -> {path}")
    return 0


def _versions(open_clip, torch) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        clipneg_version = version("clipneg")
    except PackageNotFoundError:  # running from a source tree without installing
        clipneg_version = "unknown"
    return {"clipneg": clipneg_version, "open_clip": open_clip.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


