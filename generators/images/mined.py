"""``MinedNeighbours``: NegCLIP's image negatives, the nearest real images of the dataset itself.

    from clipneg.encoder import Encoder, EncoderConfig
    from clipneg.generators.images.mined import MinedConfig, MinedNeighbours
    stage = MinedNeighbours(MinedConfig(num_negatives=1, range_max=8), encoder=Encoder(m, preprocess, tokenizer))
    stage.index(samples)            # phase 1: embed every image of the dataset once (and captions, for margins)
    samples = stage(samples)        # phase 2, per chunk: attach neighbours' images with their own captions

Each mined negative is the neighbour's image bytes (``NegImage(kind="mined", gen="mined")``) paired with the
NEIGHBOUR'S OWN CAPTION, appended to ``neg_texts`` as ``NegText(kind="mined")`` so that ``NegImage.text`` names it:
the (image, caption) pair is true, it is only a negative for this sample (NegCLIP, Yuksekgonul et al. 2023).

The selection follows sentence-transformers' ``mine_hard_negatives`` (``util/hard_negatives.py``), adapted from
query-document to image-image mining:

| option              | meaning here                                                                                |
|---------------------|---------------------------------------------------------------------------------------------|
| ``range_min/max``   | rank window over the candidates that survive the exclusions below (0 = nearest survivor);  |
|                     | ``range_max=None``: ``range_min + num_negatives`` (x10 when a score filter is set), as ST  |
| ``max_score``       | drop neighbours with image-image cosine above it (near-duplicates; default 0.98)           |
| ``min_score``       | drop neighbours with image-image cosine below it                                           |
| ``margin``          | ST's ``absolute_margin``: drop neighbour j of sample i if                                  |
|                     | ``cos(img_j, cap_i) + margin > cos(img_i, cap_i)`` (j would describe i's caption about as  |
|                     | well as i's own image: a likely false negative). 0 = j must match cap_i no better than i   |
| ``relative_margin`` | ST's: drop if ``cos(img_j, cap_i) > cos(img_i, cap_i) - abs(cos(img_i, cap_i)) * rm``        |
| ``sampling_strategy``| "top": the first ``num_negatives`` of the window; "random": a seeded sample of the window's |
|                     | survivors (``stable_seed(key, seed)``), re-sorted by score, as ST                          |

Always excluded before ranks are counted: the sample itself, images with identical bytes, and neighbours whose
caption equals the sample's caption or one of its paraphrases (the pair would be written as its own negative).
As in ST, the search retrieves a fixed pool (``range_max + 1 + extra_candidates`` per query); when exclusions empty
it, a sample gets fewer negatives (counted in ``stats.extra["short"]``).

Search: :func:`nearest`, exact inner-product top-k in blocks of queries (memory ``chunk x N`` scores), in torch, or
with faiss (``IndexFlatIP``) when it is installed and ``backend`` allows; both give the same neighbours (up to the
order of two cosines equal to ~1e-7). Each call searches its chunk against the whole index; ``precompute=True``
searches the whole index against itself once instead (a self-search: half the multiply-adds, see
``bench/mining.py``) and looks rows up. Under ``accelerate launch`` every rank indexes the whole dataset (the
neighbours of a sample do not depend on rank); leave ``precompute`` off there, each rank would repeat it all.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image

from clipneg.encoder import Encoder, ImageRef
from clipneg.schema import NegImage, NegText, Sample
from clipneg.shards import Quarantined

from ..base import StageStats, config_hash, stable_seed

logger = logging.getLogger(__name__)

VERSION = "1.0.0"
GEN = "mined"
KIND = "mined"
BACKENDS = ("auto", "torch", "faiss")
STRATEGIES = ("top", "random")
_PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def nearest(query: torch.Tensor, base: torch.Tensor, k: int, chunk: int = 1024,
            exclude_self: bool | torch.Tensor = False, backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product (cosine for L2-normalised rows) of each query row among the base rows.

    | input          | shape / type            | meaning                                                          |
    |----------------|-------------------------|------------------------------------------------------------------|
    | ``query``      | float [Q, D]            | query embeddings                                                 |
    | ``base``       | float [N, D]            | the searched embeddings                                          |
    | ``k``          | int                     | neighbours per query (capped at the number of candidates)        |
    | ``chunk``      | int                     | queries per block: at most ``chunk x N`` scores exist at once    |
    | ``exclude_self``| bool or long [Q]       | True: query i is base row i (self-search); a tensor: the base    |
    |                |                         | row of each query to leave out (-1: none)                        |
    | ``backend``    | "torch", "faiss", "auto"| faiss ``IndexFlatIP`` (same neighbours) or chunked ``torch.topk``|

    A self-search (``query is base``, as in the benchmark) computes each block pair of ``x @ x.T`` once and uses it
    for both blocks' rows: half the multiply-adds, ``chunk x chunk`` scores at once. Returns
    ``(scores [Q, k], indices [Q, k])``, best first; rows padded with ``-inf`` / ``-1`` when fewer than
    ``k`` candidates exist.
    """
    if query.ndim != 2 or base.ndim != 2 or query.shape[1] != base.shape[1]:
        raise ValueError(f"query [Q, D] and base [N, D] must share D (got {tuple(query.shape)}, {tuple(base.shape)})")
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be >= 1 (got k={k}, chunk={chunk})")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (got {backend!r})")
    n_q, n = query.shape[0], base.shape[0]
    if isinstance(exclude_self, torch.Tensor):
        self_rows = exclude_self.to(torch.long).reshape(-1)
        if self_rows.numel() != n_q:
            raise ValueError(f"exclude_self needs one base row per query ({n_q}), got {self_rows.numel()}")
    elif exclude_self:
        if n_q > n:
            raise ValueError("exclude_self=True means query i is base row i, but there are more queries than rows")
        self_rows = torch.arange(n_q)
    else:
        self_rows = None
    if backend == "auto":
        backend = "faiss" if faiss_available() and query.device.type == "cpu" else "torch"
    kk = min(k, n)
    if kk == 0 or n_q == 0:
        scores, idx = torch.empty(n_q, 0), torch.empty(n_q, 0, dtype=torch.long)
    elif backend == "faiss":
        scores, idx = _nearest_faiss(query, base, kk, chunk, self_rows)
    elif query is base and not isinstance(exclude_self, torch.Tensor):
        scores, idx = _self_search_torch(base, kk, chunk, bool(exclude_self))
    else:
        scores, idx = _nearest_torch(query, base, kk, chunk, self_rows)
    idx = idx.masked_fill(torch.isneginf(scores), -1)  # an excluded row that topk still had to return (k >= N)
    if kk < k:  # pad as sentence-transformers does, so shapes do not depend on the data
        scores = torch.cat([scores, scores.new_full((n_q, k - kk), -float("inf"))], dim=1)
        idx = torch.cat([idx, idx.new_full((n_q, k - kk), -1)], dim=1)
    return scores, idx


