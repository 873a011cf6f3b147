"""ARO VG-Relation and VG-Attribution (Yuksekgonul et al., ICLR 2023; mertyg/vision-language-models-are-bows).

Protocol (PROTOCOLS.md §2, the repository's dataset_zoo/aro_datasets.py and its "Replicate ARO!" notebook):
- JSON list of {image_path, bbox_x, bbox_y, bbox_w, bbox_h, true_caption, false_caption, relation_name | attributes};
  the image is opened, converted to RGB and cropped to (x, y, x+w, y+h) before the eval transform.
- Official caption order is [false, true] and correct means argmax == 1, so a tie picks the false caption: a tie is
  wrong. We normalise to [true, false] and use the `strict` policy, which decides identically.
- VG-Relation headline: macro mean of per-relation accuracy after dropping the 157 symmetric relations listed in
  data/vg_relation_excluded_symmetric_relations.json (MIT, copied from the notebook's `symmetric` list).
- VG-Attribution headline: macro mean over attribute pairs f"{a0}_{a1}" with at least 25 items.
Reads any folder in this format (the built-in world's benchmark included).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .items import ImageRef, Item, require_images, sha256_file
from .metrics import Tally, macro
from .results import BenchmarkResult
from .scorer import Scorer, check_tie_policy, choose_text

logger = logging.getLogger(__name__)

TASKS = {"vg_relation": "visual_genome_relation.json", "vg_attribution": "visual_genome_attribution.json"}
# Also accepted: the short names the built-in world's benchmark writes (same format).
ALT_NAMES = {"vg_relation": ("vg_relation.json",), "vg_attribution": ("vg_attribution.json",)}
BENCHMARK_NAMES = {"vg_relation": "aro-vg-relation", "vg_attribution": "aro-vg-attribution"}
OFFICIAL_TIE_POLICY = "strict"
MIN_PAIR_COUNT = 25
EXCLUDED_RELATIONS_FILE = "vg_relation_excluded_symmetric_relations.json"
EXCLUDED_RELATIONS_SHA256 = "1fd32d69e73531ad3e8b0907686d3f46e1faafee69e0ba5756fd800593d525a3"
BOX_KEYS = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")


def load_excluded_relations(path: str | Path | None = None) -> tuple[list[str], str]:
    """The symmetric relations dropped from VG-Relation's macro mean, and the sha256 of the file they came from."""
    if path is None:
        ref = resources.files("clipneg.eval").joinpath("data", EXCLUDED_RELATIONS_FILE)
        raw = ref.read_bytes()
    else:
        raw = Path(path).read_bytes()
    doc = json.loads(raw)
    names = doc["symmetric_relations"] if isinstance(doc, dict) else doc
    return [str(n) for n in names], hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class AroConfig:
    """task: "vg_relation" or "vg_attribution"; json_path: the JSON file; image_dir: folder its image_path is under.

    excluded_relations_path: override the packaged symmetric-relation list (VG-Relation). min_pair_count: the
    VG-Attribution threshold (official 25). limit: first N items (smoke runs only; recorded).
    """

    task: str
    json_path: str
    image_dir: str
    excluded_relations_path: str | None = None
    min_pair_count: int = MIN_PAIR_COUNT
    name: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"ARO task must be one of {sorted(TASKS)} (got {self.task!r})")

    @property
    def benchmark(self) -> str:
        return self.name or BENCHMARK_NAMES[self.task]


def resolve_paths(task: str, root: str | Path | None = None, json_path: str | Path | None = None,
                  image_dir: str | Path | None = None) -> tuple[Path, Path]:
    """JSON file and image folder from a root (official layout: root/{json}, root/images/) or explicit paths.

    json_path may be the file or the folder holding it (official name or the short vg_relation.json /
    vg_attribution.json); the image folder defaults to images/ beside the JSON.
    """
    fname = TASKS[task]
    names = (fname, *ALT_NAMES[task])
    if json_path is None:
        if root is None:
            raise ValueError(f"ARO {task}: give --aro (folder holding {fname} and images/) or --aro-json")
        root = Path(root)
        json_path = next((d / n for d in (root, root / "aro") for n in names if (d / n).is_file()), None)
        if json_path is None:
            raise FileNotFoundError(f"ARO {task}: {fname} not found in {root} or {root / 'aro'}; get it with "
                                    f"`clipneg data download aro-{task.replace('_', '-')} --out DATA`")
    json_path = Path(json_path)
    if json_path.is_dir():
        json_path = next((json_path / n for n in names if (json_path / n).is_file()), json_path / fname)
    if not json_path.is_file():
        raise FileNotFoundError(f"ARO {task}: {json_path} not found")
    if image_dir is None:
        cands = [json_path.parent / "images"] + ([Path(root) / "images"] if root is not None else [])
        image_dir = next((c for c in cands if c.is_dir()), None)
        if image_dir is None:
            raise FileNotFoundError(f"ARO {task}: no images/ folder beside {json_path}; pass --aro-images (the "
                                    "unzipped vgr_vga_images, `clipneg data download aro-images --out DATA`)")
    return json_path, Path(image_dir)


