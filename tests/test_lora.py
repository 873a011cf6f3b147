"""LoRA fine-tuning (model.lora, peft): only the adapters train, the export merges them into a plain open_clip model
with the adapted model's features, resume is exact, the attention adapters really train.

Given / When / Then in each test's docstring where the setup is not obvious.
"""

from __future__ import annotations

import copy
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file

import train
from clipneg.models import load_clip
from clipneg.train.config import ConfigError, LoraSettings, parse_args
from clipneg.train.lora import adapter_parameter_names, apply_lora, has_lora, merge_lora

from .test_train import shards, tiny_args, world  # noqa: F401 (module fixtures)

pytest.importorskip("peft")

LORA = ["--model.lora.rank", "4", "--model.lora.alpha", "8", "--data.k_text", "2", "--loss.neg_text_columns", "true",
        "--loss.hard_negative", "0.5", "--optim.lr", "1e-2"]


def _randomise_b(model: torch.nn.Module, seed: int = 1) -> None:
    """B starts at zero (the adapted model is the base model); give it values so the adapters do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _features(model: torch.nn.Module, bundle) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    texts = bundle.tokenizer(["a red cube left of a blue ball", "two green balls", "a cube", "nothing here"])
    model.eval()
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(texts, normalize=True)


def test_adapters_on_attention_and_mlp_train_and_merge_into_plain_weights(tiny_bundle):
    """Given LoRA on both towers' attention and MLPs with non-zero B, when one backward runs, then every adapter gets
    a gradient (the attention's in_proj adapter and its out_proj adapter alike) and no base weight does; when merged,
    the model has exactly a plain model's state-dict keys and the adapted model's features."""
    model = tiny_bundle.model
    plain_keys = set(model.state_dict())
    base_image, _ = _features(model, tiny_bundle)
    names = apply_lora(model, LoraSettings(rank=4), seed=0)
    # 2 blocks per tower x (attn, c_fc, c_proj) x 2 towers
    assert len(names) == 12 and any(n.endswith("resblocks.1.attn") for n in names)
    assert has_lora(model)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained == adapter_parameter_names(model) and len(trained) == 2 * 16  # A and B, attn has two pairs
    assert "logit_scale" not in trained
    _randomise_b(model)
    image, text = _features(model, tiny_bundle)
    model.train()
    out = model(image=torch.randn(2, 3, 32, 32), text=tiny_bundle.tokenizer(["a", "b"]))
    (out["image_features"].sum() + out["text_features"].sum()).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    assert model.visual.transformer.resblocks[0].attn.lora_A["default"].weight.grad.abs().sum() > 0  # in_proj
    assert model.visual.transformer.resblocks[0].attn.base_layer.out_proj.lora_A["default"].weight.grad is not None

    merged = merge_lora(copy.deepcopy(model))
    assert set(merged.state_dict()) == plain_keys and not has_lora(merged)
    assert type(merged.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    m_image, m_text = _features(merged, tiny_bundle)
    torch.testing.assert_close(m_image, image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m_text, text, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(m_image, base_image, atol=1e-3)  # the adapters did change the function


def test_attention_adapter_is_w_plus_ba_once_and_leaves_the_frozen_weights_alone(tiny_bundle):
    """peft 0.21's LoRA MultiheadAttention adds the out_proj delta twice in its forward and merge (huggingface/peft
    PR #3774) and drifts the frozen weights by (W + dW) - dW rounding. Given an adapted attention with non-zero B,
    when it runs, then it equals a plain nn.MultiheadAttention with in_proj W + (a/r) B A and out_proj W + (a/r) B A
    computed by hand, and the base weights are the same Parameter objects with the same bits afterwards."""
    model = tiny_bundle.model
    apply_lora(model, LoraSettings(rank=4, alpha=8.0), seed=0)
    _randomise_b(model)
    layer = model.transformer.resblocks[0].attn
    attn = layer.get_base_layer()
    w_in, w_out = attn.in_proj_weight, attn.out_proj.get_base_layer().weight
    before = (w_in.detach().clone(), w_out.detach().clone())
    ref = torch.nn.MultiheadAttention(64, 2, batch_first=True)
    scale = 8.0 / 4
    with torch.no_grad():
        ref.in_proj_weight.copy_(w_in + scale * layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
        ref.in_proj_bias.copy_(attn.in_proj_bias)
        out = attn.out_proj
        ref.out_proj.weight.copy_(w_out + scale * out.lora_B["default"].weight @ out.lora_A["default"].weight)
        ref.out_proj.bias.copy_(out.get_base_layer().bias)
    x = torch.randn(2, 5, 64)
    ours = layer(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(ours, ref(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-5)
    model.state_dict()
    list(model.named_modules())
    assert attn.in_proj_weight is w_in and attn.out_proj.get_base_layer().weight is w_out
    assert torch.equal(w_in, before[0]) and torch.equal(w_out, before[1])


def test_lora_targets_and_towers_are_checked():
    """out_proj alone would be a dead adapter (nn.MultiheadAttention never calls its forward): refused with the fix;
    a ResNet image tower has no blocks to adapt: refused naming the tower; locks and LoRA together: refused."""
    with pytest.raises(ConfigError, match="use attn, which adapts in_proj and out_proj together"):
        parse_args(["--model.lora.rank", "4", "--model.lora.target_modules", "[out_proj]"])
    with pytest.raises(ConfigError, match="target_modules must name some of"):
        parse_args(["--model.lora.rank", "4", "--model.lora.target_modules", "[q_proj]"])
    with pytest.raises(ConfigError, match="towers"):
        parse_args(["--model.lora.rank", "4", "--model.lora.towers", "[audio]"])
    with pytest.raises(ConfigError, match="drop model.lock_image"):
        parse_args(["--model.lora.rank", "4", "--model.lock_image", "true"])
    rn = load_clip("clipneg-tiny-rn", seed=0).model
    with pytest.raises(ValueError, match=r"towers \['image'\].*--model.lora.towers \[text\]"):
        apply_lora(rn, LoraSettings(rank=2), seed=0)
    assert apply_lora(rn, LoraSettings(rank=2, towers=("text",)), seed=0)  # the text tower is a transformer


def test_only_adapters_change_and_the_merged_export_is_the_adapted_model(shards, tmp_path):  # noqa: F811
    """Given a 3-step LoRA run at a large learning rate (checkpoint at the end, WiSE-FT 0.5), then in the checkpoint
    every base weight and the logit scale are bit-identical to the start and every adapter moved; the export has a
    plain model's keys, loads with open_clip, and gives the features of the checkpointed adapted model; WiSE-FT
    interpolates between the start and the merged weights."""
    out = train.main(tiny_args(shards, tmp_path, "lora", *LORA, "--run.steps", "3", "--run.save_every", "3",
                               "--run.wise_alpha", "0.5"))
    ckpt = load_file(tmp_path / "lora" / "checkpoints" / "step-00000003" / "model.safetensors")
    start = load_clip("clipneg-tiny", seed=0)
    adapted = copy.deepcopy(start.model)
    apply_lora(adapted, LoraSettings(rank=4, alpha=8.0), seed=0)
    initial = {f"model.{k}": v for k, v in adapted.state_dict().items()}
    assert ckpt.keys() == initial.keys()
    lora_keys = [k for k in ckpt if ".lora_" in k]
    assert len(lora_keys) == 32
    for k in ckpt:
        if k in lora_keys:
            assert not torch.equal(ckpt[k], initial[k]), k
        else:
            assert torch.equal(ckpt[k], initial[k]), k

    exported = load_file(Path(out["export"]) / "open_clip_model.safetensors")
    assert exported.keys() == start.model.state_dict().keys()
    model, _, _ = open_clip.create_model_and_transforms("local-dir:" + out["export"])
    adapted.load_state_dict({k.removeprefix("model."): v for k, v in ckpt.items()})
    for ours, theirs in zip(_features(model, start), _features(adapted, start), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    key = "visual.transformer.resblocks.0.mlp.c_fc.weight"
    assert not torch.equal(exported[key], start.model.state_dict()[key])
    wise = load_file(Path(out["export_wise"]) / "open_clip_model.safetensors")
    torch.testing.assert_close(wise[key], 0.5 * start.model.state_dict()[key] + 0.5 * exported[key])
    assert torch.equal(exported["logit_scale"], start.model.state_dict()["logit_scale"])


def test_killed_and_resumed_lora_run_ends_with_the_same_weights(shards, tmp_path):  # noqa: F811
    """Given a 6-step LoRA run with 2 loader workers, GradCache in 2 micro-batches and LoRA dropout (the RNG replay
    matters), when it is killed after step 5 and resumed from its step-4 checkpoint, then its merged export equals
    an uninterrupted run's bit for bit."""
    args = [*LORA, "--model.lora.dropout", "0.1", "--optim.accumulate", "2", "--data.num_workers", "2",
            "--run.steps", "6", "--run.save_every", "2"]

    def kill_at_5(state):
        if state.step == 5:
            raise KeyboardInterrupt

    whole = train.main(tiny_args(shards, tmp_path, "whole", *args))
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny_args(shards, tmp_path, "killed", *args), callbacks=[kill_at_5])
    resumed = train.main(tiny_args(shards, tmp_path, "killed", *args, "--resume"))
    assert resumed["step"] == whole["step"] == 6
    a = load_file(Path(whole["export"]) / "open_clip_model.safetensors")
    b = load_file(Path(resumed["export"]) / "open_clip_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["train/loss"] == whole["train/loss"]


@pytest.mark.slow
def test_fsdp2_trains_lora_with_grad_cache_like_ddp(two_rank_world, tmp_path):
    """Given train.py on 2 CPU ranks with LoRA on both towers (attention included) and GradCache in 2 micro-batches,
    when run under FSDP2 and under DDP, then every logged term, gradient norm and logit scale agree at every step and
    the gathered, merged exports are the same plain open_clip model (tests.two_ranks.check_like_ddp)."""
    from .two_ranks import check_like_ddp

    _, exported = check_like_ddp(two_rank_world, tmp_path, "fsdp", "--model.lora.rank", "4", "--model.lora.alpha",
                                 "8", "--optim.lr", "1e-2", "--optim.accumulate", "2")
    assert exported.keys() == load_clip("clipneg-tiny", seed=0).model.state_dict().keys()
