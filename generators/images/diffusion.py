"""``DiffusionGenerator``: counterfactual images of the negative captions with diffusers (``clipneg generate --image
diffusion``).

    from clipneg.generators.images.diffusion import DiffusionConfig, DiffusionGenerator
    gen = DiffusionGenerator(DiffusionConfig(model="stabilityai/sdxl-turbo", mode="text2img"))
    samples = gen(samples)        # each sample gets up to k_image NegImages, each depicting one of its neg_texts
    gen.manifest()                # model, revision, licence, resolved steps / guidance / size, scheduler, seed policy

Modes (tried in the configured order per sample; the first that applies is used):

| mode       | what it makes                                                        | source                      |
|------------|----------------------------------------------------------------------|-----------------------------|
| text2img   | the negative caption from noise                                      | TripletCLIP (SDXL-Turbo)    |
| img2img    | the positive pushed toward the negative caption (``strength``)       | SDEdit                      |
| instruct   | an InstructPix2Pix edit ("make the dog a cat") from a word diff       | Brooks et al. 2023          |
| inpaint    | only inside ``meta["boxes"]`` / ``meta["mask"]``; every other pixel   | GNM (SD-2 inpainting),      |
|            | is the positive's, pasted back, so the pair differs only in the box  | CounterCurate               |

``mode=("inpaint", "text2img")`` inpaints samples that have boxes and generates the rest; the pipelines share one set
of weights (``AutoPipelineFor*.from_pipe``). The model (a hub id or a local folder, both through ``from_pretrained``)
decides the defaults: its family is read from the id and ``model_index.json`` (:func:`detect_family`, table
:data:`FAMILIES`), and every default can be overridden in the config. The manifest records what was used and the
model's licence (SDXL-Turbo's licence forbids commercial use).

Determinism: every image gets its own CPU ``torch.Generator`` seeded with ``stable_seed(key, negative caption, kind,
config.seed)``, so its noise does not depend on the batch it lands in, the rank, or the GPU. The pixels themselves
can still differ in the last bit between batch sizes (batched conv / norm kernels reduce in a different order, about
1e-6), which moves a few 8-bit values by one; run twice with the same batching, output bytes are equal.

Rejections (``stats.rejected`` as (kind, "diffusion", reason)): "no mask" (inpaint only and the sample has no region),
"nan" (non-finite output, e.g. fp16 VAE overflow), "blank image" (flat output, e.g. a safety checker's black image),
"nsfw" (flagged by the pipeline's safety checker). CLIP consistency is checked by a later filter (filters.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import inspect
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipneg.schema import KINDS, NegImage, Sample
from clipneg.shards import Quarantined

from ..base import StageStats, config_hash, stable_seed
from . import broken_reason, decode_rgb, depicted_captions, encode_image, sample_mask

logger = logging.getLogger(__name__)

VERSION = "1.0.0"
GEN = "diffusion"
MODES = ("text2img", "img2img", "instruct", "inpaint")
EDIT_MODES = ("img2img", "instruct", "inpaint")  # modes that start from the positive image
DTYPES = ("float32", "float16", "bfloat16")
SEED_POLICY = ("one CPU torch.Generator per image, seeded with stable_seed(key, negative caption, kind, config.seed); "
               "independent of batch, rank and device")
UNKNOWN_LICENCE = "unknown: check the model card"


@dataclass(frozen=True)
class Family:
    """Defaults of a model family, from its model card (or diffusers' defaults where the card gives none).

    ``size``: output side in pixels, None for the model's native size (UNet sample size x VAE factor); ``steps`` and
    ``strength`` per mode; ``licence``: a fixed note, or None to read the model card's front matter."""

    name: str
    size: int | None
    steps: dict[str, int]
    guidance: float
    strength: dict[str, float] = field(default_factory=lambda: {"img2img": 0.75, "inpaint": 1.0})
    image_guidance_scale: float | None = None
    licence: str | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    max_steps: int | None = None  # a distilled model's useful range; more only warns

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TURBO_LICENCE = ("sai-nc-community: Stability AI Non-Commercial Research Community License; research use only, no "
                  "commercial use of the model or its outputs without a Stability AI licence")
_TURBO = dict(size=512, steps={"text2img": 1, "img2img": 2, "inpaint": 2, "instruct": 2}, guidance=0.0,
              strength={"img2img": 0.5, "inpaint": 1.0}, licence=_TURBO_LICENCE, max_steps=4)
FAMILIES: dict[str, Family] = {
    # SDXL-Turbo / SD-Turbo cards: 512 px, guidance_scale=0.0, 1 step (text-to-image), 2 steps x strength 0.5
    # (image-to-image); adversarial distillation makes 1-4 steps the useful range.
    "sdxl-turbo": Family("sdxl-turbo", **_TURBO),
    "sd-turbo": Family("sd-turbo", **_TURBO),
    # FLUX.1-schnell card: 4 steps, guidance 0, max_sequence_length 256 (its T5 context), Apache-2.0.
    "flux-schnell": Family("flux-schnell", 1024, dict.fromkeys(MODES, 4), 0.0, {"img2img": 0.75, "inpaint": 1.0},
                           licence="apache-2.0", call_kwargs={"max_sequence_length": 256}, max_steps=4),
    # FLUX.1-dev card: 50 steps, guidance 3.5 (a distilled guidance input, not classifier-free guidance).
    "flux-dev": Family("flux-dev", 1024, dict.fromkeys(MODES, 50), 3.5),
    # SDXL base card / diffusers defaults: 1024 px, 50 steps, guidance 5.0.
    "sdxl": Family("sdxl", 1024, dict.fromkeys(MODES, 50), 5.0),
    # InstructPix2Pix (timbrooks/instruct-pix2pix): text guidance 7.5, image guidance 1.5 (the paper's defaults);
    # 20 steps of Euler ancestral (the card's example uses 10).
    "instruct-pix2pix": Family("instruct-pix2pix", None, dict.fromkeys(MODES, 20), 7.5, image_guidance_scale=1.5),
    # SD 1.x / 2.x cards: the pipeline defaults, 50 steps, guidance 7.5, native size (512, or 768 for v-models).
    "sd": Family("sd", None, dict.fromkeys(MODES, 50), 7.5),
}


def read_model_index(model: str, revision: str | None = None) -> dict[str, Any]:
    """``model_index.json`` of a local diffusers folder or a hub id (the hub's copy, or the local cache offline)."""
    path = Path(model)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise FileNotFoundError(f"{model} is a folder without model_index.json: point model at a diffusers "
                                    "pipeline folder (one written by save_pretrained) or a hub id")
        return json.loads(index.read_text())
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(model, revision=revision))
    except OSError as e:
        offline = " (HF_HUB_OFFLINE is set: only the local cache is read)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise OSError(f"cannot read model_index.json of {model!r} (revision {revision}){offline}: it is not a local "
                      f"folder and the hub copy is not available ({e}). Download it once (`hf download {model}`) or "
                      "pass a local diffusers folder") from e


