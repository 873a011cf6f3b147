"""Training configuration: frozen dataclasses grouped by concern, layered defaults < YAML file < command line.

```
python train.py --config configs/demo_world_negclip.yaml --optim.lr 1e-5 --loss.kind_weights.replace_rel 2
```

Every ``--section.field value`` flag names a field of :class:`TrainConfig` (dotted, any depth; a key inside a mapping
field such as ``loss.kind_weights`` is allowed). Values are parsed as YAML and then converted to the field's type, so
``1e-5`` is a float for a float field and ``null`` clears an optional field. Unknown keys are errors with a suggestion.
The resolved config is written to ``<run>/config.yaml``; passing that file back as ``--config`` reproduces the run.

Every section lives here, so the training modules (data, losses, optim, task) all import from this one and none from
each other's configs. Runtime facts (rank, device, process count, run folder) are not configuration: they come from
the Accelerator and the run folder train.py makes.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipneg.schema import KINDS


@dataclass(frozen=True)
class KindPhase:
    """Per-kind weights in force until ``until_step`` (exclusive); None means until the end of training."""

    weights: Mapping[str, float]
    until_step: int | None = None


@dataclass(frozen=True)
class LoaderConfig:
    shards: str = ""
    batch_size: int = 64
    k_text: int = 4
    k_image: int = 0
    # Relative weights per negative kind; a kind missing from the mapping is never drawn. None = all kinds equal.
    kind_weights: Mapping[str, float] | None = None
    kind_schedule: tuple[KindPhase, ...] | None = None
    # Prefer negative images that depict one of the chosen negative captions (the TripletCLIP pair).
    pair_images_with_texts: bool = True
    # One of the caption's paraphrases (neg.json "paraphrases") per sample as "para_text" with up to k_para_neg of its
    # word-order negatives as "para_neg", for the loss's paraphrase term; masks mark what a caption lacks.
    paraphrases: bool = False
    k_para_neg: int = 2
    num_workers: int = 2
    # Images leave the workers as uint8 and train.py scales and normalises them on the device (the same values, a
    # quarter of the bytes, less work on the loader's cores; clipneg.train.pixels). Needs a transform ending in
    # ToTensor + Normalize, as open_clip's do; otherwise the whole transform runs per image as before.
    uint8_images: bool = True
    # open_clip's training transform (RandomResizedCrop, scale 0.9-1) or, when false, the evaluation transform. At
    # 32 px the crop's bicubic resampling blurs a small object's colour into its shape and shifts the layout; on the
    # built-in world, training without it learned relations faster (docs/BENCHMARKS.md).
    augment: bool = True
    shuffle_buffer: int = 1000
    shuffle_shards: bool = True
    drop_last: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for weights in [self.kind_weights or {}] + [p.weights for p in self.kind_schedule or ()]:
            unknown = set(weights) - KINDS
            if unknown:
                raise ValueError(f"unknown negative kinds {sorted(unknown)} in loader weights; known: {sorted(KINDS)}")
        if self.k_text < 0 or self.k_image < 0 or self.k_para_neg < 0 or self.batch_size < 1:
            raise ValueError("k_text, k_image and k_para_neg must be >= 0 and batch_size >= 1")


LORA_TOWERS = ("image", "text")
# LoRA target names -> the open_clip modules they adapt in every residual block of a chosen tower.
LORA_TARGETS = {
    # nn.MultiheadAttention: peft's lora.MultiheadAttention adapts its packed q/k/v in_proj AND its out_proj together
    # (merging the adapters into the weights around each forward); in_proj is a bare parameter, not an nn.Linear.
    "attn": "attn",
    "c_fc": "mlp.c_fc",  # MLP up-projection (nn.Linear)
    "c_proj": "mlp.c_proj",  # MLP down-projection (nn.Linear)
}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters (Hu et al. ICLR 2022) on the towers' transformer blocks, through peft; rank 0 = off.

    Only the adapter weights train (every base weight is frozen, the logit scale too unless ``train_logit_scale``);
    the export merges them into plain weights (clipneg.train.lora). ``target_modules`` names entries of LORA_TARGETS.
    ``out_proj`` alone is refused: nn.MultiheadAttention reads ``out_proj.weight`` inside its own forward and never
    calls ``out_proj.forward``, so an adapter there would silently train nothing; "attn" adapts it (with in_proj).
    """

    rank: int = 0
    alpha: float | None = None  # scaling alpha / rank; None: alpha = rank (scaling 1)
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("attn", "c_fc", "c_proj")
    towers: tuple[str, ...] = LORA_TOWERS
    train_logit_scale: bool = False

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"model.lora.rank must be >= 0 (0 turns LoRA off; got {self.rank})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1) (got {self.dropout})")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"model.lora.alpha must be > 0, or null for alpha = rank (got {self.alpha})")
        if "out_proj" in self.target_modules:
            raise ValueError("model.lora.target_modules: out_proj cannot be adapted alone (nn.MultiheadAttention "
                             "never calls its forward, so the adapter would train nothing); use attn, which adapts "
                             "in_proj and out_proj together")
        unknown = [t for t in self.target_modules if t not in LORA_TARGETS]
        if unknown or not self.target_modules:
            raise ValueError(f"model.lora.target_modules must name some of {sorted(LORA_TARGETS)} (got "
                             f"{list(self.target_modules)})")
        bad = [t for t in self.towers if t not in LORA_TOWERS]
        if bad or not self.towers:
            raise ValueError(f"model.lora.towers must name some of {list(LORA_TOWERS)} (got {list(self.towers)})")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


