"""SugarCrepe (Hsieh et al., NeurIPS D&B 2023; RAIVNLab/sugar-crepe): 7 subsets of (image, caption, negative caption).

Protocol (PROTOCOLS.md §1, the repository's main_eval.py): fp32 open_clip model, eval transform on `Image.open(path)`,
L2-normalised embeddings, `correct = cos(img, pos) > cos(img, neg)` strictly (a tie is wrong); accuracy per file =
correct / n. Each JSON is an object keyed by string indices that may skip numbers (swap_obj lost key "108" in
Nov 2023), so items are iterated, never indexed by range(len).

Views reported: per subset; the paper's REPLACE / SWAP / ADD columns as micro-averages (items pooled); vl_compo's
macro mean over the subsets. Reads any folder in this format (the built-in world's benchmark included).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipneg.schema import SUGARCREPE_KINDS

from .download import SUGARCREPE_SHA256
from .items import ImageRef, Item, require_images, sha256_file
from .metrics import Tally, macro
from .results import BenchmarkResult
from .scorer import Scorer, check_tie_policy, choose_text

logger = logging.getLogger(__name__)

SUBSETS = SUGARCREPE_KINDS
GROUPS = {"replace": SUBSETS[0:3], "swap": SUBSETS[3:5], "add": SUBSETS[5:7]}
OFFICIAL_COUNTS = {"add_att": 692, "add_obj": 2062, "replace_att": 788, "replace_obj": 1652, "replace_rel": 1406,
                   "swap_att": 666, "swap_obj": 245}
# sha256 of RAIVNLab/sugar-crepe@0047054:data/{subset}.json, kept in the torch-free download module.
PINNED_SHA256 = SUGARCREPE_SHA256
OFFICIAL_TIE_POLICY = "strict"
COLUMNS = [*SUBSETS, "replace", "swap", "add", "macro"]
ITEM_KEYS = ("filename", "caption", "negative_caption")


@dataclass(frozen=True)
class SugarCrepeConfig:
    """json_dir: folder of `{subset}.json`; image_dir: folder the JSONs' `filename`s are relative to (COCO val2017).

    subsets: which files to evaluate; None = the official 7 that are present plus any other SugarCrepe-format JSON.
    limit: first N items per subset (smoke runs only; recorded in the result).
    """

    json_dir: str
    image_dir: str
    subsets: tuple[str, ...] | None = None
    name: str = "sugarcrepe"
    limit: int | None = None


def resolve_paths(root: str | Path | None = None, json_dir: str | Path | None = None,
                  image_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Find the JSON folder and the image folder from one root or two explicit folders.

    A root may hold the JSONs itself or in data/ or sugarcrepe/, and the images in val2017/, images/ or, in the
    `clipneg data download` layout, ../coco/val2017/.
    """
    if json_dir is None:
        if root is None:
            raise ValueError("SugarCrepe: give --sugarcrepe (JSON folder or root) or --sugarcrepe-json")
        root = Path(root)
        json_dir = next((d for d in (root, root / "data", root / "sugarcrepe") if _has_jsons(d)), None)
        if json_dir is None:
            raise FileNotFoundError(
                f"SugarCrepe: no {{subset}}.json under {root} (looked in ., data/, sugarcrepe/); download them with "
                "`clipneg data download sugarcrepe --out DATA` or pass the folder holding replace_obj.json etc.")
    json_dir = Path(json_dir)
    if image_dir is None:
        bases = [Path(root)] if root is not None else []
        bases.append(json_dir)
        cands = [c for b in bases for c in (b / "val2017", b / "images", b.parent / "coco" / "val2017",
                                            b.parent / "val2017")]
        image_dir = next((c for c in cands if c.is_dir()), None)
        if image_dir is None:
            raise FileNotFoundError(
                f"SugarCrepe: no image folder found near {json_dir}; pass --sugarcrepe-images pointing at the folder "
                "holding COCO val2017/*.jpg (get it with `clipneg data download coco-val2017 --out DATA`)")
    return json_dir, Path(image_dir)


def _has_jsons(d: Path) -> bool:
    return d.is_dir() and any((d / f"{s}.json").is_file() for s in SUBSETS)


