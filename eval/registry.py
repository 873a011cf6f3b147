"""Benchmark names -> frozen configs and runners, built from `clipneg eval` arguments.

Each benchmark family is an :class:`Adapter` in one table, :data:`ADAPTERS`: the benchmark names it answers to, the
groups it belongs to (`aro`), its official tie policy, the flags only it reads (declared in its own argparse group,
so `clipneg eval --help` shows which flag belongs to which benchmark) and ``build(name, args) -> BenchmarkSpec``.
`clipneg eval` declares the shared flags (model, output, protocol, runtime and the data roots several benchmarks read:
--data-root, --coco-val2017, --karpathy, --coco-images, --flickr-images) and then asks every adapter for its group.

Paths are resolved (and missing data reported) before any model is loaded, so a typo costs seconds, not a model load.
Each runner takes the shared Scorer, so images are encoded once per run across benchmarks that share them.
Only the standard library is imported here (benchmark modules load inside ``build``), so `clipneg --help` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark ready to run: its result name, config (recorded), official tie policy and runner."""

    name: str
    config: Any
    official_tie_policy: str
    run: Callable[..., Any]  # run(scorer, tie_policy, seed) -> BenchmarkResult


class Adapter:
    """One benchmark family on the command line.

    names: the benchmarks it builds (result names before --name-suffix); groups: group names that expand to them;
    official_tie_policy: the protocol's own tie rule, the same as the benchmark module's OFFICIAL_TIE_POLICY (a test
    checks; kept here so the table is readable without importing torch); shared: the shared flags it also reads
    (named in its --help group).
    """

    names: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    official_tie_policy: str = "strict"
    shared: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return ", ".join(self.names)

    @property
    def description(self) -> str | None:
        return f"also reads {', '.join(self.shared)}" if self.shared else None

    def add_options(self, group: argparse._ArgumentGroup) -> None:
        """Declare the flags only this benchmark family reads."""

    def build(self, name: str, args: argparse.Namespace) -> BenchmarkSpec:
        """Resolve the data of `name` from the arguments; raises with what to pass when something is missing."""
        raise NotImplementedError

    def spec(self, name: str, config: Any, run: Callable[..., Any]) -> BenchmarkSpec:
        return BenchmarkSpec(name, config, self.official_tie_policy, run)


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


def _has_local_images(root: Any) -> bool:
    if root is None:
        return False
    r = Path(root)
    return (r / "val2017").is_dir() or (r / "images").is_dir()


class SugarCrepe(Adapter):
    names = ("sugarcrepe",)
    shared = ("--data-root", "--coco-val2017")

    def add_options(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--sugarcrepe", "--sugarcrepe-dir", dest="sugarcrepe", default=None,
                           help="SugarCrepe JSON folder, or a root holding it and val2017/")
        group.add_argument("--sugarcrepe-json", default=None,
                           help="SugarCrepe JSON folder (when separate from --sugarcrepe)")
        group.add_argument("--sugarcrepe-images", default=None,
                           help="images the SugarCrepe JSONs name (default: --coco-val2017)")
        group.add_argument("--sugarcrepe-subsets", nargs="+", default=None, help="only these subset files")

    def build(self, name: str, args: argparse.Namespace) -> BenchmarkSpec:
        from . import sugarcrepe as m

        root = args.sugarcrepe or _root(args, "sugarcrepe")
        if root is None and not args.sugarcrepe_json:
            raise ValueError("sugarcrepe: pass --sugarcrepe DIR (the folder of the 7 JSONs, or a root holding them "
                             "and val2017/) or --data-root DIR from `clipneg data download`")
        # images beside the JSONs win over --coco-val2017 / the data root's coco/val2017
        json_dir, image_dir = m.resolve_paths(root, args.sugarcrepe_json, args.sugarcrepe_images or
                                              (_coco_val2017(args) if not _has_local_images(root) else None))
        cfg = m.SugarCrepeConfig(str(json_dir), str(image_dir), tuple(args.sugarcrepe_subsets or ()) or None,
                                 name=_suffix(args, "sugarcrepe"), limit=args.limit)
        return self.spec(cfg.name, cfg, lambda s, p, seed: m.evaluate_sugarcrepe(s, cfg, p, seed))


