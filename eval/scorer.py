"""One scorer for every benchmark: items with K images and L captions, a similarity matrix per item.

Protocol (PROTOCOLS.md §1, the official SugarCrepe evaluation, RAIVNLab/sugar-crepe): fp32 without autocast, the
model's eval transform, L2-normalised image and text embeddings, cosine similarity. What we change is only the
schedule, never the arithmetic that decides an item:

- every unique image (path + crop box) is decoded by DataLoader workers and encoded once per run, in batches;
- every unique caption is tokenised and encoded once per run, in batches;
- every unique (image, caption) pair is scored once, so identical inputs give bit-identical scores and a tie between
  two identical captions is an exact tie under every tie policy (ARO-Order's identical perturbations rely on this).

Decisions are made by `decide` / `beats` under a tie policy:
  strict  a tie is wrong (official SugarCrepe `pos > neg`, ARO VG `argmax([false, true]) == 1`, Winoground `>`);
  first   a tie goes to the earliest option, i.e. the positive (ARO-Order's `argmax(...) == 0`, LAION CLIP_benchmark);
  random  a tie is broken uniformly at random from a seeded generator (reported seed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .items import ImageRef, Item

logger = logging.getLogger(__name__)

TIE_POLICIES = ("strict", "first", "random")
PRECISIONS = ("fp32", "amp")


@dataclass(frozen=True)
class ScorerConfig:
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
class ItemScores:
    """The similarities of one item: image_text[k, l] = cos(image k, text l); text_text[i, j] when requested."""

    item: Item
    image_text: np.ndarray
    text_text: np.ndarray | None = None


@dataclass
class ScorerStats:
    images_encoded: int = 0
    texts_encoded: int = 0
    pairs_scored: int = 0
    seconds_images: float = 0.0
    seconds_texts: float = 0.0
    seconds_total: float = 0.0
    items: int = 0

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def load_image(ref: ImageRef) -> Image.Image:
    """Open an image as the official protocols do.

    Default: the file as PIL opens it; open_clip's eval transform converts to RGB itself (official SugarCrepe passes
    `Image.open(path)` straight to the transform). rgb_first: `convert("RGB")` first (official ARO loaders). Cropped:
    convert to RGB, then crop to (x, y, x+w, y+h) (official ARO VG-Relation / VG-Attribution order).
    """
    with Image.open(ref.path) as im:
        if ref.box is not None:
            return im.convert("RGB").crop(ref.crop_box())
        if ref.rgb_first:
            return im.convert("RGB")
        im.load()
        return im


class _ImageDataset(Dataset):
    def __init__(self, refs: Sequence[ImageRef], preprocess: Callable) -> None:
        self.refs = list(refs)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(load_image(self.refs[i]))


class Scorer:
    """Encodes images and texts once per run (cached across calls) and scores items.

    model: an open_clip model (`encode_image`, `encode_text`); preprocess: its eval transform; tokenizer: its
    tokenizer.
    """

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable,
                 config: ScorerConfig | None = None) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.config = config or ScorerConfig()
        self.device = torch.device(self.config.device)
        self.model.eval().to(self.device)
        self.stats = ScorerStats()
        self._img_index: dict[ImageRef, int] = {}
        self._img_chunks: list[torch.Tensor] = []
        self._img_feats: torch.Tensor | None = None
        self._txt_index: dict[str, int] = {}
        self._txt_chunks: list[torch.Tensor] = []
        self._txt_feats: torch.Tensor | None = None

    # ---- features -------------------------------------------------------------------------------------------------
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
        """Features [N, D] (float32, L2-normalised, on CPU) for refs; each unique ref is encoded once per Scorer."""
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
        """Features [N, D] (float32, L2-normalised, on CPU); each unique text is encoded once per Scorer."""
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

    # ---- items ----------------------------------------------------------------------------------------------------
    def score(self, items: Iterable[Item]) -> list[ItemScores]:
        """Similarity matrices for items, in order. Encodes what is not cached yet, then scores unique pairs once."""
        t0 = time.perf_counter()
        items = list(items)
        self.encode_images(dict.fromkeys(r for it in items for r in it.images))
        self.encode_texts(dict.fromkeys(t for it in items for t in it.texts))
        img, txt = self.image_features(), self.text_features()

        # Every cell of every item as a (left, right) index pair; cells that share inputs share one score.
        it_cells, tt_cells = [], []
        for it in items:
            ii = [self._img_index[r] for r in it.images]
            tt = [self._txt_index[t] for t in it.texts]
            it_cells.append(np.array([(a, b) for a in ii for b in tt], dtype=np.int64).reshape(-1, 2))
            if it.text_text:
                tt_cells.append(np.array([(a, b) for a in tt for b in tt], dtype=np.int64).reshape(-1, 2))
        it_scores, n_it = _pair_scores(img, txt, it_cells)
        tt_scores, n_tt = _pair_scores(txt, txt, tt_cells)
        self.stats.pairs_scored += n_it + n_tt

        out, j = [], 0
        for it, s in zip(items, it_scores, strict=True):
            tt_matrix = None
            if it.text_text:
                tt_matrix = tt_scores[j].reshape(len(it.texts), len(it.texts))
                j += 1
            out.append(ItemScores(it, s.reshape(len(it.images), len(it.texts)), tt_matrix))
        self.stats.items += len(items)
        self.stats.seconds_total += time.perf_counter() - t0
        return out


def _pair_scores(left: torch.Tensor, right: torch.Tensor, cells: list[np.ndarray], chunk: int = 1 << 16
                 ) -> tuple[list[np.ndarray], int]:
    """Dot products for lists of index pairs, each unique pair computed once (float32, like the official loop).

    Returns the scores per list and the number of unique pairs computed."""
    if not cells:
        return [], 0
    sizes = [len(c) for c in cells]
    allc = np.concatenate(cells) if sum(sizes) else np.zeros((0, 2), dtype=np.int64)
    uniq, inverse = np.unique(allc, axis=0, return_inverse=True)
    vals = np.empty(len(uniq), dtype=np.float32)
    for i in range(0, len(uniq), chunk):
        u = torch.from_numpy(uniq[i:i + chunk])
        vals[i:i + chunk] = (left[u[:, 0]] * right[u[:, 1]]).sum(-1).numpy()
    flat = vals[inverse.reshape(-1)]
    return np.split(flat, np.cumsum(sizes)[:-1]), len(uniq)


# ---- decisions ---------------------------------------------------------------------------------------------------
def check_tie_policy(policy: str) -> str:
    if policy not in TIE_POLICIES:
        raise ValueError(f"tie policy must be one of {TIE_POLICIES} (got {policy!r})")
    return policy


def beats(a: float, b: float, policy: str, rng: np.random.Generator | None = None) -> bool:
    """Does score a (the correct side) beat b? Ties resolved by policy (strict: no; first: yes; random: coin)."""
    if a != b:
        return bool(a > b)
    if policy == "strict":
        return False
    if policy == "first":
        return True
    if rng is None:
        raise ValueError("tie policy 'random' needs a numpy Generator")
    return bool(rng.integers(2) == 0)


def decide(scores: Sequence[float] | np.ndarray, target: int = 0, policy: str = "strict",
           rng: np.random.Generator | None = None) -> bool:
    """Is option `target` chosen? scores[target] must be the maximum; a tie at the maximum is resolved by policy.

    strict: wrong on any tie (official `pos > neg`); first: the earliest tied option wins, like np.argmax; random: one
    of the tied options, uniformly (rng consumed only on ties, so runs are reproducible).
    """
    s = np.asarray(scores)
    top = s.max()
    if s[target] < top:
        return False
    tied = np.flatnonzero(s == top)
    if len(tied) == 1:
        return True
    if policy == "strict":
        return False
    if policy == "first":
        return bool(tied[0] == target)
    if rng is None:
        raise ValueError("tie policy 'random' needs a numpy Generator")
    return bool(tied[rng.integers(len(tied))] == target)


def is_tie(scores: Sequence[float] | np.ndarray, target: int = 0) -> bool:
    """Does the target share the maximum with another option?"""
    s = np.asarray(scores)
    return bool(s[target] == s.max() and (s == s[target]).sum() > 1)


def choose_text(scores: ItemScores, policy: str, rng: np.random.Generator | None = None, image: int = 0,
                target: int = 0) -> tuple[bool, bool]:
    """(correct, tie) for "image `image` must pick caption `target` among the item's captions"."""
    row = scores.image_text[image]
    return decide(row, target, policy, rng), is_tie(row, target)


def rank_of(scores: np.ndarray, positive: np.ndarray | Sequence[int] | int, policy: str,
            rng: np.random.Generator | None = None) -> int:
    """0-based rank of the best positive among the negatives (Recall@k counts rank < k). Ties with negatives:
    strict ranks the positive below them, first above them, random at a uniform place among them."""
    s = np.asarray(scores)
    pos_mask = np.zeros(len(s), dtype=bool)
    pos_mask[positive] = True
    best = s[pos_mask].max()
    neg = s[~pos_mask]
    above, tied = int((neg > best).sum()), int((neg == best).sum())
    if tied == 0 or policy == "first":
        return above
    if policy == "strict":
        return above + tied
    if rng is None:
        raise ValueError("tie policy 'random' needs a numpy Generator")
    return above + int(rng.integers(tied + 1))
