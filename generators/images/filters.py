"""``ImageConsistencyFilter``: keep a counterfactual image only if a reference CLIP agrees it shows its caption.

    from clipneg.generators.images.filters import ImageConsistencyFilter, ImageFilterConfig
    filt = ImageConsistencyFilter(ImageFilterConfig(margin_text=0.0), encoder=Encoder(m, preprocess, tokenizer))
    samples = filt(samples)          # neg_images that fail are removed; neg_texts are never touched

The TripletCLIP / CounterCurate check (PROTOCOLS.md section 6: "the negative image should match its negative caption
better than the original caption"), with the cosines of one reference model (``clipneg.encoder``: the arithmetic of
``clipneg eval``). For a negative image ``ni`` depicting negative caption ``nt`` of a sample (``pi``, ``pt``):

| check (first failing reason wins)  | rejects when                                                           |
|------------------------------------|------------------------------------------------------------------------|
| ``undecodable``                    | the bytes do not decode                                                |
| ``wrong size``                     | ``expect_size`` is set and (width, height) differs                     |
| ``blank``                          | pixel standard deviation <= ``max_blank_std`` (constant/blank output)  |
| ``nan``                            | a cosine is not finite (a model that produced NaN)                     |
| ``near-copy (embedding)``          | cos(pi, ni) > ``max_copy_sim``                                         |
| ``near-copy (pixels)``             | fewer than ``min_changed_pixels`` of the pixels changed (both resized to |
|                                    | ``compare_size``; a pixel changed when a channel moved > ``pixel_tolerance``)|
| ``text margin``                    | cos(ni, nt) - cos(ni, pt) < ``margin_text``                            |
| ``positive margin``                | cos(pi, pt) - cos(pi, nt) < ``margin_pos``                             |

An image with ``text=None`` has no caption to agree with: only the first six checks apply. A kept image gets
``score`` = its text margin cos(ni, nt) - cos(ni, pt). Removing images never removes captions, so every remaining
``NegImage.text`` still names the caption it depicts. The decision is :func:`judge`, a pure function of the cosines.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipneg.encoder import Encoder, ImageRef
from clipneg.schema import Sample
from clipneg.shards import Quarantined

from ..base import StageStats, config_hash

VERSION = "1.0.0"
FILTER = "image_consistency"
R_UNDECODABLE, R_SIZE, R_BLANK, R_NAN = "undecodable", "wrong size", "blank", "nan"
R_COPY_EMB, R_COPY_PIX = "near-copy (embedding)", "near-copy (pixels)"
R_TEXT, R_POS = "text margin", "positive margin"


@dataclass(frozen=True)
class ImageFilterConfig:
    """Thresholds of the checks in the module docstring (cosines in [-1, 1]; pixel values in 0..255)."""

    margin_text: float = 0.0
    margin_pos: float = 0.0
    max_copy_sim: float = 0.98
    min_changed_pixels: float = 0.01
    pixel_tolerance: int = 8
    compare_size: int = 64
    max_blank_std: float = 1.0
    expect_size: tuple[int, int] | None = None  # (width, height)
    check_positive_margin: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_changed_pixels <= 1.0:
            raise ValueError(f"min_changed_pixels is a fraction in [0, 1] (got {self.min_changed_pixels})")
        if self.compare_size < 1 or self.pixel_tolerance < 0:
            raise ValueError("compare_size must be >= 1 and pixel_tolerance >= 0")


@dataclass(frozen=True)
class Cosines:
    """The reference model's cosines for one (positive, negative image) pair; ni_nt / ni_pt / pi_nt are None when
    the image depicts no caption."""

    pi_pt: float
    pi_ni: float
    ni_nt: float | None = None
    ni_pt: float | None = None
    pi_nt: float | None = None


def judge(c: Cosines, config: ImageFilterConfig) -> tuple[str | None, float | None]:
    """(rejection reason or None, text margin cos(ni, nt) - cos(ni, pt) or None): the filter's decision on the
    cosines alone, after the pixel checks (:func:`pixel_reason`)."""
    values = [v for v in (c.pi_pt, c.pi_ni, c.ni_nt, c.ni_pt, c.pi_nt) if v is not None]
    if not all(math.isfinite(v) for v in values):
        return R_NAN, None
    if c.pi_ni > config.max_copy_sim:
        return R_COPY_EMB, None
    if c.ni_nt is None or c.ni_pt is None:
        return None, None
    margin = c.ni_nt - c.ni_pt
    if margin < config.margin_text:
        return R_TEXT, margin
    if config.check_positive_margin and c.pi_nt is not None and c.pi_pt - c.pi_nt < config.margin_pos:
        return R_POS, margin
    return None, margin


def decode(data: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def pixel_reason(positive: Image.Image, negative: Image.Image | None, config: ImageFilterConfig) -> str | None:
    """Broken-output and pixel near-copy checks on decoded RGB images (None: passes)."""
    if negative is None:
        return R_UNDECODABLE
    if config.expect_size is not None and negative.size != tuple(config.expect_size):
        return R_SIZE
    if float(np.asarray(negative, dtype=np.float32).std()) <= config.max_blank_std:
        return R_BLANK
    size = (config.compare_size, config.compare_size)
    a = np.asarray(positive.resize(size, Image.BILINEAR), dtype=np.int16)
    b = np.asarray(negative.resize(size, Image.BILINEAR), dtype=np.int16)
    changed = float((np.abs(a - b) > config.pixel_tolerance).any(axis=-1).mean())
    if changed < config.min_changed_pixels:
        return R_COPY_PIX
    return None


def _ref(data: bytes) -> ImageRef:
    return ImageRef(path=hashlib.sha256(data).hexdigest(), data=data)


class ImageConsistencyFilter:
    """Removes negative images that the reference CLIP does not see as their caption (see the module docstring).

    encoder: a :class:`clipneg.encoder.Encoder` around the reference model; model_name: recorded in the manifest.
    """

    name = FILTER
    version = VERSION

    def __init__(self, config: ImageFilterConfig | None = None, *, encoder: Encoder,
                 model_name: str | None = None) -> None:
        self.config = config or ImageFilterConfig()
        self.encoder = encoder
        self.model_name = model_name
        self.stats = StageStats()

    def manifest(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        return {"name": self.name, "version": self.version, "config": cfg, "config_hash": config_hash(cfg),
                "model": self.model_name, "encoder": self.encoder.config.to_dict()}

    def _chunk_encoder(self) -> Encoder:
        # the shared Encoder caches every image it saw; a filter sees each image once, so a fresh cache per chunk
        # keeps memory flat over a whole dataset (same model, transform and arithmetic)
        e = self.encoder
        return Encoder(e.model, e.preprocess, e.tokenizer, e.config)

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample | Quarantined]:
        cfg = self.config
        chunk = list(chunk)
        # pixel checks first: only images that pass them are encoded
        todo: list[tuple[int, int]] = []  # (sample, image) pairs to score
        reasons: dict[tuple[int, int], str | None] = {}
        for q, s in enumerate(chunk):
            if not s.neg_images:
                continue
            pos = decode(s.image)
            for j, im in enumerate(s.neg_images):
                self.stats.produced[im.kind] += 1
                r = R_UNDECODABLE + " positive" if pos is None else pixel_reason(pos, decode(im.data), cfg)
                reasons[(q, j)] = r
                if r is None:
                    todo.append((q, j))
        margins: dict[tuple[int, int], float | None] = {}
        if todo:
            enc = self._chunk_encoder()
            pos_q = sorted({q for q, _ in todo})
            pos_img = dict(zip(pos_q, enc.encode_images([_ref(chunk[q].image) for q in pos_q]), strict=True))
            neg_img = enc.encode_images([_ref(chunk[q].neg_images[j].data) for q, j in todo])
            texts = [chunk[q].caption for q in pos_q]
            texts += [chunk[q].neg_texts[chunk[q].neg_images[j].text].text for q, j in todo
                      if chunk[q].neg_images[j].text is not None]
            feats = dict(zip(texts, enc.encode_texts(texts), strict=True)) if texts else {}
            for (q, j), ni in zip(todo, neg_img, strict=True):
                s, im = chunk[q], chunk[q].neg_images[j]
                pi, pt = pos_img[q], feats[s.caption]
                c = Cosines(pi_pt=_dot(pi, pt), pi_ni=_dot(pi, ni))
                if im.text is not None:
                    nt = feats[s.neg_texts[im.text].text]
                    c = Cosines(c.pi_pt, c.pi_ni, ni_nt=_dot(ni, nt), ni_pt=_dot(ni, pt), pi_nt=_dot(pi, nt))
                reasons[(q, j)], margins[(q, j)] = judge(c, cfg)
        out: list[Sample | Quarantined] = []
        for q, s in enumerate(chunk):
            kept = []
            for j, im in enumerate(s.neg_images):
                r = reasons[(q, j)]
                if r is not None:
                    self.stats.reject(im.kind, self.name, r)
                    continue
                m = margins.get((q, j))
                kept.append(im if m is None else replace(im, score=round(m, 6)))
                self.stats.kept[im.kind] += 1
            if s.neg_images and not kept:
                self.stats.samples_without += 1
            # captions stay, so each kept image's ``text`` index is still the caption it depicts
            s.neg_images = kept
            out.append(s)
        return out


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())

