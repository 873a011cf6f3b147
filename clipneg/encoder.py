"""Encode images and captions once: the feature cache that evaluation, mining and consistency filters share.

An :class:`Encoder` wraps an open_clip model with its eval transform and tokenizer. Every unique image (an
:class:`ImageRef`: path + crop box, or in-memory bytes) is decoded by DataLoader workers and encoded once per encoder,
in batches, and every unique caption likewise; features are float32, L2-normalised and kept on the CPU. The
arithmetic is the official SugarCrepe protocol's (fp32 without autocast by default, the model's eval transform,
cosine similarity), so a generator's filter and ``clipneg eval`` see the same numbers for the same model.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

PRECISIONS = ("fp32", "amp")
Box = tuple[float, float, float, float]  # (x, y, w, h) in pixels, ARO's bbox_x, bbox_y, bbox_w, bbox_h


@dataclass(frozen=True)
class ImageRef:
    """An image file (or in-memory encoded bytes), optionally cropped to a box (x, y, w, h) before preprocessing.

    rgb_first: convert to RGB before the eval transform (official ARO and Order loaders:
    `Image.open(p).convert("RGB")`) instead of letting open_clip's transform convert after resizing (official
    SugarCrepe: `Image.open(p)` as is). The two differ only for non-RGB files (palette, CMYK), but "to the item" means
    following each benchmark's code. A crop always converts first, as ARO does. Two refs are the same image (encoded
    once per run) when all fields match; ``data`` refs are compared by their bytes.
    """

    path: str
    box: Box | None = None
    rgb_first: bool = False
    data: bytes | None = None  # encoded image bytes (a shard member); ``path`` is then only a name

    def crop_box(self) -> tuple[float, float, float, float] | None:
        """The box as PIL's (left, upper, right, lower)."""
        if self.box is None:
            return None
        x, y, w, h = self.box
        return (x, y, x + w, y + h)


def load_image(ref: ImageRef) -> Image.Image:
    """Open an image as the official protocols do.

    Default: the file as PIL opens it; open_clip's eval transform converts to RGB itself (official SugarCrepe passes
    `Image.open(path)` straight to the transform). rgb_first: `convert("RGB")` first (official ARO loaders). Cropped:
    convert to RGB, then crop to (x, y, x+w, y+h) (official ARO VG-Relation / VG-Attribution order).
    """
    with Image.open(io.BytesIO(ref.data) if ref.data is not None else ref.path) as im:
        if ref.box is not None:
            return im.convert("RGB").crop(ref.crop_box())
        if ref.rgb_first:
            return im.convert("RGB")
        im.load()
        return im


@dataclass(frozen=True)
class EncoderConfig:
    """How features are computed. Recorded in every result JSON (`protocol`)."""

    device: str = "cpu"
    precision: str = "fp32"  # "fp32" (official) or "amp" (autocast: fp16 on CUDA, bf16 on CPU)
    image_batch_size: int = 64
    text_batch_size: int = 256
    num_workers: int = 2  # DataLoader workers decoding and preprocessing images
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS} (got {self.precision!r})")
        if self.image_batch_size < 1 or self.text_batch_size < 1 or self.num_workers < 0:
            raise ValueError("batch sizes must be >= 1 and num_workers >= 0")

    def amp_dtype(self) -> torch.dtype | None:
        if self.precision == "fp32":
            return None
        return torch.float16 if torch.device(self.device).type == "cuda" else torch.bfloat16

    def to_dict(self) -> dict:
        dtype = self.amp_dtype()
        return {
            "precision": self.precision,
            "autocast_dtype": None if dtype is None else str(dtype).replace("torch.", ""),
            "normalize": "l2",
            "similarity": "cosine",
            "device": self.device,
        }


@dataclass
class EncoderStats:
    images_encoded: int = 0
    texts_encoded: int = 0
    seconds_images: float = 0.0
    seconds_texts: float = 0.0

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class _ImageDataset(Dataset):
    def __init__(self, refs: Sequence[ImageRef], preprocess: Callable) -> None:
        self.refs = list(refs)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(load_image(self.refs[i]))


