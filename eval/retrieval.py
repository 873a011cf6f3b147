"""Image-text retrieval on a Karpathy split (COCO 5k test, Flickr30k 1k test): Recall@1/5/10 both ways.

PROTOCOLS.md §3. Image-to-text: an image is a hit at k when its best ground-truth caption ranks within the top k of
all captions; text-to-image: a caption is a hit when its image ranks within the top k of all images. Accepts BLIP's
Karpathy JSONs (list of {image, caption: [...]}, image paths relative to the image root) and Karpathy's original
dataset_*.json ({images: [{filepath?, filename, split, sentences: [{raw}]}]}, test split). Captions are used as
written unless pre_caption is on (ARO's BLIP-style cleaning, max 30 words).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .items import ImageRef, Item, require_images, sha256_file
from .metrics import pct
from .order import pre_caption as clean_caption
from .results import BenchmarkResult
from .scorer import Scorer, check_tie_policy

logger = logging.getLogger(__name__)

KS = (1, 5, 10)
OFFICIAL_TIE_POLICY = "strict"


@dataclass(frozen=True)
class RetrievalConfig:
    json_path: str
    image_root: str
    split: str = "test"
    pre_caption: bool = False
    name: str = "retrieval"
    limit: int | None = None


def load_karpathy(config: RetrievalConfig) -> tuple[list[str], list[list[str]], dict]:
    """Image paths and their captions, in file order."""
    path = Path(config.json_path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    root = Path(config.image_root)
    images, captions = [], []
    if isinstance(doc, dict) and "images" in doc:
        for rec in doc["images"]:
            if rec.get("split") != config.split:
                continue
            images.append(str(root / rec.get("filepath", "") / rec["filename"]))
            captions.append([s["raw"] for s in rec["sentences"]])
    elif isinstance(doc, list):
        for rec in doc:
            images.append(str(root / rec["image"]))
            captions.append(rec["caption"] if isinstance(rec["caption"], list) else [rec["caption"]])
    else:
        raise ValueError(f"retrieval: {path} is neither a BLIP Karpathy list nor a Karpathy dataset_*.json")
    if config.limit is not None:
        images, captions = images[:config.limit], captions[:config.limit]
    if config.pre_caption:
        captions = [[clean_caption(c) for c in caps] for caps in captions]
    data = {"json": str(path), "image_root": str(root), "files": {path.name: sha256_file(path)},
            "n_images": len(images), "n_captions": sum(len(c) for c in captions), "limit": config.limit}
    return images, captions, data


def _ranks(scores: torch.Tensor, positive: torch.Tensor, policy: str, rng: np.random.Generator) -> np.ndarray:
    """Rank (0-based) of the best positive in each row, ties with negatives resolved by policy."""
    best = scores.masked_fill(~positive, -torch.inf).max(dim=1, keepdim=True).values
    neg = scores.masked_fill(positive, -torch.inf)
    above = (neg > best).sum(1).numpy()
    tied = (neg == best).sum(1).numpy()
    if policy == "first":
        return above
    if policy == "strict":
        return above + tied
    return above + np.array([rng.integers(t + 1) for t in tied])


def recall_at(scores: torch.Tensor, positive: torch.Tensor, k: int = 1, policy: str = OFFICIAL_TIE_POLICY,
              rng: np.random.Generator | None = None) -> float:
    """Share (%) of rows of ``scores`` [n, m] whose best positive column (``positive`` [n, m] bool) ranks within the
    top k, ties with negatives resolved by ``policy`` (strict: a tie is a miss)."""
    check_tie_policy(policy)
    ranks = _ranks(scores, positive, policy, rng or np.random.default_rng(0))
    return pct(int((ranks < k).sum()), len(ranks))


def evaluate_retrieval(scorer: Scorer, config: RetrievalConfig, tie_policy: str = OFFICIAL_TIE_POLICY,
                       seed: int = 0, chunk: int = 1024) -> BenchmarkResult:
    check_tie_policy(tie_policy)
    image_paths, captions, data = load_karpathy(config)
    refs = [ImageRef(p, rgb_first=True) for p in image_paths]
    require_images([Item("all", tuple(refs), ())], "Pass --retrieval-images: the folder the JSON's image paths are "
                                                   "relative to (COCO: holding val2014/).")
    texts = [c for caps in captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
    img = scorer.encode_images(refs)
    txt = scorer.encode_texts(texts)
    rng = np.random.default_rng(seed)
    i2t_ranks, t2i_ranks = [], []
    for s in range(0, len(refs), chunk):  # image -> text, chunked to bound memory (5k x 25k floats otherwise)
        rows = torch.arange(s, min(s + chunk, len(refs)))
        i2t_ranks.append(_ranks(img[rows] @ txt.T, owner[None, :] == rows[:, None], tie_policy, rng))
    for s in range(0, len(texts), chunk):
        rows = torch.arange(s, min(s + chunk, len(texts)))
        positive = torch.zeros(len(rows), len(refs), dtype=torch.bool)
        positive[torch.arange(len(rows)), owner[rows]] = True
        t2i_ranks.append(_ranks(txt[rows] @ img.T, positive, tie_policy, rng))
    i2t, t2i = np.concatenate(i2t_ranks), np.concatenate(t2i_ranks)
    metrics, counts = {}, {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in KS:
            hits = int((ranks < k).sum())
            metrics[f"{name}_R@{k}"] = pct(hits, len(ranks))
            counts[f"{name}_R@{k}"] = {"correct": hits, "total": len(ranks)}
    metrics["mean_recall"] = float(np.mean([metrics[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in KS]))
    protocol = {"source": "Karpathy-split retrieval, Recall@K; PROTOCOLS.md §3", "ks": list(KS),
                "captions": "pre_caption (lowercase, punctuation stripped, 30 words)" if config.pre_caption
                else "as written", "tie_policy": tie_policy}
    warnings = [f"--limit {config.limit}: only the first images were scored (not a result)"] if config.limit else []
    predictions = [{"id": p, "i2t_rank": int(r)} for p, r in zip(image_paths, i2t, strict=True)]
    return BenchmarkResult(benchmark=config.name, metrics=metrics,
                           columns=["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"],
                           headline="mean_recall", counts=counts, protocol=protocol, data=data, warnings=warnings,
                           predictions=predictions)
