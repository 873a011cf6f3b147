"""train.main end to end on the CPU on built-in world shards: every recipe runs, kill + resume is exact, exports load
with open_clip, the evaluation hook scores SugarCrepe-format folders."""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import train
from clipneg.schema import NegImage, NegText, Sample
from clipneg.shards import write_shards
from clipneg.train.checkpoints import list_checkpoints
from clipneg.train.trackers import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30), "yellow": (230, 220, 30)}


def _png(left: str, right: str, size: int = 32) -> bytes:
    im = Image.new("RGB", (size, size), (128, 128, 128))
    im.paste(COLOURS[left], (2, 10, 14, 22))
    im.paste(COLOURS[right], (18, 10, 30, 22))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _samples(n: int, seed: int = 0):
    """Two coloured squares side by side, with exact swap / replace negatives and the swapped image."""
    rng = random.Random(seed)
    for i in range(n):
        a, b = rng.sample(list(COLOURS), 2)
        c = rng.choice([x for x in COLOURS if x not in (a, b)])
        negs = [NegText(f"a {b} square left of a {a} square", "swap_att", "test"),
                NegText(f"a {c} square left of a {b} square", "replace_att", "test"),
                NegText(f"a {a} square right of a {b} square", "replace_rel", "test")]
        yield Sample(key=f"s{i:05d}", image=_png(a, b), image_ext="png", caption=f"a {a} square left of a {b} square",
                     neg_texts=negs, neg_images=[NegImage(_png(b, a), "png", "swap_att", "test", text=0)])


def make_shards(out: Path, n: int = 64, shard_size: int = 16) -> Path:
    write_shards(_samples(n), out, shard_size=shard_size, progress=False)
    return out