class AroVG(Adapter):
    names = ("aro-vg-relation", "aro-vg-attribution")
    groups = ("aro",)
    shared = ("--data-root",)

    def add_options(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--aro", default=None,
                           help="ARO folder: visual_genome_{relation,attribution}.json and images/")
        group.add_argument("--aro-images", default=None, help="ARO image folder (default: images/ beside the JSONs)")
        group.add_argument("--aro-relation-json", default=None, help="VG-Relation JSON file (overrides --aro)")
        group.add_argument("--aro-attribution-json", default=None, help="VG-Attribution JSON file (overrides --aro)")
        group.add_argument("--aro-min-pair-count", type=int, default=25,
                           help="VG-Attribution: pairs with fewer items are left out of the headline (official 25; "
                                "recorded)")

    def build(self, name: str, args: argparse.Namespace) -> BenchmarkSpec:
        from . import aro as m

        task = "vg_relation" if name == "aro-vg-relation" else "vg_attribution"
        explicit = args.aro_relation_json if task == "vg_relation" else args.aro_attribution_json
        root = args.aro or _root(args, "aro")
        if root is None and explicit is None:
            raise ValueError(f"{name}: pass --aro DIR (holding {m.TASKS[task]} and images/) or --data-root DIR")
        json_path, image_dir = m.resolve_paths(task, root, explicit, args.aro_images)
        cfg = m.AroConfig(task, str(json_path), str(image_dir), min_pair_count=args.aro_min_pair_count,
                          name=_suffix(args, name), limit=args.limit)
        return self.spec(cfg.benchmark, cfg, lambda s, p, seed: m.evaluate_aro(s, cfg, p, seed))


def _karpathy_images(args: argparse.Namespace, dataset: str) -> Path | str | None:
    """The image root a Karpathy test JSON's paths are relative to: COCO holds val2014/, Flickr flickr30k-images/."""
    if dataset == "coco":
        return args.coco_images or _root(args, "coco")
    return args.flickr_images or _root(args, "flickr30k")


