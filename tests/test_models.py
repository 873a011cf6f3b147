from __future__ import annotations

import json
import shutil

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipneg.models import activation_of, export_local_dir, load_clip


def _features(model, tokenizer):
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    texts = tokenizer(["a red circle left of a blue square", "a blue square", "two green stars"])
    model.eval()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(texts)


def test_builtin_tiny_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_clip("clipneg-tiny", seed=1)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = load_clip("clipneg-tiny", seed=1)
    c = load_clip("clipneg-tiny", seed=2)
    assert a.identity["weights_sha256"] == b.identity["weights_sha256"] != c.identity["weights_sha256"]
    assert a.identity["activation"] == "gelu" and a.identity["context_length"] == 32


def test_export_then_reload_with_open_clip_gives_identical_features(tiny_bundle, tmp_path):
    with torch.no_grad():  # make the weights differ from any fresh init
        for p in tiny_bundle.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = export_local_dir(tiny_bundle.model, tmp_path / "export", model_cfg=tiny_bundle.model_cfg,
                           record={"run": "test"})
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tok = open_clip.get_tokenizer(f"local-dir:{out}")
    img_a, txt_a = _features(tiny_bundle.model, tiny_bundle.tokenizer)
    img_b, txt_b = _features(model, tok)
    assert torch.equal(img_a, img_b) and torch.equal(txt_a, txt_b)
    reloaded = load_clip(f"local-dir:{out}")
    assert reloaded.identity["weights_sha256"] == json.loads((out / "open_clip_config.json").read_text())[
        "clipneg"]["weights_sha256"]
    assert reloaded.identity["export"]["run"] == "test"


def test_activation_is_recorded_and_enforced(tmp_path):
    quick = load_clip("clipneg-tiny", force_quick_gelu=True)
    assert activation_of(quick.model) == "quick_gelu"
    out = export_local_dir(quick.model, tmp_path / "q", model_cfg=quick.model_cfg)
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["quick_gelu"] is True and cfg["clipneg"]["activation"] == "quick_gelu"
    assert load_clip(f"local-dir:{out}").identity["activation"] == "quick_gelu"
    # the weights file loaded under the GELU config would silently change scores: refuse
    with pytest.raises(ValueError, match="trained with quick_gelu"):
        load_clip("clipneg-tiny", pretrained=str(out / "open_clip_model.safetensors"))
    ok = load_clip("clipneg-tiny-quickgelu", pretrained=str(out / "open_clip_model.safetensors"))
    assert ok.identity["weights_sha256"] == cfg["clipneg"]["weights_sha256"]


def test_openai_looking_file_under_gelu_config_warns(tmp_path):
    b = load_clip("clipneg-tiny")
    path = tmp_path / "openai_finetuned.safetensors"
    save_file({k: v.contiguous() for k, v in b.model.state_dict().items()}, str(path))
    with pytest.warns(UserWarning, match="QuickGELU"):
        load_clip("clipneg-tiny", pretrained=str(path))


def test_torch_checkpoint_files_load_weights_only(tmp_path):
    b = load_clip("clipneg-tiny", seed=4)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": b.model.state_dict()}, path)
    again = load_clip("clipneg-tiny", pretrained=str(path), seed=9)
    assert again.identity["weights_sha256"] == b.identity["weights_sha256"]


def test_clear_errors_for_unknown_models(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        load_clip("not-a-model")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_clip(f"local-dir:{tmp_path}")
    shutil.rmtree(tmp_path)


def test_channels_last_resnet_task_gives_the_same_losses_and_gradients():
    """Given the tiny ResNet CLIP in training mode (batch norm on batch statistics), when its image tower and the
    images are put in channels-last layout, then every loss term and every gradient equals the default layout's."""
    from clipneg.schema import KIND_LIST
    from clipneg.train.config import LossConfig
    from clipneg.train.task import ContrastiveTask

    bundle = load_clip("clipneg-tiny-rn", seed=0)
    g = torch.Generator().manual_seed(0)
    b, ki = 4, 2
    text = bundle.tokenizer(["a red circle", "a blue square left of a star", "a green heart", "two crosses",
                             "a red square", "a blue circle left of a star", "a green star", "a cross"])
    batch = {"image": torch.rand(b, 3, 32, 32, generator=g), "text": text[:b],
             "neg_text": text[b:].view(b, 1, -1), "neg_text_mask": torch.ones(b, 1, dtype=torch.bool),
             "neg_text_kind": torch.zeros(b, 1, dtype=torch.long),
             "neg_image": torch.rand(b, ki, 3, 32, 32, generator=g),
             "neg_image_mask": torch.ones(b, ki, dtype=torch.bool),
             "neg_image_text": torch.tensor([[0, -1]] * b)}  # the first image depicts the negative caption
    cfg = LossConfig(hard_negative=1.0, triplet=1.0, neg_image_columns=True)
    tasks = []
    for channels_last in (False, True):
        task = ContrastiveTask(load_clip("clipneg-tiny-rn", seed=0).model.train(), cfg, KIND_LIST,
                               channels_last=channels_last)
        losses = task(batch)
        sum(losses.values()).backward()
        tasks.append((task, losses))
    (plain, a), (nhwc, c) = tasks
    assert nhwc.model.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert a.keys() == c.keys() and {"triplet_loss", "hard_negative_loss"} <= a.keys()
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=1e-5, atol=1e-6)
    ref = dict(plain.named_parameters())
    for n, p in nhwc.named_parameters():
        # float32 sums in another order (of the largest entry: 6e-6 with an earlier torch, 1.2e-5 with 2.14.1);
        # the attention pool over a 1 x 1 map has gradients near 0, hence the absolute floor
        atol = max(1e-6, 5e-5 * ref[n].grad.abs().max().item())
        torch.testing.assert_close(p.grad, ref[n].grad, rtol=1e-4, atol=atol, msg=n)
