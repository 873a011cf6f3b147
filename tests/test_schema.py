from __future__ import annotations

import json

import pytest

from clipneg.schema import (
    MAX_KEY_LEN,
    NegImage,
    NegText,
    Paraphrase,
    Sample,
    SchemaError,
    members_to_sample,
    parse_neg_json,
    sample_to_members,
    validate_key,
)
from tests.conftest import image_bytes


def _sample(**kw) -> Sample:
    base = dict(key="s0001", image=image_bytes((200, 0, 0)), image_ext="png", caption="a red circle left of a cube",
                meta={"src": 1},
                neg_texts=[NegText("a red cube left of a circle", "swap_obj", "world", 7),
                           NegText("a blue circle left of a cube", "replace_att", "rules", 7, 0.5)],
                neg_images=[NegImage(image_bytes((0, 0, 200)), "png", "replace_att", "world", 7, text=1)],
                paraphrases=[Paraphrase("a cube right of a red circle", "world", 7,
                                        ("a red circle right of a cube", "a cube left of a red circle"))])
    base.update(kw)
    return Sample(**base)


@pytest.mark.parametrize("key", ["abc", "A_b-9", "000000085329_1"])
def test_valid_keys(key):
    validate_key(key)


@pytest.mark.parametrize("key", ["a.b", "a/b", "", "a b", "é", "x.jpg"])
def test_invalid_keys_raise_with_advice(key):
    with pytest.raises(SchemaError, match="rename it"):
        validate_key(key)


def test_members_round_trip_keeps_provenance():
    s = _sample()
    members = sample_to_members(s)
    assert set(members) == {"__key__", "png", "txt", "json", "neg.json", "negimg.0.png"}
    neg = json.loads(members["neg.json"])
    assert neg["v"] == 1
    assert neg["images"] == [{"member": "negimg.0.png", "kind": "replace_att", "gen": "world", "seed": 7, "text": 1}]
    assert neg["texts"][1] == {"text": "a blue circle left of a cube", "kind": "replace_att", "gen": "rules",
                               "seed": 7, "score": 0.5}
    assert neg["paraphrases"] == [{"text": "a cube right of a red circle", "gen": "world", "seed": 7,
                                   "negatives": ["a red circle right of a cube", "a cube left of a red circle"]}]
    back = members_to_sample(members)
    assert back == s
    # paraphrases are optional: a neg.json written before them parses to an empty list
    old = {k: v for k, v in neg.items() if k != "paraphrases"}
    assert parse_neg_json(json.dumps(old))["paraphrases"] == []
    assert members_to_sample({**members, "neg.json": json.dumps(old).encode()}).paraphrases == []
    with pytest.raises(SchemaError, match="paraphrase entry needs text and gen"):
        parse_neg_json(json.dumps({**old, "paraphrases": [{"text": "x"}]}))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(caption="  "), "empty caption"),
        (dict(image_ext="gif"), "extension"),
        (dict(neg_texts=[NegText("a red circle left of a cube", "swap_obj", "g")], neg_images=[]), "equals the pos"),
        (dict(neg_texts=[NegText("x", "made_up", "g")], neg_images=[]), "unknown negative kind"),
        (dict(neg_images=[NegImage(b"x", "png", "swap_att", "g", text=5)]), "depicts caption 5"),
        (dict(paraphrases=[Paraphrase("a red circle left of a cube", "g")]), "differ from the caption"),
        (dict(paraphrases=[Paraphrase("a red cube left of a circle", "g")]), "is also a negative caption"),
        (dict(paraphrases=[Paraphrase("a cube right of a red circle", "g", None, ("a cube right of a red circle",))]),
         "is also a negative caption"),
        (dict(paraphrases=[Paraphrase("a cube right of a red circle", "g", None, ("a red circle left of a cube",))]),
         "negatives must be non-empty and differ from the caption"),
    ],
)
def test_schema_violations_are_named(change, message):
    with pytest.raises(SchemaError, match=message):
        sample_to_members(_sample(**change))


def test_neg_json_naming_a_missing_member_is_rejected():
    members = sample_to_members(_sample())
    del members["negimg.0.png"]
    with pytest.raises(SchemaError, match="no such member"):
        members_to_sample(members)


def test_keys_too_long_for_a_tar_header_are_rejected_with_the_fix():
    validate_key("k" * MAX_KEY_LEN)
    with pytest.raises(SchemaError, match="at most 80 fit a tar member name"):
        validate_key("k" * (MAX_KEY_LEN + 1))


@pytest.mark.parametrize(("raw", "message"), [
    (b"[1, 2]", "must be an object, not list"),
    (json.dumps({"v": 1, "texts": ["just a string"]}), "texts must be a list of objects"),
    (json.dumps({"v": 1, "texts": [], "images": {"member": "x"}}), "images must be a list of objects"),
])
def test_malformed_neg_json_is_a_schema_error(raw, message):
    with pytest.raises(SchemaError, match=message):
        parse_neg_json(raw)