def detect_family(model: str, index: dict[str, Any]) -> str:
    """The :data:`FAMILIES` key for a model id (or folder) and its ``model_index.json``."""
    cls = str(index.get("_class_name", ""))
    name = model.lower()
    if "InstructPix2Pix" in cls:
        return "instruct-pix2pix"
    if "Flux" in cls or "flux" in name:
        return "flux-schnell" if "schnell" in name else "flux-dev"
    xl = "XL" in cls or "sdxl" in name or "-xl" in name
    if "turbo" in name:
        return "sdxl-turbo" if xl else "sd-turbo"
    return "sdxl" if xl else "sd"


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def card_licence(model: str, revision: str | None = None) -> str | None:
    """``license`` (with ``license_name`` for "other") from the model card's front matter, if the card is on disk
    (a local folder's README.md, or the hub cache); never downloads."""
    path = Path(model) / "README.md"
    if not Path(model).is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        try:
            cached = try_to_load_from_cache(model, "README.md", revision=revision)
        except ValueError:  # not a repo id either (e.g. a folder that does not exist): no card to read
            return None
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return None
    m = _FRONT_MATTER.match(path.read_text(encoding="utf-8", errors="replace"))
    if not m:
        return None
    fields = {}
    for line in m.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "\t", "-")):
            fields[key.strip()] = value.strip().strip("'\"")
    licence = fields.get("license") or None
    if licence == "other" and fields.get("license_name"):
        licence = f"other: {fields['license_name']}"
    return licence


