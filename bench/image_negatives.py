"""Diffusion image negatives: ``DiffusionGenerator`` against a plain diffusers loop over the same pipeline.

Both sides use the same pipeline object (``gen.pipeline(mode)``), prompts, per-image seeded generators, steps,
guidance, strength and batch size, and both encode every image (JPEG 95, or PNG for inpainting); the plain loop reads
the positives from the same bytes. What the generator adds: choosing captions, seeds, masks from boxes, the
blank / NaN check, resizing and pasting the inpainted region back into the positive, and provenance. Rounds
alternate between the two so machine noise hits both; medians are reported, the goal is a ratio >= 0.95.

CPU, tiny random pipelines (tests/tiny_diffusion.py; 64 px, UNet (32, 64)), every mode:

    python bench/image_negatives.py --n 16 --batch-size 4 --steps 2 --rounds 3 --threads 1

GPU (needs CUDA; random weights are enough for throughput): an SDXL-Turbo-architecture pipeline built from its
configs (UNet 2.57 B parameters, CLIP ViT-L + OpenCLIP bigG text encoders, 512 px), batches 1 / 8 / 16, 1 and 4
steps, images/s and peak GPU memory; ``--arch-only`` builds it on the meta device and checks parameter counts (CPU).

    python bench/image_negatives.py --sdxl-turbo --batch-sizes 1 8 16 --steps-list 1 4 --n 32
    python bench/image_negatives.py --sdxl-turbo --arch-only
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipneg.generators.base import stable_seed  # noqa: E402
from clipneg.generators.images import box_mask, encode_image  # noqa: E402
from clipneg.generators.images.diffusion import DiffusionConfig, DiffusionGenerator, edit_instruction  # noqa: E402

from clipneg.schema import NegText, Sample  # noqa: E402

CAPTIONS = [("a black dog on a couch", "a brown dog on a couch", "replace_att"),
            ("a dog on a couch", "a cat on a couch", "replace_obj"),
            ("a red cube left of a blue ball", "a blue cube left of a red ball", "swap_att"),
            ("a man with a hat", "a man with a red hat", "add_att")]


def make_samples(n: int, size: tuple[int, int], boxes: bool) -> list[Sample]:
    out = []
    for i in range(n):
        pos, neg, kind = CAPTIONS[i % len(CAPTIONS)]
        arr = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=95)
        meta = {"boxes": [[size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2]]} if boxes else None
        out.append(Sample(key=f"k{i:05d}", image=buf.getvalue(), image_ext="jpg", caption=pos, meta=meta,
                          neg_texts=[NegText(neg, kind, "rules", 0)]))
    return out


def plain_loop(gen: DiffusionGenerator, mode: str, samples: list[Sample], batch_size: int) -> int:
    """What a script calling diffusers directly does with the same settings; returns images made."""
    pipe = gen.pipeline(mode)
    st = gen.settings[mode]
    size = gen.generation_size(None)  # the bench never uses size "keep"
    made = 0
    for b in range(0, len(samples), batch_size):
        batch = samples[b:b + batch_size]
        negs = [s.neg_texts[0] for s in batch]
        kw = {"num_inference_steps": st.steps, "guidance_scale": st.guidance, "output_type": "pil",
              "generator": [torch.Generator("cpu").manual_seed(stable_seed(s.key, t.text, t.kind, 0))
                            for s, t in zip(batch, negs, strict=True)]}
        if mode == "instruct":
            kw["prompt"] = [edit_instruction(s.caption, t.text, t.kind) for s, t in zip(batch, negs, strict=True)]
            kw["image_guidance_scale"] = st.image_guidance_scale
        else:
            kw["prompt"] = [t.text for t in negs]
        if mode != "text2img":
            kw["image"] = [Image.open(io.BytesIO(s.image)).convert("RGB").resize(size) for s in batch]
        if st.strength is not None:
            kw["strength"] = st.strength
        if mode == "inpaint":
            box = [size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2]
            kw["mask_image"] = [box_mask(size, [box])] * len(batch)
        if mode in ("text2img", "inpaint"):
            kw["width"], kw["height"] = size
        with torch.inference_mode():
            images = pipe(**kw).images
        for im in images:
            encode_image(im, gen.ext, gen.config.quality)
        made += len(images)
    return made


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compare(gen: DiffusionGenerator, mode: str, n: int, batch_size: int, rounds: int, sample_size: tuple[int, int],
            ) -> dict:
    """Median images/s of the generator and of the plain loop, rounds alternating (one warm-up each first)."""
    boxes = mode == "inpaint"
    gen(make_samples(batch_size, sample_size, boxes))  # warm-up: load, first-call allocations
    plain_loop(gen, mode, make_samples(batch_size, sample_size, boxes), batch_size)
    ours, theirs = [], []
    for _ in range(rounds):
        samples = make_samples(n, sample_size, boxes)
        sync(gen.device)
        t0 = time.perf_counter()
        out = gen(samples)
        sync(gen.device)
        dt = time.perf_counter() - t0
        ours.append(n / dt)
        kept = sum(len(s.neg_images) for s in out)
        samples = make_samples(n, sample_size, boxes)
        t0 = time.perf_counter()
        made = plain_loop(gen, mode, samples, batch_size)
        sync(gen.device)
        theirs.append(made / (time.perf_counter() - t0))
    g, p = statistics.median(ours), statistics.median(theirs)
    return {"mode": mode, "model": Path(gen.config.model).name, "family": gen.family.name,
            "steps": gen.settings[mode].steps, "guidance": gen.settings[mode].guidance, "batch": batch_size, "n": n,
            "generator_img_s": round(g, 3), "plain_img_s": round(p, 3), "ratio": round(g / p, 3),
            "kept_last_round": kept}


def run_tiny(args) -> list[dict]:
    from tests.tiny_diffusion import build_all

    folders = build_all(Path(tempfile.mkdtemp(prefix="tiny_diffusion_")))
    s = args.steps
    plans = [("sd", "text2img", dict(steps=s)),
             ("sd", "img2img", dict(steps=s, strength=0.75 if s >= 2 else 1.0)),
             ("sd-inpaint", "inpaint", dict(steps=s)),
             ("sd-instruct", "instruct", dict(steps=s)),
             ("sdxl-turbo", "text2img", dict(size=64)),
             ("sdxl-turbo", "img2img", dict(size=64))]
    if args.modes:
        plans = [p for p in plans if f"{p[0]}:{p[1]}" in args.modes]
    rows = []
    for name, mode, extra in plans:
        gen = DiffusionGenerator(DiffusionConfig(model=str(folders[name]), mode=mode, batch_size=args.batch_size,
                                                 device="cpu", **extra))
        row = compare(gen, mode, args.n, args.batch_size, args.rounds, (64, 64))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---- SDXL-Turbo architecture with random weights ---------------------------------------------------------------

# stabilityai/sdxl-turbo's component configs (the same architecture as SDXL base 1.0; sample_size 64 -> 512 px).
SDXL_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32)
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, sample_size=512, scaling_factor=0.13025, force_upcast=True)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
              eos_token_id=49407, pad_token_id=1)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                 num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
                 bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
# Parameter counts of the released weights, to check the configs against.
SDXL_PARAMS = {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}


def build_sdxl_turbo(device: str, dtype: torch.dtype, tokenizer=None):
    """The SDXL-Turbo pipeline architecture with random weights (no download), on ``device``."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        parts = {"unet": UNet2DConditionModel(**SDXL_UNET), "vae": AutoencoderKL(**SDXL_VAE),
                 "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                 "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))}
    if device == "meta":
        return parts
    for m in parts.values():
        m.to(dtype)
    sched = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            steps_offset=1, timestep_spacing="trailing")
    return StableDiffusionXLPipeline(**parts, tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=sched)


