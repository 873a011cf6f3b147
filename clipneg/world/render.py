"""Rendering scenes to pixels: antialiased sprites composited on a textured background, plus fast image encoding.

Speed comes from two facts. (1) An object's coverage mask depends only on (shape, size, sub-pixel phase), so masks
are drawn once with PIL at ``supersample`` x resolution, box-downscaled (exact area coverage) and cached; a scene is
a few numpy blends. (2) A counterfactual shares the positive's background (same ``bg_seed``), cached per scene.

Colours are flat and the blend is done in integers, so a fully covered pixel has exactly the object's colour: tests
can check a colour swap pixel by pixel. Rendering never mirrors the image: a horizontal flip would turn "left of"
into a lie.
"""

from __future__ import annotations

import io
import math
import random
import struct
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from clipneg.world.config import WorldConfig
from clipneg.world.scene import Obj, Scene
from clipneg.world.vocab import COLOURS, SIZES

TEXTURE_POINTS = 4  # control points per side of the smooth background texture
TEXTURE_AMPLITUDE = 12.0  # grey levels (std) of the texture


def _polygon(n: int, radius: float, rotation: float) -> list[tuple[float, float]]:
    return [(radius * math.cos(rotation + 2 * math.pi * k / n), radius * math.sin(rotation + 2 * math.pi * k / n))
            for k in range(n)]


def _heart() -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    y = y - (y.max() + y.min()) / 2  # centre the bounding box
    s = 1.0 / max(np.abs(x).max(), np.abs(y).max())
    return list(zip((x * s).tolist(), (y * s).tolist(), strict=True))


# Outlines in unit coordinates (the shape fits the unit disc, y downwards). Areas are roughly matched so that size,
# not shape, decides how big an object looks.
_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(x, y + 0.2) for x, y in _polygon(3, 1.1, -math.pi / 2)],
    "star": [(r * math.cos(-math.pi / 2 + k * math.pi / 5), r * math.sin(-math.pi / 2 + k * math.pi / 5) + 0.05)
             for k, r in zip(range(10), [1.0, 0.45] * 5, strict=True)],
    "diamond": [(0, -1), (0.72, 0), (0, 1), (-0.72, 0)],
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3),
              (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "heart": _heart(),
    "hexagon": _polygon(6, 1.0, 0.0),
    "arrow": [(-1, -0.25), (0.15, -0.25), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, 0.25), (-1, 0.25)],
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    def box(rad: float, dx: float = 0.0, dy: float = 0.0) -> list[float]:
        return [cx + dx - rad, cy + dy - rad, cx + dx + rad, cy + dy + rad]

    if shape == "circle":
        draw.ellipse(box(r * 0.95), fill=255)
    elif shape == "ring":
        draw.ellipse(box(r), fill=255)
        draw.ellipse(box(r * 0.55), fill=0)
    elif shape == "crescent":
        draw.ellipse(box(r), fill=255)
        draw.ellipse(box(r * 0.85, dx=r * 0.5, dy=-r * 0.2), fill=0)
    elif shape == "semicircle":
        draw.pieslice(box(r, dy=r * 0.45), start=180, end=360, fill=255)
    else:
        draw.polygon([(cx + x * r, cy + y * r) for x, y in _OUTLINES[shape]], fill=255)


@lru_cache(maxsize=8)
def _upsampler(n: int, size: int) -> np.ndarray:
    """(size, n) matrix doing PIL's bicubic 1-D resize; a separable 2-D resize is then up @ X @ up.T."""
    cols = []
    for k in range(n):
        onehot = np.zeros((1, n), np.float32)
        onehot[0, k] = 1.0
        cols.append(np.asarray(Image.fromarray(onehot, mode="F").resize((size, 1), Image.Resampling.BICUBIC))[0])
    return np.stack(cols, axis=1)


