"""SugarCrepe++ (Dumpala et al., NeurIPS D&B 2024): two positive captions and one negative per image.

Protocol (PROTOCOLS.md §3): JSON list of {id, filename, caption, caption2, negative_caption} per subset (5 subsets on
COCO val2017 images).
- ITT (image-to-text): correct when both positives beat the negative: s(I,P1) > s(I,N) and s(I,P2) > s(I,N).
- TOT (text-only): correct when cos(P1,P2) > cos(P1,N) and cos(P1,P2) > cos(P2,N).
Comparisons are strict in the official definition; other tie policies apply to each comparison.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .items import ImageRef, Item, require_images, sha256_file
from .metrics import Tally, macro
from .results import BenchmarkResult
from .scorer import Scorer, beats, check_tie_policy

logger = logging.getLogger(__name__)

SUBSETS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
OFFICIAL_TIE_POLICY = "strict"
ITEM_KEYS = ("filename", "caption", "caption2", "negative_caption")


@dataclass(frozen=True)
class SugarCrepePPConfig:
    """json_dir: folder of `{subset}.json`; image_dir: COCO val2017 images. subsets None = every JSON present."""

    json_dir: str
    image_dir: str
    subsets: tuple[str, ...] | None = None
    name: str = "sugarcrepe-pp"
    limit: int | None = None


def _records(doc) -> list[tuple[str, dict]]:
    if isinstance(doc, dict):
        return [(str(k), v) for k, v in doc.items()]
    return [(str(r.get("id", i)), r) for i, r in enumerate(doc)]


def load_sugarcrepe_pp(config: SugarCrepePPConfig) -> tuple[list[Item], dict, list[str]]:
    json_dir, image_dir = Path(config.json_dir), Path(config.image_dir)
    if config.subsets:
        subsets = list(config.subsets)
    else:
        subsets = [s for s in SUBSETS if (json_dir / f"{s}.json").is_file()]
        subsets += sorted(p.stem for p in json_dir.glob("*.json") if p.stem not in SUBSETS)
    if not subsets:
        raise FileNotFoundError(f"SugarCrepe++: no JSON files in {json_dir} (expected {SUBSETS})")
    items, files, counts = [], {}, {}
    for subset in subsets:
        path = json_dir / f"{subset}.json"
        if not path.is_file():
            raise FileNotFoundError(f"SugarCrepe++: {path} not found")
        files[path.name] = sha256_file(path)
        recs = _records(json.loads(path.read_text(encoding="utf-8")))
        counts[subset] = len(recs)
        for n, (key, rec) in enumerate(recs):
            if config.limit is not None and n >= config.limit:
                break
            missing = [k for k in ITEM_KEYS if k not in rec]
            if missing:
                raise ValueError(f"SugarCrepe++: {path.name} item {key!r} lacks {missing}")
            items.append(Item(id=f"{subset}/{key}", images=(ImageRef(str(image_dir / rec["filename"])),),
                              texts=(rec["caption"], rec["caption2"], rec["negative_caption"]),
                              meta={"subset": subset, "key": key}, text_text=True))
    n_images = require_images(items, "Pass --sugarcrepe-pp-images (or --coco-val2017) pointing at COCO val2017/.")
    warnings = [f"--limit {config.limit}: only the first items were scored (not a result)"] if config.limit else []
    data = {"json_dir": str(json_dir), "image_dir": str(image_dir), "files": files, "items_per_subset": counts,
            "n_items": len(items), "n_images": n_images, "limit": config.limit}
    return items, data, warnings


def evaluate_sugarcrepe_pp(scorer: Scorer, config: SugarCrepePPConfig, tie_policy: str = OFFICIAL_TIE_POLICY,
                           seed: int = 0) -> BenchmarkResult:
    check_tie_policy(tie_policy)
    items, data, warnings = load_sugarcrepe_pp(config)
    rng = np.random.default_rng(seed)
    itt: dict[str, Tally] = {}
    tot: dict[str, Tally] = {}
    predictions = []
    for s in scorer.score(items):
        subset = s.item.meta["subset"]
        p1, p2, n = s.image_text[0]
        ok_itt = beats(p1, n, tie_policy, rng) & beats(p2, n, tie_policy, rng)
        t = s.text_text
        ok_tot = beats(t[0, 1], t[0, 2], tie_policy, rng) & beats(t[0, 1], t[1, 2], tie_policy, rng)
        itt.setdefault(subset, Tally()).add(ok_itt, bool(p1 == n or p2 == n))
        tot.setdefault(subset, Tally()).add(ok_tot, bool(t[0, 1] == t[0, 2] or t[0, 1] == t[1, 2]))
        predictions.append({"id": s.item.id, "subset": subset, "itt": ok_itt, "tot": ok_tot,
                            "image_text": [float(x) for x in (p1, p2, n)],
                            "text_text": [float(t[0, 1]), float(t[0, 2]), float(t[1, 2])]})
    metrics, counts = {}, {}
    for subset in itt:
        metrics[f"{subset}/itt"], counts[f"{subset}/itt"] = itt[subset].pct, itt[subset].to_dict()
        metrics[f"{subset}/tot"], counts[f"{subset}/tot"] = tot[subset].pct, tot[subset].to_dict()
    metrics["itt"] = macro(t.pct for t in itt.values())
    metrics["tot"] = macro(t.pct for t in tot.values())
    columns = [f"{s}/{m}" for s in itt for m in ("itt", "tot")] + ["itt", "tot"]
    protocol = {"source": "SugarCrepe++ (Dumpala et al. 2024); PROTOCOLS.md §3",
                "itt": "s(I,P1) > s(I,N) and s(I,P2) > s(I,N)",
                "tot": "cos(P1,P2) > cos(P1,N) and cos(P1,P2) > cos(P2,N)",
                "aggregates": "itt / tot = unweighted mean over subsets",
                "tie_policy": tie_policy, "tie_policy_official": OFFICIAL_TIE_POLICY,
                "seed": seed if tie_policy == "random" else None}
    return BenchmarkResult(benchmark=config.name, metrics=metrics, columns=columns, headline="itt", counts=counts,
                           protocol=protocol, data=data, warnings=warnings, predictions=predictions)
