"""In-training and end-of-run scores: SugarCrepe-format benchmarks through ``clipneg eval``'s own code.

The numbers logged here are the ones ``clipneg eval sugarcrepe`` reports for the same model and folder: the same
scorer (fp32, strict ties) and the same retrieval rule (``clipneg.eval.retrieval.recall_at``, strict ties).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clipneg.models import ClipBundle
from clipneg.train.config import EvalConfig


@torch.no_grad()
def evaluate(model: torch.nn.Module, bundle: ClipBundle, ecfg: EvalConfig, device: torch.device) -> dict[str, float]:
    """``{"<benchmark>/<subset>": accuracy, ..., "<benchmark>/r1": ...}`` for each folder of ``ecfg.benchmarks``."""
    from clipneg.eval.scorer import Scorer, ScorerConfig
    from clipneg.eval.sugarcrepe import SugarCrepeConfig, evaluate_sugarcrepe, load_sugarcrepe, resolve_paths

    was_training = model.training
    metrics: dict[str, float] = {}
    for bench in ecfg.benchmarks:
        json_dir, image_dir = resolve_paths(root=bench, image_dir=ecfg.image_root)
        name = Path(bench).name
        scorer = Scorer(model, bundle.preprocess_val, bundle.tokenizer,
                        ScorerConfig(device=str(device), image_batch_size=ecfg.batch_size, num_workers=0,
                                     progress=False))
        sc_cfg = SugarCrepeConfig(json_dir=str(json_dir), image_dir=str(image_dir), name=name)
        result = evaluate_sugarcrepe(scorer, sc_cfg)
        metrics.update({f"{name}/{k}": float(v) for k, v in result.metrics.items()})
        if ecfg.retrieval:
            items, _, _ = load_sugarcrepe(sc_cfg)
            metrics.update({f"{name}/{k}": v for k, v in positive_pair_recall(scorer, items).items()})
    model.train(was_training)
    return metrics


def positive_pair_recall(scorer: Any, items: Sequence[Any]) -> dict[str, float]:
    """Image-to-text and text-to-image R@1 (%) over the unique (image, positive caption) pairs of the items."""
    from clipneg.eval.retrieval import recall_at

    pairs = list(dict.fromkeys((it.images[0], it.texts[0]) for it in items))
    images = list(dict.fromkeys(p[0] for p in pairs))
    texts = list(dict.fromkeys(p[1] for p in pairs))
    sim = scorer.encode_images(images) @ scorer.encode_texts(texts).T
    img_idx = {r: i for i, r in enumerate(images)}
    txt_idx = {t: j for j, t in enumerate(texts)}
    truth = torch.zeros_like(sim, dtype=torch.bool)
    for r, t in pairs:
        truth[img_idx[r], txt_idx[t]] = True
    i2t, t2i = recall_at(sim, truth), recall_at(sim.T, truth.T)
    return {"i2t_r1": i2t, "t2i_r1": t2i, "r1": (i2t + t2i) / 2}
