"""Images cross from the loader as uint8 and are scaled and normalised on the training device.

An open_clip transform ends in ``ToTensor`` (to float32 in [0, 1]) and ``Normalize`` (per-channel mean and std), run
per image in the loader workers. Stopping the transform before those two steps and sending uint8 pixels instead
moves a quarter of the bytes through the workers' shared memory and the pinned copy (38 MB instead of 154 MB for a
batch of 256 images at 224 px) and takes two full passes over every image off the loader's CPU cores, which bound
ViT-B-32 training on an H100 (docs/BENCHMARKS.md). :class:`PixelNormalizer` then runs the same float32 operations in
the same order as torchvision (``x.float().div(255)``, then ``sub(mean).div(std)``), once per batch on the device,
so the images the model sees are bit for bit the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T

TO_TENSOR = ("ToTensor", "MaybeToTensor")  # torchvision's, and open_clip's (which passes tensors through)


def to_uint8_chw(image: Image.Image) -> Tensor:
    """An RGB PIL image as a [3, H, W] uint8 tensor (``ToTensor``'s layout, before its scaling).

    A strided view of the [H, W, 3] pixels: the batch's collation copies it into place anyway, so making it
    contiguous here would copy every image twice."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image after the transform's PIL steps, got mode {image.mode!r}")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


@functools.lru_cache(maxsize=16)
def _channels(values: tuple[float, ...], device: torch.device) -> Tensor:
    # Made once per device: building it per batch would copy from pageable host memory, which makes the host wait
    # for the GPU's queue and stops the next step being queued behind the current one.
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)


@dataclass(frozen=True)
class PixelNormalizer:
    """``ToTensor`` + ``Normalize`` for the uint8 images of a batch dict; other keys and float images pass through.

    Empty negative-image slots (``neg_image_mask`` False) stay 0, as the loader's float zeros were: every slot goes
    through the image tower, and a BatchNorm tower's batch statistics would see the difference.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def pixels(self, x: Tensor) -> Tensor:
        return x.float().div_(255).sub_(_channels(self.mean, x.device)).div_(_channels(self.std, x.device))

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        if torch.is_tensor(batch.get("image")) and batch["image"].dtype == torch.uint8:
            out["image"] = self.pixels(batch["image"])
        neg = batch.get("neg_image")
        if torch.is_tensor(neg) and neg.dtype == torch.uint8:
            filled = batch["neg_image_mask"].view(*neg.shape[:2], 1, 1, 1)
            out["neg_image"] = torch.where(filled, self.pixels(neg), 0.0)
        return out


def split_pixel_steps(preprocess: Callable) -> tuple[Callable, PixelNormalizer] | None:
    """``preprocess`` without its final ToTensor + Normalize (a PIL-to-PIL transform), and those two steps for the
    batch; None when it does not end that way (then the loader keeps the whole transform per image)."""
    steps = list(getattr(preprocess, "transforms", ()))
    if len(steps) < 2 or type(steps[-2]).__name__ not in TO_TENSOR or not isinstance(steps[-1], T.Normalize):
        return None
    norm = steps[-1]
    return T.Compose(steps[:-2]), PixelNormalizer(tuple(float(m) for m in norm.mean),
                                                  tuple(float(s) for s in norm.std))