@dataclass(frozen=True)
class ModelConfig:
    name: str = "clipneg-tiny"  # open_clip name, built-in tiny config, or local-dir:PATH
    pretrained: str | None = None  # open_clip tag (e.g. openai) or a checkpoint file
    force_quick_gelu: bool = False
    # > 0: encode captions in that many length groups, each cut at its longest caption (exact for causal text towers
    # with end-of-text pooling; a CPU speed-up for short captions, clipneg.train.text_buckets). 0: open_clip's path.
    text_buckets: int = 0
    # Image tower weights and input images in channels-last (NHWC) layout: the same function, and convolutional towers
    # run faster (on 1 CPU core a tiny ResNet's forward + backward took 240 instead of 410 ms for 192 images).
    channels_last: bool = False
    grad_checkpointing: bool = False  # trade compute for activation memory (open_clip's set_grad_checkpointing)
    lock_image: bool = False  # freeze the image tower except its last `lock_image_unlocked_groups` groups
    lock_image_unlocked_groups: int = 0
    lock_image_freeze_bn_stats: bool = False
    lock_text: bool = False  # freeze the text tower except its last `lock_text_unlocked_layers` layers
    lock_text_unlocked_layers: int = 0
    lock_text_freeze_layer_norm: bool = True
    lora: LoraSettings = field(default_factory=LoraSettings)  # rank > 0: train LoRA adapters only

    def __post_init__(self) -> None:
        if self.lora.enabled and (self.lock_image or self.lock_text):
            raise ValueError("model.lora already freezes every base weight: drop model.lock_image / model.lock_text "
                             "and choose the adapted towers with model.lora.towers")


