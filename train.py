"""Fine-tune a CLIP model on hard negatives: one readable loop over the parts in clipneg/.

Run it:

    # CPU demo on the built-in world (make the shards first: clipneg world --out world)
    python train.py --config configs/demo_world_negclip.yaml --data.shards world/shards

    # one GPU, any flag overrides the recipe (dotted keys)
    accelerate launch train.py --config configs/negclip_coco_vitb32.yaml --data.shards /data/coco-neg --optim.lr 1e-6

    # 8 GPUs on one node; several nodes, FSDP or DeepSpeed come from `accelerate config`, not from our flags
    accelerate launch --multi_gpu --num_processes 8 train.py --config configs/fsc_vitb32.yaml

    # LoRA adapters only (peft; the export merges them into plain weights), and a batch of 256 in 4 micro-batches
    accelerate launch train.py --config configs/ceclip_vitb32.yaml --model.lora.rank 4 --optim.lr 5e-5 \
        --optim.accumulate 4

    # continue a run that was stopped (same step, RNG and data position)
    accelerate launch train.py --config configs/fsc_vitb32.yaml --resume

    # two CPU processes (gloo), e.g. to check distributed behaviour without a GPU
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py --config configs/demo_world_clip.yaml

Writes runs/<name>/: config.yaml (the resolved config), log.jsonl (+ TensorBoard when installed), checkpoints/step-N
(accelerator.save_state), export/ (open_clip local-dir: `clipneg eval ... --model local-dir:runs/<name>/export`),
export_wise/ with run.wise_alpha, and eval.json with the final benchmark numbers.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from clipneg.models import ClipBundle, load_clip
from clipneg.schema import KIND_LIST
from clipneg.train.accumulate import grad_cache_backward
from clipneg.train.backends import Backend, build_backend, process_group_kwargs
from clipneg.train.checkpoints import TrainState, list_checkpoints, resolve_resume, save_checkpoint
from clipneg.train.config import TrainConfig, dump_yaml, flatten, parse_args
from clipneg.train.data import train_batches
from clipneg.train.evaluation import evaluate
from clipneg.train.export import export_run, plain_state
from clipneg.train.lora import apply_lora
from clipneg.train.optim import build_optimizer, lr_at, set_lr
from clipneg.train.task import ContrastiveTask
from clipneg.train.trackers import choose_trackers

log = logging.getLogger("train")


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
    if m.lora.enabled:  # freezes every base weight; only the adapters (and the logit scale if asked) train
        apply_lora(model, m.lora, seed=cfg.run.seed)
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return bundle


def main(argv: Sequence[str] | None = None, *,
         callbacks: Sequence[Callable[[TrainState], None]] = ()) -> dict[str, Any]:
    """Train as configured by ``argv`` (see clipneg.train.config); return final metrics and paths.

    ``callbacks`` are called with the loop state after every optimizer step (tests use one to stop a run mid-way).
    """
    cfg, plain = parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = Path(cfg.run.out_dir) / (cfg.run.name or "run")
    accelerator = Accelerator(mixed_precision=cfg.run.mixed_precision, kwargs_handlers=process_group_kwargs(),
                              log_with=choose_trackers(cfg.run.trackers, run_dir), project_dir=str(run_dir))
    try:
        return _train(cfg, plain, run_dir, build_backend(accelerator), callbacks)
    finally:
        accelerator.end_training()
        # Accelerate keeps process-wide singletons; reset them so another main() in this process (tests, sweeps) may
        # use a different precision. The process group (PartialState) stays.
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _train(cfg: TrainConfig, plain: dict, run_dir: Path, backend: Backend,
           callbacks: Sequence[Callable[[TrainState], None]]) -> dict[str, Any]:
    accelerator = backend.accelerator
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
    backend.configure(cfg)
    bundle = build_model(cfg)
    start = plain_state(bundle.model) if cfg.run.wise_alpha is not None else None
    task = ContrastiveTask(bundle.model, cfg.loss, KIND_LIST, text_buckets=cfg.model.text_buckets,
                           channels_last=cfg.model.channels_last)
    task, optimizer = backend.prepare(task, lambda model: build_optimizer(model, cfg.optim))
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
    eval_in_loop = bool(cfg.eval.every and cfg.eval.benchmarks)
    if eval_in_loop and not backend.can_eval_in_loop:
        log.warning("eval.every is ignored under %s (weights are sharded); the export is scored at the end",
                    backend.name)
        eval_in_loop = False
    total, processes = cfg.run.steps, accelerator.num_processes
    bar = tqdm(total=total, initial=state.step, disable=not (cfg.run.progress and accelerator.is_local_main_process),
               dynamic_ncols=True, desc="train", unit="step")
    metrics: dict[str, Any] = {}
    t_mark, samples_mark = time.perf_counter(), state.samples_seen
    t_first, samples_first = None, 0
    task.train()
    data = train_batches(cfg, bundle, state, accelerator)
    while state.step < total:
        batch = next(data)
        lr = lr_at(state.step, cfg.optim, total)
        set_lr(optimizer, lr)
        if cfg.optim.accumulate == 1:
            losses = task(batch)
            loss = sum(losses.values())
            accelerator.backward(loss)
        else:  # GradCache: the whole batch's loss and gradients in micro-batches (clipneg.train.accumulate)
            losses = grad_cache_backward(task, batch, cfg.optim.accumulate, accelerator)
            loss = sum(losses.values())
        grad_norm = None
        if cfg.optim.grad_clip_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(task.parameters(), cfg.optim.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        backend.after_step(unwrapped)
        state.step += 1
        state.samples_seen += batch["image"].shape[0] * processes
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
            metrics.update({"train/lr": lr, "train/logit_scale": backend.logit_scale(unwrapped),
                            "train/samples_per_s": rate, "train/epoch": state.epoch,
                            "train/samples_seen": state.samples_seen, "train/processes": processes})
            if grad_norm is not None:
                metrics["train/grad_norm"] = float(grad_norm)
            accelerator.log(metrics, step=state.step)
            bar.set_postfix(loss=f"{values[-1]:.3f}", samples_s=f"{rate:.0f}")
        bar.update(1)

        if cfg.run.save_every and state.step % cfg.run.save_every == 0 and state.step < total:
            save_checkpoint(accelerator, run_dir, state.step, cfg.run.keep_last)
        if eval_in_loop and state.step % cfg.eval.every == 0 and state.step < total:
            if accelerator.is_main_process:
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
                              "samples_per_s": steady_rate, "distributed_type": backend.name, **metrics}
    if cfg.run.export:
        result.update(export_run(backend, task, bundle, cfg, run_dir, start, state))
    if cfg.eval.at_end and cfg.eval.benchmarks and accelerator.is_main_process:
        result["eval"] = _final_eval(cfg, bundle, backend, unwrapped, result, run_dir, state)
    accelerator.wait_for_everyone()
    if not math.isfinite(result.get("train/loss", 0.0)):
        log.warning("final training loss is not finite: %s", result.get("train/loss"))
    return result


def _final_eval(cfg: TrainConfig, bundle: ClipBundle, backend: Backend, unwrapped: ContrastiveTask,
                result: dict[str, Any], run_dir: Path, state: TrainState) -> dict[str, float]:
    """Scores of the final model (and its WiSE-FT interpolation), logged and written to <run>/eval.json."""
    device = backend.accelerator.device
    if backend.sharded:  # the unwrapped model holds shards only: score the gathered export instead
        if "export" not in result:
            raise ValueError(f"under {backend.name} the final evaluation scores the export: keep run.export true")
        scored = load_clip("local-dir:" + result["export"], device=device).model
    else:
        scored = unwrapped.model
    final = evaluate(scored, bundle, cfg.eval, device)
    if "export_wise" in result:
        wise = load_clip("local-dir:" + result["export_wise"], device=device)
        final.update({f"wise/{k}": v for k, v in evaluate(wise.model, wise, cfg.eval, device).items()})
    backend.accelerator.log({f"eval/{k}": v for k, v in final.items()}, step=state.step)
    (run_dir / "eval.json").write_text(json.dumps(final, indent=2, sort_keys=True))
    return final


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per saved file otherwise
    out = main()
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}, indent=2, default=str))
