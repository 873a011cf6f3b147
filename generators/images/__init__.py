"""Image negative generators (diffusion, mined neighbours, horizontal flip) and their consistency filters."""

# Shared helpers for image stages (diffusion.py uses them; any image stage may).
# Pure PIL + numpy, so importing the package stays cheap: heavy libraries (diffusers, faiss) load in their stage.

from __future__ import annotations

import base64
import io
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from PIL import Image

PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}  # shard extension -> PIL format name


def decode_rgb(data: bytes) -> Image.Image:
    """The image bytes of a sample (or a negative) as an RGB PIL image, fully loaded."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def encode_image(image: Image.Image, ext: str, quality: int = 95) -> bytes:
    """PIL image -> bytes for a shard member ``negimg.{j}.{ext}`` (JPEG at ``quality``, PNG lossless)."""
    if ext not in PIL_FORMATS:
        raise ValueError(f"image extension {ext!r} is not one of {sorted(PIL_FORMATS)}")
    buf = io.BytesIO()
    image.save(buf, PIL_FORMATS[ext], **({"quality": quality} if ext in ("jpg", "webp") else {}))
    return buf.getvalue()


def box_mask(size: tuple[int, int], boxes: Sequence[Sequence[float]]) -> Image.Image | None:
    """A mode "L" mask (255 = to repaint) of ``size`` (width, height) covering ``boxes`` given as [x, y, w, h] in
    pixels of that image; a box is widened to whole pixels (floor of the corner, ceiling of the far edge) and clipped.
    None when no box covers any pixel."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.uint8)
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"a box is [x, y, w, h] in pixels (got {list(box)})")
        x, y, w, h = (float(v) for v in box)
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = 255
    return Image.fromarray(mask, "L") if mask.any() else None


def sample_mask(meta: dict[str, Any] | None, size: tuple[int, int]) -> Image.Image | None:
    """The edit region of a sample from its metadata, at ``size`` (the positive's width, height), or None.

    ``meta["boxes"]``: [[x, y, w, h], ...] in pixels. ``meta["mask"]``: a PNG (base64 text, optionally a
    ``data:image/png;base64,`` URL) or rows of 0/1 (any non-zero pixel is edited); a mask of another size is resized
    with nearest neighbour."""
    if not meta:
        return None
    if meta.get("boxes"):
        return box_mask(size, meta["boxes"])
    raw = meta.get("mask")
    if raw is None:
        return None
    if isinstance(raw, str):
        data = base64.b64decode(raw.split(",", 1)[1] if raw.startswith("data:") else raw)
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("L"))
    else:
        arr = np.asarray(raw)
    if arr.ndim != 2:
        raise ValueError(f"meta['mask'] must be a 2-D mask (got shape {arr.shape})")
    mask = Image.fromarray(np.where(arr > 0, 255, 0).astype(np.uint8), "L")
    if mask.size != tuple(size):
        mask = mask.resize(size, Image.NEAREST)
    return mask if np.asarray(mask).any() else None


def broken_reason(pixels: np.ndarray, min_range: float = 2 / 255) -> str | None:
    """Why a generated image (floats in [0, 1], H x W x C) is unusable: "nan" (NaN or inf, e.g. fp16 overflow in a
    VAE), "blank image" (every pixel within ``min_range`` of one value: a black safety-checker output, a flat
    colour); None if it is usable."""
    if not np.isfinite(pixels).all():
        return "nan"
    if float(pixels.max() - pixels.min()) < min_range:
        return "blank image"
    return None


def depicted_captions(neg_kinds: Sequence[str], kinds: Collection[str] | None, k: int) -> list[int]:
    """Indices of the negative captions an image stage should depict: the first ``k`` whose kind is in ``kinds``
    (None: every kind), in caption order."""
    return [i for i, kind in enumerate(neg_kinds) if kinds is None or kind in kinds][:k]
