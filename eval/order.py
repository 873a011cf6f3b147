"""ARO COCO-Order and Flickr30k-Order (Yuksekgonul et al., ICLR 2023; mertyg/vision-language-models-are-bows).

Protocol (PROTOCOLS.md §2, the repository's dataset_zoo/aro_datasets.py, perturbations.py and retrieval.py):
- one item per (Karpathy test image, caption): options = [original] + 4 perturbations of the raw caption, each then
  pre-processed like the original (lowercase; `.!"()*#:;~` replaced by a space; runs of spaces collapsed; stripped;
  at most 30 words);
- perturbations (clipneg.text.order, shared with the rule generator): nouns (NN, NNS, NNP, NNPS) shuffled among noun
  positions and adjectives (JJ, JJR, JJS) among adjective positions; every other token shuffled among the remaining
  positions (both on spaCy en_core_web_sm tokens and tags); tokens shuffled within consecutive trigrams; trigram order
  shuffled (both on NLTK ``word_tokenize`` tokens, as the official code; we call it with ``preserve_line=True``, which
  needs no Punkt data); tokens joined with single spaces. The result's protocol names the tokeniser of each kind;
- metric: precision@1 of the original (index 0) with argmax, so a tie goes to the original (`first` policy; about
  20% of perturbations equal the original).
The official main_aro.py seeds Python's and numpy's global RNGs once with ``seed_all(args.seed)`` (default 1) and
draws every permutation from them caption by caption; we draw from numpy Generators seeded per run (same
distribution, not the same draws) and report the mean and spread over seeds (default 5), and optionally mask
perturbations identical to the original.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipneg.text.nlp import MAX_WORDS, SPACY_MODELS, Tagged, Tagger, load_spacy, pre_caption, spacy_tagger
from clipneg.text.order import (
    ADJ_TAGS,
    NOUN_TAGS,
    PERTURBATIONS,
    perturb,
    perturbed_options,
    tokenizers,
)

from .items import ImageRef, Item, require_images, sha256_file
from .metrics import Tally, spread
from .results import BenchmarkResult
from .scorer import Scorer, check_tie_policy, decide, is_tie

logger = logging.getLogger(__name__)

# re-exported: callers and tests import the perturbations from here as before
__all__ = ["ADJ_TAGS", "BENCHMARK_NAMES", "DATASETS", "MAX_WORDS", "NOUN_TAGS", "PERTURBATIONS", "SPACY_MODELS",
           "OrderConfig", "Tagged", "Tagger", "evaluate_order", "load_captions", "load_spacy", "perturb",
           "perturbed_options", "pre_caption", "resolve_json", "spacy_tagger"]

DATASETS = {"coco": "coco_karpathy_test.json", "flickr30k": "flickr30k_test.json"}
BENCHMARK_NAMES = {"coco": "aro-coco-order", "flickr30k": "aro-flickr30k-order"}
OFFICIAL_TIE_POLICY = "first"
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class OrderConfig:
    """dataset: "coco" or "flickr30k"; json_path: Karpathy test JSON (list of {image, caption: [...]});
    image_root: folder the JSON's `image` paths are relative to (COCO: holds val2014/; Flickr: holds
    flickr30k-images/). mask_identical: drop perturbations equal to the original (items left with none are skipped).
    limit: first N images (smoke runs only; recorded).
    """

    dataset: str
    json_path: str
    image_root: str
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    mask_identical: bool = False
    max_words: int = MAX_WORDS
    name: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"Order dataset must be one of {sorted(DATASETS)} (got {self.dataset!r})")
        if not self.seeds:
            raise ValueError("Order needs at least one seed")

    @property
    def benchmark(self) -> str:
        return self.name or BENCHMARK_NAMES[self.dataset]


def resolve_json(dataset: str, path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for cand in (path / DATASETS[dataset], path / "karpathy" / DATASETS[dataset]):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"{DATASETS[dataset]} not found in {path}; get it with "
                                "`clipneg data download karpathy-test --out DATA`")
    if not path.is_file():
        raise FileNotFoundError(f"Karpathy test JSON not found: {path}")
    return path


def load_captions(config: OrderConfig) -> tuple[list[tuple[str, str]], dict]:
    """[(image path, raw caption)] in file order, and data facts."""
    path = Path(config.json_path)
    anns = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(anns, list):
        raise ValueError(f"{path} must be a JSON list of {{image, caption}} records (Karpathy split from BLIP)")
    if config.limit is not None:
        anns = anns[:config.limit]
    root = Path(config.image_root)
    pairs = []
    for ann in anns:
        caps = ann["caption"] if isinstance(ann["caption"], list) else [ann["caption"]]
        img = root / ann["image"]
        if not img.is_file() and (root / Path(ann["image"]).name).is_file():
            img = root / Path(ann["image"]).name  # a flat image folder is accepted too
        pairs.extend((str(img), c) for c in caps)
    data = {"json": str(path), "image_root": str(root), "files": {path.name: sha256_file(path)},
            "n_images": len(anns), "n_captions": len(pairs), "limit": config.limit}
    return pairs, data


def evaluate_order(scorer: Scorer, config: OrderConfig, tie_policy: str = OFFICIAL_TIE_POLICY,
                   tagger: Tagger | None = None) -> BenchmarkResult:
    """Precision@1 of the original caption against its 4 perturbations, per seed; mean and spread over seeds."""
    check_tie_policy(tie_policy)
    pairs, data = load_captions(config)
    images = [ImageRef(p, rgb_first=True) for p, _ in pairs]  # official: Image.open(p).convert("RGB")
    hint = ("Pass the folder the JSON's image paths are relative to: --coco-images DIR holding val2014/ "
            "(`clipneg data download coco-val2014`) or --flickr-images DIR holding flickr30k-images/ (Flickr30k needs "
            "a sign-up at https://forms.illinois.edu/sec/229675)")
    require_images([Item("all", tuple(dict.fromkeys(images)), ())], hint)
    tagger = tagger or spacy_tagger(progress=scorer.config.progress)
    raw = [c for _, c in pairs]
    logger.info("tagging %d captions", len(raw))
    tagged = tagger(raw)

    per_seed, per_seed_kind, identical_rate, predictions = {}, {}, {}, []
    skipped_total = {}
    warnings = []
    for seed in config.seeds:
        options = perturbed_options(tagged, raw, seed, config.max_words)
        items, kinds_kept = [], []
        skipped = 0
        ident = np.zeros(len(PERTURBATIONS), dtype=np.int64)
        for i, (img, opts) in enumerate(zip(images, options, strict=True)):
            same = [o == opts[0] for o in opts[1:]]
            ident += np.array(same, dtype=np.int64)
            kinds = list(PERTURBATIONS)
            if config.mask_identical:
                kinds = [k for k, s in zip(PERTURBATIONS, same, strict=True) if not s]
                opts = [opts[0]] + [o for o, s in zip(opts[1:], same, strict=True) if not s]
                if len(opts) == 1:
                    skipped += 1
                    continue
            items.append(Item(id=f"{i}", images=(img,), texts=tuple(opts), meta={"seed": seed}))
            kinds_kept.append(kinds)
        tie_rng = np.random.default_rng([seed, 1])
        tally = Tally()
        kind_tally = {k: Tally() for k in PERTURBATIONS}
        for s, kinds in zip(scorer.score(items), kinds_kept, strict=True):
            row = s.image_text[0]
            ok, tie = decide(row, 0, tie_policy, tie_rng), is_tie(row, 0)
            tally.add(ok, tie)
            for j, k in enumerate(kinds, start=1):  # how often the original beats each perturbation on its own
                kind_tally[k].add(bool(row[0] > row[j]) or (row[0] == row[j] and tie_policy == "first"),
                                  bool(row[0] == row[j]))
            predictions.append({"id": s.item.id, "seed": seed, "correct": ok, "tie": tie, "texts": list(s.item.texts),
                                "scores": [float(x) for x in row]})
        scorer.forget_texts()  # perturbations of one seed are not reused by the next
        per_seed[seed] = tally
        per_seed_kind[seed] = {k: t.pct for k, t in kind_tally.items()}
        identical_rate[seed] = {k: 100.0 * n / max(len(options), 1) for k, n in zip(PERTURBATIONS, ident.tolist(),
                                                                                      strict=True)}
        skipped_total[seed] = skipped
    accs = [t.pct for t in per_seed.values()]
    sp = spread(accs)
    metrics = {"mean": sp["mean"], "std": sp["std"], "min": sp["min"], "max": sp["max"]}
    metrics.update({f"seed_{s}": t.pct for s, t in per_seed.items()})
    counts = {f"seed_{s}": t.to_dict() for s, t in per_seed.items()}
    protocol = {"source": "mertyg/vision-language-models-are-bows dataset_zoo (aro_datasets, perturbations, "
                          "retrieval.pre_caption); PROTOCOLS.md §2",
                "perturbations": list(PERTURBATIONS), "max_words": config.max_words,
                "tokens_and_tags": getattr(tagger, "model", "custom tagger"),
                "tokenizer": tokenizers(getattr(tagger, "model", "custom tagger")),
                "seeds": list(config.seeds), "rng": "numpy default_rng(seed), consumed caption by caption",
                "mask_identical": config.mask_identical, "tie_policy": tie_policy,
                "tie_policy_official": OFFICIAL_TIE_POLICY,
                "headline": "mean over seeds of precision@1 of the original caption; std is the population std",
                "image_loading": "Image.open(path).convert('RGB') -> eval transform"}
    data.update({"skipped_all_identical": skipped_total})
    details = {"per_seed": {str(s): {**per_seed[s].to_dict(), "accuracy": per_seed[s].pct,
                                     "original_beats_perturbation": per_seed_kind[s],
                                     "identical_to_original_pct": identical_rate[s]} for s in per_seed},
               "spread": sp}
    return BenchmarkResult(benchmark=config.benchmark, metrics=metrics, columns=["mean", "std"], headline="mean",
                           counts=counts, protocol=protocol, data=data, details=details, warnings=warnings,
                           predictions=predictions)
