"""Helpers for the evaluation tests: a stub CLIP whose features are hand-built, and fixture writers.

The stub's image feature is the image's mean RGB colour; a text's feature is looked up in a table. So a test decides
every similarity (and every exact tie) by choosing colours and vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


class StubTokenizer:
    def __init__(self, table: dict[str, list[float]]):
        self.table = table
        self.names = list(table)
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.calls.append(texts)
        return torch.tensor([self.names.index(t) for t in texts])


class StubModel(nn.Module):
    """encode_image: mean colour of the preprocessed image; encode_text: the tokenizer's table rows."""

    def __init__(self, table: dict[str, list[float]]):
        super().__init__()
        self.register_buffer("table", torch.tensor(list(table.values()), dtype=torch.float32))
        self.dummy = nn.Parameter(torch.zeros(1))
        self.image_batches: list[int] = []

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.image_batches.append(len(x))
        return x.mean(dim=(2, 3))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens]


def stub_preprocess(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def stub_scorer(table: dict[str, list[float]], **config):
    from clipneg.eval.scorer import Scorer, ScorerConfig

    cfg = {"num_workers": 0, "progress": False, **config}
    tok = StubTokenizer(table)
    model = StubModel(table)
    return Scorer(model, stub_preprocess, tok, ScorerConfig(**cfg)), model, tok


def solid(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_json(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path
