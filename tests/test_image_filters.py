"""Image negatives that need no model to be made: HorizontalFlip (left/right mirrors), and the image consistency
filter (its decision on constructed cosines, its pixel checks, and the stage through the tiny CLIP and the shard
writer)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from clipneg.generators.images.filters import (
    Cosines,
    ImageConsistencyFilter,
    ImageFilterConfig,
    decode,
    judge,
    pixel_reason,
)
from clipneg.generators.images.flip import FlipConfig, HorizontalFlip, mirror_caption_edit
from PIL import Image, ImageOps

from clipneg.encoder import Encoder, EncoderConfig, ImageRef
from clipneg.schema import NegImage, NegText, Sample, members_to_sample
from clipneg.shards import write_shards
from clipneg.tars import iter_tar_samples


def _encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _noise(seed: int, size: tuple[int, int] = (32, 24)) -> Image.Image:
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(a)


def _sample(caption: str, *negs: str, image: bytes | None = None, ext: str = "png") -> Sample:
    return Sample("k0", image or _encode(_noise(0)), ext, caption,
                  neg_texts=[NegText(n, "replace_rel", "rules", 0) for n in negs])


# ---- HorizontalFlip ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("caption", "negative", "flip"), [
    ("a cup to the left of a plate", "a cup to the right of a plate", True),
    ("A dog on the Right of a cat.", "a dog on the left of a cat.", True),  # case and punctuation kept
    ("a dog left of a cat and a bird right of the dog", "a dog right of a cat and a bird left of the dog", True),
    ("a man holding a cup in his left hand", "a man holding a cup in his right hand", True),
    ("a red cup to the left of a plate", "a blue cup to the right of a plate", False),  # colour changed too
    ("a dog left of a cat and a bird right of the dog", "a dog right of a cat and a bird right of the dog", False),
    ("leftover pizza on the left", "rightover pizza on the right", False),  # "left" inside another word
    ("leftover pizza on the left", "leftover pizza on the right", True),
    ("a cup to the left of a plate", "a cup to the right side of a plate", False),  # a word added
    ("a cup to the left of a plate", "a plate to the left of a cup", False),  # a swap, not a mirror
    ("a red cup", "a blue cup", False),
    ("a cup to the left of a plate", "a cup to the left of a plate", False),
])
def test_mirror_caption_edit(caption: str, negative: str, flip: bool) -> None:
    assert mirror_caption_edit(caption, negative) is flip


def test_flip_only_on_pure_left_right_edits_and_pixel_exact() -> None:
    # Given a sample with a pure left/right negative and three others
    im = _noise(3)
    s = _sample("a cup to the left of a plate", "a blue cup to the right of a plate", "a cup to the right of a plate",
                "a cup on top of a plate", "a plate to the left of a cup")
    # When flipping
    stage = HorizontalFlip()
    [out] = stage([Sample(s.key, _encode(im), "png", s.caption, neg_texts=s.neg_texts)])
    # Then exactly one mirrored image, paired with the mirrored caption, equal to ImageOps.mirror pixel for pixel
    [neg] = out.neg_images
    assert (neg.text, neg.kind, neg.gen, neg.ext) == (1, "spatial", "flip", "png")
    got = Image.open(io.BytesIO(neg.data))
    assert got.size == im.size and got.tobytes() == ImageOps.mirror(im).tobytes()
    out.validate()
    assert stage.stats.kept == {"spatial": 1}
    assert stage.stats.rejected == {("spatial", "flip", "not a pure left/right mirror"): 2}


def test_flip_of_a_jpeg_is_the_mirror_of_its_decoded_pixels() -> None:
    data = _encode(_noise(4), "JPEG")
    [out] = HorizontalFlip(FlipConfig(kind=None))([_sample("a cat right of a dog", "a cat left of a dog", image=data,
                                                           ext="jpg")])
    [neg] = out.neg_images
    assert neg.kind == "replace_rel"  # kind=None: the caption's kind
    decoded = Image.open(io.BytesIO(data))
    assert Image.open(io.BytesIO(neg.data)).tobytes() == ImageOps.mirror(decoded).tobytes()


@pytest.mark.parametrize("caption", ["a sign to the left of a car", "a man reading to the left of a tree",
                                     "the number 7 left of a cat", "words written left of a door",
                                     "the leftmost cup left of a plate"])
def test_no_flip_when_mirroring_falsifies_something_else(caption: str) -> None:
    stage = HorizontalFlip()
    negative = caption.replace(" left of", " right of")
    [out] = stage([_sample(caption, negative)])
    assert out.neg_images == [] and stage.stats.samples_without == 1
    assert sum(stage.stats.rejected.values()) == 1


def test_flip_skip_words_are_configurable() -> None:
    stage = HorizontalFlip(FlipConfig(skip_words=()))
    [out] = stage([_sample("a sign to the left of a car", "a sign to the right of a car")])
    assert len(out.neg_images) == 1


def test_flip_skips_captions_that_already_have_an_image() -> None:
    s = _sample("a cat right of a dog", "a cat left of a dog")
    s.neg_images.append(NegImage(b"x", "png", "spatial", "render", 0, 0))
    stage = HorizontalFlip()
    [out] = stage([s])
    assert len(out.neg_images) == 1 and stage.stats.extra["caption already has an image"] == 1


# ---- the filter's decision on constructed cosines ----------------------------------------------------------------

CFG = ImageFilterConfig(margin_text=0.05, margin_pos=0.02, max_copy_sim=0.95)
GOOD = Cosines(pi_pt=0.40, pi_ni=0.70, ni_nt=0.35, ni_pt=0.25, pi_nt=0.30)


def test_judge_keeps_a_consistent_counterfactual_and_reports_its_margin() -> None:
    reason, margin = judge(GOOD, CFG)
    assert reason is None and margin == pytest.approx(0.10)


@pytest.mark.parametrize(("change", "reason"), [
    ({"ni_nt": 0.29}, "text margin"),  # 0.29 - 0.25 = 0.04 < 0.05
    ({"pi_nt": 0.39}, "positive margin"),  # 0.40 - 0.39 = 0.01 < 0.02
    ({"pi_ni": 0.96}, "near-copy (embedding)"),
    ({"ni_pt": float("nan")}, "nan"),
])
def test_judge_rejection_reasons(change: dict, reason: str) -> None:
    c = Cosines(**{**GOOD.__dict__, **change})
    assert judge(c, CFG)[0] == reason


def test_judge_margin_edges_and_image_without_caption() -> None:
    at_edge = Cosines(**{**GOOD.__dict__, "ni_nt": 0.30, "ni_pt": 0.25})  # margin exactly 0.05: kept
    assert judge(at_edge, ImageFilterConfig(margin_text=0.05 - 1e-9, margin_pos=0.0))[0] is None
    assert judge(GOOD, ImageFilterConfig(margin_pos=0.0, check_positive_margin=False, margin_text=0.1 - 1e-9))[0] \
        is None
    # an image that depicts no caption: only the copy and NaN checks apply
    assert judge(Cosines(pi_pt=0.3, pi_ni=0.5), CFG) == (None, None)
    assert judge(Cosines(pi_pt=0.3, pi_ni=0.99), CFG)[0] == "near-copy (embedding)"


def test_pixel_checks() -> None:
    pos = _noise(1)
    cfg = ImageFilterConfig(min_changed_pixels=0.05, expect_size=(32, 24))
    assert pixel_reason(pos, _noise(2), cfg) is None
    assert pixel_reason(pos, None, cfg) == "undecodable"
    assert decode(b"not an image") is None
    assert pixel_reason(pos, _noise(2, (16, 16)), cfg) == "wrong size"
    assert pixel_reason(pos, Image.new("RGB", (32, 24), (128, 128, 128)), cfg) == "blank"
    # a copy with a few changed pixels is a near-copy; a quarter changed is not
    a = np.asarray(pos).copy()
    a[:2, :2] = 255 - a[:2, :2]
    assert pixel_reason(pos, Image.fromarray(a), cfg) == "near-copy (pixels)"
    a[:12, :16] = 255 - a[:12, :16]
    assert pixel_reason(pos, Image.fromarray(a), cfg) is None
    with pytest.raises(ValueError, match="fraction"):
        ImageFilterConfig(min_changed_pixels=2)


# ---- the filter stage through the tiny CLIP ----------------------------------------------------------------------


@pytest.fixture
def encoder(tiny_bundle) -> Encoder:
    return Encoder(tiny_bundle.model, tiny_bundle.preprocess_val, tiny_bundle.tokenizer,
                   EncoderConfig(num_workers=0, progress=False))


def _filter_sample() -> Sample:
    """Three captions, four images: blank (depicts caption 2), good (caption 0), a near-copy (caption 1), good with
    no caption."""
    pos = _noise(10)
    touched = np.asarray(pos).copy()
    touched[:2, :2] = 0  # 4 of 768 pixels: a near-copy
    negs = ["a cat right of a dog", "a dog left of a cat", "two cats"]
    s = Sample("k1", _encode(pos), "png", "a cat left of a dog",
               neg_texts=[NegText(n, "replace_rel", "rules", 0) for n in negs])
    s.neg_images = [
        NegImage(_encode(Image.new("RGB", (32, 24), (9, 9, 9))), "png", "spatial", "test", 0, 2),
        NegImage(_encode(ImageOps.mirror(pos)), "png", "spatial", "flip", None, 0),
        NegImage(_encode(Image.fromarray(touched)), "png", "replace_rel", "test", 0, 1),
        NegImage(_encode(_noise(11)), "png", "mined", "mined", 0, None),
    ]
    return s


LOOSE = dict(margin_text=-2.0, margin_pos=-2.0, max_copy_sim=1.01)  # only pixel checks can reject


def test_removal_keeps_indices_consistent(encoder: Encoder) -> None:
    s = _filter_sample()
    depicted = [None if im.text is None else s.neg_texts[im.text].text for im in s.neg_images]
    filt = ImageConsistencyFilter(ImageFilterConfig(**LOOSE, min_changed_pixels=0.05), encoder=encoder)
    [out] = filt([s])
    # the blank and the near-copy are removed; captions are untouched, and each kept image still names its own
    assert [t.text for t in out.neg_texts] == ["a cat right of a dog", "a dog left of a cat", "two cats"]
    assert [im.gen for im in out.neg_images] == ["flip", "mined"]
    assert [None if im.text is None else out.neg_texts[im.text].text for im in out.neg_images] == \
        [depicted[1], depicted[3]]
    assert filt.stats.rejected == {("spatial", "image_consistency", "blank"): 1,
                                   ("replace_rel", "image_consistency", "near-copy (pixels)"): 1}
    assert filt.stats.kept == {"spatial": 1, "mined": 1} and filt.stats.produced["spatial"] == 2
    out.validate()


def test_stage_scores_are_the_reference_models_margins(encoder: Encoder) -> None:
    s = _filter_sample()
    s.neg_images = s.neg_images[1:2]  # the mirrored image, depicting caption 0
    [out] = ImageConsistencyFilter(ImageFilterConfig(**LOOSE), encoder=encoder)([s])
    [im] = out.neg_images
    ni = encoder.encode_images([ImageRef("ni", data=im.data)])[0]
    nt, pt = encoder.encode_texts([s.neg_texts[0].text, s.caption])
    assert im.score == pytest.approx(float(ni @ nt - ni @ pt), abs=1e-5)


@pytest.mark.parametrize(("config", "reason"), [
    (dict(LOOSE, margin_text=2.0), "text margin"),
    (dict(LOOSE, margin_pos=2.0), "positive margin"),
    (dict(LOOSE, max_copy_sim=-1.0), "near-copy (embedding)"),
    (dict(LOOSE, expect_size=(64, 64)), "wrong size"),
])
def test_stage_rejection_reasons(encoder: Encoder, config: dict, reason: str) -> None:
    s = _filter_sample()
    s.neg_images = s.neg_images[1:2]
    filt = ImageConsistencyFilter(ImageFilterConfig(**config), encoder=encoder, model_name="clipneg-tiny")
    [out] = filt([s])
    assert out.neg_images == [] and filt.stats.rejected == {("spatial", "image_consistency", reason): 1}
    assert filt.stats.samples_without == 1
    m = filt.manifest()
    assert m["config"] == {**ImageFilterConfig(**config).__dict__} and m["model"] == "clipneg-tiny"


def test_undecodable_negative_is_rejected(encoder: Encoder) -> None:
    s = _filter_sample()
    s.neg_images = [NegImage(b"\x89PNG broken", "png", "spatial", "test", 0, 0)]
    filt = ImageConsistencyFilter(ImageFilterConfig(**LOOSE), encoder=encoder)
    [out] = filt([s])
    assert out.neg_images == [] and filt.stats.rejected == {("spatial", "image_consistency", "undecodable"): 1}


def test_flip_then_filter_round_trip_through_the_shard_writer(encoder: Encoder, tmp_path) -> None:
    samples = [_filter_sample() for _ in range(3)]
    for i, s in enumerate(samples):
        s.key = f"k{i}"
    flip = HorizontalFlip()
    filt = ImageConsistencyFilter(ImageFilterConfig(**LOOSE, min_changed_pixels=0.05), encoder=encoder)
    manifest = write_shards(samples, tmp_path, process_batch=lambda chunk: filt(flip(chunk)), shard_size=2,
                            progress=False)
    assert manifest["counts"]["written"] == 3
    back = [members_to_sample({"__key__": k, **m}) for tar in sorted(tmp_path.glob("*.tar"))
            for k, m, err in iter_tar_samples(tar) if err is None]
    assert [s.key for s in back] == ["k0", "k1", "k2"]
    for s in back:
        # the original mirrored image and the mined one survive; flip added none (caption 0 already had its image)
        assert [(im.gen, im.text) for im in s.neg_images] == [("flip", 0), ("mined", None)]
        assert s.neg_texts[s.neg_images[0].text].text == "a cat right of a dog"
        assert s.neg_images[0].score is not None