def check_arch() -> dict:
    parts = build_sdxl_turbo("meta", torch.float16)
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    row = {"check": "sdxl-turbo architecture", "params": counts,
           "matches_release": {k: counts[k] == SDXL_PARAMS[k] for k in counts}}
    print(json.dumps(row), flush=True)
    return row


def run_sdxl_turbo(args) -> list[dict]:
    from tests.tiny_diffusion import build_clip_tokenizer

    if not torch.cuda.is_available():
        raise SystemExit("--sdxl-turbo needs CUDA (use --arch-only to check the architecture on the CPU)")
    work = Path(tempfile.mkdtemp(prefix="sdxl_turbo_random_"))
    folder = work / "sdxl-turbo-random"  # "turbo" in the name: the generator picks SDXL-Turbo's defaults
    pipe = build_sdxl_turbo("cuda", torch.float16, build_clip_tokenizer(work / "tokenizer"))
    pipe.save_pretrained(folder)
    del pipe
    gc.collect()
    torch.cuda.empty_cache()
    rows = []
    for steps in args.steps_list:
        for bs in args.batch_sizes:
            gen = DiffusionGenerator(DiffusionConfig(model=str(folder), steps=steps, batch_size=bs, device="cuda",
                                                     dtype="float16"))
            torch.cuda.reset_peak_memory_stats()
            row = compare(gen, "text2img", max(args.n, bs), bs, args.rounds, (512, 512))
            row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            row["gpu_seconds"] = round(gen.stats.extra["gpu_seconds"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del gen
            gc.collect()
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="images per round and side")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="steps of the SD-layout tiny pipelines (turbo: its default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--modes", nargs="+", default=None,
                    help="tiny runs to do, as model:mode (sd:text2img sd:img2img sd-inpaint:inpaint "
                         "sd-instruct:instruct sdxl-turbo:text2img sdxl-turbo:img2img); default all")
    ap.add_argument("--sdxl-turbo", action="store_true", help="the SDXL-Turbo architecture at 512 px on CUDA")
    ap.add_argument("--arch-only", action="store_true", help="with --sdxl-turbo: parameter counts on the meta device")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--steps-list", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(json.dumps(env), flush=True)
    if args.sdxl_turbo:
        rows = [check_arch()] if args.arch_only else run_sdxl_turbo(args)
    else:
        rows = run_tiny(args)
    if args.out:
        args.out.write_text(json.dumps({"env": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
