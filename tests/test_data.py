from __future__ import annotations

import dataclasses

import pytest
import torch

from clipneg.schema import KIND_ID, NegImage, NegText, Paraphrase, Sample
from clipneg.shards import write_shards
from clipneg.train.config import KindPhase, LoaderConfig, from_dict
from clipneg.train.data import build_loader, weights_at
from tests.conftest import image_bytes

KINDS = ["replace_obj", "replace_att", "swap_att", "replace_rel"]


def _samples(n: int):
    for i in range(n):
        texts = [NegText(f"caption {i} edited by {k}", k, "test", i) for k in KINDS[: 1 + i % 4]]
        images = [NegImage(image_bytes((j * 60, i % 256, 0)), "png", t.kind, "test", i, text=j)
                  for j, t in enumerate(texts)]
        paraphrases = [Paraphrase(f"caption {i} in other words {j}", "test", i,
                                  tuple(f"caption {i} order negative {j}.{n}" for n in range(j + 1)))
                       for j in range(i % 3)]
        yield Sample(f"s{i:04d}", image_bytes((i % 256, 0, 0)), "png", f"caption {i}", None, texts, images,
                     paraphrases)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards(_samples(48), out, shard_size=6, progress=False)  # 8 shards
    return str(out)


def _keys(cfg, bundle, **kw):
    return [k for b in build_loader(cfg, preprocess=bundle.preprocess_val, tokenizer=bundle.tokenizer, **kw)
            for k in b["key"]]


def test_two_workers_see_each_sample_exactly_once(shards, tiny_bundle):
    cfg = LoaderConfig(shards=shards, batch_size=5, k_text=2, num_workers=2, drop_last=False)
    keys = _keys(cfg, tiny_bundle)
    assert sorted(keys) == [f"s{i:04d}" for i in range(48)]


def test_ranks_and_workers_partition_the_epoch(shards, tiny_bundle, monkeypatch):
    cfg = LoaderConfig(shards=shards, batch_size=4, k_text=1, num_workers=2, drop_last=False)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append(_keys(cfg, tiny_bundle))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [f"s{i:04d}" for i in range(48)]


