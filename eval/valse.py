"""VALSE (Parcalabescu et al., ACL 2022): foils for 11 linguistic phenomena ("pieces").

Protocol (PROTOCOLS.md §3): one JSON per piece, an object keyed by id with {dataset, image_file, caption, foil,
mturk: {caption, foil, other}, ...}; the valid subset keeps items whose mturk.caption >= 2 (at least two of three
annotators found the caption right). Metric: pairwise accuracy acc_r = score(caption) > score(foil), per piece; the
summary is the unweighted mean over pieces. Images come from several datasets: looked up as IMAGES/image_file, then
IMAGES/<dataset>/image_file.
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
from .scorer import Scorer, check_tie_policy, choose_text

logger = logging.getLogger(__name__)

PIECES = ("existence", "plurals", "counting-hard", "counting-small-quant", "counting-adversarial", "relations",
          "action-replacement", "actant-swap", "coreference-standard", "coreference-hard", "foil-it")
OFFICIAL_TIE_POLICY = "strict"
MIN_MTURK_CAPTION = 2


@dataclass(frozen=True)
class ValseConfig:
    """json_dir: the VALSE data folder (one JSON per piece); image_dir: root of the images. valid_only: the
    mturk.caption >= 2 subset (official); items without an mturk record are kept and counted."""

    json_dir: str
    image_dir: str
    valid_only: bool = True
    name: str = "valse"
    limit: int | None = None


def _piece_name(path: Path) -> str:
    stem = path.stem
    return stem.split("_")[0] if "_" in stem and stem.split("_")[0] in PIECES else stem


def _image(image_dir: Path, rec: dict) -> str:
    name = rec["image_file"]
    cands = [image_dir / name]
    if rec.get("dataset"):
        cands += [image_dir / rec["dataset"] / name, image_dir / str(rec["dataset"]).lower() / name]
    return str(next((c for c in cands if c.is_file()), cands[0]))


def load_valse(config: ValseConfig) -> tuple[list[Item], dict, list[str]]:
    json_dir, image_dir = Path(config.json_dir), Path(config.image_dir)
    files = sorted(json_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"VALSE: no JSON files in {json_dir}; get the data from "
                                "https://github.com/Heidelberg-NLP/VALSE (data/) and pass that folder with --valse")
    items, hashes, kept, dropped, no_mturk = [], {}, {}, {}, 0
    for path in files:
        piece = _piece_name(path)
        doc = json.loads(path.read_text(encoding="utf-8"))
        recs = doc.items() if isinstance(doc, dict) else ((str(i), r) for i, r in enumerate(doc))
        hashes[path.name] = sha256_file(path)
        n_kept = n_drop = 0
        for key, rec in recs:
            if config.limit is not None and n_kept >= config.limit:
                break
            mturk = rec.get("mturk")
            if mturk is None or "caption" not in mturk:
                no_mturk += 1
            elif config.valid_only and mturk["caption"] < MIN_MTURK_CAPTION:
                n_drop += 1
                continue
            foil = rec.get("foil")
            if foil is None and rec.get("foils"):
                foil = rec["foils"][0]
            if foil is None:
                raise ValueError(f"VALSE: {path.name} item {key!r} has no foil")
            items.append(Item(id=f"{piece}/{key}", images=(ImageRef(_image(image_dir, rec), rgb_first=True),),
                              texts=(rec["caption"], foil), meta={"piece": piece, "key": key}))
            n_kept += 1
        kept[piece], dropped[piece] = n_kept, n_drop
    warnings = []
    if no_mturk:
        warnings.append(f"{no_mturk} items have no mturk record and were kept (validity unknown)")
    if config.limit:
        warnings.append(f"--limit {config.limit}: only the first items were scored (not a result)")
    n_images = require_images(items, "Pass --valse-images pointing at the folder holding the VALSE images "
                                     "(image_file, or <dataset>/image_file).")
    data = {"json_dir": str(json_dir), "image_dir": str(image_dir), "files": hashes, "kept": kept,
            "dropped_invalid": dropped, "n_items": len(items), "n_images": n_images, "limit": config.limit}
    return items, data, warnings


def evaluate_valse(scorer: Scorer, config: ValseConfig, tie_policy: str = OFFICIAL_TIE_POLICY,
                   seed: int = 0) -> BenchmarkResult:
    check_tie_policy(tie_policy)
    items, data, warnings = load_valse(config)
    rng = np.random.default_rng(seed)
    tallies: dict[str, Tally] = {}
    everything = Tally()
    predictions = []
    for s in scorer.score(items):
        ok, tie = choose_text(s, tie_policy, rng)
        tallies.setdefault(s.item.meta["piece"], Tally()).add(ok, tie)
        everything.add(ok, tie)
        predictions.append({"id": s.item.id, **s.item.meta, "correct": ok, "tie": tie,
                            "caption": float(s.image_text[0, 0]), "foil": float(s.image_text[0, 1])})
    order = [p for p in PIECES if p in tallies] + sorted(p for p in tallies if p not in PIECES)
    metrics = {p: tallies[p].pct for p in order}
    counts = {p: tallies[p].to_dict() for p in order}
    metrics["macro"] = macro(metrics[p] for p in order)
    metrics["micro"], counts["micro"] = everything.pct, everything.to_dict()
    protocol = {"source": "VALSE (Parcalabescu et al. 2022) pairwise accuracy acc_r; PROTOCOLS.md §3",
                "decision": "score(image, caption) > score(image, foil)",
                "valid_subset": f"mturk.caption >= {MIN_MTURK_CAPTION}" if config.valid_only else "all items",
                "aggregates": {"macro": "unweighted mean over pieces", "micro": "all items pooled"},
                "tie_policy": tie_policy, "tie_policy_official": OFFICIAL_TIE_POLICY,
                "seed": seed if tie_policy == "random" else None}
    return BenchmarkResult(benchmark=config.name, metrics=metrics, columns=[*order, "macro"], headline="macro",
                           counts=counts, protocol=protocol, data=data, warnings=warnings, predictions=predictions)