@dataclass(frozen=True)
class LossConfig:
    """Weights and switches of the loss family; a weight of 0 turns a term off (and the batch may omit its inputs)."""

    contrastive: float = 1.0  # CLIP / NegCLIP term
    neg_text_columns: bool = False  # NegCLIP: negative captions as extra image-to-text columns
    neg_image_columns: bool = False  # negative images as extra text-to-image columns
    triplet: float = 0.0  # TripletCLIP's NegCLIP(I', T', T)
    hard_negative: float = 0.0  # per-sample (1+K)-way term (FSC-CLIP uses 0.5)
    focal_gamma: float = 0.0  # FSC-CLIP: 2.0
    label_smoothing: float = 0.0  # FSC-CLIP: 0.02
    rank: float = 0.0  # CE-CLIP cross-modal rank (0.2)
    rank_max_threshold: float = 10.0
    distill: float = 0.0  # DeGLA feature distillation (0.005)
    distill_ema: float = 0.9996  # teacher decay per optimizer step
    paraphrase: float = 0.0  # caption <-> paraphrase against word-order negatives (text only; data.paraphrases)
    paraphrase_scale: float | None = None  # logit scale of that term; None: the model's learned one
    imc: float = 0.0  # CE-CLIP intra-modal contrast: a caption against its own negative captions (CE-CLIP: 0.2)
    kind_weights: dict[str, float] = field(default_factory=dict)  # weight per negative kind; unlisted kinds weigh 1

    def __post_init__(self) -> None:
        for name in ("contrastive", "triplet", "hard_negative", "rank", "distill", "paraphrase", "imc",
                     "focal_gamma", "label_smoothing"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0 (got {getattr(self, name)})")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"loss.label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.paraphrase_scale is not None and self.paraphrase_scale <= 0:
            raise ValueError(f"loss.paraphrase_scale must be > 0, or null for the model's logit scale "
                             f"(got {self.paraphrase_scale})")
        if not 0.0 <= self.distill_ema < 1.0:
            raise ValueError(f"loss.distill_ema must be in [0, 1) (got {self.distill_ema})")
        bad = {k: w for k, w in self.kind_weights.items() if w < 0}
        if bad:
            raise ValueError(f"loss.kind_weights must be >= 0 (got {bad})")

    @property
    def uses_neg_text(self) -> bool:
        return self.neg_text_columns or self.triplet > 0 or self.hard_negative > 0 or self.rank > 0 or self.imc > 0

    @property
    def uses_neg_image(self) -> bool:
        return self.neg_image_columns or self.triplet > 0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup + cosine (the common fine-tune recipe of PROTOCOLS.md section 5)."""

    lr: float = 5e-6
    min_lr: float = 0.0  # cosine floor
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | constant (after warmup)
    weight_decay: float = 0.1  # not applied to gains, biases, logit_scale (1-d parameters)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip_norm: float | None = 1.0  # None turns clipping off
    fused: bool = True  # torch's fused AdamW kernel (CPU and CUDA); same update rule, fewer kernel launches
    # > 1: split each process's batch of data.batch_size into this many micro-batches and accumulate their gradients
    # with GradCache (clipneg.train.accumulate): the same loss and gradients as the whole batch (every micro-batch
    # sees all of the batch's negatives), with the activation memory of one micro-batch. data.batch_size keeps its
    # meaning (samples per process per optimizer step); open_clip's --accum-freq instead gathers N loader batches.
    accumulate: int = 1

    def __post_init__(self) -> None:
        if self.accumulate < 1:
            raise ValueError(f"optim.accumulate must be >= 1 (got {self.accumulate})")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule must be 'cosine' or 'constant' (got {self.schedule!r})")
        if self.lr < 0 or self.min_lr < 0 or self.warmup_steps < 0:
            raise ValueError("optim.lr, optim.min_lr and optim.warmup_steps must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation on SugarCrepe-format folders (the world benchmark or real SugarCrepe)."""

    benchmarks: tuple[str, ...] = ()  # folders with {subset}.json (+ images), e.g. <world>/benchmark/sugarcrepe
    image_root: str | None = None  # where the item filenames live, when not beside the JSON files
    every: int = 0  # steps between evaluations; 0 = only at the end
    at_end: bool = True
    retrieval: bool = True  # image-text R@1 on the benchmark's positive pairs
    batch_size: int = 128


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs"
    name: str | None = None  # default: the config file's stem, else "run"
    steps: int = 100  # optimizer steps
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (Accelerate autocast; losses are computed in fp32)
    log_every: int = 10
    save_every: int = 0  # steps between checkpoints (accelerator.save_state); 0 = none
    keep_last: int = 2  # checkpoints kept
    resume: str | None = None  # a checkpoint folder, or "latest" (the newest in <run>/checkpoints)
    export: bool = True  # write <run>/export in open_clip's local-dir format at the end
    wise_alpha: float | None = None  # WiSE-FT: also write <run>/export_wise = (1-a) start + a fine-tuned (CLoVe: 0.6)
    trackers: tuple[str, ...] = ("auto",)  # auto | jsonl | tensorboard | wandb (jsonl is always written)
    progress: bool = True  # tqdm bar on the main process

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"run.mixed_precision must be no, bf16 or fp16 (got {self.mixed_precision!r})")
        if self.wise_alpha is not None and not 0.0 <= self.wise_alpha <= 1.0:
            raise ValueError(f"run.wise_alpha must be in [0, 1] (got {self.wise_alpha})")
        if self.steps < 1:
            raise ValueError(f"run.steps must be >= 1 (got {self.steps})")