class Encoder:
    """Encodes images and texts once (cached across calls).

    model: an open_clip model (`encode_image`, `encode_text`); preprocess: its eval transform; tokenizer: its
    tokenizer.
    """

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable,
                 config: EncoderConfig | None = None) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.config = config or EncoderConfig()
        self.device = torch.device(self.config.device)
        self.model.eval().to(self.device)
        self.stats = self.new_stats()
        self._img_index: dict[ImageRef, int] = {}
        self._img_chunks: list[torch.Tensor] = []
        self._img_feats: torch.Tensor | None = None
        self._txt_index: dict[str, int] = {}
        self._txt_chunks: list[torch.Tensor] = []
        self._txt_feats: torch.Tensor | None = None

    def new_stats(self) -> EncoderStats:
        return EncoderStats()

    def _autocast(self):
        dtype = self.config.amp_dtype()
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="img" if "image" in desc else "txt", disable=not self.config.progress,
                    dynamic_ncols=True, leave=False)

    @torch.inference_mode()
    def encode_images(self, refs: Iterable[ImageRef]) -> torch.Tensor:
        """Features [N, D] (float32, L2-normalised, on CPU) for refs; each unique ref is encoded once per Encoder."""
        refs = list(refs)
        new = list(dict.fromkeys(r for r in refs if r not in self._img_index))
        if new:
            t0 = time.perf_counter()
            loader = DataLoader(_ImageDataset(new, self.preprocess), batch_size=self.config.image_batch_size,
                                shuffle=False, num_workers=self.config.num_workers,
                                pin_memory=self.device.type == "cuda")
            feats = []
            with self._bar(len(new), "encoding images") as bar:
                for batch in loader:
                    with self._autocast():
                        f = self.model.encode_image(batch.to(self.device, non_blocking=True))
                    feats.append(F.normalize(f.float(), dim=-1).cpu())
                    bar.update(len(batch))
            base = sum(len(c) for c in self._img_chunks)
            for i, r in enumerate(new):
                self._img_index[r] = base + i
            self._img_chunks.append(torch.cat(feats))
            self._img_feats = None
            self.stats.images_encoded += len(new)
            self.stats.seconds_images += time.perf_counter() - t0
        return self.image_features()[[self._img_index[r] for r in refs]] if refs else torch.empty(0)

    @torch.inference_mode()
    def encode_texts(self, texts: Iterable[str]) -> torch.Tensor:
        """Features [N, D] (float32, L2-normalised, on CPU); each unique text is encoded once per Encoder."""
        texts = list(texts)
        new = list(dict.fromkeys(t for t in texts if t not in self._txt_index))
        if new:
            t0 = time.perf_counter()
            bs = self.config.text_batch_size
            feats = []
            with self._bar(len(new), "encoding texts") as bar:
                for i in range(0, len(new), bs):
                    chunk = new[i:i + bs]
                    tokens = self.tokenizer(chunk).to(self.device)
                    with self._autocast():
                        f = self.model.encode_text(tokens)
                    feats.append(F.normalize(f.float(), dim=-1).cpu())
                    bar.update(len(chunk))
            base = sum(len(c) for c in self._txt_chunks)
            for i, t in enumerate(new):
                self._txt_index[t] = base + i
            self._txt_chunks.append(torch.cat(feats))
            self._txt_feats = None
            self.stats.texts_encoded += len(new)
            self.stats.seconds_texts += time.perf_counter() - t0
        return self.text_features()[[self._txt_index[t] for t in texts]] if texts else torch.empty(0)

    def forget_texts(self) -> None:
        """Drop cached text features (ARO-Order: each seed's perturbations are not reused, so memory stays flat)."""
        self._txt_index.clear()
        self._txt_chunks.clear()
        self._txt_feats = None

    def image_features(self) -> torch.Tensor:
        if self._img_feats is None:
            self._img_feats = torch.cat(self._img_chunks) if self._img_chunks else torch.empty(0, 0)
        return self._img_feats

    def text_features(self) -> torch.Tensor:
        if self._txt_feats is None:
            self._txt_feats = torch.cat(self._txt_chunks) if self._txt_chunks else torch.empty(0, 0)
        return self._txt_feats