def test_batch_contract_masks_and_pairing(shards, tiny_bundle):
    cfg = LoaderConfig(shards=shards, batch_size=48, k_text=3, k_image=2, num_workers=0, drop_last=False,
                       shuffle_buffer=0)
    (batch,) = list(build_loader(cfg, preprocess=tiny_bundle.preprocess_val, tokenizer=tiny_bundle.tokenizer))
    B, L = 48, 32
    assert batch["image"].shape == (B, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["text"].shape == (B, L) and batch["text"].dtype == torch.long
    assert batch["neg_text"].shape == (B, 3, L) and batch["neg_text_mask"].dtype == torch.bool
    assert batch["neg_image"].shape == (B, 2, 3, 32, 32) and batch["neg_image_mask"].shape == (B, 2)
    assert batch["neg_image_text"].shape == (B, 2)
    for b, key in enumerate(batch["key"]):
        i = int(key[1:])
        n = 1 + i % 4
        assert batch["neg_text_mask"][b].tolist() == [s < min(n, 3) for s in range(3)]
        assert batch["neg_image_mask"][b].tolist() == [s < min(n, 2) for s in range(2)]
        assert not batch["neg_text"][b, min(n, 3):].any()  # empty slots are zeros
        assert (batch["neg_text_kind"][b, min(n, 3):] == -1).all()
        for j in range(min(n, 2)):
            slot = int(batch["neg_image_text"][b, j])
            assert slot >= 0, "paired images prefer captions that were chosen"
            kind = [k for k, v in KIND_ID.items() if v == int(batch["neg_text_kind"][b, slot])][0]
            expected = tiny_bundle.tokenizer([f"caption {i} edited by {kind}"])[0]
            assert torch.equal(batch["neg_text"][b, slot], expected)
            # the image's red channel encodes which caption it depicts (j * 60): decode through the transform
            mean = torch.tensor(tiny_bundle.preprocess_val.transforms[-1].mean).view(3, 1, 1)
            std = torch.tensor(tiny_bundle.preprocess_val.transforms[-1].std).view(3, 1, 1)
            red = float((batch["neg_image"][b, j] * std + mean)[0].mean() * 255)
            assert abs(red - KINDS.index(kind) * 60) < 2


def test_paraphrases_ride_along_without_changing_the_negatives(shards, tiny_bundle):
    """data.paraphrases adds one of each caption's paraphrases ("para_text", "para_mask" False where it has none) with
    its word-order negatives ("para_neg", up to k_para_neg, "para_neg_mask"), and leaves the rest of the batch as it
    was."""
    cfg = LoaderConfig(shards=shards, batch_size=48, k_text=3, k_image=2, num_workers=0, drop_last=False,
                       shuffle_buffer=0)
    load = lambda c: next(iter(build_loader(c, preprocess=tiny_bundle.preprocess_val,  # noqa: E731
                                            tokenizer=tiny_bundle.tokenizer)))
    plain, para = load(cfg), load(dataclasses.replace(cfg, paraphrases=True))
    assert "para_text" not in plain and para["para_text"].shape == (48, 32) and para["para_neg"].shape == (48, 2, 32)
    for k, v in plain.items():
        assert v == para[k] if k == "key" else torch.equal(v, para[k]), k
    chosen = set()
    for b, key in enumerate(para["key"]):
        i = int(key[1:])
        assert bool(para["para_mask"][b]) == (i % 3 > 0)
        if i % 3 == 0:
            assert not para["para_text"][b].any() and not para["para_neg"][b].any()
            assert not para["para_neg_mask"][b].any()
            continue
        options = tiny_bundle.tokenizer([f"caption {i} in other words {j}" for j in range(i % 3)])
        match = [j for j in range(i % 3) if torch.equal(para["para_text"][b], options[j])]
        assert len(match) == 1
        j = match[0]
        chosen.add((i % 3, j))
        negs = tiny_bundle.tokenizer([f"caption {i} order negative {j}.{n}" for n in range(j + 1)])
        assert para["para_neg_mask"][b].tolist() == [n <= j for n in range(2)]
        assert torch.equal(para["para_neg"][b, : j + 1], negs)
    assert (2, 0) in chosen and (2, 1) in chosen  # a caption with two paraphrases may get either


def test_kind_weights_restrict_kinds(shards, tiny_bundle):
    cfg = LoaderConfig(shards=shards, batch_size=8, k_text=4, num_workers=0, kind_weights={"swap_att": 1.0})
    for batch in build_loader(cfg, preprocess=tiny_bundle.preprocess_val, tokenizer=tiny_bundle.tokenizer):
        kinds = batch["neg_text_kind"][batch["neg_text_mask"]]
        assert (kinds == KIND_ID["swap_att"]).all()
        assert batch["neg_text_mask"].sum(1).max() == 1


def test_kind_schedule_follows_the_global_step(shards, tiny_bundle):
    cfg = LoaderConfig(shards=shards, batch_size=4, k_text=1, num_workers=2,
                       kind_schedule=(KindPhase({"replace_obj": 1.0}, until_step=7), KindPhase({"replace_att": 1.0})))
    batches = list(build_loader(cfg, preprocess=tiny_bundle.preprocess_val, tokenizer=tiny_bundle.tokenizer,
                                start_step=4))
    assert len(batches) == 12
    for n, batch in enumerate(batches):
        step = 4 + n
        kinds = set(batch["neg_text_kind"][batch["neg_text_mask"]].tolist())
        assert kinds == {KIND_ID["replace_obj"] if step < 7 else KIND_ID["replace_att"]}, step
    assert weights_at(cfg, 100) == {"replace_att": 1.0}


def test_epoch_is_deterministic_for_a_seed_and_reshuffles_by_epoch(shards, tiny_bundle):
    cfg = LoaderConfig(shards=shards, batch_size=6, k_text=2, k_image=1, num_workers=2, seed=5)

    def run(epoch):
        return list(build_loader(cfg, preprocess=tiny_bundle.preprocess_train, tokenizer=tiny_bundle.tokenizer,
                                 epoch=epoch))

    a, b, c = run(0), run(0), run(1)
    assert [x["key"] for x in a] == [x["key"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["neg_text"], y["neg_text"])
    assert [x["key"] for x in a] != [x["key"] for x in c]


def test_config_validation_and_yaml_form():
    with pytest.raises(ValueError, match="unknown negative kinds"):
        LoaderConfig(shards="x", kind_weights={"swap_attr": 1.0})
    cfg = from_dict(LoaderConfig, {"shards": "x", "kind_schedule": [{"weights": {"replace_rel": 1}, "until_step": 3},
                                                                    {"weights": {"swap_att": 1}}]})
    assert cfg.kind_schedule[0] == KindPhase({"replace_rel": 1}, 3)
    assert weights_at(cfg, 2) == {"replace_rel": 1} and weights_at(cfg, 3) == {"swap_att": 1}