@lru_cache(maxsize=4096)
def sprite(shape: str, diameter: float, n: int, phase: tuple[int, int], ss: int) -> np.ndarray:
    """Coverage mask (uint8, n x n) of a shape whose centre sits at pixel (n // 2 + phase / ss) of the sprite."""
    canvas = Image.new("L", (n * ss, n * ss), 0)
    cx = (n // 2) * ss + phase[0]
    cy = (n // 2) * ss + phase[1]
    _draw_shape(ImageDraw.Draw(canvas), shape, cx, cy, diameter * ss / 2)
    if ss > 1:
        # Box filter: each pixel gets the exact fraction of its area the shape covers. LANCZOS would ring, leaving
        # a faint halo outside the shape that bleeds colour into the background and into neighbouring objects.
        canvas = canvas.reduce(ss)
    return np.asarray(canvas, dtype=np.uint8)


class Renderer:
    """Renders scenes of one WorldConfig; keeps the last scene's background so counterfactuals reuse it."""

    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        self.size = cfg.image_size
        self.cell = cfg.image_size / cfg.grid
        self._bg_key: tuple | None = None
        self._bg: np.ndarray | None = None
        self._terms: dict[Obj, tuple[slice, slice, np.ndarray, np.ndarray]] = {}

    # -- background ----------------------------------------------------------------------------------------------
    def background(self, scene: Scene) -> np.ndarray:
        key = (scene.tone, scene.bg_seed)
        if key != self._bg_key:
            base = np.empty((self.size, self.size, 3), np.float32)
            base[:] = scene.tone
            if self.cfg.texture:
                rng = random.Random(scene.bg_seed)
                pts = np.array([rng.gauss(0.0, TEXTURE_AMPLITUDE) for _ in range(TEXTURE_POINTS**2)], np.float32)
                up = _upsampler(TEXTURE_POINTS, self.size)
                base += (up @ pts.reshape(TEXTURE_POINTS, TEXTURE_POINTS) @ up.T)[..., None]
            self._bg = np.clip(np.rint(base), 0, 255).astype(np.uint8)
            self._bg_key = key
        assert self._bg is not None
        return self._bg

    # -- objects -------------------------------------------------------------------------------------------------
    def _placed(self, obj: Obj) -> tuple[np.ndarray, int, int]:
        """The object's coverage sprite and the image pixel of its top-left corner."""
        ss = self.cfg.supersample
        diameter = SIZES[obj.size] * self.cell
        n = int(math.ceil(diameter)) + 4
        cx, cy = (v * self.cell for v in obj.centre)
        # Quantise the centre to 1/ss pixel: the sub-pixel phase keys the sprite cache (ss^2 variants per sprite).
        qx, qy = round(cx * ss), round(cy * ss)
        ix, iy = qx // ss, qy // ss
        mask = sprite(obj.shape, round(diameter, 3), n, (qx - ix * ss, qy - iy * ss), ss)
        return mask, ix - n // 2, iy - n // 2

    def _window(self, x0: int, y0: int, n: int) -> tuple[slice, slice, slice, slice]:
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + n, self.size), min(y0 + n, self.size)
        return slice(ya, yb), slice(xa, xb), slice(ya - y0, yb - y0), slice(xa - x0, xb - x0)

    def object_mask(self, obj: Obj) -> np.ndarray:
        """Coverage (uint8, image size) of one object, as it is blended into the image."""
        out = np.zeros((self.size, self.size), np.uint8)
        mask, x0, y0 = self._placed(obj)
        iy, ix, my, mx = self._window(x0, y0, mask.shape[0])
        out[iy, ix] = mask[my, mx]
        return out

    def _blend_terms(self, obj: Obj) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """Window and the two terms of the integer blend for one object, cached: a counterfactual redraws mostly the
        same objects as its positive."""
        terms = self._terms.get(obj)
        if terms is None:
            if len(self._terms) > 4096:
                self._terms.clear()
            mask, x0, y0 = self._placed(obj)
            iy, ix, my, mx = self._window(x0, y0, mask.shape[0])
            a = mask[my, mx].astype(np.uint16)[..., None]
            colour = np.array(COLOURS[obj.colour], np.uint16)
            # out = (bg * (255 - a) + colour * a + 127) // 255: exact colour at a == 255, exact background at a == 0;
            # the sum is at most 255 * 255 + 127, so uint16 never overflows.
            terms = (iy, ix, 255 - a, colour * a + 127)
            self._terms[obj] = terms
        return terms

    def render(self, scene: Scene) -> np.ndarray:
        """The scene as an (H, W, 3) uint8 array."""
        img = self.background(scene).copy()
        for obj in scene.objects:
            iy, ix, keep, add = self._blend_terms(obj)
            img[iy, ix] = (img[iy, ix] * keep + add) // 255
        return img

    def encode(self, scene: Scene, fmt: str = "png") -> bytes:
        return encode_image(self.render(scene), fmt, png_level=self.cfg.png_level)


def encode_png(arr: np.ndarray, level: int = 1) -> bytes:
    """RGB uint8 array -> PNG bytes, with the 'up' filter computed in numpy.

    About 2x faster than PIL's encoder at 64 px (PIL tries several filters per row); the output is a plain,
    standard PNG that every decoder reads losslessly.
    """
    h, w, c = arr.shape
    a = np.ascontiguousarray(arr, dtype=np.uint8)
    rows = np.empty((h, 1 + w * c), np.uint8)
    rows[:, 0] = 2  # filter type "up": each row minus the row above (mod 256)
    rows[0, 1:] = a[0].reshape(-1)
    rows[1:, 1:] = (a[1:] - a[:-1]).reshape(h - 1, w * c)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
            + chunk(b"IEND", b""))


def encode_image(arr: np.ndarray, fmt: str = "png", *, png_level: int = 1) -> bytes:
    """PNG (exact) or JPEG quality 95 without chroma subsampling (4:2:0 would smear colours at 32 px)."""
    if fmt == "png":
        return encode_png(arr, png_level)
    if fmt in ("jpg", "jpeg"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95, subsampling=0)
        return buf.getvalue()
    raise ValueError(f"image format must be 'png' or 'jpg' (got {fmt!r})")
