"""The shard sample contract: what one training example with its hard negatives looks like on disk.

One webdataset sample is a set of tar members sharing a key (ARCHITECTURE.md, "Shard sample"):

| member            | content                                                                     |
|-------------------|-----------------------------------------------------------------------------|
| ``jpg|png|webp``  | positive image, source bytes unchanged                                      |
| ``txt``           | positive caption, UTF-8                                                     |
| ``json``          | source metadata passed through untouched (optional)                         |
| ``neg.json``      | ``{"v": 1, "texts": [...], "images": [...], "paraphrases": [...]}``          |
|                   | negatives, and rewordings of the caption that keep its meaning, with        |
|                   | provenance ("paraphrases" is optional)                                      |
| ``negimg.{j}.jpg``| j-th negative image; ``images[j].text`` is the negative caption it depicts  |

Everything here is pure Python so writers, readers and validators agree without importing torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# webdataset splits a tar member name at the first dot into key and extension, so a key with a dot (or a slash,
# which makes a folder) silently corrupts the sample grouping.
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# Shards use plain ustar headers (byte-identical reruns), whose name field holds 100 bytes: the key plus its longest
# member suffix (".negimg.NN.webp") must fit.
MAX_KEY_LEN = 80
IMAGE_EXTS = ("jpg", "png", "webp")

# SugarCrepe's names (Hsieh et al. 2023) first, then ARO's order perturbations and other edit families.
# The order is the id used in training batches ("neg_text_kind"); append, never reorder.
KIND_LIST: tuple[str, ...] = (
    "replace_obj",
    "replace_att",
    "replace_rel",
    "swap_obj",
    "swap_att",
    "add_obj",
    "add_att",
    "shuffle_nouns_and_adj",
    "shuffle_allbut_nouns_and_adj",
    "shuffle_within_trigrams",
    "shuffle_trigrams",
    "negate",
    "count",
    "spatial",
    "llm_free",
    "mined",
    "other",
    "swap_chunks",
    "swap_phrases",
    "swap_tags",
)
KINDS = frozenset(KIND_LIST)
# The seven SugarCrepe subsets (Hsieh et al. 2023), in its paper's column order: the benchmark's files, the built-in
# world's exact negatives and the reports all use this one list.
SUGARCREPE_KINDS: tuple[str, ...] = KIND_LIST[:7]
KIND_ID = {k: i for i, k in enumerate(KIND_LIST)}


class SchemaError(ValueError):
    """A sample that breaks the shard contract; the message says which rule and how to fix it."""


def validate_key(key: str) -> None:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise SchemaError(
            f"invalid sample key {key!r}: keys must match {KEY_RE.pattern} (webdataset splits names at the first "
            "dot); rename it, e.g. replace '.' and '/' with '_'"
        )
    if len(key) > MAX_KEY_LEN:
        raise SchemaError(f"sample key {key[:24]!r}... is {len(key)} characters; at most {MAX_KEY_LEN} fit a tar "
                          "member name: shorten it, e.g. to a hash of the original (hashlib.sha1(key).hexdigest())")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise SchemaError(f"unknown negative kind {kind!r}; use one of {', '.join(KIND_LIST)}")


@dataclass(frozen=True)
class NegText:
    """A negative caption and where it came from (generator name, seed, optional filter score)."""

    text: str
    kind: str
    gen: str
    seed: int | None = None
    score: float | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"text": self.text, "kind": self.kind, "gen": self.gen, "seed": self.seed}
        if self.score is not None:
            d["score"] = self.score
        return d


@dataclass(frozen=True)
class Paraphrase:
    """A caption that says exactly what the positive says in other words ("b right of a" for "a left of b"), and
    ``negatives``: captions in the same words whose order makes them false ("a right of b", "b left of a").

    Bags of words cannot tell the caption and its paraphrase from these, so the paraphrase term (clipneg.train.losses)
    teaches the text tower word order.
    """

    text: str
    gen: str
    seed: int | None = None
    negatives: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "gen": self.gen, "seed": self.seed, "negatives": list(self.negatives)}


@dataclass(frozen=True)
class NegImage:
    """A negative (counterfactual) image; ``text`` indexes the negative caption it depicts, None if it depicts none."""

    data: bytes
    ext: str
    kind: str
    gen: str
    seed: int | None = None
    text: int | None = None
    score: float | None = None

    def to_json(self, member: str) -> dict[str, Any]:
        d: dict[str, Any] = {"member": member, "kind": self.kind, "gen": self.gen, "seed": self.seed,
                             "text": self.text}
        if self.score is not None:
            d["score"] = self.score
        return d


@dataclass
class Sample:
    key: str
    image: bytes
    image_ext: str
    caption: str
    meta: dict[str, Any] | None = None
    neg_texts: list[NegText] = field(default_factory=list)
    neg_images: list[NegImage] = field(default_factory=list)
    paraphrases: list[Paraphrase] = field(default_factory=list)

    def validate(self) -> None:
        validate_key(self.key)
        if self.image_ext not in IMAGE_EXTS:
            raise SchemaError(f"{self.key}: image extension {self.image_ext!r} is not one of {IMAGE_EXTS}")
        if not self.image:
            raise SchemaError(f"{self.key}: empty image bytes")
        if not isinstance(self.caption, str) or not self.caption.strip():
            raise SchemaError(f"{self.key}: empty caption")
        for t in self.neg_texts:
            _check_kind(t.kind)
            if not t.text.strip():
                raise SchemaError(f"{self.key}: empty negative caption ({t.kind}, {t.gen})")
            if t.text.strip() == self.caption.strip():
                raise SchemaError(f"{self.key}: negative caption equals the positive ({t.kind}, {t.gen})")
        negatives = {t.text.strip() for t in self.neg_texts}
        for p in self.paraphrases:
            if not p.text.strip() or p.text.strip() == self.caption.strip():
                raise SchemaError(f"{self.key}: a paraphrase must be non-empty and differ from the caption ({p.gen})")
            if p.text.strip() in negatives | {n.strip() for n in p.negatives}:
                raise SchemaError(f"{self.key}: paraphrase {p.text!r} is also a negative caption ({p.gen})")
            if any(not n.strip() or n.strip() == self.caption.strip() for n in p.negatives):
                raise SchemaError(f"{self.key}: a paraphrase's negatives must be non-empty and differ from the "
                                  f"caption ({p.gen})")
        for j, im in enumerate(self.neg_images):
            _check_kind(im.kind)
            if im.ext not in IMAGE_EXTS:
                raise SchemaError(f"{self.key}: negative image {j} has extension {im.ext!r}")
            if not im.data:
                raise SchemaError(f"{self.key}: negative image {j} is empty")
            if im.text is not None and not 0 <= im.text < len(self.neg_texts):
                raise SchemaError(
                    f"{self.key}: negative image {j} depicts caption {im.text}, but there are "
                    f"{len(self.neg_texts)} negative captions"
                )


def neg_image_member(j: int, ext: str) -> str:
    return f"negimg.{j}.{ext}"


def sample_to_members(sample: Sample) -> dict[str, Any]:
    """Validated webdataset members of a sample (values are bytes/str as ``wds.TarWriter`` writes them)."""
    sample.validate()
    members: dict[str, Any] = {"__key__": sample.key, sample.image_ext: sample.image, "txt": sample.caption}
    if sample.meta is not None:
        members["json"] = json.dumps(sample.meta, sort_keys=True).encode()
    if sample.neg_texts or sample.neg_images or sample.paraphrases:
        images = []
        for j, im in enumerate(sample.neg_images):
            member = neg_image_member(j, im.ext)
            members[member] = im.data
            images.append(im.to_json(member))
        neg = {"v": SCHEMA_VERSION, "texts": [t.to_json() for t in sample.neg_texts], "images": images}
        if sample.paraphrases:
            neg["paraphrases"] = [p.to_json() for p in sample.paraphrases]
        members["neg.json"] = json.dumps(neg, sort_keys=True).encode()
    return members


def parse_neg_json(raw: bytes | str | dict) -> dict[str, Any]:
    """Parse and validate a ``neg.json`` member; raises SchemaError with the offending field."""
    try:
        neg = raw if isinstance(raw, dict) else json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SchemaError(f"neg.json is not valid JSON: {e}") from e
    if not isinstance(neg, dict):
        raise SchemaError(f"neg.json must be an object, not {type(neg).__name__}")
    if neg.get("v") != SCHEMA_VERSION:
        raise SchemaError(f"neg.json version {neg.get('v')!r} is not {SCHEMA_VERSION}")
    texts, images = neg.get("texts", []), neg.get("images", [])
    for name, entries in (("texts", texts), ("images", images), ("paraphrases", neg.get("paraphrases", []))):
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise SchemaError(f"neg.json {name} must be a list of objects")
    for t in texts:
        if not isinstance(t.get("text"), str) or "kind" not in t or "gen" not in t:
            raise SchemaError(f"neg.json text entry needs text, kind and gen: {t}")
        _check_kind(t["kind"])
    for im in images:
        if "member" not in im or "kind" not in im or "gen" not in im:
            raise SchemaError(f"neg.json image entry needs member, kind and gen: {im}")
        _check_kind(im["kind"])
        if im.get("text") is not None and not 0 <= im["text"] < len(texts):
            raise SchemaError(f"neg.json image {im['member']} depicts caption {im['text']} of {len(texts)}")
    paraphrases = neg.get("paraphrases", [])
    for p in paraphrases:
        if not isinstance(p.get("text"), str) or "gen" not in p:
            raise SchemaError(f"neg.json paraphrase entry needs text and gen: {p}")
        if not all(isinstance(n, str) for n in p.get("negatives", [])):
            raise SchemaError(f"neg.json paraphrase negatives must be strings: {p}")
    return {"v": SCHEMA_VERSION, "texts": texts, "images": images, "paraphrases": paraphrases}


def members_to_sample(members: dict[str, Any]) -> Sample:
    """Inverse of :func:`sample_to_members`, for inspection, chaining and tests (training decodes lazily in
    clipneg.train.data)."""

    def as_bytes(v: Any) -> bytes:
        return v.encode() if isinstance(v, str) else bytes(v)

    key = members["__key__"]
    validate_key(key)
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
        raise SchemaError(f"{key}: no image member (expected one of {IMAGE_EXTS})")
    if "txt" not in members:
        raise SchemaError(f"{key}: no txt member")
    meta = json.loads(as_bytes(members["json"])) if "json" in members else None
    neg_texts: list[NegText] = []
    neg_images: list[NegImage] = []
    paraphrases: list[Paraphrase] = []
    if "neg.json" in members:
        neg = parse_neg_json(as_bytes(members["neg.json"]))
        neg_texts = [NegText(t["text"], t["kind"], t["gen"], t.get("seed"), t.get("score")) for t in neg["texts"]]
        paraphrases = [Paraphrase(p["text"], p["gen"], p.get("seed"), tuple(p.get("negatives", [])))
                       for p in neg["paraphrases"]]
        for im in neg["images"]:
            member = im["member"]
            if member not in members:
                raise SchemaError(f"{key}: neg.json names {member} but the sample has no such member")
            neg_images.append(
                NegImage(
                    as_bytes(members[member]), member.rsplit(".", 1)[-1], im["kind"], im["gen"], im.get("seed"),
                    im.get("text"), im.get("score"),
                )
            )
    sample = Sample(key, as_bytes(members[ext]), ext, as_bytes(members["txt"]).decode("utf-8"), meta, neg_texts,
                    neg_images, paraphrases)
    sample.validate()
    return sample
