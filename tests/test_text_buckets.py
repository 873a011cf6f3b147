"""Captions encoded in length buckets without padding give open_clip's own text features and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from clipneg.schema import KIND_LIST
from clipneg.train.config import LossConfig
from clipneg.train.task import ContrastiveTask
from clipneg.train.text_buckets import encode_text_bucketed, unsupported_reason


def _captions(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    words = ["red", "cube", "left", "of", "a", "blue", "ball", "above", "small", "large", "green", "wow!"]
    return [" ".join(words[i] for i in torch.randint(len(words), (int(k),), generator=g))
            for k in torch.randint(1, 14, (n,), generator=g)]


@pytest.mark.parametrize("buckets", [1, 3, 8])
def test_bucketed_text_features_and_gradients_equal_open_clip(tiny_bundle, buckets):
    """Given 24 captions of 1-13 words (one holding "!", token id 0, the padding id), when encoded in buckets, then the
    features equal open_clip's encode_text in the input order, and so do the gradients of every text parameter."""
    model = tiny_bundle.model.train()
    text = tiny_bundle.tokenizer(_captions(24))
    assert (text[:, -4:] == 0).all() and (text != 0).sum(1).max() < text.shape[1] - 4  # padding to cut
    twin = copy.deepcopy(model)
    ref = model.encode_text(text, normalize=True)
    got = encode_text_bucketed(twin, text, buckets)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (ref * weights).sum().backward()
    (got * weights).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert {"token_embedding.weight", "positional_embedding", "text_projection"} <= grads.keys()
    for n, p in twin.named_parameters():
        if n in grads:
            # float32 sums in another order: differences of ~1e-6 of the largest entry (2e-6 measured)
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5 * grads[n].abs().max().item(), msg=n)


def test_task_with_buckets_gives_the_same_losses_and_rejects_towers_it_cannot_cut(tiny_bundle):
    b, kt = 6, 3
    text = tiny_bundle.tokenizer(_captions(b * (1 + kt), seed=2))
    g = torch.Generator().manual_seed(3)
    batch = {"image": torch.randn(b, 3, 32, 32, generator=g), "text": text[:b],
             "neg_text": text[b:].view(b, kt, -1), "neg_text_mask": torch.ones(b, kt, dtype=torch.bool),
             "neg_text_kind": torch.zeros(b, kt, dtype=torch.long),
             # the triplet term pairs each negative image with the negative caption it depicts (slot 1 here)
             "neg_image": torch.randn(b, 1, 3, 32, 32, generator=g),
             "neg_image_mask": torch.ones(b, 1, dtype=torch.bool),
             "neg_image_text": torch.ones(b, 1, dtype=torch.long)}
    cfg = LossConfig(neg_text_columns=True, hard_negative=1.0, triplet=0.5, distill=0.1)
    plain = ContrastiveTask(copy.deepcopy(tiny_bundle.model), cfg, KIND_LIST).eval()
    cut = ContrastiveTask(copy.deepcopy(tiny_bundle.model), cfg, KIND_LIST, text_buckets=4).eval()
    a, c = plain(batch), cut(batch)
    assert a.keys() == c.keys() == {"contrastive_loss", "hard_negative_loss", "triplet_loss", "distill_loss"}
    assert a["triplet_loss"] > 0  # a real term, not the zero it silently was without negative images
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=1e-5, atol=1e-6)

    no_mask = copy.deepcopy(tiny_bundle.model)
    no_mask.attn_mask = None
    assert "causal" in unsupported_reason(no_mask)
    with pytest.raises(ValueError, match="model.text_buckets 0"):
        ContrastiveTask(no_mask, cfg, KIND_LIST, text_buckets=4)
    assert "not open_clip's CLIP" in unsupported_reason(torch.nn.Linear(2, 2))
