"""Fine-tune a CLIP model on hard negatives: one readable loop over the parts in clipneg/.

Run it:

    # CPU demo on the built-in world (make the shards first: clipneg world --out world)
    python train.py --config configs/demo_world_negclip.yaml --data.shards world/shards

    # one GPU, any flag overrides the recipe (dotted keys)
    accelerate launch train.py --config configs/negclip_coco_vitb32.yaml --data.shards /data/coco-neg --optim.lr 1e-6

    # 8 GPUs on one node; several nodes, FSDP or DeepSpeed come from `accelerate config`, not from our flags
    accelerate launch --multi_gpu --num_processes 8 train.py --config configs/fsc_vitb32.yaml

    # continue a run that was stopped (same step, RNG and data position)
    accelerate launch train.py --config configs/fsc_vitb32.yaml --resume

    # two CPU processes (gloo), e.g. to check distributed behaviour without a GPU
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py --config configs/demo_world_clip.yaml

Writes runs/<name>/: config.yaml (the resolved config), log.jsonl (+ TensorBoard when installed), checkpoints/step-N
(accelerator.save_state), export/ (open_clip local-dir: `clipneg eval ... --model local-dir:runs/<name>/export`),
export_wise/ with run.wise_alpha, and eval.json with the final benchmark numbers.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm

from clipneg.models import ClipBundle, export_local_dir, load_clip
from clipneg.schema import KIND_LIST
from clipneg.train.checkpoints import TrainState, cpu_state, list_checkpoints, resolve_resume, save_checkpoint, wise_ft
from clipneg.train.config import EvalConfig, TrainConfig, dump_yaml, flatten, parse_args
from clipneg.train.data import build_loader
from clipneg.train.losses import max_logit_scale
from clipneg.train.optim import build_optimizer, lr_at, set_lr
from clipneg.train.pixels import split_pixel_steps
from clipneg.train.task import ContrastiveTask, promote_scalar_parameters
from clipneg.train.trackers import choose_trackers

log = logging.getLogger("train")

# Distributed types whose processes hold shards of the weights (full weights need a gather)
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def build_model(cfg: TrainConfig) -> ClipBundle:
    m = cfg.model
    bundle = load_clip(m.name, m.pretrained, seed=cfg.run.seed, force_quick_gelu=m.force_quick_gelu)
    model = bundle.model
    if m.lock_image:
        model.lock_image_tower(unlocked_groups=m.lock_image_unlocked_groups,
                               freeze_bn_stats=m.lock_image_freeze_bn_stats)
    if m.lock_text:
        model.lock_text_tower(unlocked_layers=m.lock_text_unlocked_layers,
                              freeze_layer_norm=m.lock_text_freeze_layer_norm)
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return bundle


def batches(cfg: TrainConfig, bundle: ClipBundle, state: TrainState, accelerator: Accelerator) -> Iterator[dict]:
    """Training batches on this process's device, epoch after epoch, starting where ``state`` says.

    The loader is never passed to ``accelerator.prepare`` (it would shard a second time: clipneg.train.data splits shards by
    node and worker itself). Resuming rebuilds the epoch's loader and skips the batches already trained on; loader
    creation and skipping run under a forked RNG seeded by (seed, epoch, rank), so worker augmentation seeds do not
    depend on when the loader was made, and skipping does not consume the restored training RNG.
    """
    skip = state.step - state.epoch_start_step
    preprocess = bundle.preprocess_train if cfg.data.augment else bundle.preprocess_val
    # uint8 images from the loader, scaled and normalised here on the device (the same values; clipneg.train.pixels)
    split = split_pixel_steps(preprocess) if cfg.data.uint8_images else None
    preprocess, finish = split if split else (preprocess, dict)
    while True:
        loader = build_loader(cfg.data, preprocess=preprocess, tokenizer=bundle.tokenizer,
                              epoch=state.epoch, start_step=state.epoch_start_step)
        n = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.data.seed * 1_000_003 + state.epoch * 7919 + accelerator.process_index)
            it = iter(loader)
            for _ in range(skip):
                if next(it, None) is None:
                    break
                n += 1
        skip = 0
        while True:
            batch = next(it, None)
            if accelerator.num_processes > 1:
                # Ranks can hold unequal shares of an epoch; all must stop together or DDP hangs in backward.
                have = torch.tensor([0 if batch is None else 1], device=accelerator.device)
                dist.all_reduce(have, op=dist.ReduceOp.MIN)
                if not have.item():
                    break
            elif batch is None:
                break
            n += 1
            yield finish({k: (v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v)
                          for k, v in batch.items()})
        if n == 0:
            raise RuntimeError(f"data.shards {cfg.data.shards!r} gave no full batch of {cfg.data.batch_size} on "
                               f"process {accelerator.process_index}: use more samples or shards (at least "
                               "processes x data.num_workers shards), a smaller data.batch_size, or data.drop_last "
                               "false")
        state.epoch += 1
        state.epoch_start_step = state.step


@torch.no_grad()
def evaluate(model: torch.nn.Module, bundle: ClipBundle, ecfg: EvalConfig, device: torch.device) -> dict[str, float]:
    """SugarCrepe-format benchmarks with the shared scorer (fp32, strict ties) and image-text R@1 on the positives."""
    from clipneg.eval.scorer import Scorer, ScorerConfig
    from clipneg.eval.sugarcrepe import SugarCrepeConfig, evaluate_sugarcrepe, load_sugarcrepe, resolve_paths

    was_training = model.training
    metrics: dict[str, float] = {}
    for bench in ecfg.benchmarks:
        json_dir, image_dir = resolve_paths(root=bench, image_dir=ecfg.image_root)
        name = Path(bench).name
        scorer = Scorer(model, bundle.preprocess_val, bundle.tokenizer,
                        ScorerConfig(device=str(device), image_batch_size=ecfg.batch_size, num_workers=0,
                                     progress=False))
        sc_cfg = SugarCrepeConfig(json_dir=str(json_dir), image_dir=str(image_dir), name=name)
        result = evaluate_sugarcrepe(scorer, sc_cfg)
        metrics.update({f"{name}/{k}": float(v) for k, v in result.metrics.items()})
        if ecfg.retrieval:
            items, _, _ = load_sugarcrepe(sc_cfg)
            metrics.update({f"{name}/{k}": v for k, v in retrieval_r1(scorer, items).items()})
    model.train(was_training)
    return metrics


def logit_scale(model: torch.nn.Module, deepspeed: bool) -> float:
    """exp(logit_scale); under FSDP2 the parameter is a sharded DTensor, gathered here, and under DeepSpeed its fp32
    master is read (under ZeRO-3 the parameter itself is an empty placeholder). A collective: every process logs."""
    p = model.logit_scale
    if deepspeed and p.requires_grad:
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(p).exp().item()
    p = p.detach()
    return p.full_tensor().exp().item() if hasattr(p, "full_tensor") else p.exp().item()


def retrieval_r1(scorer: Any, items: Sequence[Any]) -> dict[str, float]:
    """Image-to-text and text-to-image R@1 (%) over the unique (image, positive caption) pairs of the items."""
    pairs = list(dict.fromkeys((it.images[0], it.texts[0]) for it in items))
    images = list(dict.fromkeys(p[0] for p in pairs))
    texts = list(dict.fromkeys(p[1] for p in pairs))
    img_f, txt_f = scorer.encode_images(images), scorer.encode_texts(texts)
    sim = img_f @ txt_f.T
    img_idx = {r: i for i, r in enumerate(images)}
    txt_idx = {t: j for j, t in enumerate(texts)}
    truth = torch.zeros_like(sim, dtype=torch.bool)
    for r, t in pairs:
        truth[img_idx[r], txt_idx[t]] = True
    i2t = truth[torch.arange(len(images)), sim.argmax(1)].float().mean().item() * 100
    t2i = truth[sim.argmax(0), torch.arange(len(texts))].float().mean().item() * 100
    return {"i2t_r1": i2t, "t2i_r1": t2i, "r1": (i2t + t2i) / 2}


def export(accelerator: Accelerator, task: ContrastiveTask, bundle: ClipBundle, cfg: TrainConfig, run_dir: Path,
           start: dict[str, torch.Tensor] | None, state: TrainState) -> dict[str, str]:
    """open_clip local-dir exports: the fine-tuned model, and with run.wise_alpha the WiSE-FT interpolation."""
    paths: dict[str, str] = {}
    sharded = accelerator.distributed_type in SHARDED
    # Under FSDP/DeepSpeed the weights are sharded: gather the full state dict (a collective, so every process calls
    # it) and load it into a fresh CPU model. Otherwise the unwrapped model already holds them.
    full = accelerator.get_state_dict(task) if sharded else None
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # get_state_dict returns DeepSpeed's working (bf16/fp16 under mixed precision) weights: export its fp32
        # masters. Every process gathers them, though under ZeRO-3 only the main one receives a state dict.
        masters = deepspeed_masters(accelerator.unwrap_model(task))
        if full is not None:
            full.update(masters)
    if not accelerator.is_main_process:
        return paths
    record = {"base_model": cfg.model.name, "base_pretrained": cfg.model.pretrained, "run": str(run_dir),
              "step": state.step, "samples_seen": state.samples_seen, "data": cfg.data.shards}
    model_cfg = bundle.model_cfg
    if full is not None:
        out_model = load_clip(cfg.model.name, seed=cfg.run.seed, force_quick_gelu=cfg.model.force_quick_gelu).model
        shapes = {k: v.shape for k, v in out_model.state_dict().items()}
        # reshape: under FSDP/DeepSpeed the scalar parameters were given shape [1] (task.promote_scalar_parameters)
        tuned = {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}
        out_model.load_state_dict({k: v.reshape(shapes[k]) for k, v in tuned.items()})
    else:
        out_model = accelerator.unwrap_model(task).model
    paths["export"] = str(export_local_dir(out_model, run_dir / "export", model_cfg=model_cfg, record=record))
    if cfg.run.wise_alpha is not None and start is not None:
        tuned = {k: v.detach().cpu() for k, v in out_model.state_dict().items()}
        mixed = wise_ft(start, tuned, cfg.run.wise_alpha)
        wise_model = copy.deepcopy(out_model).cpu()
        wise_model.load_state_dict(mixed)
        paths["export_wise"] = str(export_local_dir(wise_model, run_dir / "export_wise", model_cfg=model_cfg,
                                                    record={**record, "wise_alpha": cfg.run.wise_alpha}))
    return paths


def fill_deepspeed_config(ds: dict[str, Any], cfg: TrainConfig, processes: int) -> None:
    """Fill the "auto" entries of Accelerate's DeepSpeed config that it would read from a prepared loader.

    The loader never goes through ``prepare`` (it splits shards by node and worker itself), so Accelerate cannot
    find the per-process batch there; gradient clipping follows ``optim.grad_clip_norm`` (DeepSpeed clips inside its
    own step, so it must be told).
    """
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    if ds.get("train_batch_size", "auto") == "auto":
        accumulation = ds.get("gradient_accumulation_steps", "auto")
        ds["train_batch_size"] = cfg.data.batch_size * processes * (1 if accumulation == "auto" else accumulation)
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = cfg.optim.grad_clip_norm or 0.0
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        # The export gathers the whole model (Accelerate's get_state_dict refuses under ZeRO-3 without this); the
        # sharded checkpoints do not depend on it.
        zero["stage3_gather_16bit_weights_on_model_save"] = True


def deepspeed_masters(task: torch.nn.Module) -> dict[str, torch.Tensor]:
    """DeepSpeed's fp32 master copy of each trained parameter, on the CPU (a collective: every process calls it)."""
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {name: safe_get_full_fp32_param(p) for name, p in task.named_parameters() if p.requires_grad}
    return {name: m.detach().cpu() for name, m in masters.items() if m is not None}


