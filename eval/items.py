"""The unit every benchmark adapter yields: one item with K images, L captions and a known correct pairing.

Adapters normalise each benchmark to "positive first" (STYLE.md: ARO's official [false, true] order becomes
[true, false]), so the scorer and the metrics never need to know where a benchmark keeps its positive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipneg.encoder import Box, ImageRef

__all__ = ["Box", "ImageRef", "Item", "make_item", "require_images", "sha256_file"]



@dataclass(frozen=True)
class Item:
    """One benchmark item.

    images: K image refs (K may be 0 for text-only items); texts: L captions with the positive(s) first.
    meta: benchmark facts used by the metrics (subset, relation, attribute pair, seed, ...). Must be JSON-serialisable.
    text_text: also compute the L x L caption-caption similarities (SugarCrepe++ TOT).
    """

    id: str
    images: tuple[ImageRef, ...]
    texts: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    text_text: bool = False


def make_item(
    id: str,
    images: Iterable[ImageRef | str | Path],
    texts: Iterable[str],
    meta: dict[str, Any] | None = None,
    text_text: bool = False,
) -> Item:
    """Build an Item, accepting plain paths for images."""
    refs = tuple(im if isinstance(im, ImageRef) else ImageRef(str(im)) for im in images)
    return Item(id=str(id), images=refs, texts=tuple(str(t) for t in texts), meta=dict(meta or {}),
                text_text=text_text)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def require_images(items: Iterable[Item], hint: str, show: int = 5) -> int:
    """Raise FileNotFoundError naming missing image files (first few) and what to do; return the unique image count."""
    paths = dict.fromkeys(ref.path for it in items for ref in it.images)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        listed = ", ".join(missing[:show]) + (" ..." if len(missing) > show else "")
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} image files are missing ({listed}). {hint}")
    return len(paths)