# ---- instructions for InstructPix2Pix ----------------------------------------------------------------------------

_WORD = re.compile(r"[\w'-]+")
_FUNCTION_WORDS = frozenset(
    "a an the this that these those some of on in at to by with and or but near next behind beside above below under "
    "over into onto from for is are was were be while has have its it their his her".split())
_ATTRIBUTE_KINDS = frozenset({"replace_att", "swap_att", "add_att"})
_OBJECT_KINDS = frozenset({"replace_obj", "swap_obj", "add_obj"})
_ARTICLES = ("a", "an", "the")


def _article(phrase: str) -> str:
    first = phrase.split()[0]
    if first in _ARTICLES or first.isdigit() or (first.endswith("s") and not first.endswith("ss")):
        return phrase
    return f"{'an' if first[0] in 'aeiou' else 'a'} {phrase}"


def _strip_leading(words: list[str]) -> list[str]:
    while words and words[0] in ("and", "with", "or", "the"):
        words = words[1:]
    return words


def edit_instruction(positive: str, negative: str, kind: str | None = None) -> str:
    """An InstructPix2Pix instruction that turns the positive caption's scene into the negative's, from a word diff.

    "a black dog on a couch" -> "a brown dog on a couch" (replace_att): "make the dog brown";
    "... dog ..." -> "... cat ..." (replace_obj): "make the dog a cat"; an insert "add a cat", a deletion "remove
    the hat"; two swapped words "make the cube blue and the ball red". Edits the diff cannot phrase (word order,
    relations, long rewrites) become "make it <negative caption>". ``kind`` says whether a changed word is an
    attribute (of the next word) or an object; without it, a word followed by a content word counts as an attribute.
    """
    pos = _WORD.findall(positive.lower())
    neg = _WORD.findall(negative.lower())
    fallback = f"make it {negative.strip().rstrip('.')}"
    if sorted(pos) == sorted(neg) and kind not in _ATTRIBUTE_KINDS | _OBJECT_KINDS:
        return fallback  # a pure reordering (ARO shuffles, relation swaps): no word to point at
    if len(pos) == len(neg):  # word-for-word edits (replace, swap): compare position by position
        ops, i = [], 0
        while i < len(pos):
            if pos[i] == neg[i]:
                i += 1
                continue
            j = i
            while j < len(pos) and pos[j] != neg[j]:
                j += 1
            ops.append(("replace", i, j, i, j))
            i = j
    else:
        ops = [op for op in difflib.SequenceMatcher(a=pos, b=neg, autojunk=False).get_opcodes() if op[0] != "equal"]
    if not ops or len(ops) > 2 or any(max(i2 - i1, j2 - j1) > 3 for _, i1, i2, j1, j2 in ops):
        return fallback
    make, add, remove = [], [], []
    for tag, i1, i2, j1, j2 in ops:
        old, new = pos[i1:i2], neg[j1:j2]
        after = pos[i2] if i2 < len(pos) else None  # the word the edit sits before (its noun, for an attribute)
        if kind in _ATTRIBUTE_KINDS:
            attribute = after is not None
        elif kind in _OBJECT_KINDS:
            attribute = False
        else:
            attribute = after is not None and after not in _FUNCTION_WORDS and len(old) <= 1 and len(new) == 1
        if tag == "replace":
            if set(old) & _FUNCTION_WORDS and not attribute:
                return fallback  # a relation or article changed: no object to name
            old_s, new_s = " ".join(old), " ".join(new)
            make.append(f"the {after} {new_s}" if attribute else f"the {old_s} {_article(new_s)}")
        elif tag == "insert":
            new = _strip_leading(new)
            if not new:
                return fallback
            if attribute and len(new) == 1 and new[0] not in _FUNCTION_WORDS:
                make.append(f"the {after} {new[0]}")
            else:
                add.append(_article(" ".join(new)))
        else:  # delete
            gone = [w for w in _strip_leading(old) if w not in _ARTICLES]
            if not gone:
                return fallback
            remove.append(f"the {' '.join(gone)}")
    clauses = ([f"make {' and '.join(make)}"] if make else []) + [f"add {a}" for a in add] + \
        [f"remove {r}" for r in remove]
    return " and ".join(clauses)


