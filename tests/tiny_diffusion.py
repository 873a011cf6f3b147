"""Tiny randomly initialised diffusers pipelines, saved in the hub's folder layout, for tests and CPU benchmarks.

Each builder writes a folder that ``from_pretrained`` reads exactly as it reads a hub id, so the code under test
goes through the real loading path. Sizes follow ENVIRONMENT.md: UNet blocks (32, 64), VAE (32, 64), 2-layer
CLIPTextModel, 64 px (a 32-latent UNet behind a VAE that halves the side). The tokenizer is the real CLIP BPE (49408
tokens) rebuilt from open_clip's bundled merges, so nothing is downloaded.

    from tests.tiny_diffusion import build_all
    folders = build_all(tmp_dir)        # {"sd": ..., "sd-inpaint": ..., "sd-instruct": ..., "sdxl-turbo": ...}
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

CLIP_VOCAB_SIZE = 49408
SIZE = 64  # pixels; the UNet's sample_size (32) times the VAE's scale factor (2)
HIDDEN = 32  # text encoder width


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, as CLIP's BPE uses it."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_clip_tokenizer_files(folder: str | Path) -> Path:
    """vocab.json + merges.txt of OpenAI CLIP's tokenizer, from the BPE file open_clip bundles (the same construction
    as ``open_clip.tokenizer.SimpleTokenizer``, with the Hugging Face names of the two special tokens)."""
    from open_clip.tokenizer import default_bpe

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")
    return folder


def build_clip_tokenizer(folder: str | Path):
    """A transformers CLIPTokenizer (77 tokens context); asserts the vocabulary is complete (a silently empty
    tokenizer is the offline failure ENVIRONMENT.md warns about)."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(build_clip_tokenizer_files(folder)), model_max_length=77)
    assert len(tok) == CLIP_VOCAB_SIZE, f"tokenizer has {len(tok)} tokens, expected {CLIP_VOCAB_SIZE}"
    return tok


def _text_config(projection_dim: int = HIDDEN):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=projection_dim,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="gelu")


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, sample_size=SIZE)


def _unet(in_channels: int, cross_attention_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=SIZE // 2,
                                in_channels=in_channels, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=(2, 4), **extra)


def build_sd(folder: str | Path, tokenizer, *, kind: str = "text2img", seed: int = 0) -> Path:
    """A Stable-Diffusion-1.x layout: ``kind`` "text2img" (4-channel UNet, DDIM), "inpaint" (9 channels: latents,
    mask, masked-image latents) or "instruct" (8 channels: latents + image latents, Euler ancestral as in
    InstructPix2Pix)."""
    from diffusers import (
        DDIMScheduler,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
    )
    from transformers import CLIPTextModel

    cls, channels = {"text2img": (StableDiffusionPipeline, 4), "inpaint": (StableDiffusionInpaintPipeline, 9),
                     "instruct": (StableDiffusionInstructPix2PixPipeline, 8)}[kind]
    torch.manual_seed(seed)
    unet = _unet(channels, HIDDEN)
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config())
    sched_args = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    scheduler = (EulerAncestralDiscreteScheduler(**sched_args) if kind == "instruct"
                 else DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **sched_args))
    pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return Path(folder)


def build_sdxl(folder: str | Path, tokenizer, *, seed: int = 0) -> Path:
    """An SDXL layout (SDXL-Turbo's components, tiny): two text encoders (the second with a projection), a UNet with
    "text_time" added embeddings (6 size/crop ids of 8 dims + the pooled 32-d text embedding = 80), Euler ancestral
    with trailing timesteps as SDXL-Turbo ships it."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = _unet(4, 2 * HIDDEN, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + HIDDEN,
                 transformer_layers_per_block=(1, 1))
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config())
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(HIDDEN))
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                steps_offset=1, timestep_spacing="trailing")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder)
    return Path(folder)


def build_all(root: str | Path) -> dict[str, Path]:
    """Every tiny pipeline under ``root``: "sd", "sd-inpaint", "sd-instruct" and "sdxl-turbo" (the folder name says
    turbo, so the generator picks SDXL-Turbo's defaults from it as it would from ``stabilityai/sdxl-turbo``)."""
    root = Path(root)
    tok = build_clip_tokenizer(root / "tokenizer")
    return {"sd": build_sd(root / "tiny-sd", tok),
            "sd-inpaint": build_sd(root / "tiny-sd-inpainting", tok, kind="inpaint"),
            "sd-instruct": build_sd(root / "tiny-instruct-pix2pix", tok, kind="instruct"),
            "sdxl-turbo": build_sdxl(root / "tiny-sdxl-turbo", tok)}