@dataclass(frozen=True)
class TrainConfig:
    data: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        # A term whose inputs the loader never fills would train nothing (the loss refuses it at the first step):
        # refuse the config up front, every problem at once, each with its fix.
        loss, data = self.loss, self.data
        problems = []
        if data.k_text == 0:
            for on, name, off in ((loss.neg_text_columns, "loss.neg_text_columns", "false"),
                                  (loss.triplet > 0, "loss.triplet > 0", "0"),
                                  (loss.hard_negative > 0, "loss.hard_negative > 0", "0"),
                                  (loss.rank > 0, "loss.rank > 0", "0"),
                                  (loss.imc > 0, "loss.imc > 0", "0")):
                if on:
                    problems.append(f"{name} needs negative captions: set data.k_text > 0 (e.g. 4) or "
                                    f"{name.split()[0]} {off}")
        if data.k_image == 0:
            for on, name, off in ((loss.neg_image_columns, "loss.neg_image_columns", "false"),
                                  (loss.triplet > 0, "loss.triplet > 0", "0")):
                if on:
                    problems.append(f"{name} needs negative images: set data.k_image > 0 (e.g. 1) or "
                                    f"{name.split()[0]} {off}")
        if problems:
            raise ValueError("; ".join(problems))
        if data.batch_size % self.optim.accumulate:
            raise ValueError(f"optim.accumulate {self.optim.accumulate} must divide data.batch_size {data.batch_size} "
                             "(each optimizer step splits the batch into that many equal micro-batches)")
        if self.loss.paraphrase > 0 and not self.data.paraphrases:
            raise ValueError("loss.paraphrase > 0 needs data.paraphrases true (the loader then carries one paraphrase "
                             "per caption)")
        if self.loss.paraphrase > 0 and self.data.k_para_neg == 0:
            raise ValueError("loss.paraphrase > 0 needs data.k_para_neg > 0: the paraphrase is contrasted with its "
                             "word-order negatives")


class ConfigError(ValueError):
    """A config file or flag that does not fit the schema; the message names the key and the fix."""