# ---- config -----------------------------------------------------------------------------------------------------


def _parse_size(size: Any) -> str | tuple[int, int] | None:
    if size is None or size in ("keep", "native"):
        return size
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, str):
        m = re.fullmatch(r"(\d+)(?:x(\d+))?", size.strip().lower())
        if m:
            return (int(m.group(1)), int(m.group(2) or m.group(1)))
    elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return (int(size[0]), int(size[1]))
    raise ValueError(f"size must be 'keep', 'native', a side in pixels, 'WxH' or (width, height) (got {size!r})")


@dataclass(frozen=True)
class DiffusionConfig:
    """What the diffusion stage makes and how. None means "the model family's default" (:data:`FAMILIES`).

    model: hub id or local diffusers folder; revision / variant (e.g. "fp16") go to ``from_pretrained``;
    family: override :func:`detect_family`; mode: one of :data:`MODES` or several, tried in order per sample;
    dtype: float32 | float16 | bfloat16 (None: float32 on CPU, float16 on CUDA, bfloat16 for FLUX);
    device: None picks cuda:LOCAL_RANK when CUDA is available; cpu_offload: ``enable_model_cpu_offload`` (CUDA only);
    steps, guidance, strength (img2img / inpaint), image_guidance_scale (instruct): None = family default;
    size: "keep" (the positive's size), "native" (the model's), a side, "WxH" or (width, height); inpainting output
    always has the positive's size (the region is pasted back); scheduler: a diffusers scheduler class name to swap
    in (from the model's scheduler config); prompt_template: "{text}" is the negative caption; negative_prompt: used
    only with classifier-free guidance; kinds: negative kinds to depict (None: all); k_image: images per sample (the
    first k_image captions of those kinds); batch_size: images per pipeline call; ext: "jpg" | "png" (None: png when
    inpainting, so the unmasked pixels stay exact, else jpg); quality: JPEG quality; seed: base seed; licence:
    override the licence note."""

    model: str
    mode: str | tuple[str, ...] = "text2img"
    revision: str | None = None
    variant: str | None = None
    family: str | None = None
    dtype: str | None = None
    device: str | None = None
    cpu_offload: bool = False
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    image_guidance_scale: float | None = None
    size: int | str | tuple[int, int] | None = None
    scheduler: str | None = None
    prompt_template: str = "{text}"
    negative_prompt: str | None = None
    kinds: tuple[str, ...] | None = None
    k_image: int = 1
    batch_size: int = 4
    ext: str | None = None
    quality: int = 95
    seed: int = 0
    licence: str | None = None

    def __post_init__(self) -> None:
        modes = (self.mode,) if isinstance(self.mode, str) else tuple(self.mode)
        object.__setattr__(self, "mode", modes)
        object.__setattr__(self, "size", _parse_size(self.size))
        if self.kinds is not None:
            object.__setattr__(self, "kinds", tuple(self.kinds))
            unknown = sorted(set(self.kinds) - KINDS)
            if unknown:
                raise ValueError(f"kinds {unknown} are not in clipneg.schema.KIND_LIST")
        if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
            raise ValueError(f"mode must be one or more distinct of {', '.join(MODES)} (got {self.mode!r})")
        if "instruct" in modes and len(modes) > 1:
            raise ValueError("mode 'instruct' needs an InstructPix2Pix model (8-channel UNet), which the other modes "
                             "cannot use: run it as its own stage")
        if self.family is not None and self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} unknown; choose from {', '.join(FAMILIES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        if self.ext is not None and self.ext not in ("jpg", "png"):
            raise ValueError(f"ext must be 'jpg' or 'png' (got {self.ext!r})")
        if self.k_image < 1 or self.batch_size < 1:
            raise ValueError("k_image and batch_size must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 (got {self.steps})")
        if self.strength is not None and not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1] (got {self.strength})")
        if "{text}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain {{text}} (got {self.prompt_template!r})")


