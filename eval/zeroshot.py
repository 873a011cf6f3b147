"""Zero-shot classification on an ImageFolder (CLIP, Radford et al. 2021; PROTOCOLS.md §3).

Classifier: for each class, encode every prompt template filled with the class name, L2-normalise each, average, and
L2-normalise the mean (the CLIP paper's prompt ensembling); predict argmax of cosine similarity. Metrics: top-1 and
top-5 accuracy and mean per-class recall. ImageNet's 1,000 class names and the 80 OpenAI templates ship with open_clip
(IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES); class folders are taken in sorted order (torchvision ImageFolder),
which for ImageNet's wnid folders is the order of IMAGENET_CLASSNAMES.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from .items import ImageRef
from .metrics import Tally, macro, pct
from .results import BenchmarkResult
from .scorer import Scorer, check_tie_policy, rank_of

logger = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
OFFICIAL_TIE_POLICY = "strict"


@dataclass(frozen=True)
class ZeroShotConfig:
    """root: ImageFolder (one sub-folder per class). classnames: "folders" (folder names, '_' -> ' '), "imagenet"
    (open_clip's 1,000 names, in sorted-folder order) or a file (.txt one per line in sorted-folder order, or .json
    list / {folder: name}). templates: "openai" (80), "simple", or a .txt file of templates with {c}."""

    root: str
    classnames: str = "folders"
    templates: str = "openai"
    name: str = "zeroshot"
    limit_per_class: int | None = None


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"zero-shot: {root} has no class sub-folders (expected ImageFolder: root/CLASS/*.jpg)")
    return folders


def resolve_classnames(spec: str, folders: list[Path]) -> list[str]:
    if spec == "folders":
        return [f.name.replace("_", " ") for f in folders]
    if spec == "imagenet":
        import open_clip

        names = list(open_clip.IMAGENET_CLASSNAMES)
        if len(names) != len(folders):
            raise ValueError(f"--classnames imagenet needs 1000 class folders (found {len(folders)})")
        return names
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--classnames: {spec} is not 'folders', 'imagenet' or a file")
    if path.suffix == ".json":
        doc = json.loads(path.read_text(encoding="utf-8"))
        names = [doc[f.name] for f in folders] if isinstance(doc, dict) else list(doc)
    else:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(names) != len(folders):
        raise ValueError(f"--classnames {spec}: {len(names)} names for {len(folders)} class folders")
    return names


def resolve_templates(spec: str) -> tuple[list[Callable[[str], str]], str]:
    import open_clip

    if spec == "openai":
        return list(open_clip.OPENAI_IMAGENET_TEMPLATES), "open_clip.OPENAI_IMAGENET_TEMPLATES (80)"
    if spec == "simple":
        return list(open_clip.SIMPLE_IMAGENET_TEMPLATES), "open_clip.SIMPLE_IMAGENET_TEMPLATES"
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--templates: {spec} is not 'openai', 'simple' or a file of templates with {{c}}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not all("{c}" in ln for ln in lines):
        raise ValueError(f"--templates {spec}: every line needs a {{c}} placeholder for the class name")
    return [lambda c, t=t: t.replace("{c}", c) for t in lines], f"{path.name} ({len(lines)})"


def evaluate_zeroshot(scorer: Scorer, config: ZeroShotConfig, tie_policy: str = OFFICIAL_TIE_POLICY,
                      seed: int = 0) -> BenchmarkResult:
    check_tie_policy(tie_policy)
    root = Path(config.root)
    folders = _class_folders(root)
    names = resolve_classnames(config.classnames, folders)
    templates, template_desc = resolve_templates(config.templates)
    refs, labels = [], []
    for c, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if config.limit_per_class is not None:
            files = files[:config.limit_per_class]
        refs += [ImageRef(str(p), rgb_first=True) for p in files]
        labels += [c] * len(files)
    if not refs:
        raise FileNotFoundError(f"zero-shot: no images under {root}")
    # One call for every (class, template) prompt: duplicates (ImageNet has two "crane"s) are encoded once.
    feats = scorer.encode_texts([t(name) for name in names for t in templates])
    classifier = F.normalize(feats.view(len(names), len(templates), -1).mean(1), dim=-1)  # [C, D]
    img = scorer.encode_images(refs)
    logits = (img @ classifier.T).numpy()
    rng = np.random.default_rng(seed)
    top1, top5 = Tally(), Tally()
    per_class = [Tally() for _ in names]
    for row, y in zip(logits, labels, strict=True):
        r = rank_of(row, y, tie_policy, rng)
        top1.add(r < 1)
        top5.add(r < 5)
        per_class[y].add(r < 1)
    metrics = {"top1": top1.pct, "top5": top5.pct, "mean_per_class_recall": macro(t.pct for t in per_class)}
    counts = {"top1": top1.to_dict(), "top5": top5.to_dict()}
    protocol = {"source": "CLIP zero-shot classification with prompt ensembling; PROTOCOLS.md §3",
                "templates": template_desc, "classnames": config.classnames, "tie_policy": tie_policy}
    data = {"root": str(root), "n_classes": len(names), "n_images": len(refs),
            "limit_per_class": config.limit_per_class,
            "images_per_class": {"min": min(t.total for t in per_class), "max": max(t.total for t in per_class)}}
    warnings = [f"--limit {config.limit_per_class} per class (not a result)"] if config.limit_per_class else []
    preds = logits.argmax(1)
    predictions = [{"id": r.path, "label": int(y), "pred": int(p), "correct": bool(p == y)}
                   for r, y, p in zip(refs, labels, preds, strict=True)]
    details = {"per_class_recall": {names[i]: pct(t.correct, t.total) for i, t in enumerate(per_class)}}
    return BenchmarkResult(benchmark=config.name, metrics=metrics, columns=["top1", "top5", "mean_per_class_recall"],
                           headline="top1", counts=counts, protocol=protocol, data=data, details=details,
                           warnings=warnings, predictions=predictions)