@torch.no_grad()  # not inference_mode: callers may edit the results in place
def _nearest_torch(query: torch.Tensor, base: torch.Tensor, k: int, chunk: int,
                   self_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    base_t = base.t()
    out_s, out_i = [], []
    buf = None
    for start in range(0, query.shape[0], chunk):
        q = query[start:start + chunk]
        # one reused [chunk, N] buffer: allocating a fresh one per block costs page faults on every block
        if buf is None or buf.shape[0] != q.shape[0]:
            buf = torch.empty(q.shape[0], base.shape[0], dtype=torch.result_type(q, base), device=q.device)
        sims = torch.mm(q, base_t, out=buf)
        if self_rows is not None:
            rows = self_rows[start:start + chunk].to(sims.device)
            hit = rows >= 0
            sims[torch.nonzero(hit).squeeze(1), rows[hit]] = -float("inf")
        s, i = torch.topk(sims, k, dim=1)
        out_s.append(s)
        out_i.append(i)
    return torch.cat(out_s), torch.cat(out_i)


@torch.no_grad()
def _self_search_torch(x: torch.Tensor, k: int, block: int, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """All rows against all rows with half the multiply-adds: block (i, j) of ``x @ x.T`` is block (j, i)
    transposed, so each block above the diagonal serves the rows of both; a running top-k per row merges them."""
    n = x.shape[0]
    best_s = x.new_full((n, k), -float("inf"))
    best_i = torch.full((n, k), -1, dtype=torch.long, device=x.device)
    buf = torch.empty(block * block, dtype=x.dtype, device=x.device)

    def merge(r0: int, cand_s: torch.Tensor, cand_i: torch.Tensor) -> None:
        r1 = r0 + cand_s.shape[0]
        s = torch.cat([best_s[r0:r1], cand_s], dim=1)
        i = torch.cat([best_i[r0:r1], cand_i], dim=1)
        top, pos = torch.topk(s, k, dim=1)
        best_s[r0:r1], best_i[r0:r1] = top, torch.gather(i, 1, pos)

    for i0 in range(0, n, block):
        xi = x[i0:i0 + block]
        for j0 in range(i0, n, block):
            xj = x[j0:j0 + block]
            sims = torch.mm(xi, xj.t(), out=buf[:len(xi) * len(xj)].view(len(xi), len(xj)))
            if i0 == j0 and exclude_self:
                sims.fill_diagonal_(-float("inf"))
            s, i = torch.topk(sims, min(k, len(xj)), dim=1)
            merge(i0, s, i + j0)
            if j0 != i0:
                s, i = torch.topk(sims.t().contiguous(), min(k, len(xi)), dim=1)
                merge(j0, s, i + i0)
    return best_s, best_i


def _nearest_faiss(query: torch.Tensor, base: torch.Tensor, k: int, chunk: int,
                   self_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss
    import numpy as np

    b = np.ascontiguousarray(base.detach().cpu().float().numpy())
    index = faiss.IndexFlatIP(b.shape[1])
    index.add(b)
    extra = 1 if self_rows is not None else 0
    out_s, out_i = [], []
    for start in range(0, query.shape[0], chunk):
        q = np.ascontiguousarray(query[start:start + chunk].detach().cpu().float().numpy())
        s, i = index.search(q, min(k + extra, base.shape[0]))
        s, i = torch.from_numpy(s), torch.from_numpy(i).long()
        if extra:
            # the query's own row goes to the end (score -inf), then k columns are kept, as the torch path has them
            is_self = i == self_rows[start:start + chunk].unsqueeze(1)
            s = s.masked_fill(is_self, -float("inf"))
            s, order = torch.sort(s, dim=1, descending=True, stable=True)
            s, i = s[:, :k], torch.gather(i, 1, order)[:, :k]
        out_s.append(s)
        out_i.append(i)
    return torch.cat(out_s), torch.cat(out_i)


@dataclass(frozen=True)
class MinedConfig:
    """See the module docstring for the selection options (sentence-transformers' names and semantics).

    num_negatives: negatives per sample; range_min / range_max: rank window; max_score / min_score: image-image
    cosine bounds; margin / relative_margin: false-negative guard on cos(neighbour image, sample caption) (needs
    caption embeddings, computed at index time when set); sampling_strategy: "top" or "random"; seed: base seed of
    "random"; extra_candidates: pool beyond range_max + self, for exclusions; chunk: queries per search block;
    backend: "auto" (faiss when installed), "torch" or "faiss"; precompute: at the first call, search every indexed
    row against all at once (a self-search: half the multiply-adds of searching chunk by chunk) and look rows up
    afterwards; for one process (under many ranks each would repeat the whole search, so leave it off there)."""

    num_negatives: int = 1
    range_min: int = 0
    range_max: int | None = None
    max_score: float | None = 0.98
    min_score: float | None = None
    margin: float | None = None
    relative_margin: float | None = None
    sampling_strategy: str = "top"
    seed: int = 0
    extra_candidates: int = 16
    chunk: int = 1024
    backend: str = "auto"
    precompute: bool = False

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1 (got {self.num_negatives})")
        if self.range_min < 0:
            raise ValueError(f"range_min must be >= 0 (got {self.range_min})")
        if self.sampling_strategy not in STRATEGIES:
            raise ValueError(f"sampling_strategy must be one of {STRATEGIES} (got {self.sampling_strategy!r})")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} (got {self.backend!r})")
        if self.extra_candidates < 0 or self.chunk < 1:
            raise ValueError("extra_candidates must be >= 0 and chunk >= 1")
        rmax = self.window_max()
        if self.range_min >= rmax:
            raise ValueError(f"range_min must be smaller than range_max (got {self.range_min} and {rmax})")
        if self.num_negatives > rmax - self.range_min:
            raise ValueError(f"cannot mine {self.num_negatives} negatives from ranks [{self.range_min}, {rmax}): "
                             "lower num_negatives or range_min, or raise range_max")

    @property
    def uses_captions(self) -> bool:
        return self.margin is not None or self.relative_margin is not None

    def window_max(self) -> int:
        """range_max, or sentence-transformers' default for it (x10 room when a score filter may drop some)."""
        if self.range_max is not None:
            return self.range_max
        filtered = self.uses_captions or self.max_score is not None or self.min_score is not None
        return self.range_min + self.num_negatives * (10 if filtered else 1)

    def pool(self) -> int:
        return self.window_max() + 1 + self.extra_candidates


# reasons a candidate is dropped, in the order they are applied (each candidate is counted under its first reason)
R_SELF, R_BYTES, R_CAPTION = "self", "identical bytes", "same caption"
R_MARGIN, R_REL, R_MAX, R_MIN = "margin", "relative_margin", "max_score (near-duplicate)", "min_score"


def select_negatives(scores: torch.Tensor, indices: torch.Tensor, config: MinedConfig, *,
                     excluded: torch.Tensor | None = None, pos_scores: torch.Tensor | None = None,
                     cross_scores: torch.Tensor | None = None, seeds: Sequence[int] | None = None,
                     ) -> tuple[list[list[tuple[int, float]]], dict[str, int]]:
    """Pick negatives from a searched pool, without a model (sentence-transformers' selection, see module docs).

    | input          | shape          | meaning                                                              |
    |----------------|----------------|----------------------------------------------------------------------|
    | ``scores``     | float [Q, C]   | image-image cosine of each candidate (best first; -inf = none)        |
    | ``indices``    | long [Q, C]    | base row of each candidate (-1 = none)                               |
    | ``excluded``   | bool [Q, C]    | candidates already ruled out (self, identical bytes, same caption)    |
    | ``pos_scores`` | float [Q]      | cos(img_i, cap_i), for margins                                       |
    | ``cross_scores``| float [Q, C]  | cos(img_j, cap_i), for margins                                       |
    | ``seeds``      | Q ints         | per-query seeds of "random"                                          |

    Excluded candidates count under no filter here. Returns, per query, ``[(base row, score), ...]`` best first,
    and how many candidates each filter removed.
    """
    cfg = config
    s = scores.clone().float()
    s[indices < 0] = -float("inf")
    if excluded is not None:
        s[excluded] = -float("inf")
    counts: dict[str, int] = {}

    def drop(mask: torch.Tensor, reason: str) -> None:
        mask = mask & torch.isfinite(s)
        if int(mask.sum()):
            counts[reason] = counts.get(reason, 0) + int(mask.sum())
        s[mask] = -float("inf")

    if cfg.uses_captions:
        if pos_scores is None or cross_scores is None:
            raise ValueError("margin / relative_margin need pos_scores and cross_scores (caption embeddings)")
        pos = pos_scores.float().unsqueeze(1)
        if cfg.margin is not None:
            drop(cross_scores + cfg.margin > pos, R_MARGIN)
        if cfg.relative_margin is not None:
            drop(cross_scores > pos - pos.abs() * cfg.relative_margin, R_REL)
    if cfg.max_score is not None:
        drop(s > cfg.max_score, R_MAX)
    if cfg.min_score is not None:
        drop(s < cfg.min_score, R_MIN)
    window = min(cfg.window_max(), s.shape[1])
    top_s, local = torch.topk(s, window, dim=1)  # stable enough: the pool is already sorted best first
    top_i = torch.gather(indices, 1, local)
    top_s, top_i = top_s[:, cfg.range_min:], top_i[:, cfg.range_min:]
    out: list[list[tuple[int, float]]] = []
    for q in range(s.shape[0]):
        alive = [(int(i), float(v)) for i, v in zip(top_i[q].tolist(), top_s[q].tolist(), strict=True)
                 if v != -float("inf")]
        if cfg.sampling_strategy == "random" and len(alive) > cfg.num_negatives:
            rng = random.Random(seeds[q] if seeds is not None else cfg.seed)
            alive = sorted(rng.sample(alive, cfg.num_negatives), key=lambda t: -t[1])
        out.append(alive[:cfg.num_negatives])
    return out, counts


@dataclass
class _Index:
    keys: list[str]
    row: dict[str, int]
    images: list[bytes]
    exts: list[str]
    captions: list[str]
    digests: list[bytes]
    image_emb: torch.Tensor  # [N, D]
    caption_emb: torch.Tensor | None  # [N, D] when margins are set


def _ext_of(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format
    if fmt not in _PIL_EXT:
        raise ValueError(f"image format {fmt!r} is not one of {sorted(_PIL_EXT)} (the shard contract's jpg/png/webp)")
    return _PIL_EXT[fmt]


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class MinedNeighbours:
    """Image negatives mined from the dataset itself: index once, then call per chunk (see the module docstring).

    encoder: a :class:`clipneg.encoder.Encoder` around the reference model (any open_clip model); needed by
    :meth:`index` and for samples that were not indexed. model_name: recorded in the manifest.
    """

    name = "mined"
    version = VERSION

    def __init__(self, config: MinedConfig | None = None, *, encoder: Encoder | None = None,
                 model_name: str | None = None) -> None:
        self.config = config or MinedConfig()
        self.encoder = encoder
        self.model_name = model_name
        self.stats = StageStats()
        self._index: _Index | None = None
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # precomputed pool of every indexed row

    # ---- phase 1 ------------------------------------------------------------------------------------------------
    def index(self, items: Iterable[Sample | tuple[str, bytes, str]]) -> int:
        """Embed the whole dataset: Samples, or ``(key, image bytes, caption)`` tuples. Returns the number indexed.

        Identical bytes are encoded once (the encoder's cache is keyed by content digest)."""
        if self.encoder is None:
            raise ValueError("MinedNeighbours.index needs an encoder (clipneg.encoder.Encoder around a reference "
                             "CLIP); with ready embeddings call index_embeddings")
        keys, images, exts, captions = [], [], [], []
        for item in items:
            if isinstance(item, Sample):
                key, data, caption, ext = item.key, item.image, item.caption, item.image_ext
            else:
                key, data, caption = item
                ext = _ext_of(data)
            keys.append(key)
            images.append(data)
            exts.append(ext)
            captions.append(caption)
        digests = [_digest(d) for d in images]
        refs = [ImageRef(path=g.hex(), data=d) for g, d in zip(digests, images, strict=True)]
        image_emb = self.encoder.encode_images(refs) if refs else torch.empty(0, 0)
        caption_emb = self.encoder.encode_texts(captions) if self.config.uses_captions and captions else None
        self.index_embeddings(keys, image_emb, images, exts, captions, caption_emb, digests=digests)
        return len(keys)

    def index_embeddings(self, keys: Sequence[str], image_emb: torch.Tensor, images: Sequence[bytes],
                         exts: Sequence[str], captions: Sequence[str], caption_emb: torch.Tensor | None = None, *,
                         digests: Sequence[bytes] | None = None) -> None:
        """Phase 1 from ready embeddings (L2-normalised [N, D]); the model-free entry point for tests and caches."""
        n = len(keys)
        if not (len(images) == len(exts) == len(captions) == n and image_emb.shape[0] == n):
            raise ValueError(f"keys, images, exts, captions and image_emb rows must agree (got {n} keys, "
                             f"{len(images)} images, {len(exts)} exts, {len(captions)} captions, "
                             f"{image_emb.shape[0]} embeddings)")
        if self.config.uses_captions and (caption_emb is None or caption_emb.shape[0] != n):
            raise ValueError("margin / relative_margin need caption embeddings for every indexed sample")
        row: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in row:
                raise ValueError(f"key {k!r} is indexed twice (rows {row[k]} and {i}); keys must be unique")
            row[k] = i
        self._table = None
        self._index = _Index(list(keys), row, list(images), list(exts), list(captions),
                             list(digests) if digests is not None else [_digest(d) for d in images],
                             image_emb.float(), None if caption_emb is None else caption_emb.float())
        self.stats.extra["indexed"] += n

    @property
    def indexed(self) -> int:
        return 0 if self._index is None else len(self._index.keys)

    # ---- phase 2 ------------------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        out: dict[str, Any] = {"name": self.name, "version": self.version, "config": cfg,
                               "config_hash": config_hash(cfg), "model": self.model_name, "indexed": self.indexed,
                               "faiss": faiss_available()}
        if self.encoder is not None:
            out["encoder"] = self.encoder.config.to_dict()
        return out

    def _query_embeddings(self, chunk: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(image embeddings [Q, D], own base rows [Q] (-1: not indexed), caption embeddings [Q, D] or None)."""
        ix = self._index
        assert ix is not None
        # a sample is the indexed one only if its bytes are too (a key reused for another image is a new query)
        own = [ix.row.get(s.key, -1) for s in chunk]
        own = [r if r >= 0 and (ix.images[r] is s.image or ix.images[r] == s.image) else -1
               for r, s in zip(own, chunk, strict=True)]
        rows = torch.tensor(own, dtype=torch.long)
        missing = [q for q, r in enumerate(own) if r < 0]
        d = ix.image_emb.shape[1]
        img = torch.empty(len(chunk), d)
        have = rows >= 0
        img[have] = ix.image_emb[rows[have]]
        cap = None
        if self.config.uses_captions:
            cap = torch.empty(len(chunk), d)
            cap[have] = ix.caption_emb[rows[have]]
        if missing:
            if self.encoder is None:
                raise ValueError(f"{len(missing)} samples of this chunk were not indexed (e.g. "
                                 f"{chunk[missing[0]].key}) and there is no encoder to embed them; index the whole "
                                 "dataset first")
            refs = [ImageRef(path=_digest(chunk[q].image).hex(), data=chunk[q].image) for q in missing]
            img[missing] = self.encoder.encode_images(refs)
            if cap is not None:
                cap[missing] = self.encoder.encode_texts([chunk[q].caption for q in missing])
            self.stats.extra["embedded at call"] += len(missing)
        return img, rows, cap

    def _search(self, img: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidate pool of each query: looked up in the precomputed table, or searched now."""
        cfg, base = self.config, self._index.image_emb
        pool = min(cfg.pool(), len(base))
        if not cfg.precompute:
            return nearest(img, base, pool, cfg.chunk, exclude_self=rows, backend=cfg.backend)
        if self._table is None:
            self._table = nearest(base, base, pool, cfg.chunk, exclude_self=True, backend=cfg.backend)
        have = rows >= 0
        scores = self._table[0].new_empty(len(rows), pool)
        idx = self._table[1].new_empty(len(rows), pool)
        scores[have], idx[have] = self._table[0][rows[have]], self._table[1][rows[have]]
        if not bool(have.all()):
            s, i = nearest(img[~have], base, pool, cfg.chunk, backend=cfg.backend)
            scores[~have], idx[~have] = s, i
        return scores, idx

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample | Quarantined]:
        if self._index is None:
            raise RuntimeError("MinedNeighbours needs the whole dataset indexed first: call stage.index(samples)")
        cfg, ix = self.config, self._index
        chunk = list(chunk)
        if not ix.keys:  # nothing to mine from: every sample passes through unchanged
            self.stats.samples_without += len(chunk)
            return list(chunk)
        if not chunk:
            return []
        img, rows, cap = self._query_embeddings(chunk)
        scores, idx = self._search(img, rows)
        # exclusions that are not scores: self (also by key), identical bytes, a caption that would be its own negative
        excluded = torch.zeros_like(idx, dtype=torch.bool)
        own_rows = rows.tolist()
        pre: dict[str, int] = {}
        for q, s in enumerate(chunk):
            dig = _digest(s.image)
            own = {s.caption.strip()} | {p.text.strip() for p in s.paraphrases}
            for c, j in enumerate(idx[q].tolist()):
                if j < 0:
                    continue
                reason = (R_SELF if j == own_rows[q] or ix.keys[j] == s.key else
                          R_BYTES if ix.digests[j] == dig else
                          R_CAPTION if ix.captions[j].strip() in own else None)
                if reason is not None:
                    excluded[q, c] = True
                    if reason != R_SELF:
                        pre[reason] = pre.get(reason, 0) + 1
        pos = cross = None
        if cfg.uses_captions:
            pos = (img * cap).sum(1)
            safe = idx.clamp(min=0)
            cross = torch.einsum("qcd,qd->qc", ix.image_emb[safe], cap)
        seeds = [stable_seed(s.key, GEN, cfg.seed) for s in chunk]
        picked, counts = select_negatives(scores, idx, cfg, excluded=excluded, pos_scores=pos, cross_scores=cross,
                                          seeds=seeds)
        for reason, n in {**pre, **counts}.items():
            self.stats.reject(KIND, self.name, reason, n)
            self.stats.produced[KIND] += n
        out: list[Sample | Quarantined] = []
        for q, s in enumerate(chunk):
            for j, score in picked[q]:
                s.neg_texts.append(NegText(ix.captions[j], KIND, GEN, seeds[q], round(score, 6)))
                s.neg_images.append(NegImage(ix.images[j], ix.exts[j], KIND, GEN, seeds[q], len(s.neg_texts) - 1,
                                             round(score, 6)))
            n = len(picked[q])
            self.stats.produced[KIND] += n
            self.stats.kept[KIND] += n
            if n < cfg.num_negatives:
                self.stats.extra["short"] += 1
            if not n:
                self.stats.samples_without += 1
            out.append(s)
        return out