class AroOrder(Adapter):
    names = ("aro-coco-order", "aro-flickr30k-order")
    groups = ("aro",)
    # the official argmax counts a tie with an identical perturbation as correct
    official_tie_policy = "first"
    shared = ("--data-root", "--karpathy", "--coco-images", "--flickr-images")

    def add_options(self, group: argparse._ArgumentGroup) -> None:
        # default written out (not order.DEFAULT_SEEDS): importing eval.order would load numpy for `--help`
        group.add_argument("--order-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                           help="ARO-Order perturbation seeds (mean and spread reported; default 0 1 2 3 4)")
        group.add_argument("--order-mask-identical", action="store_true",
                           help="ARO-Order: drop perturbations identical to the original caption")

    def build(self, name: str, args: argparse.Namespace) -> BenchmarkSpec:
        from . import order as m

        dataset = "coco" if name == "aro-coco-order" else "flickr30k"
        karpathy = args.karpathy or _root(args, "karpathy")
        if karpathy is None:
            raise ValueError(f"{name}: pass --karpathy DIR holding {m.DATASETS[dataset]} (or --data-root DIR)")
        json_path = m.resolve_json(dataset, karpathy)
        images = _karpathy_images(args, dataset)
        if images is None:
            flag = "--coco-images DIR (holding val2014/)" if dataset == "coco" else \
                "--flickr-images DIR (holding flickr30k-images/)"
            raise ValueError(f"{name}: pass {flag}")
        cfg = m.OrderConfig(dataset, str(json_path), str(images), seeds=tuple(args.order_seeds),
                            mask_identical=args.order_mask_identical, name=_suffix(args, name), limit=args.limit)
        # Order averages over its own --order-seeds; the tie seed is not used
        return self.spec(cfg.benchmark, cfg, lambda s, p, seed: m.evaluate_order(s, cfg, p))


class SugarCrepePP(Adapter):
    names = ("sugarcrepe-pp",)
    shared = ("--data-root", "--coco-val2017")

    def add_options(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--sugarcrepe-pp", default=None, help="SugarCrepe++ JSON folder")
        group.add_argument("--sugarcrepe-pp-images", default=None,
                           help="SugarCrepe++ images (default: --coco-val2017)")

    def build(self, name: str, args: argparse.Namespace) -> BenchmarkSpec:
        from . import sugarcrepe_pp as m

        root = args.sugarcrepe_pp or _root(args, "sugarcrepe_pp")
        images = args.sugarcrepe_pp_images or _coco_val2017(args)
        if root is None or images is None:
            raise ValueError("sugarcrepe-pp: pass --sugarcrepe-pp DIR (its JSONs) and --sugarcrepe-pp-images or "
                             "--coco-val2017 DIR")
        cfg = m.SugarCrepePPConfig(str(root), str(images), name=_suffix(args, name), limit=args.limit)
        return self.spec(cfg.name, cfg, lambda s, p, seed: m.evaluate_sugarcrepe_pp(s, cfg, p, seed))


class Winoground(Adapter):
    names = ("winoground",)
    shared = ("--data-root",)

    def add_options(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--winoground", default=None, help="Winoground folder (examples.jsonl + images/)")

    def build(self, name: str, args: argparse.Namespace) -> BenchmarkSpec:
        from . import winoground as m

        root = args.winoground or _root(args, "winoground")
        if root is None:
            raise ValueError("winoground: pass --winoground DIR (holding examples.jsonl and images/)")
        cfg = m.WinogroundConfig(str(root), name=_suffix(args, name), limit=args.limit)
        return self.spec(cfg.name, cfg, lambda s, p, seed: m.evaluate_winoground(s, cfg, p, seed))


class Valse(Adapter):
    names = ("valse",)
    shared = ("--data-root",)

    def add_options(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--valse", default=None, help="VALSE JSON folder")
        group.add_argument("--valse-images", default=None, help="VALSE image root")
        group.add_argument("--valse-all", action="store_true", help="VALSE: all items, not only the valid subset")

    def build(self, name: str, args: argparse.Namespace) -> BenchmarkSpec:
        from . import valse as m

        root = args.valse or _root(args, "valse")
        if root is None or not args.valse_images:
            raise ValueError("valse: pass --valse DIR (the VALSE JSONs) and --valse-images DIR")
        cfg = m.ValseConfig(str(root), args.valse_images, valid_only=not args.valse_all, name=_suffix(args, name),
                            limit=args.limit)
        return self.spec(cfg.name, cfg, lambda s, p, seed: m.evaluate_valse(s, cfg, p, seed))


class ZeroShot(Adapter):
    names = ("zeroshot",)

    def add_options(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--zeroshot-root", default=None, help="ImageFolder for zero-shot classification")
        group.add_argument("--zeroshot-name", default="zeroshot",
                           help="result name for the zero-shot set (imagenet, ...)")
        group.add_argument("--classnames", default="folders", help="folders | imagenet | FILE (.txt or .json)")
        group.add_argument("--templates", default="openai",
                           help="openai (80) | simple | FILE (one template per line, {c})")

    def build(self, name: str, args: argparse.Namespace) -> BenchmarkSpec:
        from . import zeroshot as m

        if not args.zeroshot_root:
            raise ValueError("zeroshot: pass --zeroshot-root DIR (ImageFolder: one folder per class), e.g. ImageNet "
                             "val with --classnames imagenet --templates openai")
        cfg = m.ZeroShotConfig(args.zeroshot_root, args.classnames, args.templates,
                               name=_suffix(args, args.zeroshot_name), limit_per_class=args.limit)
        return self.spec(cfg.name, cfg, lambda s, p, seed: m.evaluate_zeroshot(s, cfg, p, seed))


class Retrieval(Adapter):
    names = ("retrieval-coco", "retrieval-flickr30k", "retrieval")
    shared = ("--data-root", "--karpathy", "--coco-images", "--flickr-images")

    def add_options(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--retrieval-json", default=None, help="Karpathy-format JSON for `retrieval`")
        group.add_argument("--retrieval-images", default=None, help="image root for `retrieval`")
        group.add_argument("--retrieval-pre-caption", action="store_true",
                           help="clean retrieval captions like ARO/BLIP (lowercase, strip punctuation, 30 words)")

    def build(self, name: str, args: argparse.Namespace) -> BenchmarkSpec:
        from . import order
        from . import retrieval as m

        if name == "retrieval":
            if not (args.retrieval_json and args.retrieval_images):
                raise ValueError("retrieval: pass --retrieval-json FILE and --retrieval-images DIR")
            json_path, images = Path(args.retrieval_json), args.retrieval_images
        else:
            dataset = "coco" if name == "retrieval-coco" else "flickr30k"
            karpathy = args.karpathy or _root(args, "karpathy")
            images = _karpathy_images(args, dataset)
            if karpathy is None or images is None:
                raise ValueError(f"{name}: pass --karpathy DIR and "
                                 f"{'--coco-images' if dataset == 'coco' else '--flickr-images'} DIR")
            json_path = order.resolve_json(dataset, karpathy)
        cfg = m.RetrievalConfig(str(json_path), str(images), pre_caption=args.retrieval_pre_caption,
                                name=_suffix(args, name), limit=args.limit)
        return self.spec(cfg.name, cfg, lambda s, p, seed: m.evaluate_retrieval(s, cfg, p, seed))


# The table; its order is the order of BENCHMARKS, of group expansion and of the option groups in --help.
ADAPTERS: tuple[Adapter, ...] = (SugarCrepe(), AroVG(), AroOrder(), SugarCrepePP(), Winoground(), Valse(), ZeroShot(),
                                 Retrieval())
BENCHMARKS = tuple(n for a in ADAPTERS for n in a.names)
GROUPS = {g: tuple(n for a in ADAPTERS if g in a.groups for n in a.names)
          for g in dict.fromkeys(g for a in ADAPTERS for g in a.groups)}
_BY_NAME = {n: a for a in ADAPTERS for n in a.names}


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)} or a group "
                      f"({', '.join(GROUPS)})")


def expand(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        for m in GROUPS.get(n, (n,)):
            if m not in BENCHMARKS:
                raise _unknown(m)
            if m not in out:
                out.append(m)
    return out


def adapter_for(name: str) -> Adapter:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise _unknown(name) from None


def build_spec(name: str, args: argparse.Namespace) -> BenchmarkSpec:
    """Resolve the data of one benchmark from the arguments; raises with what to pass when something is missing."""
    return adapter_for(name).build(name, args)
