"""MinedNeighbours (NegCLIP's mined image negatives): the chunked search, sentence-transformers' selection options on
constructed embeddings, and the stage end to end through the tiny CLIP and the shard writer."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clipneg.generators.images.mined import (
    MinedConfig,
    MinedNeighbours,
    faiss_available,
    nearest,
    select_negatives,
)
from PIL import Image

from clipneg.encoder import Encoder, EncoderConfig, ImageRef
from clipneg.schema import Sample, members_to_sample
from clipneg.shards import write_shards
from clipneg.tars import iter_tar_samples

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


def _noise_png(seed: int, fmt: str = "PNG") -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).resize((32, 32), Image.NEAREST).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def _along(cos: float) -> list[float]:
    """A unit vector with cosine ``cos`` to e0 (in the e0-e1 plane)."""
    return [cos, float(np.sqrt(max(0.0, 1 - cos * cos))), 0.0, 0.0]


# ---- the search ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("self_search", [True, False])
@pytest.mark.parametrize("chunk", [61, 250, 5000])
def test_chunked_search_equals_full_topk(chunk: int, self_search: bool) -> None:
    # Given random unit embeddings
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(1000, 32, generator=g), dim=-1)
    # When searching all rows against all (query is base: block pairs used twice) or blocks of queries against all
    query = x if self_search else x[:]
    s, i = nearest(query, x, 8, chunk=chunk, exclude_self=True, backend="torch")
    s0, i0 = nearest(query, x, 8, chunk=chunk, backend="torch")
    # Then the neighbours are exactly a plain full torch.topk's
    full = x @ x.T
    fs0, fi0 = torch.topk(full, 8, dim=1)
    full.fill_diagonal_(-float("inf"))
    fs, fi = torch.topk(full, 8, dim=1)
    assert torch.equal(i, fi) and torch.equal(i0, fi0)
    torch.testing.assert_close(s, fs)
    torch.testing.assert_close(s0, fs0)
    assert torch.equal(i0[:, 0], torch.arange(1000))  # without exclusion each row finds itself first


def test_nearest_excludes_given_rows_and_pads() -> None:
    base = _unit([1, 0], [0.9, 0.1], [0, 1])
    query = _unit([1, 0], [0, 1])
    s, i = nearest(query, base, 5, exclude_self=torch.tensor([0, -1]), backend="torch")
    # row 0 of the base is left out for query 0 only; k beyond the candidates is padded with -1 / -inf
    assert i[0, :2].tolist() == [1, 2] and i[1, :3].tolist() == [2, 1, 0]
    assert i[0, 2:].tolist() == [-1, -1, -1] and i[1, 3:].tolist() == [-1, -1]
    assert torch.isinf(s[0, 2:]).all() and s.shape == (2, 5)


@needs_faiss
def test_faiss_gives_the_same_neighbours() -> None:
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(2000, 48, generator=g), dim=-1)
    for exclude in (True, False, torch.randint(-1, 2000, (2000,), generator=g)):
        st, it = nearest(x, x, 10, chunk=333, exclude_self=exclude, backend="torch")
        sf, i_f = nearest(x, x, 10, chunk=256, exclude_self=exclude, backend="faiss")
        torch.testing.assert_close(st, sf, atol=1e-5, rtol=0)
        # the same neighbours; two BLAS may order a pair whose cosines differ by ~1e-7 differently
        differ = (it != i_f).any(1)
        assert int(differ.sum()) <= 2
        torch.testing.assert_close(torch.einsum("qd,qkd->qk", x[differ], x[i_f[differ]]), sf[differ], atol=1e-5,
                                   rtol=0)


def test_nearest_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="share D"):
        nearest(torch.zeros(2, 3), torch.zeros(4, 5), 1)
    with pytest.raises(ValueError, match="one base row per query"):
        nearest(torch.zeros(2, 3), torch.zeros(4, 3), 1, exclude_self=torch.tensor([0]))


# ---- the selection on constructed embeddings -------------------------------------------------------------------

# image-image cosines to the anchor (row 0): a planted near-duplicate, a byte-identical copy, then real neighbours
COS = {"anchor": 1.0, "near_dup": 0.995, "same_bytes": 1.0, "b": 0.9, "c": 0.8, "d": 0.7, "e": 0.6}


def _stage(config: MinedConfig, *, captions: dict[str, list[float]] | None = None) -> MinedNeighbours:
    keys = list(COS)
    emb = _unit(*[_along(COS[k]) for k in keys])
    images = [f"img-{k}".encode() for k in keys]
    images[keys.index("same_bytes")] = images[0]
    cap_emb = None if captions is None else _unit(*[captions[k] for k in keys])
    stage = MinedNeighbours(config)
    stage.index_embeddings(keys, emb, images, ["png"] * len(keys), [f"a photo of {k}" for k in keys], cap_emb)
    return stage


def _anchor() -> Sample:
    return Sample("anchor", b"img-anchor", "png", "a photo of anchor")


def _mined_keys(stage: MinedNeighbours, sample: Sample) -> list[str]:
    [out] = stage([sample])
    return [t.text.removeprefix("a photo of ") for t in out.neg_texts]


def test_planted_near_duplicates_are_excluded_and_the_nearest_real_neighbour_chosen() -> None:
    # Given an anchor with a near-duplicate (cosine 0.995 > max_score 0.98) and a byte-identical copy
    stage = _stage(MinedConfig(num_negatives=1))
    # When mining one negative
    [out] = stage([_anchor()])
    # Then the nearest real neighbour is chosen, its own image and caption paired
    assert [t.text for t in out.neg_texts] == ["a photo of b"]
    [im] = out.neg_images
    assert (im.data, im.ext, im.kind, im.gen, im.text) == (b"img-b", "png", "mined", "mined", 0)
    assert out.neg_texts[0].kind == "mined" and im.score == pytest.approx(0.9, abs=1e-5)
    out.validate()
    rejected = {r: n for (_, _, r), n in stage.stats.rejected.items()}
    assert rejected == {"identical bytes": 1, "max_score (near-duplicate)": 1}
    assert stage.stats.kept["mined"] == 1


def test_neighbour_caption_is_appended_after_existing_negatives() -> None:
    stage = _stage(MinedConfig(num_negatives=2))
    sample = _anchor()
    from clipneg.schema import NegText

    sample.neg_texts.append(NegText("a photo of nothing", "replace_obj", "rules", 0))
    [out] = stage([sample])
    assert [t.text for t in out.neg_texts] == ["a photo of nothing", "a photo of b", "a photo of c"]
    assert [im.text for im in out.neg_images] == [1, 2]
    assert [out.neg_texts[im.text].text for im in out.neg_images] == ["a photo of b", "a photo of c"]


def test_rank_range_counts_survivors_only() -> None:
    # ranks are counted after the exclusions, as sentence-transformers does (range_min=1 skips b, the first survivor)
    assert _mined_keys(_stage(MinedConfig(num_negatives=2, range_min=1, range_max=3)), _anchor()) == ["c", "d"]
    assert _mined_keys(_stage(MinedConfig(num_negatives=1, range_min=3, range_max=4)), _anchor()) == ["e"]
    with pytest.raises(ValueError, match="cannot mine 3 negatives"):
        MinedConfig(num_negatives=3, range_min=1, range_max=3)
    with pytest.raises(ValueError, match="range_min must be smaller"):
        MinedConfig(range_min=3, range_max=3)


def test_default_range_max_is_sentence_transformers() -> None:
    assert MinedConfig(num_negatives=2, range_min=1).window_max() == 1 + 2 * 10  # a score filter (max_score) is set
    assert MinedConfig(num_negatives=2, range_min=1, max_score=None).window_max() == 3


def test_max_and_min_score() -> None:
    assert _mined_keys(_stage(MinedConfig(num_negatives=1, max_score=0.85)), _anchor()) == ["c"]
    stage = _stage(MinedConfig(num_negatives=4, max_score=0.85, min_score=0.75))
    assert _mined_keys(stage, _anchor()) == ["c"]
    assert stage.stats.extra["short"] == 1


def test_without_max_score_the_near_duplicate_is_mined() -> None:
    # byte-identical copies and the sample itself are always excluded; near-duplicates only by max_score
    assert _mined_keys(_stage(MinedConfig(num_negatives=1, max_score=None)), _anchor()) == ["near_dup"]


def test_margin_drops_neighbours_that_match_the_caption_as_well_as_the_positive() -> None:
    # Given the anchor's caption at cosine 0.5 to its image, so neighbours score 0.5 x their image cosine with it
    e = {k: [0.0, 0.0, 1.0, 0.0] for k in COS}  # other captions point away
    pos = 0.5
    cap_anchor = [pos, 0.0, 0.0, float(np.sqrt(1 - pos * pos))]
    e["anchor"] = cap_anchor
    emb_b = _unit(_along(COS["b"]))[0]
    cross_b = float(emb_b @ torch.tensor(cap_anchor))
    assert cross_b < pos  # b: 0.9 * 0.5 = 0.45
    # margin 0 keeps b (0.45 + 0 <= 0.5); margin 0.12 drops b and c (0.45 + 0.12, 0.4 + 0.12 > 0.5), keeps d (0.35)
    assert _mined_keys(_stage(MinedConfig(num_negatives=1, margin=0.0), captions=e), _anchor()) == ["b"]
    stage = _stage(MinedConfig(num_negatives=1, margin=0.12), captions=e)
    assert _mined_keys(stage, _anchor()) == ["d"]
    assert stage.stats.rejected[("mined", "mined", "margin")] >= 2
    # relative margin 0.25: drop if cross > 0.5 - 0.125 = 0.375 -> b (0.45) and c (0.4) dropped, d (0.35) kept
    assert _mined_keys(_stage(MinedConfig(num_negatives=1, relative_margin=0.25), captions=e), _anchor()) == ["d"]
    with pytest.raises(ValueError, match="caption embeddings"):
        _stage(MinedConfig(margin=0.0))


def test_select_negatives_margin_follows_sentence_transformers_formula() -> None:
    # Given one query, pos score 0.6 and candidates whose cross scores straddle the margin
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    idx = torch.tensor([[4, 5, 6]])
    cross = torch.tensor([[0.55, 0.5, 0.49]])
    cfg = MinedConfig(num_negatives=3, margin=0.1, max_score=None, range_max=3)
    picked, counts = select_negatives(scores, idx, cfg, pos_scores=torch.tensor([0.6]), cross_scores=cross)
    # Then removed iff cross + margin > pos (0.65, 0.6 kept: not strictly greater, 0.59 kept)
    assert [j for j, _ in picked[0]] == [5, 6] and counts == {"margin": 1}


def test_sampling_strategy() -> None:
    top = _mined_keys(_stage(MinedConfig(num_negatives=2, range_max=4)), _anchor())
    assert top == ["b", "c"]
    seen = set()
    for seed in range(12):
        stage = _stage(MinedConfig(num_negatives=2, range_max=4, sampling_strategy="random", seed=seed))
        got = _mined_keys(stage, _anchor())
        again = _mined_keys(_stage(MinedConfig(num_negatives=2, range_max=4, sampling_strategy="random",
                                               seed=seed)), _anchor())
        assert got == again  # deterministic for a seed
        assert set(got) <= {"b", "c", "d", "e"} and len(got) == 2
        assert got == sorted(got, key=lambda k: -COS[k])  # re-sorted by score, as sentence-transformers
        seen.add(tuple(got))
    assert len(seen) > 1  # seeds change the choice
    with pytest.raises(ValueError, match="sampling_strategy"):
        MinedConfig(sampling_strategy="bottom")


def test_same_caption_neighbours_are_excluded() -> None:
    stage = _stage(MinedConfig(num_negatives=1))
    sample = Sample("anchor", b"img-anchor", "png", "a photo of b")  # b's caption is this sample's own
    assert _mined_keys(stage, sample) == ["c"]
    assert stage.stats.rejected[("mined", "mined", "same caption")] == 1


def test_call_before_index_and_unindexed_without_encoder() -> None:
    with pytest.raises(RuntimeError, match="index"):
        MinedNeighbours()([_anchor()])
    stage = _stage(MinedConfig())
    with pytest.raises(ValueError, match="not indexed"):
        stage([Sample("other", b"x", "png", "a photo of x")])


# ---- end to end through the tiny CLIP ----------------------------------------------------------------------------


@pytest.fixture
def encoder(tiny_bundle) -> Encoder:
    return Encoder(tiny_bundle.model, tiny_bundle.preprocess_val, tiny_bundle.tokenizer,
                   EncoderConfig(num_workers=0, progress=False))


def _real_samples() -> list[Sample]:
    samples = [Sample(f"s{i:02d}", _noise_png(i), "png", f"a pattern number {i}") for i in range(8)]
    samples.append(Sample("s00_copy", samples[0].image, "png", "a copy of pattern 0"))  # identical bytes
    samples.append(Sample("s00_jpeg", _noise_png(0, "JPEG"), "jpg", "a jpeg of pattern 0"))  # near-duplicate
    return samples


def test_end_to_end_on_tiny_images(encoder: Encoder) -> None:
    samples = _real_samples()
    feats = encoder.encode_images([ImageRef(s.key, data=s.image) for s in samples])
    cos = feats @ feats[0]
    # the random tiny model puts all images close; set max_score between the JPEG copy and the real neighbours
    real = cos[1:8]
    assert cos[9] > real.max()
    max_score = float((cos[9] + real.max()) / 2)
    stage = MinedNeighbours(MinedConfig(num_negatives=1, max_score=max_score, backend="torch"), encoder=encoder,
                            model_name="clipneg-tiny")
    # tuples as well as Samples can be indexed
    assert stage.index([(s.key, s.image, s.caption) for s in samples]) == 10
    [out] = stage([samples[0]])
    want = 1 + int(torch.argmax(real))
    assert [t.text for t in out.neg_texts] == [samples[want].caption]
    assert out.neg_images[0].data == samples[want].image and out.neg_images[0].ext == "png"
    assert out.neg_images[0].score == pytest.approx(float(cos[want]), abs=1e-5)
    rejected = {r: n for (_, _, r), n in stage.stats.rejected.items()}
    assert rejected["identical bytes"] == 1 and rejected["max_score (near-duplicate)"] >= 1
    m = stage.manifest()
    assert m["config"]["max_score"] == max_score and m["indexed"] == 10 and m["model"] == "clipneg-tiny"


def test_end_to_end_margin_and_unindexed_query(encoder: Encoder) -> None:
    samples = _real_samples()[:8]
    stage = MinedNeighbours(MinedConfig(num_negatives=2, max_score=None, margin=-1.0, range_max=3), encoder=encoder)
    stage.index(samples)
    new = Sample("fresh", _noise_png(100), "png", "a new pattern")  # not indexed: embedded at call time
    [a, b] = stage([samples[3], new])
    assert len(a.neg_images) == 2 and len(b.neg_images) == 2
    assert stage.stats.extra["embedded at call"] == 1
    assert all(t.text != "a pattern number 3" for t in a.neg_texts)


def test_round_trip_through_the_shard_writer(encoder: Encoder, tmp_path) -> None:
    samples = _real_samples()
    stage = MinedNeighbours(MinedConfig(num_negatives=2, backend="torch"), encoder=encoder)
    stage.index(samples)
    manifest = write_shards(samples, tmp_path, process_batch=stage, shard_size=4, progress=False)
    assert manifest["counts"]["written"] == 10
    back = [members_to_sample({"__key__": k, **m}) for tar in sorted(tmp_path.glob("*.tar"))
            for k, m, err in iter_tar_samples(tar) if err is None]
    assert [s.key for s in back] == [s.key for s in samples]
    by_key = {s.key: s for s in samples}
    captions = {s.caption: s for s in samples}
    for s in back:
        assert s.neg_images, s.key
        for im in s.neg_images:
            # each negative image is the neighbour's image, paired with the neighbour's own caption
            neighbour = captions[s.neg_texts[im.text].text]
            assert im.data == neighbour.image and neighbour.key != s.key and neighbour.image != by_key[s.key].image


def test_precomputed_table_gives_the_same_negatives() -> None:
    # Given 300 random rows (and one query that was never indexed), mined chunk by chunk or from one self-search
    g = torch.Generator().manual_seed(2)
    emb = F.normalize(torch.randn(300, 16, generator=g), dim=-1)
    keys = [f"r{i}" for i in range(300)]
    images = [f"img{i}".encode() for i in range(300)]
    captions = [f"caption {i}" for i in range(300)]
    results = []
    for precompute in (False, True):
        cfg = MinedConfig(num_negatives=3, range_min=1, max_score=0.9, backend="torch", chunk=64,
                          precompute=precompute)
        stage = MinedNeighbours(cfg)
        stage.index_embeddings(keys, emb, images, ["png"] * 300, captions)
        chunk = [Sample(k, d, "png", c) for k, d, c in zip(keys, images, captions, strict=True)]
        out = [s for i in range(0, 300, 50) for s in stage(chunk[i:i + 50])]
        results.append([[(t.text, t.score) for t in s.neg_texts] for s in out])
    # Then both give every sample the same negatives
    assert results[0] == results[1] and all(len(r) == 3 for r in results[0])