def _looks_like_sugarcrepe(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    if not isinstance(doc, dict) or not doc:
        return False
    first = next(iter(doc.values()))
    return isinstance(first, dict) and all(k in first for k in ITEM_KEYS)


def discover_subsets(json_dir: Path) -> list[str]:
    official = [s for s in SUBSETS if (json_dir / f"{s}.json").is_file()]
    extra = sorted(p.stem for p in json_dir.glob("*.json") if p.stem not in SUBSETS and _looks_like_sugarcrepe(p))
    return official + extra


def load_sugarcrepe(config: SugarCrepeConfig) -> tuple[list[Item], dict, list[str]]:
    """Items (positive caption first), data facts (files, sha256, counts, official?), warnings."""
    json_dir, image_dir = Path(config.json_dir), Path(config.image_dir)
    subsets = list(config.subsets) if config.subsets else discover_subsets(json_dir)
    if not subsets:
        raise FileNotFoundError(f"SugarCrepe: no subset JSON found in {json_dir}")
    warnings: list[str] = []
    mismatched: list[str] = []
    files, counts, items = {}, {}, []
    for subset in subsets:
        path = json_dir / f"{subset}.json"
        if not path.is_file():
            raise FileNotFoundError(f"SugarCrepe: {path} not found (subsets present: {discover_subsets(json_dir)})")
        digest = sha256_file(path)
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError(f"SugarCrepe: {path} must be a JSON object keyed by item id (got {type(doc).__name__})")
        files[path.name] = digest
        counts[subset] = len(doc)
        if subset in PINNED_SHA256 and digest != PINNED_SHA256[subset]:
            mismatched.append(subset)
            msg = (f"{path.name}: sha256 {digest[:12]}... differs from the pinned official file "
                   f"({PINNED_SHA256[subset][:12]}...); numbers are not comparable to published ones")
            if subset == "swap_obj" and len(doc) == 246:
                msg += ("; this is the pre-Nov-2023 swap_obj with 246 items (key '108' was removed; the current "
                        "file has 245): re-download with `clipneg data download sugarcrepe`")
            warnings.append(msg)
        n = 0
        for key, rec in doc.items():  # iterate items: keys may skip numbers
            if config.limit is not None and n >= config.limit:
                break
            missing = [k for k in ITEM_KEYS if k not in rec]
            if missing:
                raise ValueError(f"SugarCrepe: {path.name} item {key!r} lacks {missing}")
            items.append(Item(
                id=f"{subset}/{key}",
                images=(ImageRef(str(image_dir / rec["filename"])),),
                texts=(rec["caption"], rec["negative_caption"]),
                meta={"subset": subset, "key": key, "filename": rec["filename"]},
            ))
            n += 1
    present = set(subsets) & set(SUBSETS)
    if len(mismatched) > 1 and len(mismatched) == len(present):
        # No file is official: a custom benchmark in SugarCrepe's format (the built-in world, say). One note, not
        # one warning per file; keep the swap_obj-246 hint if it applies.
        old = [w for w in warnings if "pre-Nov-2023" in w]
        warnings = old + [f"none of the {len(present)} subset files matches its pinned official sha256: a custom "
                          "benchmark in SugarCrepe's format, not comparable to published SugarCrepe numbers"]
    official = present == set(SUBSETS) and all(files.get(f"{s}.json") == PINNED_SHA256[s] for s in SUBSETS)
    if present and present != set(SUBSETS) and config.subsets is None:
        warnings.append(f"only {len(present)} of 7 official subsets present: missing "
                        f"{sorted(set(SUBSETS) - present)}; aggregates cover the present ones")
    if config.limit is not None:
        warnings.append(f"--limit {config.limit}: only the first items of each subset were scored (not a result)")
    n_images = require_images(items, "Pass --sugarcrepe-images pointing at the folder holding COCO val2017/*.jpg "
                                     "(`clipneg data download coco-val2017 --out DATA`).")
    data = {"json_dir": str(json_dir), "image_dir": str(image_dir), "files": files, "items_per_subset": counts,
            "n_items": len(items), "n_images": n_images, "official": official, "limit": config.limit}
    for w in warnings:
        logger.warning("SugarCrepe: %s", w)
    return items, data, warnings


def evaluate_sugarcrepe(scorer: Scorer, config: SugarCrepeConfig, tie_policy: str = OFFICIAL_TIE_POLICY,
                        seed: int = 0) -> BenchmarkResult:
    """Score every item; per-subset accuracy, REPLACE/SWAP/ADD micro-averages, macro mean over the subsets."""
    check_tie_policy(tie_policy)
    items, data, warnings = load_sugarcrepe(config)
    rng = np.random.default_rng(seed)
    tallies: dict[str, Tally] = {}
    predictions = []
    for s in scorer.score(items):
        subset = s.item.meta["subset"]
        ok, tie = choose_text(s, tie_policy, rng)
        tallies.setdefault(subset, Tally()).add(ok, tie)
        pos, neg = (float(x) for x in s.image_text[0])
        predictions.append({"id": s.item.id, **s.item.meta, "correct": ok, "tie": tie, "pos": pos, "neg": neg})
    metrics: dict[str, float] = {k: t.pct for k, t in tallies.items()}
    counts = {k: t.to_dict() for k, t in tallies.items()}
    for group, members in GROUPS.items():
        pooled = [tallies[m] for m in members if m in tallies]
        if pooled:
            total = pooled[0]
            for t in pooled[1:]:
                total = total.merge(t)
            metrics[group], counts[group] = total.pct, total.to_dict()
    metrics["macro"] = macro(t.pct for t in tallies.values())
    everything = Tally()
    for t in tallies.values():
        everything = everything.merge(t)
    metrics["micro"], counts["micro"] = everything.pct, everything.to_dict()
    protocol = {
        "source": "RAIVNLab/sugar-crepe main_eval.py; PROTOCOLS.md §1",
        "decision": "cos(image, caption) vs cos(image, negative_caption)",
        "tie_policy": tie_policy,
        "tie_policy_official": OFFICIAL_TIE_POLICY,
        "seed": seed if tie_policy == "random" else None,
        "image_loading": "Image.open(path) -> eval transform (converts to RGB after resize)",
        "aggregates": {"subsets": "correct / n per JSON file",
                       "replace/swap/add": "micro-average (items pooled), the SugarCrepe paper's columns",
                       "macro": f"unweighted mean over {len(tallies)} subsets (vl_compo's 'sugarcrepe')",
                       "micro": "all items pooled"},
    }
    return BenchmarkResult(benchmark=config.name, metrics=metrics,
                           columns=[c for c in COLUMNS if c in metrics] + [k for k in tallies if k not in COLUMNS],
                           headline="macro", counts=counts, protocol=protocol, data=data, warnings=warnings,
                           predictions=predictions)