@dataclass(frozen=True)
class ModeSettings:
    """The resolved sampling settings of one mode (config over family defaults)."""

    steps: int
    guidance: float
    strength: float | None
    image_guidance_scale: float | None


@dataclass
class _Job:
    sample: int
    text: int
    kind: str
    mode: str
    prompt: str
    seed: int
    gen_size: tuple[int, int]
    out_size: tuple[int, int]
    positive: Image.Image | None = None
    mask: Image.Image | None = None


def _dtype_kwarg() -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` in recent diffusers (``torch_dtype`` warns there), else
    ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


# ---- the stage --------------------------------------------------------------------------------------------------


class DiffusionGenerator:
    """A Stage (clipneg.generators.base) that appends diffusion NegImages, each depicting one of the sample's
    negative captions (``NegImage.text`` is its index, ``kind`` its kind); never drops a sample it can decode."""

    name = GEN
    version = VERSION

    def __init__(self, config: DiffusionConfig) -> None:
        self.config = config
        self.stats = StageStats()
        self.model_index = read_model_index(config.model, config.revision)
        self.family = FAMILIES[config.family or detect_family(config.model, self.model_index)]
        self.modes: tuple[str, ...] = tuple(config.mode)
        self.settings = {m: self._resolve(m) for m in self.modes}
        self.ext = config.ext or ("png" if "inpaint" in self.modes else "jpg")
        self._pipes: dict[str, Any] = {}
        self._offloaded: str | None = None
        self._native: tuple[int, int] | None = None

    def _resolve(self, mode: str) -> ModeSettings:
        cfg, fam = self.config, self.family
        steps = cfg.steps if cfg.steps is not None else fam.steps[mode]
        strength = None
        if mode in ("img2img", "inpaint"):
            strength = cfg.strength if cfg.strength is not None else fam.strength[mode]
            # diffusers runs int(steps * strength) denoising steps; zero steps returns the input (or fails late).
            if int(steps * strength) < 1:
                hint = (f" {fam.name} is distilled for 1-{fam.max_steps} steps: use steps=2 with strength=0.5, or "
                        "steps=4 with strength=0.25" if fam.max_steps else "")
                raise ValueError(f"{mode} with steps={steps} and strength={strength}: steps * strength = "
                                 f"{steps * strength:g} < 1 leaves no denoising step; raise steps or strength so "
                                 f"that steps * strength >= 1.{hint}")
        if fam.max_steps and steps > fam.max_steps:
            logger.warning("%s: %d steps is outside the 1-%d steps it is distilled for", fam.name, steps,
                           fam.max_steps)
        guidance = cfg.guidance if cfg.guidance is not None else fam.guidance
        igs = None
        if mode == "instruct":
            igs = cfg.image_guidance_scale if cfg.image_guidance_scale is not None else \
                (fam.image_guidance_scale if fam.image_guidance_scale is not None else 1.5)
        return ModeSettings(steps, float(guidance), strength, igs)

    # ---- runtime facts ----------------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        if self.config.device:
            return self.config.device
        import torch

        if not torch.cuda.is_available():
            return "cpu"
        # Under accelerate launch / torchrun each process takes its own GPU.
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"

    @property
    def dtype_name(self) -> str:
        if self.config.dtype:
            return self.config.dtype
        if not self.device.startswith("cuda"):
            return "float32"
        return "bfloat16" if self.family.name.startswith("flux") else "float16"

    def licence(self) -> str:
        if self.config.licence:
            return self.config.licence
        return self.family.licence or card_licence(self.config.model, self.config.revision) or UNKNOWN_LICENCE

    # ---- pipelines --------------------------------------------------------------------------------------------

    def pipeline(self, mode: str):
        """The diffusers pipeline of ``mode``: the first one loaded with ``from_pretrained`` (hub id or folder
        alike), the others made from it with ``from_pipe`` so the weights are shared."""
        if mode in self._pipes:
            return self._pipes[mode]
        if mode not in self.modes:
            raise ValueError(f"mode {mode!r} is not configured (modes: {self.modes})")
        import diffusers
        import torch

        classes = {"text2img": diffusers.AutoPipelineForText2Image, "img2img": diffusers.AutoPipelineForImage2Image,
                   "inpaint": diffusers.AutoPipelineForInpainting, "instruct": diffusers.DiffusionPipeline}
        cfg = self.config
        if self._pipes:
            pipe = classes[mode].from_pipe(next(iter(self._pipes.values())))
        else:
            if cfg.cpu_offload and not self.device.startswith("cuda"):
                raise ValueError(f"cpu_offload needs a CUDA device (device is {self.device!r})")
            kwargs: dict[str, Any] = {_dtype_kwarg(): getattr(torch, self.dtype_name)}
            if cfg.revision:
                kwargs["revision"] = cfg.revision
            if cfg.variant:
                kwargs["variant"] = cfg.variant
            pipe = classes[mode].from_pretrained(cfg.model, **kwargs)
            self._check_model(pipe)
            if cfg.scheduler:
                sched_cls = getattr(diffusers, cfg.scheduler, None)
                if sched_cls is None or not hasattr(sched_cls, "from_config"):
                    raise ValueError(f"scheduler {cfg.scheduler!r} is not a diffusers scheduler class "
                                     "(e.g. EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler)")
                pipe.scheduler = sched_cls.from_config(pipe.scheduler.config)
            if not cfg.cpu_offload:
                pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._pipes[mode] = pipe
        return pipe

    def _check_model(self, pipe) -> None:
        cls = type(pipe).__name__
        if "instruct" in self.modes and "InstructPix2Pix" not in cls:
            raise ValueError(f"mode 'instruct' needs an InstructPix2Pix pipeline; {self.config.model} loads as {cls}")
        unet = getattr(pipe, "unet", None)
        channels = getattr(getattr(unet, "config", None), "in_channels", None)
        only = {8: "instruct", 9: "inpaint"}.get(channels)  # image / mask latents concatenated to the noise
        wrong = [m for m in self.modes if (only and m != only) or (channels == 4 and m == "instruct")]
        if wrong:
            what = {8: "an InstructPix2Pix model", 9: "an inpainting model"}.get(channels, "a text-to-image model")
            raise ValueError(f"{self.config.model} is {what} ({channels}-channel UNet) and cannot run mode(s) "
                             f"{wrong}; use mode {only or 'text2img, img2img or inpaint'} with it")

    def _activate(self, mode: str):
        pipe = self.pipeline(mode)
        if self.config.cpu_offload and self._offloaded != mode:
            # The offload hooks follow one pipeline's model sequence; re-apply them for the pipeline in use.
            pipe.enable_model_cpu_offload(device=self.device)
            self._offloaded = mode
        return pipe

    def native_size(self) -> tuple[int, int]:
        if self._native is None:
            pipe = self.pipeline(self.modes[0])
            denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
            side = getattr(pipe, "default_sample_size", None) or denoiser.config.sample_size
            side = int(side) * int(pipe.vae_scale_factor)
            self._native = (side, side)
        return self._native

    def _size_spec(self) -> str | tuple[int, int]:
        spec = self.config.size
        if spec is None:
            spec = (self.family.size, self.family.size) if self.family.size else "native"
        return spec

    def generation_size(self, positive_size: tuple[int, int] | None) -> tuple[int, int]:
        """(width, height) the pipeline runs at: multiples of 8 (16 for FLUX's 2x2 latent packing)."""
        spec = self._size_spec()
        if spec == "keep":
            if positive_size is None:
                raise ValueError("size 'keep' needs the positive image")
            spec = positive_size
        elif spec == "native":
            spec = self.native_size()
        m = 16 if self.family.name.startswith("flux") else 8
        return tuple(max(m, int(round(v / m)) * m) for v in spec)  # type: ignore[return-value]

    # ---- the Stage protocol -----------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        cfg = dataclasses.asdict(self.config)
        pipes = {m: type(self.pipeline(m)).__name__ for m in self.modes}
        spec = self._size_spec()
        size: Any = list(self.native_size()) if spec == "native" else (spec if spec == "keep" else list(spec))
        first = self.pipeline(self.modes[0])
        versions = {}
        for dist in ("diffusers", "transformers", "torch"):
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[dist] = None
        return {
            "name": self.name, "version": self.version, "config": cfg, "config_hash": config_hash(cfg),
            "mode": list(self.modes), "model": self.config.model, "revision": self.config.revision,
            "variant": self.config.variant, "licence": self.licence(), "family": self.family.name,
            "family_defaults": self.family.to_json(), "dtype": self.dtype_name, "device": self.device,
            "cpu_offload": self.config.cpu_offload,
            "steps": {m: s.steps for m, s in self.settings.items()},
            "guidance": {m: s.guidance for m, s in self.settings.items()},
            "strength": {m: s.strength for m, s in self.settings.items() if s.strength is not None},
            "image_guidance_scale": self.settings["instruct"].image_guidance_scale if "instruct" in self.settings
            else None,
            "size": size, "inpaint_output": "the positive's size, region pasted back" if "inpaint" in self.modes
            else None,
            "scheduler": type(first.scheduler).__name__, "pipelines": pipes,
            "ext": self.ext, "quality": self.config.quality if self.ext == "jpg" else None,
            "seed_policy": SEED_POLICY, "prompt_template": self.config.prompt_template,
            "instruction": "edit_instruction(positive, negative, kind) word diff" if "instruct" in self.modes
            else None,
            "versions": versions,
        }

    def __call__(self, chunk: Sequence[Sample]) -> list[Sample | Quarantined]:
        t0 = time.perf_counter()
        cfg = self.config
        results: list[Sample | Quarantined] = list(chunk)
        targets: dict[int, list[int]] = {}
        jobs: list[_Job] = []
        for si, s in enumerate(chunk):
            if not s.neg_texts:
                self.stats.samples_without += 1
                self.stats.extra["skipped: no negative caption"] += 1
                continue
            chosen = depicted_captions([t.kind for t in s.neg_texts], cfg.kinds, cfg.k_image)
            if not chosen:
                self.stats.samples_without += 1
                self.stats.extra["skipped: no caption of the chosen kinds"] += 1
                continue
            try:
                made = self._jobs(si, s, chosen)
            except (OSError, Image.DecompressionBombError) as e:  # PIL's UnidentifiedImageError is an OSError
                results[si] = Quarantined(s.key, f"diffusion: cannot decode the positive image ({e})", GEN)
                continue
            if not made:
                for ti in chosen:
                    self.stats.reject(s.neg_texts[ti].kind, GEN, "no mask")
                self.stats.samples_without += 1
                continue
            targets[si] = chosen
            jobs.extend(made)

        images = self._generate(jobs, chunk)
        for si, chosen in targets.items():
            s = chunk[si]
            new = [images[(si, ti)] for ti in chosen if (si, ti) in images]
            s.neg_images.extend(new)
            for im in new:
                self.stats.kept[im.kind] += 1
            if not new:
                self.stats.samples_without += 1
        self.stats.extra["seconds"] += time.perf_counter() - t0
        return results

    def _jobs(self, si: int, s: Sample, chosen: list[int]) -> list[_Job]:
        cfg = self.config
        needs_positive = any(m in EDIT_MODES for m in self.modes) or self._size_spec() == "keep"
        positive = decode_rgb(s.image) if needs_positive else None
        mode, mask = None, None
        for m in self.modes:
            if m == "inpaint":
                mask = sample_mask(s.meta, positive.size)
                if mask is None:
                    continue
            mode = m
            break
        if mode is None:
            return []
        gen_size = self.generation_size(positive.size if positive is not None else None)
        keep = mode == "inpaint" or self._size_spec() == "keep"
        out_size = positive.size if keep else gen_size
        jobs = []
        for ti in chosen:
            neg = s.neg_texts[ti]
            prompt = (edit_instruction(s.caption, neg.text, neg.kind) if mode == "instruct"
                      else cfg.prompt_template.format(text=neg.text))
            jobs.append(_Job(si, ti, neg.kind, mode, prompt, stable_seed(s.key, neg.text, neg.kind, cfg.seed),
                             gen_size, out_size, positive if mode in EDIT_MODES else None, mask))
        return jobs

    def _generate(self, jobs: list[_Job], chunk: Sequence[Sample]) -> dict[tuple[int, int], NegImage]:
        groups: dict[tuple[str, tuple[int, int]], list[_Job]] = {}
        for j in jobs:  # one pipeline call needs one mode and one size; first-appearance order keeps runs stable
            groups.setdefault((j.mode, j.gen_size), []).append(j)
        out: dict[tuple[int, int], NegImage] = {}
        bs = self.config.batch_size
        for (mode, size), group in groups.items():
            for b in range(0, len(group), bs):
                batch = group[b:b + bs]
                pixels, flagged = self._run(mode, size, batch)
                for j, arr, nsfw in zip(batch, pixels, flagged, strict=True):
                    self.stats.produced[j.kind] += 1
                    reason = broken_reason(arr) or ("nsfw" if nsfw else None)
                    if reason:
                        self.stats.reject(j.kind, GEN, reason)
                        continue
                    out[(j.sample, j.text)] = NegImage(self._finish(j, arr), self.ext, j.kind, GEN, j.seed, j.text)
        return out

    def _run(self, mode: str, size: tuple[int, int], batch: list[_Job]) -> tuple[np.ndarray, list[bool]]:
        import torch

        pipe = self._activate(mode)
        st = self.settings[mode]
        params = inspect.signature(pipe.__call__).parameters
        kw: dict[str, Any] = {
            "prompt": [j.prompt for j in batch],
            # One generator per image (never one for the batch): an image's noise depends on its own seed only.
            "generator": [torch.Generator("cpu").manual_seed(j.seed) for j in batch],
            "num_inference_steps": st.steps, "guidance_scale": st.guidance, "output_type": "np",
            **{k: v for k, v in self.family.call_kwargs.items() if k in params},
        }
        if mode in EDIT_MODES:
            kw["image"] = [j.positive.resize(size, Image.BICUBIC) for j in batch]
        if st.strength is not None:
            kw["strength"] = st.strength
        if mode == "inpaint":
            kw["mask_image"] = [j.mask.resize(size, Image.NEAREST) for j in batch]
        if mode == "instruct":
            kw["image_guidance_scale"] = st.image_guidance_scale
        if "height" in params:
            kw["width"], kw["height"] = size
        if self.config.negative_prompt and st.guidance > 1 and "negative_prompt" in params:
            kw["negative_prompt"] = [self.config.negative_prompt] * len(batch)
        cuda = self.device.startswith("cuda")
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        with torch.inference_mode():
            result = pipe(**kw)
        if cuda:
            end.record()
            torch.cuda.synchronize()
            self.stats.extra["gpu_seconds"] += start.elapsed_time(end) / 1000
        self.stats.extra["images"] += len(batch)
        self.stats.extra["batches"] += 1
        nsfw = getattr(result, "nsfw_content_detected", None) or [False] * len(batch)
        return np.asarray(result.images, dtype=np.float32), [bool(f) for f in nsfw]

    def _finish(self, job: _Job, pixels: np.ndarray) -> bytes:
        img = Image.fromarray((pixels * 255).round().clip(0, 255).astype(np.uint8), "RGB")
        if img.size != job.out_size:
            img = img.resize(job.out_size, Image.BICUBIC)
        if job.mode == "inpaint":
            # A true counterfactual: the generated pixels inside the mask, the positive's everywhere else (the VAE
            # round trip would otherwise change every pixel a little).
            img = Image.composite(img, job.positive, job.mask)
        return encode_image(img, self.ext, self.config.quality)
