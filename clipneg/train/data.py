"""Training data: webdataset shards with negatives -> the named batch dict of ARCHITECTURE.md.

```
batch = {"image": [B,3,H,W], "text": [B,L], "neg_text": [B,Kt,L], "neg_text_mask": [B,Kt] bool,
         "neg_text_kind": [B,Kt] (index into clipneg.schema.KIND_LIST, -1 if empty), "neg_image": [B,Ki,3,H,W],
         "neg_image_mask": [B,Ki] bool, "neg_image_text": [B,Ki] (slot in neg_text it depicts, -1 if none),
         "key": list[str]}
# with data.paraphrases: "para_text": [B,L] (one paraphrase of the caption), "para_mask": [B] bool (False: none),
#                        "para_neg": [B,Kp,L] (its word-order negatives), "para_neg_mask": [B,Kp] bool
```

K is fixed and missing negatives are masked, so shapes are static whatever a sample carries. Images are float32 when
the transform ends in ToTensor + Normalize, or uint8 when it stops before them (train.py's default,
``data.uint8_images``): clipneg.train.pixels.PixelNormalizer then finishes the batch on the device, to the same values.

The pipeline is an explicit ``wds.DataPipeline``: shard list (shuffled by seed + epoch, identically on every rank)
-> ``split_by_node`` -> ``split_by_worker`` -> samples (webdataset's, with clipneg.tars's faster tar parser)
-> buffer shuffle -> negative selection and decoding -> batches built inside the worker. It must NOT go through
``accelerator.prepare``: that would shard a second time or dispatch from rank 0 (PROTOCOLS.md §4). Every sample is
seen exactly once per epoch across workers and ranks as long as there are at least ranks x workers shards
(``drop_last`` discards each worker's final partial batch, so DDP ranks stay in step; turn it off to see every
sample).

Which negatives fill the K slots is chosen per sample from the kinds it carries, with per-kind weights, or a schedule
of weights over training steps (relation-focused negatives fixed relations on the built-in world where an even mix
left them at chance). Batches are formed inside the worker, and PyTorch's DataLoader hands them out round-robin, so a
worker knows the exact step of the batch it is filling: ``start_step + local_batch * num_workers + worker_id``.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
import webdataset as wds
from accelerate import Accelerator
from PIL import Image
from torch.utils.data import default_collate

from clipneg.models import ClipBundle
from clipneg.schema import IMAGE_EXTS, KIND_ID, parse_neg_json
from clipneg.shards import list_shards
from clipneg.tars import tarfile_to_samples
from clipneg.train.checkpoints import TrainState
from clipneg.train.config import LoaderConfig, TrainConfig
from clipneg.train.pixels import split_pixel_steps, to_uint8_chw

log = logging.getLogger(__name__)


def weights_at(cfg: LoaderConfig, step: int) -> Mapping[str, float] | None:
    """The per-kind weights in force at ``step`` (pure function of the config)."""
    for phase in cfg.kind_schedule or ():
        if phase.until_step is None or step < phase.until_step:
            return phase.weights
    return cfg.kind_weights


def _weighted_order(kinds: list[str], weights: Mapping[str, float] | None, rng: random.Random) -> list[int]:
    """Indices ordered by a weighted draw without replacement (Efraimidis & Spirakis 2006: key = u ** (1 / w));
    zero-weight kinds are left out."""
    keyed = []
    for i, kind in enumerate(kinds):
        w = 1.0 if weights is None else float(weights.get(kind, 0.0))
        if w > 0:
            keyed.append((rng.random() ** (1.0 / w), i))
    return [i for _, i in sorted(keyed, reverse=True)]


def select_negatives(neg: dict[str, Any], k_text: int, k_image: int, weights: Mapping[str, float] | None,
                     rng: random.Random, pair_images: bool = True) -> tuple[list[int], list[int]]:
    """Choose which negative captions and images (indices into neg.json's lists) fill the K slots."""
    texts, images = neg["texts"], neg["images"]
    chosen_texts = _weighted_order([t["kind"] for t in texts], weights, rng)[:k_text]
    if k_image == 0 or not images:
        return chosen_texts, []
    order = _weighted_order([im["kind"] for im in images], weights, rng)
    if pair_images:
        slot = {t: s for s, t in enumerate(chosen_texts)}
        # images depicting a chosen caption first, in the order of the caption slots, then the rest by weight
        paired = sorted((i for i in order if images[i].get("text") in slot), key=lambda i: slot[images[i]["text"]])
        order = paired + [i for i in order if i not in paired]
    return chosen_texts, order[:k_image]


def _decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


class NegativeDecoder:
    """Turns a raw webdataset sample into tensors for one training example (runs in the loader workers)."""

    def __init__(self, cfg: LoaderConfig, preprocess: Callable, tokenizer: Callable, *, epoch: int, start_step: int):
        self.cfg, self.preprocess, self.tokenizer = cfg, preprocess, tokenizer
        self.epoch, self.start_step = epoch, start_step

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        for n, raw in enumerate(samples):
            step = self.start_step + (n // self.cfg.batch_size) * n_workers + worker
            try:
                yield self.decode(raw, step)
            except Exception as e:  # noqa: BLE001 - a bad sample is logged and skipped, training goes on
                log.warning("skipping sample %s from %s: %s", raw.get("__key__"), raw.get("__url__"), e)

    def _image(self, data: bytes) -> torch.Tensor:
        # A transform that stops before ToTensor + Normalize leaves a PIL image: it travels as uint8, and
        # clipneg.train.pixels.PixelNormalizer finishes it on the training device.
        image = self.preprocess(_decode_image(data))
        return image if torch.is_tensor(image) else to_uint8_chw(image)

    def decode(self, raw: dict[str, Any], step: int) -> dict[str, Any]:
        cfg = self.cfg
        key = raw["__key__"]
        ext = next((e for e in IMAGE_EXTS if e in raw), None)
        if ext is None:
            raise ValueError(f"no image member in sample {key}")
        caption = raw["txt"].decode("utf-8")
        neg = parse_neg_json(raw["neg.json"]) if "neg.json" in raw else {"texts": [], "images": []}
        # Seeded by key, not by worker or position, so the choice is the same whatever the worker layout.
        rng = random.Random(f"{cfg.seed}:{self.epoch}:{key}")
        text_idx, image_idx = select_negatives(neg, cfg.k_text, cfg.k_image, weights_at(cfg, step), rng,
                                               cfg.pair_images_with_texts)
        # Drawn after the negatives, so switching paraphrases on leaves the negatives' draw as it was.
        para = rng.choice(neg["paraphrases"]) if cfg.paraphrases and neg.get("paraphrases") else None
        para_texts = [para["text"], *para.get("negatives", [])[: cfg.k_para_neg]] if para else []
        tokens = self.tokenizer([caption] + [neg["texts"][i]["text"] for i in text_idx] + para_texts)
        L = tokens.shape[1]
        neg_text = torch.zeros(cfg.k_text, L, dtype=tokens.dtype)
        neg_text[: len(text_idx)] = tokens[1: 1 + len(text_idx)]
        kind = torch.full((cfg.k_text,), -1, dtype=torch.long)
        kind[: len(text_idx)] = torch.tensor([KIND_ID[neg["texts"][i]["kind"]] for i in text_idx], dtype=torch.long)
        image = self._image(raw[ext])
        neg_image = torch.zeros(cfg.k_image, *image.shape, dtype=image.dtype)
        neg_image_text = torch.full((cfg.k_image,), -1, dtype=torch.long)
        slot = {t: s for s, t in enumerate(text_idx)}
        for j, i in enumerate(image_idx):
            meta = neg["images"][i]
            neg_image[j] = self._image(raw[meta["member"]])
            neg_image_text[j] = slot.get(meta.get("text"), -1)
        extra = {}
        if cfg.paraphrases:
            para_tokens = torch.zeros(1 + cfg.k_para_neg, L, dtype=tokens.dtype)
            para_tokens[: len(para_texts)] = tokens[1 + len(text_idx):]
            extra = {"para_text": para_tokens[0], "para_mask": torch.tensor(para is not None),
                     "para_neg": para_tokens[1:], "para_neg_mask": torch.arange(cfg.k_para_neg) < len(para_texts) - 1}
        return {
            "key": key,
            "image": image,
            "text": tokens[0],
            "neg_text": neg_text,
            "neg_text_mask": torch.arange(cfg.k_text) < len(text_idx),
            "neg_text_kind": kind,
            "neg_image": neg_image,
            "neg_image_mask": torch.arange(cfg.k_image) < len(image_idx),
            "neg_image_text": neg_image_text,
            **extra,
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    # default_collate stacks straight into shared memory inside a loader worker; a plain torch.stack would be copied
    # there a second time when the batch is sent to the main process (154 MB a batch for ViT-B-32 at 256).
    return {k: [s[k] for s in samples] if k == "key" else default_collate([s[k] for s in samples]) for k in samples[0]}


def _log_and_continue(exn: Exception) -> bool:
    log.warning("webdataset: %s (skipped)", exn)
    return True


def build_pipeline(cfg: LoaderConfig, *, preprocess: Callable, tokenizer: Callable, epoch: int = 0,
                   start_step: int = 0) -> wds.DataPipeline:
    """The dataset half (run inside workers); see :func:`build_loader`."""
    urls = list_shards(cfg.shards)
    if cfg.shuffle_shards:
        # Same order on every rank (seed + epoch only), so split_by_node hands out disjoint shards.
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(urls)
    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_node,
        wds.split_by_worker,
        tarfile_to_samples(handler=_log_and_continue),
        wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 100),
                    rng=random.Random(cfg.seed * 7919 + epoch)) if cfg.shuffle_buffer > 1 else wds.filters.identity,
        NegativeDecoder(cfg, preprocess, tokenizer, epoch=epoch, start_step=start_step),
        wds.batched(cfg.batch_size, collation_fn=collate, partial=not cfg.drop_last),
    )


