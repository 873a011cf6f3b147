"""DiffusionGenerator on tiny random pipelines (tests/tiny_diffusion.py), loaded from folders through the same
``from_pretrained`` path a hub id takes. Offline, CPU; PNG output wherever pixels are compared exactly."""

from __future__ import annotations

import io
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from clipneg.generators.base import Stage, stable_seed  # noqa: E402
from clipneg.generators.images import box_mask, broken_reason, depicted_captions, sample_mask  # noqa: E402
from clipneg.generators.images.diffusion import (  # noqa: E402
    UNKNOWN_LICENCE,
    DiffusionConfig,
    DiffusionGenerator,
    edit_instruction,
)

from clipneg.schema import NegText, Sample, members_to_sample  # noqa: E402
from clipneg.shards import write_shards  # noqa: E402
from tests.tiny_diffusion import CLIP_VOCAB_SIZE, build_all  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions run several times faster on one thread than on two contended ones (shared CI cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pipes(tmp_path_factory):
    folders = build_all(tmp_path_factory.mktemp("tiny_diffusion"))
    (folders["sd"] / "README.md").write_text("---\nlicense: creativeml-openrail-m\ntags:\n- tiny\n---\n# tiny\n")
    return folders


def noise_png(w: int, h: int, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def make_sample(key: str, caption: str, negs: list[tuple[str, str]], meta=None, size=(64, 64)) -> Sample:
    return Sample(key=key, image=noise_png(*size, seed=len(key)), image_ext="png", caption=caption, meta=meta,
                  neg_texts=[NegText(t, k, "rules", 0) for t, k in negs])


def samples3() -> list[Sample]:
    return [make_sample("s0", "a black dog on a couch", [("a brown dog on a couch", "replace_att")]),
            make_sample("s1", "a dog on a couch", [("a cat on a couch", "replace_obj")]),
            make_sample("s2", "a red cube left of a blue ball", [("a blue cube left of a red ball", "swap_att")])]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_tokenizer_is_the_full_clip_vocabulary(pipes) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(pipes["sd"] / "tokenizer"))
    assert len(tok) == CLIP_VOCAB_SIZE == 49408
    assert tok("a dog").input_ids[0] == 49406 and tok("a dog").input_ids[-1] == 49407


def test_same_seed_same_bytes_and_batch_does_not_matter(pipes) -> None:
    # Given a text-to-image stage batching three samples
    gen = DiffusionGenerator(DiffusionConfig(model=str(pipes["sd"]), steps=2, guidance=1.0, batch_size=3, ext="png"))
    first = [s.neg_images[0].data for s in gen(samples3())]
    # When it runs again, and when the middle sample runs alone
    again = [s.neg_images[0].data for s in gen(samples3())]
    alone = DiffusionGenerator(DiffusionConfig(model=str(pipes["sd"]), steps=2, guidance=1.0, batch_size=1, ext="png"))
    single = alone([samples3()[1]])[0].neg_images[0].data
    # Then: same seed, same bytes; and alone or with batch-mates it is the same image (its own generator). Batched
    # CPU kernels differ in the last float bit (~1e-6), which can move an 8-bit value by one, never more.
    assert first == again
    diff = np.abs(pixels(first[1]) - pixels(single))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    # and different samples (different seeds) differ by far more than that
    assert np.abs(pixels(first[0]) - pixels(first[1])).mean() > 5
    assert gen.stats.extra["images"] == 6 and gen.stats.kept["replace_obj"] == 2 and gen.stats.extra["seconds"] > 0


def test_different_base_seeds_differ(pipes) -> None:
    a = DiffusionGenerator(DiffusionConfig(model=str(pipes["sd"]), steps=1, ext="png", seed=0))
    b = DiffusionGenerator(DiffusionConfig(model=str(pipes["sd"]), steps=1, ext="png", seed=1))
    s_a, s_b = a(samples3()[:1])[0], b(samples3()[:1])[0]
    assert s_a.neg_images[0].seed != s_b.neg_images[0].seed
    assert np.abs(pixels(s_a.neg_images[0].data) - pixels(s_b.neg_images[0].data)).mean() > 5


def test_pairing_and_provenance_survive_the_shards(pipes, tmp_path) -> None:
    import webdataset as wds

    # Given SDXL-Turbo-layout text-to-image of the first two captions of chosen kinds
    gen = DiffusionGenerator(DiffusionConfig(model=str(pipes["sdxl-turbo"]), size="keep", k_image=2,
                                             kinds=("replace_obj", "swap_att"), batch_size=4))
    items = [make_sample("a0", "a dog on a couch", [("a dog under a couch", "replace_rel"),
                                                    ("a cat on a couch", "replace_obj"),
                                                    ("a dog on a chair", "replace_obj"),
                                                    ("a dog on a sofa", "replace_obj")], size=(48, 40)),
             make_sample("a1", "a red cube and a blue ball", [("a blue cube and a red ball", "swap_att")]),
             make_sample("a2", "a plain photo", [])]
    # When the stage runs inside the shard writer
    manifest = write_shards(items, tmp_path, process_batch=gen, progress=False)
    read = {m["__key__"]: members_to_sample(m) for m in wds.WebDataset(str(tmp_path / "train-000000.tar"),
                                                                        shardshuffle=False, empty_check=False)}
    # Then each image names the caption it depicts, with that caption's kind and a reproducible seed
    assert manifest is not None and sorted(read) == ["a0", "a1", "a2"]
    a0 = read["a0"]
    assert [im.text for im in a0.neg_images] == [1, 2]
    for im in a0.neg_images:
        cap = a0.neg_texts[im.text]
        assert (im.kind, im.gen, im.ext) == (cap.kind, "diffusion", "jpg")
        assert im.seed == stable_seed("a0", cap.text, cap.kind, 0)
        assert Image.open(io.BytesIO(im.data)).size == (48, 40)  # "keep": the positive's size
    assert [(im.text, im.kind) for im in read["a1"].neg_images] == [(0, "swap_att")]
    # a sample without negative captions passes through unchanged, and is counted
    assert read["a2"].neg_images == [] and read["a2"].image == items[2].image
    assert gen.stats.samples_without == 1 and gen.stats.extra["skipped: no negative caption"] == 1


def test_samples_without_negatives_pass_through_unchanged(pipes) -> None:
    gen = DiffusionGenerator(DiffusionConfig(model=str(pipes["sd"]), steps=2))
    assert isinstance(gen, Stage)
    s = make_sample("n0", "a dog", [])
    before = (s.image, list(s.neg_texts), list(s.neg_images), s.meta)
    (out,) = gen([s])
    assert out is s and (out.image, out.neg_texts, out.neg_images, out.meta) == before
    assert gen.stats.samples_without == 1 and gen.stats.extra["images"] == 0
    assert not gen._pipes  # nothing to draw: the model was never loaded


def test_inpainting_keeps_every_pixel_outside_the_box(pipes) -> None:
    # Given a 9-channel inpainting model and a non-square positive with one box (fractional corners)
    gen = DiffusionGenerator(DiffusionConfig(model=str(pipes["sd-inpaint"]), mode="inpaint", steps=1,
                                             guidance=1.0))
    box = [10.5, 8, 30, 20.2]
    boxed = make_sample("i0", "a dog on a couch", [("a cat on a couch", "replace_obj")], meta={"boxes": [box]},
                        size=(80, 56))
    plain = make_sample("i1", "a dog on a couch", [("a cat on a couch", "replace_obj")])
    out = gen([boxed, plain])
    # Then the negative has the positive's size, identical pixels outside the box, new ones inside
    (neg,) = out[0].neg_images
    assert neg.ext == "png" and neg.text == 0 and neg.kind == "replace_obj"
    pos, got = pixels(boxed.image), pixels(neg.data)
    assert got.shape == pos.shape == (56, 80, 3)
    inside = np.asarray(box_mask((80, 56), [box])) > 0
    assert inside.sum() == 31 * 21  # x 10..40, y 8..28: whole pixels covering the box
    assert np.array_equal(got[~inside], pos[~inside])
    assert np.abs(got[inside] - pos[inside]).mean() > 5
    # and a sample without a region gets no image, counted as rejected "no mask"
    assert out[1].neg_images == []
    assert gen.stats.rejected[("replace_obj", "diffusion", "no mask")] == 1 and gen.stats.samples_without == 1


def test_sdxl_inpaint_and_img2img_share_weights(pipes) -> None:
    # Given an SDXL-Turbo layout (4-channel UNet) used for inpainting where there are boxes, img2img elsewhere
    gen = DiffusionGenerator(DiffusionConfig(model=str(pipes["sdxl-turbo"]), mode=("inpaint", "img2img"),
                                             size=64, batch_size=2))
    boxed = make_sample("x0", "a dog", [("a cat", "replace_obj")], meta={"boxes": [[0, 0, 16, 64]]})
    plain = make_sample("x1", "a dog", [("a cat", "replace_obj")])
    out = gen([boxed, plain])
    assert gen.pipeline("inpaint").unet is gen.pipeline("img2img").unet  # from_pipe: one set of weights
    assert type(gen.pipeline("inpaint")).__name__ == "StableDiffusionXLInpaintPipeline"
    inside = np.asarray(box_mask((64, 64), [[0, 0, 16, 64]])) > 0
    got, pos = pixels(out[0].neg_images[0].data), pixels(boxed.image)
    assert np.array_equal(got[~inside], pos[~inside]) and not np.array_equal(got[inside], pos[inside])
    assert len(out[1].neg_images) == 1  # img2img: the whole image may change
    m = gen.manifest()
    assert m["steps"] == {"inpaint": 2, "img2img": 2} and m["strength"] == {"inpaint": 1.0, "img2img": 0.5}
    assert m["ext"] == "png" and m["pipelines"]["img2img"] == "StableDiffusionXLImg2ImgPipeline"


def test_instruct_pix2pix(pipes) -> None:
    gen = DiffusionGenerator(DiffusionConfig(model=str(pipes["sd-instruct"]), mode="instruct", steps=1,
                                             image_guidance_scale=1.2))
    (out,) = gen([make_sample("p0", "a black dog on a couch", [("a brown dog on a couch", "replace_att")])])
    assert len(out.neg_images) == 1 and out.neg_images[0].text == 0
    m = gen.manifest()
    assert m["family"] == "instruct-pix2pix" and m["image_guidance_scale"] == 1.2 and m["guidance"]["instruct"] == 7.5
    assert m["pipelines"] == {"instruct": "StableDiffusionInstructPix2PixPipeline"}


def test_edit_instructions_from_word_diffs() -> None:
    assert edit_instruction("a dog on a couch", "a cat on a couch", "replace_obj") == "make the dog a cat"
    assert edit_instruction("a black dog on a couch", "a brown dog on a couch", "replace_att") == "make the dog brown"
    assert edit_instruction("a black dog", "a brown dog") == "make the dog brown"  # no kind: the next word decides
    assert edit_instruction("a dog on a couch", "a dog and a cat on a couch", "add_obj") == "add a cat"
    assert edit_instruction("a man with a hat", "a man") == "remove the hat"
    assert (edit_instruction("a red cube and a blue ball", "a blue cube and a red ball", "swap_att")
            == "make the cube blue and the ball red")
    assert edit_instruction("a dog on a couch", "a dog under a couch", "replace_rel") == "make it a dog under a couch"


def test_turbo_img2img_needs_steps_times_strength_of_one(pipes) -> None:
    with pytest.raises(ValueError, match=r"steps \* strength = 0.5 < 1.*steps=2 with strength=0.5"):
        DiffusionGenerator(DiffusionConfig(model=str(pipes["sdxl-turbo"]), mode="img2img", steps=1, strength=0.5))
    DiffusionGenerator(DiffusionConfig(model=str(pipes["sdxl-turbo"]), mode="img2img", steps=4, strength=0.25))


def test_family_defaults_licence_and_manifest(pipes, tmp_path) -> None:
    turbo = DiffusionGenerator(DiffusionConfig(model=str(pipes["sdxl-turbo"]), mode=("text2img", "img2img")))
    assert turbo.family.name == "sdxl-turbo"
    assert turbo.settings["text2img"].steps == 1 and turbo.settings["img2img"].steps == 2
    assert turbo.settings["img2img"].strength == 0.5 and turbo.settings["text2img"].guidance == 0.0
    m = turbo.manifest()
    assert m["size"] == [512, 512] and m["licence"].startswith("sai-nc-community")
    assert m["scheduler"] == "EulerAncestralDiscreteScheduler" and m["dtype"] == "float32"
    assert {"mode", "model", "revision", "licence", "steps", "guidance", "strength", "image_guidance_scale",
            "seed_policy"} <= set(m)
    sd = DiffusionGenerator(DiffusionConfig(model=str(pipes["sd"]), guidance=3.0, scheduler="EulerDiscreteScheduler"))
    m = sd.manifest()
    assert (sd.family.name, m["steps"], m["guidance"]) == ("sd", {"text2img": 50}, {"text2img": 3.0})
    assert m["size"] == [64, 64] and m["licence"] == "creativeml-openrail-m"
    assert m["scheduler"] == "EulerDiscreteScheduler"
    bare = tmp_path / "tiny-model"
    shutil.copytree(pipes["sd-inpaint"], bare)
    assert DiffusionGenerator(DiffusionConfig(model=str(bare), mode="inpaint")).licence() == UNKNOWN_LICENCE


def test_wrong_model_for_the_mode_is_a_clear_error(pipes) -> None:
    with pytest.raises(ValueError, match="InstructPix2Pix"):
        DiffusionGenerator(DiffusionConfig(model=str(pipes["sd-instruct"]), mode="text2img")).pipeline("text2img")
    with pytest.raises(ValueError, match="inpainting model"):
        DiffusionGenerator(DiffusionConfig(model=str(pipes["sd-inpaint"]), mode=("inpaint", "text2img"))
                           ).pipeline("inpaint")
    with pytest.raises(ValueError, match="cpu_offload needs a CUDA device"):
        DiffusionGenerator(DiffusionConfig(model=str(pipes["sd"]), cpu_offload=True, device="cpu")
                           ).pipeline("text2img")
    with pytest.raises(ValueError, match="instruct"):
        DiffusionConfig(model="x", mode=("instruct", "img2img"))


def test_blank_and_nan_outputs_are_rejected(pipes) -> None:
    import torch

    gen = DiffusionGenerator(DiffusionConfig(model=str(pipes["sdxl-turbo"]), size=64))
    conv = gen.pipeline("text2img").vae.decoder.conv_out
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()  # every pixel decodes to mid grey
    (out,) = gen(samples3()[1:2])
    with torch.no_grad():
        conv.bias.fill_(float("nan"))
    (out2,) = gen(samples3()[1:2])
    assert out.neg_images == [] and out2.neg_images == []
    assert gen.stats.rejected[("replace_obj", "diffusion", "blank image")] == 1
    assert gen.stats.rejected[("replace_obj", "diffusion", "nan")] == 1
    assert gen.stats.produced["replace_obj"] == 2 and gen.stats.kept["replace_obj"] == 0


def test_image_helpers() -> None:
    assert broken_reason(np.zeros((4, 4, 3))) == "blank image"
    assert broken_reason(np.full((4, 4, 3), np.nan)) == "nan"
    assert broken_reason(np.random.default_rng(0).random((4, 4, 3))) is None
    assert depicted_captions(["replace_obj", "swap_att", "replace_obj"], {"replace_obj"}, 5) == [0, 2]
    assert depicted_captions(["replace_obj", "swap_att"], None, 1) == [0]
    assert sample_mask({"boxes": [[100, 100, 5, 5]]}, (32, 32)) is None  # outside the image: no region
    mask = sample_mask({"mask": [[0, 1], [0, 0]]}, (4, 4))
    assert np.asarray(mask).tolist()[0] == [0, 0, 255, 255]


def test_family_detection_and_card_licence(tmp_path) -> None:
    from clipneg.generators.images.diffusion import FAMILIES, card_licence, detect_family

    assert detect_family("stabilityai/sdxl-turbo", {"_class_name": "StableDiffusionXLPipeline"}) == "sdxl-turbo"
    assert detect_family("stabilityai/sd-turbo", {"_class_name": "StableDiffusionPipeline"}) == "sd-turbo"
    assert detect_family("black-forest-labs/FLUX.1-schnell", {"_class_name": "FluxPipeline"}) == "flux-schnell"
    assert detect_family("timbrooks/instruct-pix2pix",
                         {"_class_name": "StableDiffusionInstructPix2PixPipeline"}) == "instruct-pix2pix"
    assert detect_family("stabilityai/stable-diffusion-xl-base-1.0",
                         {"_class_name": "StableDiffusionXLPipeline"}) == "sdxl"
    assert detect_family("sd-legacy/stable-diffusion-v1-5", {"_class_name": "StableDiffusionPipeline"}) == "sd"
    flux = FAMILIES["flux-schnell"]
    assert (flux.steps["text2img"], flux.guidance, flux.licence) == (4, 0.0, "apache-2.0")
    assert (FAMILIES["sd"].steps["text2img"], FAMILIES["sd"].guidance) == (50, 7.5)
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: flux-1-dev-non-commercial-license\n---\n")
    assert card_licence(str(tmp_path)) == "other: flux-1-dev-non-commercial-license"
    assert card_licence(str(tmp_path / "missing")) is None


def test_mask_from_base64_png() -> None:
    import base64

    buf = io.BytesIO()
    arr = np.zeros((8, 8), dtype=np.uint8)
    arr[2:4, 1:3] = 255
    Image.fromarray(arr, "L").save(buf, "PNG")
    mask = sample_mask({"mask": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}, (8, 8))
    assert np.array_equal(np.asarray(mask) > 0, arr > 0)


@pytest.mark.gpu
def test_fp16_with_cpu_offload_on_cuda(pipes) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    # fp16 on the GPU, offloaded, two pipelines over one set of weights (the offload hooks follow the one in use)
    gen = DiffusionGenerator(DiffusionConfig(model=str(pipes["sdxl-turbo"]), mode=("inpaint", "text2img"), size=64,
                                             device="cuda", dtype="float16", cpu_offload=True))
    boxed = make_sample("g0", "a dog", [("a cat", "replace_obj")], meta={"boxes": [[0, 0, 32, 32]]})
    out = gen([boxed, *samples3()[1:2]])
    assert [len(s.neg_images) for s in out] == [1, 1] and gen.stats.extra["gpu_seconds"] > 0
    inside = np.asarray(box_mask((64, 64), [[0, 0, 32, 32]])) > 0
    assert np.array_equal(pixels(out[0].neg_images[0].data)[~inside], pixels(boxed.image)[~inside])
    assert gen.manifest()["dtype"] == "float16"