def load_aro(config: AroConfig) -> tuple[list[Item], dict, list[str]]:
    """Items with the true caption first and the image cropped to the box; data facts; warnings."""
    path, image_dir = Path(config.json_path), Path(config.image_dir)
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, list):
        raise ValueError(f"ARO: {path} must be a JSON list of test cases (got {type(doc).__name__})")
    items = []
    for i, rec in enumerate(doc):
        if config.limit is not None and i >= config.limit:
            break
        if config.task == "vg_relation":
            group = rec["relation_name"]
        else:
            a = rec["attributes"]
            group = f"{a[0]}_{a[1]}"
        box = tuple(float(rec[k]) for k in BOX_KEYS)
        items.append(Item(
            id=str(i),
            images=(ImageRef(str(image_dir / rec["image_path"]), box=box),),  # type: ignore[arg-type]
            # Official order [false, true] with argmax == 1; positive first here (see module docstring).
            texts=(rec["true_caption"], rec["false_caption"]),
            meta={"group": group, "image_path": rec["image_path"]},
        ))
    warnings = []
    if config.limit is not None:
        warnings.append(f"--limit {config.limit}: only the first items were scored (not a result)")
    n_images = require_images(items, "Pass --aro-images pointing at the unzipped ARO images folder "
                                     "(`clipneg data download aro-images --out DATA`).")
    data = {"json": str(path), "image_dir": str(image_dir), "files": {path.name: sha256_file(path)},
            "n_items": len(items), "n_image_files": n_images, "limit": config.limit}
    return items, data, warnings


def evaluate_aro(scorer: Scorer, config: AroConfig, tie_policy: str = OFFICIAL_TIE_POLICY,
                 seed: int = 0) -> BenchmarkResult:
    """VG-Relation: macro over relations minus the symmetric ones; VG-Attribution: macro over pairs with >= 25
    items."""
    check_tie_policy(tie_policy)
    items, data, warnings = load_aro(config)
    rng = np.random.default_rng(seed)
    groups: dict[str, Tally] = defaultdict(Tally)
    total = Tally()
    predictions = []
    for s in scorer.score(items):
        ok, tie = choose_text(s, tie_policy, rng)
        g = s.item.meta["group"]
        groups[g].add(ok, tie)
        total.add(ok, tie)
        predictions.append({"id": s.item.id, **s.item.meta, "correct": ok, "tie": tie,
                            "true": float(s.image_text[0, 0]), "false": float(s.image_text[0, 1])})
    per_group = {g: {**t.to_dict(), "accuracy": t.pct} for g, t in sorted(groups.items())}
    metrics = {"micro": total.pct}
    counts = {"micro": total.to_dict()}
    protocol = {"source": "mertyg/vision-language-models-are-bows dataset_zoo/aro_datasets.py + notebook; "
                          "PROTOCOLS.md §2",
                "caption_order": "positive first here; official [false, true] with argmax == 1 (tie = wrong)",
                "image_loading": "Image.open(path).convert('RGB').crop((x, y, x+w, y+h)) -> eval transform",
                "tie_policy": tie_policy, "tie_policy_official": OFFICIAL_TIE_POLICY,
                "seed": seed if tie_policy == "random" else None}
    if config.task == "vg_relation":
        excluded, excluded_sha = load_excluded_relations(config.excluded_relations_path)
        excluded_set = set(excluded)
        kept = {g: t for g, t in groups.items() if g not in excluded_set}
        kept_total = Tally()
        for t in kept.values():
            kept_total = kept_total.merge(t)
        metrics["macro"] = macro(t.pct for t in kept.values())
        metrics["macro_all"] = macro(t.pct for t in groups.values())
        metrics["micro_kept"] = kept_total.pct
        counts["micro_kept"] = kept_total.to_dict()
        for g in per_group:
            per_group[g]["excluded"] = g in excluded_set
        protocol.update({"headline": "macro mean of per-relation accuracy over relations not in the symmetric list",
                         "excluded_relations": len(excluded), "excluded_relations_sha256": excluded_sha})
        data.update({"relations": len(groups), "relations_kept": len(kept),
                     "relations_excluded_present": len(groups) - len(kept)})
        if excluded_sha != EXCLUDED_RELATIONS_SHA256:
            warnings.append("the excluded-relation list differs from the pinned one (157 symmetric relations)")
        details = {"per_relation": per_group}
    else:
        kept = {g: t for g, t in groups.items() if t.total >= config.min_pair_count}
        metrics["macro"] = macro(t.pct for t in kept.values())
        metrics["macro_all"] = macro(t.pct for t in groups.values())
        for g in per_group:
            per_group[g]["kept"] = g in kept
        protocol.update({"headline": f"macro mean over attribute pairs with >= {config.min_pair_count} items",
                         "min_pair_count": config.min_pair_count})
        data.update({"pairs": len(groups), "pairs_kept": len(kept)})
        details = {"per_pair": per_group}
    if not kept:
        warnings.append("no group passed the filter: the headline is undefined (NaN)")
    return BenchmarkResult(benchmark=config.benchmark, metrics=metrics, columns=["macro", "micro"],
                           headline="macro", counts=counts, protocol=protocol, data=data, details=details,
                           warnings=warnings, predictions=predictions)