def build_loader(cfg: LoaderConfig, *, preprocess: Callable, tokenizer: Callable, epoch: int = 0,
                 start_step: int = 0) -> wds.WebLoader:
    """A loader yielding batch dicts for one epoch. Build a new one per epoch (it reshuffles by ``epoch``) and pass
    the global step at which the epoch starts (for kind schedules)."""
    pipeline = build_pipeline(cfg, preprocess=preprocess, tokenizer=tokenizer, epoch=epoch, start_step=start_step)
    # The generator seeds each worker's torch RNG (random crops), so an epoch is reproducible for a seed.
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    # Pinned batches: a copy from pageable memory blocks the host until the GPU has drained its queue, so the next
    # step could not be queued behind the current one (ViT-B-32 on an H100: 1.6k unpinned, 2.2k pinned samples/s;
    # docs/BENCHMARKS.md).
    return wds.WebLoader(pipeline, batch_size=None, num_workers=cfg.num_workers, generator=generator,
                         persistent_workers=False, prefetch_factor=4 if cfg.num_workers else None,
                         pin_memory=torch.cuda.is_available())


def train_batches(cfg: TrainConfig, bundle: ClipBundle, state: TrainState, accelerator: Accelerator
                  ) -> Iterator[dict[str, Any]]:
    """Training batches on this process's device, epoch after epoch, starting where ``state`` says.

    The loader is never passed to ``accelerator.prepare`` (it would shard a second time: this module splits shards by
    node and worker itself). Resuming rebuilds the epoch's loader and skips the batches already trained on; loader
    creation and skipping run under a forked RNG seeded by (seed, epoch, rank), so worker augmentation seeds do not
    depend on when the loader was made, and skipping does not consume the restored training RNG.
    """
    skip = state.step - state.epoch_start_step
    preprocess = bundle.preprocess_train if cfg.data.augment else bundle.preprocess_val
    # uint8 images from the loader, scaled and normalised here on the device (the same values; clipneg.train.pixels)
    split = split_pixel_steps(preprocess) if cfg.data.uint8_images else None
    preprocess, finish = split if split else (preprocess, dict)
    processes = accelerator.num_processes
    while True:
        loader = build_loader(cfg.data, preprocess=preprocess, tokenizer=bundle.tokenizer,
                              epoch=state.epoch, start_step=state.epoch_start_step)
        n = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.data.seed * 1_000_003 + state.epoch * 7919 + accelerator.process_index)
            it = iter(loader)
            for _ in range(skip):
                if next(it, None) is None:
                    break
                n += 1
        skip = 0
        while True:
            batch = next(it, None)
            if processes > 1:
                # Ranks can hold unequal shares of an epoch; all must stop together or DDP hangs in backward.
                have = torch.tensor([0 if batch is None else 1], device=accelerator.device)
                dist.all_reduce(have, op=dist.ReduceOp.MIN)
                if not have.item():
                    break
            elif batch is None:
                break
            n += 1
            yield finish({k: (v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v)
                          for k, v in batch.items()})
        if n == 0:
            raise RuntimeError(f"data.shards {cfg.data.shards!r} gave no full batch of {cfg.data.batch_size} on "
                               f"process {accelerator.process_index}: use more samples or shards (at least "
                               "processes x data.num_workers shards), a smaller data.batch_size, or data.drop_last "
                               "false")
        state.epoch += 1
        state.epoch_start_step = state.step


__all__ = ["build_loader", "build_pipeline", "collate", "select_negatives", "train_batches", "weights_at"]
