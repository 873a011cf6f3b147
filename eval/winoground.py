"""Winoground (Thrush et al., CVPR 2022): 400 items of 2 images x 2 captions.

Protocol (PROTOCOLS.md §3, the Winoground paper's scores), s(c, i) = cosine similarity:
  text  = s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1)
  image = s(c0,i0) > s(c0,i1) and s(c1,i1) > s(c1,i0)
  group = text and image
Data: a local folder with examples.jsonl ({id, image_0, image_1, caption_0, caption_1, tag, secondary_tag,
collapsed_tag, ...}, the Hugging Face release facebook/winoground/data) and images/{image_x}.png.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .items import ImageRef, Item, require_images, sha256_file
from .metrics import Tally
from .results import BenchmarkResult
from .scorer import Scorer, beats, check_tie_policy

logger = logging.getLogger(__name__)

OFFICIAL_TIE_POLICY = "strict"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class WinogroundConfig:
    """root: folder holding examples.jsonl (or data/examples.jsonl) and images/."""

    root: str
    name: str = "winoground"
    limit: int | None = None


def _find(root: Path) -> tuple[Path, Path]:
    for base in (root, root / "data"):
        if (base / "examples.jsonl").is_file():
            images = base / "images"
            if not images.is_dir():
                raise FileNotFoundError(f"Winoground: {images} not found (the release has data/images/*.png)")
            return base / "examples.jsonl", images
    raise FileNotFoundError(f"Winoground: examples.jsonl not found in {root} or {root / 'data'}; download the "
                            "dataset from https://huggingface.co/datasets/facebook/winoground (accept its licence) "
                            "and pass its folder with --winoground")


def _image_path(images: Path, name: str) -> str:
    if Path(name).suffix:
        return str(images / name)
    for ext in IMAGE_EXTS:
        if (images / f"{name}{ext}").is_file():
            return str(images / f"{name}{ext}")
    return str(images / f"{name}.png")


def load_winoground(config: WinogroundConfig) -> tuple[list[Item], dict]:
    path, images = _find(Path(config.root))
    items = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            if config.limit is not None and len(items) >= config.limit:
                break
            rec = json.loads(line)
            meta = {k: rec.get(k) for k in ("tag", "secondary_tag", "collapsed_tag", "num_main_preds")}
            items.append(Item(id=str(rec["id"]),
                              images=(ImageRef(_image_path(images, rec["image_0"]), rgb_first=True),
                                      ImageRef(_image_path(images, rec["image_1"]), rgb_first=True)),
                              texts=(rec["caption_0"], rec["caption_1"]), meta=meta))
    n_images = require_images(items, "Pass --winoground pointing at the folder holding examples.jsonl and images/.")
    data = {"examples": str(path), "files": {path.name: sha256_file(path)}, "n_items": len(items),
            "n_images": n_images, "limit": config.limit}
    return items, data


def evaluate_winoground(scorer: Scorer, config: WinogroundConfig, tie_policy: str = OFFICIAL_TIE_POLICY,
                        seed: int = 0) -> BenchmarkResult:
    check_tie_policy(tie_policy)
    items, data = load_winoground(config)
    rng = np.random.default_rng(seed)
    tallies = {k: Tally() for k in ("text", "image", "group")}
    by_tag: dict[str, dict[str, Tally]] = defaultdict(lambda: {k: Tally() for k in ("text", "image", "group")})
    predictions = []
    for s in scorer.score(items):
        m = s.image_text  # m[i, c] = s(caption c, image i)
        text = beats(m[0, 0], m[0, 1], tie_policy, rng) & beats(m[1, 1], m[1, 0], tie_policy, rng)
        image = beats(m[0, 0], m[1, 0], tie_policy, rng) & beats(m[1, 1], m[0, 1], tie_policy, rng)
        group = text and image
        tie = bool(len(np.unique(m)) < 4)
        for k, v in (("text", text), ("image", image), ("group", group)):
            tallies[k].add(v, tie)
            by_tag[str(s.item.meta.get("collapsed_tag") or s.item.meta.get("tag"))][k].add(v, tie)
        predictions.append({"id": s.item.id, **s.item.meta, "text": text, "image": image, "group": group,
                            "scores": m.tolist()})
    metrics = {k: t.pct for k, t in tallies.items()}
    counts = {k: t.to_dict() for k, t in tallies.items()}
    details = {"by_tag": {tag: {k: {**t.to_dict(), "accuracy": t.pct} for k, t in d.items()}
                          for tag, d in sorted(by_tag.items())}}
    protocol = {"source": "Winoground (Thrush et al. 2022) text/image/group scores; PROTOCOLS.md §3",
                "text": "s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1)",
                "image": "s(c0,i0) > s(c0,i1) and s(c1,i1) > s(c1,i0)", "group": "text and image",
                "tie_policy": tie_policy, "tie_policy_official": OFFICIAL_TIE_POLICY,
                "seed": seed if tie_policy == "random" else None}
    warnings = [f"--limit {config.limit}: only the first items were scored (not a result)"] if config.limit else []
    return BenchmarkResult(benchmark=config.name, metrics=metrics, columns=["text", "image", "group"],
                           headline="group", counts=counts, protocol=protocol, data=data, details=details,
                           warnings=warnings, predictions=predictions)
