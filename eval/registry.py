"""Benchmark names -> frozen configs and runners, built from `clipneg eval` arguments.

Paths are resolved (and missing data reported) before any model is loaded, so a typo costs seconds, not a model load.
Each runner takes the shared Scorer, so images are encoded once per run across benchmarks that share them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = ("sugarcrepe", "aro-vg-relation", "aro-vg-attribution", "aro-coco-order", "aro-flickr30k-order",
              "sugarcrepe-pp", "winoground", "valse", "zeroshot", "retrieval-coco", "retrieval-flickr30k", "retrieval")
GROUPS = {"aro": ("aro-vg-relation", "aro-vg-attribution", "aro-coco-order", "aro-flickr30k-order")}


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark ready to run: its result name, config (recorded), official tie policy and runner."""

    name: str
    config: Any
    official_tie_policy: str
    run: Callable[..., Any]  # run(scorer, tie_policy, seed) -> BenchmarkResult


def expand(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        for m in GROUPS.get(n, (n,)):
            if m not in BENCHMARKS:
                raise ValueError(f"unknown benchmark {m!r}; choose from {', '.join(BENCHMARKS)} or a group "
                                 f"({', '.join(GROUPS)})")
            if m not in out:
                out.append(m)
    return out


def _root(args: argparse.Namespace, *parts: str) -> Path | None:
    if not args.data_root:
        return None
    p = Path(args.data_root, *parts)
    return p if p.exists() else None


def _suffix(args: argparse.Namespace, name: str) -> str:
    return f"{name}-{args.name_suffix}" if args.name_suffix else name


def _coco_val2017(args: argparse.Namespace) -> str | None:
    if args.coco_val2017:
        return args.coco_val2017
    p = _root(args, "coco", "val2017")
    return str(p) if p else None


def build_spec(name: str, args: argparse.Namespace) -> BenchmarkSpec:
    """Resolve the data of one benchmark from the arguments; raises with what to pass when something is missing."""
    if name == "sugarcrepe":
        from . import sugarcrepe as m

        root = args.sugarcrepe or _root(args, "sugarcrepe")
        if root is None and not args.sugarcrepe_json:
            raise ValueError("sugarcrepe: pass --sugarcrepe DIR (the folder of the 7 JSONs, or a root holding them "
                             "and val2017/) or --data-root DIR from `clipneg data download`")
        json_dir, image_dir = m.resolve_paths(root, args.sugarcrepe_json, args.sugarcrepe_images or
                                              (_coco_val2017(args) if not _has_local_images(root) else None))
        cfg = m.SugarCrepeConfig(str(json_dir), str(image_dir), tuple(args.sugarcrepe_subsets or ()) or None,
                                 name=_suffix(args, "sugarcrepe"), limit=args.limit)
        return BenchmarkSpec(cfg.name, cfg, m.OFFICIAL_TIE_POLICY,
                             lambda s, p, seed: m.evaluate_sugarcrepe(s, cfg, p, seed))
    if name in ("aro-vg-relation", "aro-vg-attribution"):
        from . import aro as m

        task = "vg_relation" if name == "aro-vg-relation" else "vg_attribution"
        explicit = args.aro_relation_json if task == "vg_relation" else args.aro_attribution_json
        root = args.aro or _root(args, "aro")
        if root is None and explicit is None:
            raise ValueError(f"{name}: pass --aro DIR (holding {m.TASKS[task]} and images/) or --data-root DIR")
        json_path, image_dir = m.resolve_paths(task, root, explicit, args.aro_images)
        cfg = m.AroConfig(task, str(json_path), str(image_dir), min_pair_count=args.aro_min_pair_count,
                          name=_suffix(args, name), limit=args.limit)
        return BenchmarkSpec(cfg.benchmark, cfg, m.OFFICIAL_TIE_POLICY,
                             lambda s, p, seed: m.evaluate_aro(s, cfg, p, seed))
    if name in ("aro-coco-order", "aro-flickr30k-order"):
        from . import order as m

        dataset = "coco" if name == "aro-coco-order" else "flickr30k"
        karpathy = args.karpathy or _root(args, "karpathy")
        if karpathy is None:
            raise ValueError(f"{name}: pass --karpathy DIR holding {m.DATASETS[dataset]} (or --data-root DIR)")
        json_path = m.resolve_json(dataset, karpathy)
        if dataset == "coco":
            images = args.coco_images or _root(args, "coco")
        else:
            images = args.flickr_images or _root(args, "flickr30k")
        if images is None:
            flag = "--coco-images DIR (holding val2014/)" if dataset == "coco" else \
                "--flickr-images DIR (holding flickr30k-images/)"
            raise ValueError(f"{name}: pass {flag}")
        cfg = m.OrderConfig(dataset, str(json_path), str(images), seeds=tuple(args.order_seeds),
                            mask_identical=args.order_mask_identical, name=_suffix(args, name), limit=args.limit)
        return BenchmarkSpec(cfg.benchmark, cfg, m.OFFICIAL_TIE_POLICY,
                             lambda s, p, seed: m.evaluate_order(s, cfg, p))
    if name == "sugarcrepe-pp":
        from . import sugarcrepe_pp as m

        root = args.sugarcrepe_pp or _root(args, "sugarcrepe_pp")
        images = args.sugarcrepe_pp_images or _coco_val2017(args)
        if root is None or images is None:
            raise ValueError("sugarcrepe-pp: pass --sugarcrepe-pp DIR (its JSONs) and --sugarcrepe-pp-images or "
                             "--coco-val2017 DIR")
        cfg = m.SugarCrepePPConfig(str(root), str(images), name=_suffix(args, name), limit=args.limit)
        return BenchmarkSpec(cfg.name, cfg, m.OFFICIAL_TIE_POLICY,
                             lambda s, p, seed: m.evaluate_sugarcrepe_pp(s, cfg, p, seed))
    if name == "winoground":
        from . import winoground as m

        root = args.winoground or _root(args, "winoground")
        if root is None:
            raise ValueError("winoground: pass --winoground DIR (holding examples.jsonl and images/)")
        cfg = m.WinogroundConfig(str(root), name=_suffix(args, name), limit=args.limit)
        return BenchmarkSpec(cfg.name, cfg, m.OFFICIAL_TIE_POLICY,
                             lambda s, p, seed: m.evaluate_winoground(s, cfg, p, seed))
    if name == "valse":
        from . import valse as m

        root = args.valse or _root(args, "valse")
        if root is None or not args.valse_images:
            raise ValueError("valse: pass --valse DIR (the VALSE JSONs) and --valse-images DIR")
        cfg = m.ValseConfig(str(root), args.valse_images, valid_only=not args.valse_all, name=_suffix(args, name),
                            limit=args.limit)
        return BenchmarkSpec(cfg.name, cfg, m.OFFICIAL_TIE_POLICY,
                             lambda s, p, seed: m.evaluate_valse(s, cfg, p, seed))
    if name == "zeroshot":
        from . import zeroshot as m

        if not args.zeroshot_root:
            raise ValueError("zeroshot: pass --zeroshot-root DIR (ImageFolder: one folder per class), e.g. ImageNet "
                             "val with --classnames imagenet --templates openai")
        cfg = m.ZeroShotConfig(args.zeroshot_root, args.classnames, args.templates,
                               name=_suffix(args, args.zeroshot_name), limit_per_class=args.limit)
        return BenchmarkSpec(cfg.name, cfg, m.OFFICIAL_TIE_POLICY,
                             lambda s, p, seed: m.evaluate_zeroshot(s, cfg, p, seed))
    if name in ("retrieval-coco", "retrieval-flickr30k", "retrieval"):
        from . import order
        from . import retrieval as m

        if name == "retrieval":
            if not (args.retrieval_json and args.retrieval_images):
                raise ValueError("retrieval: pass --retrieval-json FILE and --retrieval-images DIR")
            json_path, images = Path(args.retrieval_json), args.retrieval_images
        else:
            dataset = "coco" if name == "retrieval-coco" else "flickr30k"
            karpathy = args.karpathy or _root(args, "karpathy")
            images = (args.coco_images or _root(args, "coco")) if dataset == "coco" else \
                (args.flickr_images or _root(args, "flickr30k"))
            if karpathy is None or images is None:
                raise ValueError(f"{name}: pass --karpathy DIR and "
                                 f"{'--coco-images' if dataset == 'coco' else '--flickr-images'} DIR")
            json_path = order.resolve_json(dataset, karpathy)
        cfg = m.RetrievalConfig(str(json_path), str(images), pre_caption=args.retrieval_pre_caption,
                                name=_suffix(args, name), limit=args.limit)
        return BenchmarkSpec(cfg.name, cfg, m.OFFICIAL_TIE_POLICY,
                             lambda s, p, seed: m.evaluate_retrieval(s, cfg, p, seed))
    raise ValueError(f"unknown benchmark {name!r}")


def _has_local_images(root: Any) -> bool:
    if root is None:
        return False
    r = Path(root)
    return (r / "val2017").is_dir() or (r / "images").is_dir()