# ---------------------------------------------------------------------------------------------------------------------
# conversion between plain data and dataclasses


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert plain YAML data to type ``tp`` (dataclasses, optionals, tuples, mappings, scalars)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except (ConfigError, TypeError, ValueError) as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} fits none of {tp} ({'; '.join(errors)})")
    if value is None:
        raise ConfigError(f"{key} may not be null")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields (got {value!r})")
        return from_dict(tp, value, prefix=key)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            value = [value]  # a single value for a list field: --eval.benchmarks path
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{key} needs {len(args)} values (got {value!r})")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        conv = [_convert(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(conv) if (origin is tuple or tp is tuple) else conv
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping (got {value!r})")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, key): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false (got {value!r})")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key} must be an integer (got {value!r})")
        f = float(value)
        if not f.is_integer():
            raise ConfigError(f"{key} must be an integer (got {value!r})")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number (got {value!r})")
        try:
            return float(value)  # YAML reads 1e-5 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number (got {value!r})") from None
    if tp is str:
        if isinstance(value, (Mapping, list)):
            raise ConfigError(f"{key} must be a string (got {value!r})")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested plain data, converting types and rejecting unknown keys."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint} (fields of {cls.__name__}: {', '.join(names)})")
        kwargs[k] = _convert(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def to_dict(obj: Any) -> Any:
    """Plain, YAML-safe data (tuples become lists) from a config dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 1e-5, ...}: scalar values only (lists and mappings as strings), what trackers accept as hparams."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# layering


def _set_dotted(data: dict[str, Any], cls: type, key: str, raw: str) -> None:
    """Set ``key`` (dotted) in nested ``data`` from the command-line string ``raw``, checking it against ``cls``."""
    parts = key.split(".")
    tp: Any = cls
    node = data
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if _is_dataclass_type(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                close = difflib.get_close_matches(part, names, n=1)
                hint = f"; did you mean {'.'.join(parts[:i] + [close[0]])}?" if close else ""
                raise ConfigError(f"unknown flag --{here}{hint}")
            tp = _hints(tp)[part]
        elif _mapping_value_type(tp) is not None:
            tp = _mapping_value_type(tp)
        else:
            raise ConfigError(f"--{key}: {'.'.join(parts[:i])} is not a section or mapping")
        if last:
            node[part] = _parse_flag(raw, tp)
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
            tp = _strip_optional(tp)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _mapping_value_type(tp: Any) -> Any:
    tp = _strip_optional(tp)
    if typing.get_origin(tp) in (dict, Mapping) or tp in (dict, Mapping):
        args = typing.get_args(tp)
        return args[1] if args else Any
    return None


def _parse_flag(raw: str, tp: Any) -> Any:
    """A flag value: kept verbatim for string fields (so 'yes' or '007' stay strings), YAML otherwise."""
    if _strip_optional(tp) is str and raw not in ("null", "None", "~"):
        return raw
    return yaml.safe_load(raw)


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file (recipes live in configs/, e.g. "
                          "configs/demo_world_clip.yaml)")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, model, loss, optim, eval, run)")
    return data


USAGE = """usage: train.py --config FILE [--config FILE ...] [--resume [PATH]] [--section.key value ...]

Later --config files and then flags override earlier ones; a flag is a dotted key of a config section (data, model,
loss, optim, run, eval), e.g. --optim.lr 1e-6 --data.batch_size 32 --run.mixed_precision bf16. Unknown keys are
errors that name the known ones. Every key and its default: clipneg/train/config.py; recipes: docs/RECIPES.md."""


def parse_args(argv: Sequence[str]) -> tuple[TrainConfig, dict[str, Any]]:
    """Resolve the config from ``argv`` (``--config FILE`` any number of times, ``--resume [PATH]``, ``--a.b V``).

    Returns the config and the plain nested data it was built from (what goes into ``<run>/config.yaml``).
    """
    files: list[str] = []
    flags: list[tuple[str, str]] = []
    args = list(argv)
    i = 0
    while i < len(args):
        tok = args[i]
        if tok in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}: options are --config FILE, --resume [PATH], --key value")
        name, eq, val = tok[2:].partition("=")
        has_value = bool(eq) or (i + 1 < len(args) and not args[i + 1].startswith("--"))
        if not eq and has_value:
            val = args[i + 1]
            i += 1
        i += 1
        if name == "config":
            if not has_value:
                raise ConfigError("--config needs a file")
            files.append(val)
        elif name == "resume":
            flags.append(("run.resume", val if has_value else "latest"))
        elif not has_value:
            raise ConfigError(f"--{name} needs a value (for a boolean write --{name} true)")
        else:
            flags.append((name.replace("-", "_"), val))
    data: dict[str, Any] = {}
    for f in files:
        data = _deep_merge(data, load_yaml(f))
    for key, val in flags:
        _set_dotted(data, TrainConfig, key, val)
    if files and not (data.get("run") or {}).get("name"):
        data = _deep_merge(data, {"run": {"name": Path(files[-1]).stem}})
    cfg = from_dict(TrainConfig, data)
    return cfg, to_dict(cfg)


def dump_yaml(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