def clamp_deepspeed_logit_scale(task: ContrastiveTask, max_value: float) -> None:
    """Clamp the fp32 master of logit_scale too: DeepSpeed copies the masters over the working weights at each step,
    so the in-place clamp of the working copy alone would be undone (a collective: every process calls it)."""
    from deepspeed.utils import (
        safe_get_full_fp32_param,
        safe_get_local_fp32_param,
        safe_set_full_fp32_param,
        safe_set_local_fp32_param,
    )

    p = task.model.logit_scale
    if hasattr(p, "ds_tensor"):
        # ZeRO-3: master and working copy are both partitioned (the loop's clamp met an empty placeholder), and the
        # padding of a partition is 0, which the clamp keeps. Clamped here, partition by partition: DeepSpeed
        # 0.19.8's full setter fails on a 1-element parameter split over 2 processes.
        master = safe_get_local_fp32_param(p)
        if master is not None:
            safe_set_local_fp32_param(p, master.clamp(0, max_value))
        p.ds_tensor.clamp_(0, max_value)
        return
    master = safe_get_full_fp32_param(p)
    if master is not None and not torch.equal(clamped := master.clamp(0, max_value), master):
        safe_set_full_fp32_param(p, clamped)


def main(argv: Sequence[str] | None = None, *,
         callbacks: Sequence[Callable[[TrainState], None]] = ()) -> dict[str, Any]:
    """Train as configured by ``argv`` (see clipneg.train.config); return final metrics and paths.

    ``callbacks`` are called with the loop state after every optimizer step (tests use one to stop a run mid-way).
    """
    cfg, plain = parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = Path(cfg.run.out_dir) / (cfg.run.name or "run")
    handlers = []
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and not torch.cuda.is_available():
        # Accelerate 1.15 names no process-group backend for DeepSpeed without an accelerator, so it counts one
        # process while DeepSpeed counts all; gloo (DeepSpeed's own CPU backend) makes both see the same group.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(mixed_precision=cfg.run.mixed_precision, kwargs_handlers=handlers,
                              log_with=choose_trackers(cfg.run.trackers, run_dir), project_dir=str(run_dir))
    try:
        return _train(cfg, plain, run_dir, accelerator, callbacks)
    finally:
        accelerator.end_training()
        # Accelerate keeps process-wide singletons; reset them so another main() in this process (tests, sweeps) may
        # use a different precision. The process group (PartialState) stays.
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _train(cfg: TrainConfig, plain: dict, run_dir: Path, accelerator: Accelerator,
           callbacks: Sequence[Callable[[TrainState], None]]) -> dict[str, Any]:
    resume_from = resolve_resume(run_dir, cfg.run.resume)
    if resume_from is None and list_checkpoints(run_dir):
        raise FileExistsError(f"{run_dir} already has checkpoints: pass --resume to continue it, or choose another "
                              "--run.name / --run.out_dir")
    set_seed(cfg.run.seed)
    if accelerator.device.type == "cuda":
        # As open_clip_train does: TF32 matrix products for the fp32 work (loss, norms) and cuDNN autotuning for the
        # fixed-size convolutions (ResNet towers, patch embeddings).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    sharded = accelerator.distributed_type in SHARDED
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if sharded and cfg.model.channels_last:
        # An NHWC weight is not contiguous: DeepSpeed broadcasts every parameter viewed as contiguous bytes, and
        # FSDP2's fully_shard raises NotImplementedError for non-contiguous parameters.
        raise ValueError(f"model.channels_last cannot be used with {accelerator.distributed_type.value}: set "
                         "--model.channels_last false")
    if deepspeed:
        fill_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, cfg, accelerator.num_processes)
    bundle = build_model(cfg)
    start = cpu_state(bundle.model) if cfg.run.wise_alpha is not None else None
    task = ContrastiveTask(bundle.model, cfg.loss, KIND_LIST, text_buckets=cfg.model.text_buckets,
                           channels_last=cfg.model.channels_last)
    if sharded:
        # FSDP2 refuses 0-d parameters and DeepSpeed cannot broadcast them (it views each as bytes)
        log.info("%s: parameters given shape [1]: %s", accelerator.distributed_type.value,
                 promote_scalar_parameters(task))
    if accelerator.distributed_type == DistributedType.FSDP:
        # Every process has built the whole model already (same weights or same seed), so rank 0's broadcast buys
        # nothing, and Accelerate 1.15's version of it fails on persistent buffers (a ResNet tower's BatchNorm
        # statistics: "'Tensor' object has no attribute 'device_mesh'").
        accelerator.state.fsdp_plugin.cpu_ram_efficient_loading = False
    optimizer = build_optimizer(task.model, cfg.optim)
    task, optimizer = accelerator.prepare(task, optimizer)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        log.info("resumed from %s at step %d (epoch %d)", resume_from, state.step, state.epoch)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run_dir / "config.yaml")
    # W&B writes under the run folder (not the working directory); its project is the run name, as TensorBoard's
    # sub-folder is. Accelerate passes init_kwargs only to the tracker they name.
    accelerator.init_trackers(cfg.run.name or "run", config=flatten(plain),
                              init_kwargs={"wandb": {"dir": str(run_dir), "name": cfg.run.name or "run"}})
    unwrapped = accelerator.unwrap_model(task)
    if sharded and cfg.eval.every:
        log.warning("eval.every is ignored under FSDP/DeepSpeed (weights are sharded); the export is scored at the "
                    "end")
    max_scale = max_logit_scale()
    total = cfg.run.steps
    world = accelerator.num_processes

    bar = tqdm(total=total, initial=state.step, disable=not (cfg.run.progress and accelerator.is_local_main_process),
               dynamic_ncols=True, desc="train")
    metrics: dict[str, Any] = {}
    t_mark, samples_mark, rate = time.perf_counter(), state.samples_seen, 0.0
    t_first: float | None = None
    samples_first = 0
    task.train()
    data = batches(cfg, bundle, state, accelerator)
    while state.step < total:
        batch = next(data)
        lr = lr_at(state.step, cfg.optim, total)
        set_lr(optimizer, lr)
        losses = task(batch)
        loss = sum(losses.values())
        accelerator.backward(loss)
        grad_norm = None
        if cfg.optim.grad_clip_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(task.parameters(), cfg.optim.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        unwrapped.clamp_logit_scale(max_scale)
        if deepspeed:
            clamp_deepspeed_logit_scale(unwrapped, max_scale)
        unwrapped.update_teacher()
        state.step += 1
        state.samples_seen += batch["image"].shape[0] * world
        if t_first is None:  # the first step pays for worker start-up; rates are measured after it
            t_first, samples_first = time.perf_counter(), state.samples_seen

        if state.step % cfg.run.log_every == 0 or state.step == total:
            names = sorted(losses)
            # Mean over processes: each process's masked terms are scaled so that this mean is the global loss.
            values = accelerator.reduce(torch.stack([losses[k].detach().float() for k in names] + [loss.detach()]),
                                        reduction="mean").tolist()
            now = time.perf_counter()
            rate = (state.samples_seen - samples_mark) / max(now - t_mark, 1e-9)
            t_mark, samples_mark = now, state.samples_seen
            metrics = {f"train/{k}": v for k, v in zip(names + ["loss"], values, strict=True)}
            metrics.update({"train/lr": lr, "train/logit_scale": logit_scale(unwrapped.model, deepspeed),
                            "train/samples_per_s": rate, "train/epoch": state.epoch,
                            "train/samples_seen": state.samples_seen, "train/processes": world})
            if grad_norm is not None:
                metrics["train/grad_norm"] = float(grad_norm)
            accelerator.log(metrics, step=state.step)
            bar.set_postfix(loss=f"{values[-1]:.3f}", samples_s=f"{rate:.0f}")
        bar.update(1)

        if cfg.run.save_every and state.step % cfg.run.save_every == 0 and state.step < total:
            save_checkpoint(accelerator, run_dir, state.step, cfg.run.keep_last)
        if cfg.eval.every and state.step % cfg.eval.every == 0 and state.step < total and cfg.eval.benchmarks:
            if accelerator.is_main_process and not sharded:
                # Forked RNG: the scorer's DataLoader draws a seed from the global RNG, which would make a resumed
                # run (that does not repeat this evaluation) diverge from an uninterrupted one.
                with torch.random.fork_rng(devices=[]):
                    accelerator.log(evaluate(unwrapped.model, bundle, cfg.eval, accelerator.device), step=state.step)
            accelerator.wait_for_everyone()
        for cb in callbacks:
            cb(state)
    bar.close()
    elapsed = time.perf_counter() - (t_first or time.perf_counter())
    steady_rate = (state.samples_seen - samples_first) / elapsed if elapsed > 0 else float("nan")

    if cfg.run.save_every:
        save_checkpoint(accelerator, run_dir, state.step, cfg.run.keep_last)
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {"run_dir": str(run_dir), "step": state.step, "samples_seen": state.samples_seen,
                              "samples_per_s": steady_rate, "distributed_type": accelerator.distributed_type.value,
                              **metrics}
    if cfg.run.export:
        result.update(export(accelerator, task, bundle, cfg, run_dir, start, state))
    if cfg.eval.at_end and cfg.eval.benchmarks and accelerator.is_main_process:
        if sharded:  # the unwrapped model holds shards only: score the gathered export instead
            if "export" not in result:
                raise ValueError("with FSDP/DeepSpeed the final evaluation scores the export: keep run.export true")
            scored = load_clip("local-dir:" + result["export"], device=accelerator.device).model
        else:
            scored = unwrapped.model
        final = evaluate(scored, bundle, cfg.eval, accelerator.device)
        if "export_wise" in result:
            wise = load_clip("local-dir:" + result["export_wise"], device=accelerator.device)
            final.update({f"wise/{k}": v for k, v in evaluate(wise.model, wise, cfg.eval, accelerator.device).items()})
        accelerator.log({f"eval/{k}": v for k, v in final.items()}, step=state.step)
        (run_dir / "eval.json").write_text(json.dumps(final, indent=2, sort_keys=True))
        result["eval"] = final
    accelerator.wait_for_everyone()
    if not math.isfinite(result.get("train/loss", 0.0)):
        log.warning("final training loss is not finite: %s", result.get("train/loss"))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per saved file otherwise
    out = main()
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}, indent=2, default=str))
