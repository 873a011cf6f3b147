"""Can a tower tell which of two objects is on the left? A supervised probe of each CLIP tower on the built-in world.

    python bench/order_probe.py --model local-dir:runs/bench/world_gain/runs/pretrain_s0/export   # both towers
    python bench/order_probe.py --model local-dir:runs/demo_world_triplet/export --towers text   # one tower

Scenes: two objects side by side in one row of the world (demo preset), with different colours. Task: the colour of
the left object (one class per world colour; knowing the two colours but not their order scores 50%). The image
tower sees the picture, the text tower the scene's relation caption ("a red circle left of a blue square" or "a blue
square right of a red circle"; captions without a relation or a colour are skipped). A linear head on the embedding
is trained on training-split scenes and scored on test-split scenes, first with the tower frozen (does the embedding
already carry the order?), then with the tower trained too (can the tower learn it?). On the world's pretrained tiny
CLIP both towers are near 50% frozen and near 100% within 100 trained steps, while contrastive fine-tuning with
converse negatives leaves the order at chance (docs/BENCHMARKS.md, world section).
"""

from __future__ import annotations

import argparse
import json

import torch
from PIL import Image
from torch import nn

from clipneg.models import load_clip
from clipneg.train.checkpoints import cpu_state
from clipneg.world import Renderer, World, world_config


def scenes(world: World, split: str, n: int, need_caption: bool) -> list:
    """The first n examples of ``split`` with two differently coloured objects in one row (and, for the text probe,
    a relation caption that names both colours)."""
    out, i = [], 0
    while len(out) < n:
        ex = world.example(split, i, negatives=False)
        i += 1
        objs = ex.scene.objects
        if len(objs) != 2 or objs[0].cell[0] != objs[1].cell[0] or objs[0].colour == objs[1].colour:
            continue
        desc = ex.caption.desc
        if need_caption and (not desc.facts or any(m.colour is None for m in desc.mentions)):
            continue
        out.append(ex)
    return out


def left_colour(ex, colours: list[str]) -> int:
    return colours.index(min(ex.scene.objects, key=lambda o: o.cell[1]).colour)


def make_encoder(model: nn.Module, tower: str, trainable: bool):
    """Embed images or tokens; the tower runs in training mode only while a trainable tower trains."""
    module = model.visual if tower == "image" else model

    def encode(x: torch.Tensor, train: bool) -> torch.Tensor:
        module.train(train and trainable)
        return model.encode_image(x) if tower == "image" else model.encode_text(x)

    return encode


def probe(encode, params: list[nn.Parameter], train: tuple, test: tuple, dim: int, classes: int, steps: int,
          batch: int, lr: float, seed: int) -> dict[int, float]:
    """Train a linear head (and ``params``) on ``train``; held-out accuracy (%) every 100 steps and at the end."""
    torch.manual_seed(seed)
    head = nn.Linear(dim, classes)
    opt = torch.optim.AdamW(list(head.parameters()) + params, lr=lr)
    x, y = train
    curve = {}
    for step in range(1, steps + 1):
        idx = torch.randint(len(y), (batch,))
        with torch.set_grad_enabled(bool(params)):
            feats = encode(x[idx], train=True)
        loss = nn.functional.cross_entropy(head(feats), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps:
            with torch.no_grad():
                curve[step] = 100.0 * (head(encode(test[0], train=False)).argmax(1) == test[1]).float().mean().item()
    return curve


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local-dir:PATH or a built-in name (its image size must match)")
    p.add_argument("--towers", nargs="+", default=["image", "text"], choices=["image", "text"])
    p.add_argument("--preset", default="demo")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bundle = load_clip(args.model)
    model = bundle.model
    start = cpu_state(model)  # every probe starts from the checkpoint's weights
    size = model.visual.image_size
    world = World(world_config(args.preset, image_size=size[0] if isinstance(size, tuple) else size))
    renderer = Renderer(world.cfg)
    colours = list(world.cfg.colours)
    results: dict = {}
    for tower in args.towers:
        data = {}
        for split, n in (("train", args.n_train), ("test", args.n_test)):
            exs = scenes(world, split, n, need_caption=tower == "text")
            y = torch.tensor([left_colour(ex, colours) for ex in exs])
            if tower == "image":
                x = torch.stack([bundle.preprocess_val(Image.fromarray(renderer.render(ex.scene))) for ex in exs])
            else:
                x = bundle.tokenizer([ex.text for ex in exs])
            data[split] = (x, y)
        results[tower] = {}
        for mode in ("frozen", "trained"):
            model.load_state_dict(start)
            params = [p for n, p in model.named_parameters()
                      if (n.startswith("visual.") == (tower == "image"))] if mode == "trained" else []
            encode = make_encoder(model, tower, mode == "trained")
            with torch.no_grad():
                dim = encode(data["test"][0][:2], False).shape[1]
            results[tower][mode] = probe(encode, params, data["train"], data["test"], dim, len(colours), args.steps,
                                         args.batch_size, args.lr, args.seed)
            print(f"{tower} tower, {mode}: held-out accuracy by step {results[tower][mode]}", flush=True)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