def make_benchmark(out: Path, n: int = 12) -> Path:
    """A SugarCrepe-format folder (two subsets) over images of the same kind."""
    (out / "images").mkdir(parents=True)
    docs = {"swap_att": {}, "replace_rel": {}}
    rng = random.Random(1)
    for i in range(n):
        a, b = rng.sample(list(COLOURS), 2)
        (out / "images" / f"{i}.png").write_bytes(_png(a, b))
        pos = f"a {a} square left of a {b} square"
        docs["swap_att"][str(2 * i)] = {"filename": f"{i}.png", "caption": pos,
                                        "negative_caption": f"a {b} square left of a {a} square"}
        docs["replace_rel"][str(2 * i + 1)] = {"filename": f"{i}.png", "caption": pos,
                                               "negative_caption": f"a {a} square right of a {b} square"}
    for name, doc in docs.items():
        (out / f"{name}.json").write_text(json.dumps(doc))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small built-in world: 64 training scenes in 4 shards (every negative kind, a counterfactual image each) and
    SugarCrepe-format benchmarks of 8 scenes."""
    from clipneg.world import World, WorldConfig, export_benchmarks, write_train_shards

    out = tmp_path_factory.mktemp("world")
    w = World(WorldConfig(image_size=32, grid=2, seed=0))
    write_train_shards(w, out / "shards", 64, shard_size=16, progress=False)
    export_benchmarks(w, out / "benchmark", 8, progress=False)
    return out


@pytest.fixture(scope="module")
def shards(world) -> Path:
    return world / "shards"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_benchmark(tmp_path_factory.mktemp("bench") / "world_bench")


def tiny_args(shards: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--model.name", "clipneg-tiny", "--model.pretrained", "null", "--data.shards", str(shards),
            "--data.batch_size", "8", "--data.num_workers", "0", "--data.shuffle_buffer", "16",
            "--run.out_dir", str(out), "--run.name", name, "--run.progress", "false", "--run.log_every", "1",
            "--run.mixed_precision", "no", "--run.save_every", "0", "--run.wise_alpha", "null",
            "--eval.benchmarks", "[]", "--eval.every", "0", "--optim.warmup_steps", "1", *extra]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_a_few_steps(recipe, shards, tmp_path):
    out = train.main(["--config", str(ROOT / "configs" / recipe),
                      *tiny_args(shards, tmp_path, "r", "--run.steps", "2", "--run.export", "false")])
    cfg, _ = train.parse_args(["--config", str(ROOT / "configs" / recipe)])
    assert out["step"] == 2 and out["samples_seen"] == 16
    expected = {"contrastive_loss"} | {name for name, w in (("triplet_loss", cfg.loss.triplet),
                                                             ("hard_negative_loss", cfg.loss.hard_negative),
                                                             ("rank_loss", cfg.loss.rank),
                                                             ("distill_loss", cfg.loss.distill),
                                                             ("paraphrase_loss", cfg.loss.paraphrase),
                                                             ("imc_loss", cfg.loss.imc)) if w > 0}
    terms = {k.removeprefix("train/") for k in out if k.endswith("_loss")}
    assert terms == expected
    assert all(torch.isfinite(torch.tensor(out[f"train/{t}"])) for t in terms)
    assert out["train/loss"] == pytest.approx(sum(out[f"train/{t}"] for t in terms), rel=1e-5)
    saved, _ = train.parse_args(["--config", str(tmp_path / "r" / "config.yaml")])
    assert saved.loss == cfg.loss and saved.run.steps == 2  # the resolved config is in the run folder
    rows = read_jsonl(tmp_path / "r" / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and "train/lr" in rows[0]


def test_killed_and_resumed_run_ends_with_the_same_weights(shards, tmp_path):
    """Given a 10-step run (epochs of 8 batches, 2 loader workers, checkpoints every 3 steps), when it is killed after
    step 8 and resumed from step 6 (skipping 6 batches, then crossing into the next epoch), then the final weights
    equal those of an uninterrupted run bit for bit."""
    args = ["--config", str(ROOT / "configs" / "demo_world_triplet.yaml"), "--data.num_workers", "2",
            "--data.k_text", "2", "--run.steps", "10", "--run.save_every", "3", "--run.keep_last", "2"]

    def kill_at_8(state):
        if state.step == 8:
            raise KeyboardInterrupt

    whole = train.main(tiny_args(shards, tmp_path, "whole") + args)
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny_args(shards, tmp_path, "killed") + args, callbacks=[kill_at_8])
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["step-00000003", "step-00000006"]
    resumed = train.main(tiny_args(shards, tmp_path, "killed") + args + ["--resume"])
    assert resumed["step"] == whole["step"] == 10 and resumed["samples_seen"] == whole["samples_seen"]
    a = load_file(Path(whole["export"]) / "open_clip_model.safetensors")
    b = load_file(Path(resumed["export"]) / "open_clip_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["train/loss"] == whole["train/loss"]
    with pytest.raises(FileExistsError, match="--resume"):
        train.main(tiny_args(shards, tmp_path, "killed") + args)


def test_export_loads_with_open_clip_and_wise_ft_interpolates(shards, tmp_path):
    out = train.main(tiny_args(shards, tmp_path, "w", "--run.steps", "3", "--run.wise_alpha", "0.25",
                               "--optim.lr", "1e-3"))
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + out["export"])
    tuned = load_file(Path(out["export"]) / "open_clip_model.safetensors")
    assert all(torch.equal(v, tuned[k]) for k, v in model.state_dict().items())
    start = train.load_clip("clipneg-tiny", seed=0).model.state_dict()
    wise = load_file(Path(out["export_wise"]) / "open_clip_model.safetensors")
    key = "visual.conv1.weight"
    assert not torch.equal(start[key], tuned[key])
    torch.testing.assert_close(wise[key], 0.75 * start[key] + 0.25 * tuned[key])
    assert preprocess is not None


def test_eval_hook_logs_benchmark_and_retrieval(shards, world, bench, tmp_path):
    benches = f"[{world / 'benchmark' / 'sugarcrepe_heldout'}, {bench}]"
    out = train.main(tiny_args(shards, tmp_path, "e", "--run.steps", "2", "--eval.benchmarks", benches,
                               "--eval.every", "1", "--run.export", "false"))
    final = out["eval"]
    for key in ("world_bench/swap_att", "world_bench/replace_rel", "world_bench/macro", "world_bench/r1",
                "sugarcrepe_heldout/replace_obj", "sugarcrepe_heldout/i2t_r1", "sugarcrepe_heldout/t2i_r1"):
        assert 0.0 <= final[key] <= 100.0, key
    # Every item pairs an image with its positive: with 12 distinct images R@1 of a good model would be 100; here we
    # only check the retrieval numbers are computed over the benchmark's own pairs.
    rows = read_jsonl(tmp_path / "e" / "log.jsonl")
    assert any("world_bench/replace_rel" in r and r["step"] == 1 for r in rows)  # the periodic hook
    assert json.loads((tmp_path / "e" / "eval.json").read_text()) == final


def test_bf16_locking_and_checkpointing_options(shards, tmp_path):
    start = train.load_clip("clipneg-tiny", seed=0).model.state_dict()
    out = train.main(tiny_args(shards, tmp_path, "o", "--run.steps", "2", "--run.mixed_precision", "bf16",
                               "--model.lock_image", "true", "--model.grad_checkpointing", "true",
                               "--optim.lr", "1e-3"))
    tuned = load_file(Path(out["export"]) / "open_clip_model.safetensors")
    assert torch.equal(tuned["visual.conv1.weight"], start["visual.conv1.weight"])  # locked tower unchanged
    assert not torch.equal(tuned["text_projection"], start["text_projection"])
    assert torch.isfinite(torch.tensor(out["train/loss"]))


def test_torch_compile_from_accelerates_config_trains_like_eager_and_resumes(shards, tmp_path, monkeypatch):
    """Given Accelerate's dynamo setting (ACCELERATE_DYNAMO_BACKEND, which `accelerate launch --dynamo_backend X`
    sets; dynamo's "eager" backend keeps the test fast, inductor was checked by hand), when a run trains, checkpoints
    and is resumed, then torch.compile wrapped the task once per run, the losses equal an uncompiled run's, the export
    has open_clip's own keys (not the compiled wrapper's), and the resumed run ends with the same weights."""
    args = ["--config", str(ROOT / "configs" / "demo_world_negclip.yaml"), "--data.k_text", "2",
            "--run.steps", "4", "--run.save_every", "2"]
    plain = train.main(tiny_args(shards, tmp_path, "plain") + args)
    compiled_modules = []
    real_compile = torch.compile

    def spy(model, *a, **kw):
        compiled_modules.append(type(model).__name__)
        return real_compile(model, *a, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")
    whole = train.main(tiny_args(shards, tmp_path, "whole") + args)
    assert compiled_modules == ["ContrastiveTask"]
    for key in ("train/contrastive_loss", "train/hard_negative_loss", "train/loss"):
        assert whole[key] == pytest.approx(plain[key], rel=1e-5), key
    a = load_file(Path(whole["export"]) / "open_clip_model.safetensors")
    assert a.keys() == load_file(Path(plain["export"]) / "open_clip_model.safetensors").keys()
    open_clip.create_model_and_transforms("local-dir:" + whole["export"])

    run = tmp_path / "part"  # the whole run as if killed after its step-2 checkpoint
    shutil.copytree(tmp_path / "whole", run)
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    shutil.rmtree(run / "export")
    resumed = train.main(tiny_args(shards, tmp_path, "part") + args + ["--resume"])
    assert compiled_modules == ["ContrastiveTask"] * 2 and resumed["step"] == 4
    b = load_file(Path(resumed["export"]) / "open_clip_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tensorboard_receives_every_logged_scalar(shards, tmp_path):
    # tensorboard is in the test install (Makefile: .[tensorboard]); Accelerate's tracker writes the event file.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train.main(tiny_args(shards, tmp_path, "tb", "--run.steps", "3", "--run.export", "false",
                         "--run.trackers", "[tensorboard]"))
    # Accelerate writes the scalars under <run dir>/<run name>/ and the resolved config (hparams) one level deeper.
    scalars = list((tmp_path / "tb" / "tb").glob("events.out.tfevents.*"))
    hparams = list((tmp_path / "tb" / "tb").glob("*/events.out.tfevents.*"))
    assert len(scalars) == 1 and len(hparams) == 1
    acc = EventAccumulator(str(scalars[0].parent))
    acc.Reload()
    rows = read_jsonl(tmp_path / "tb" / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("train/loss", "train/contrastive_loss", "train/lr", "train/samples_per_s"):
        logged = acc.Scalars(key)
        assert [e.step for e in logged] == [1, 2, 3]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6)


def _wandb_records(path: Path):
    """The protobuf records of an offline W&B run file: a 7-byte header (":W&B", magic, version), then LevelDB log
    blocks of 32 KiB whose chunks carry a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # too little left in the block for a chunk header: zero padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_records_config_and_every_scalar(shards, tmp_path, monkeypatch):
    # wandb is in the test install (Makefile: .[wandb]); offline mode writes the run under <run dir>/wandb/.
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train.main(tiny_args(shards, tmp_path, "wb", "--run.steps", "3", "--run.export", "false",
                         "--run.trackers", "[wandb]", "--optim.lr", "3e-4"))
    # run.finish() returns before wandb-core's writer has flushed and closed the run file (its log says "stream:
    # finishing up" after the client's "restore done"); on a loaded CI machine the history records were not yet on
    # disk. teardown() waits for the service to exit, which closes every stream.
    wandb.teardown()
    files = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = list(_wandb_records(files[0]))
    assert records[-1].HasField("exit")  # the file is whole: the exit record is written last
    # a key holding "/" is stored as its parts (nested_key)
    history = [{"_step": r.history.step.num, **{i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                                for i in r.history.item}} for r in records if r.HasField("history")]
    config = {i.key: json.loads(i.value_json) for r in records if r.HasField("config") for i in r.config.update}
    rows = read_jsonl(tmp_path / "wb" / "log.jsonl")
    assert [h["_step"] for h in history] == [r["step"] for r in rows] == [1, 2, 3]
    for h, r in zip(history, rows, strict=True):
        for key in ("train/loss", "train/contrastive_loss", "train/lr", "train/samples_per_s"):
            assert h[key] == pytest.approx(r[key], rel=1e-6), key
    assert config["optim.lr"] == 3e-4 and config["run.name"] == "wb" and config["data.batch_size"] == 8


def test_tracker_choice(monkeypatch, tmp_path):
    from clipneg.train import trackers

    installed = {"tensorboard"}
    monkeypatch.setattr(trackers, "_installed", lambda m: m in installed)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    names = lambda ts: [t if isinstance(t, str) else t.name for t in ts]  # noqa: E731
    assert names(trackers.choose_trackers(["auto"], tmp_path)) == ["jsonl", "tensorboard"]
    assert names(trackers.choose_trackers(["jsonl"], tmp_path)) == ["jsonl"]
    with pytest.raises(ValueError, match="pip install wandb"):
        trackers.choose_trackers(["wandb"], tmp_path)
    installed.add("wandb")
    # Installed but not configured: "auto" leaves W&B out (a headless job would stop at its login prompt).
    assert names(trackers.choose_trackers(["auto"], tmp_path)) == ["jsonl", "tensorboard"]
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert names(trackers.choose_trackers(["auto"], tmp_path)) == ["jsonl", "tensorboard", "wandb"]
    with pytest.raises(ValueError, match="unknown"):
        trackers.choose_trackers(["mlflow"], tmp_path)
