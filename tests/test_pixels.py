"""uint8 images from the loader, finished on the device: the same batches and the same training as the float path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms as T

import train
from clipneg.train.config import LoaderConfig
from clipneg.train.data import build_loader
from clipneg.train.pixels import PixelNormalizer, split_pixel_steps, to_uint8_chw


@pytest.fixture(scope="module")
def world_shards(tmp_path_factory) -> Path:
    from clipneg.world import World, WorldConfig, write_train_shards

    out = tmp_path_factory.mktemp("world") / "shards"
    write_train_shards(World(WorldConfig(image_size=32, grid=2, seed=0)), out, 48, shard_size=12, progress=False)
    return out


def _batches(shards: Path, preprocess, tokenizer, k_image: int) -> list[dict]:
    cfg = LoaderConfig(shards=str(shards), batch_size=16, k_text=2, k_image=k_image, num_workers=0)
    torch.manual_seed(0)  # the training transform's random crops draw from torch's RNG
    return list(build_loader(cfg, preprocess=preprocess, tokenizer=tokenizer))


@pytest.mark.parametrize("which", ["preprocess_val", "preprocess_train"])
def test_uint8_batches_finished_by_the_normalizer_equal_the_float_batches(world_shards, tiny_bundle, which):
    """Given open_clip's evaluation or training transform (random crops included), when the loader stops before
    ToTensor + Normalize and the normalizer finishes the batch, then every image and negative image equals the float
    path's bit for bit, and the empty negative-image slots are exactly 0 (8 slots: more than a world scene has)."""
    full = getattr(tiny_bundle, which)
    pil_part, finish = split_pixel_steps(full)
    assert finish.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    floats = _batches(world_shards, full, tiny_bundle.tokenizer, k_image=8)
    uint8s = _batches(world_shards, pil_part, tiny_bundle.tokenizer, k_image=8)
    assert len(floats) == len(uint8s) == 3
    for a, b in zip(floats, uint8s, strict=True):
        assert b["image"].dtype == b["neg_image"].dtype == torch.uint8 and a["image"].dtype == torch.float32
        done = finish(b)
        assert torch.equal(done["image"], a["image"]) and torch.equal(done["neg_image"], a["neg_image"])
        empty = ~b["neg_image_mask"]
        assert empty.any() and b["neg_image_mask"].any()
        assert done["neg_image"][empty].abs().sum() == 0
        assert torch.equal(done["text"], a["text"]) and done["key"] == a["key"]


def test_only_transforms_ending_in_to_tensor_and_normalize_are_split():
    norm = T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert split_pixel_steps(T.Compose([T.Resize(8), T.ToTensor()])) is None
    assert split_pixel_steps(T.Compose([T.ToTensor(), norm, T.Lambda(lambda x: x)])) is None
    assert split_pixel_steps(lambda image: image) is None
    pil_part, finish = split_pixel_steps(T.Compose([T.CenterCrop(4), T.ToTensor(), norm]))
    image = Image.new("RGB", (6, 6), (255, 0, 128))
    pixels = to_uint8_chw(pil_part(image))
    assert pixels.shape == (3, 4, 4) and pixels[:, 0, 0].tolist() == [255, 0, 128]
    done = finish({"image": pixels[None]})["image"][0]
    assert torch.equal(done, norm(T.ToTensor()(T.CenterCrop(4)(image))))
    assert done[:, 0, 0].tolist() == pytest.approx([2.0, -2.0, (128 / 255 - 0.5) / 0.25], abs=1e-6)
    with pytest.raises(ValueError, match="RGB"):
        to_uint8_chw(Image.new("L", (4, 4)))
    floats = {"image": torch.zeros(1, 3, 4, 4)}
    assert PixelNormalizer((0.5,) * 3, (0.25,) * 3)(floats)["image"] is floats["image"]  # float images pass through


def test_training_with_uint8_images_ends_with_the_same_weights(world_shards, tmp_path):
    """Given the ResNet world model (BatchNorm sees every image slot, empty ones included) and the triplet recipe's
    negative images, when the same run trains with uint8 images and with float images, then the exports are equal."""
    from tests.test_train import tiny_args

    def run(name: str, uint8: str) -> dict:
        return train.main(tiny_args(world_shards, tmp_path, name, "--config", str(Path(train.__file__).parent /
                                                                                  "configs/demo_world_triplet.yaml"),
                                    "--model.name", "clipneg-tiny-rn", "--data.k_text", "2", "--data.k_image", "8",
                                    "--data.uint8_images", uint8, "--run.steps", "3", "--optim.lr", "1e-3"))

    a, b = run("float", "false"), run("uint8", "true")
    assert a["train/loss"] == b["train/loss"] and a["train/triplet_loss"] > 0
    wa = load_file(Path(a["export"]) / "open_clip_model.safetensors")
    wb = load_file(Path(b["export"]) / "open_clip_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
