"""Writers: training shards in the clipneg schema, and benchmarks in the real SugarCrepe and ARO file formats.

The benchmark files are byte-for-byte the formats the official loaders read (see PROTOCOLS.md), so the evaluation
code runs unchanged on the world and on the real benchmarks:

- SugarCrepe: ``{kind}.json`` for the 7 kinds, each a JSON object keyed by string ids, items
  ``{"filename": "000000xxxxxx.jpg", "caption", "negative_caption"}``, images in ``images/``.
- ARO: ``vg_relation.json`` (a list of ``{image_path, bbox_x, bbox_y, bbox_w, bbox_h, true_caption, false_caption,
  relation_name}``) and ``vg_attribution.json`` (the same with ``attributes: [a0, a1]`` instead of
  ``relation_name``), images in ``images/``. The box is the union of the two objects' drawn pixels, because ARO
  crops to it before scoring.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from clipneg.schema import SUGARCREPE_KINDS, NegImage, NegText, Paraphrase, Sample
from clipneg.world.captions import Description, Fact, Mention, scene_satisfies
from clipneg.world.generate import Example, World
from clipneg.world.render import Renderer, encode_image
from clipneg.world.scene import Obj
from clipneg.world.vocab import ARO_RELATION_NAME

GEN = "world"


def example_to_sample(ex: Example, renderer: Renderer, *, negatives: bool = True) -> Sample:
    """One shard sample: PNG positive, caption, scene metadata, and (optionally) every negative with its image."""
    fmt = "png"
    level = renderer.cfg.png_level
    sample = Sample(
        key=ex.key,
        image=encode_image(renderer.render(ex.scene), fmt, png_level=level),
        image_ext=fmt,
        caption=ex.text,
        meta={"gen": GEN, "split": ex.split, "index": ex.index, "seed": ex.seed, "scene": ex.scene.to_json()},
    )
    if negatives:
        if ex.paraphrase is not None:  # shards "with negatives" carry everything the hard-negative terms read
            sample.paraphrases.append(Paraphrase(ex.paraphrase, GEN, ex.seed, ex.paraphrase_negatives))
        for j, neg in enumerate(ex.negatives):
            sample.neg_texts.append(NegText(neg.text, neg.kind, GEN, seed=ex.seed))
            data = encode_image(renderer.render(neg.scene), fmt, png_level=level)
            sample.neg_images.append(NegImage(data, fmt, neg.kind, GEN, seed=ex.seed, text=j))
    return sample


def train_shard_job(world: World, n: int, *, negatives: bool = True, shard_size: int = 1000, split: str = "train",
                    progress: bool = True) -> tuple[range, dict[str, Any]]:
    """The inputs and ``clipneg.shards.write_shards`` arguments that write ``n`` examples of ``split``."""
    renderer = Renderer(world.cfg)
    process = partial(_example_sample, world, renderer, split, negatives)
    return range(n), {"process": process, "shard_size": shard_size, "prefix": split,
                      "info": shard_info(world, split, n, negatives), "progress": progress}


def _example_sample(world: World, renderer: Renderer, split: str, negatives: bool, i: int) -> Sample:
    return example_to_sample(world.example(split, i, negatives=negatives), renderer, negatives=negatives)


def write_train_shards(world: World, out_dir: str | os.PathLike, n: int, *, negatives: bool = True,
                       shard_size: int = 1000, split: str = "train", progress: bool = True, rank: int = 0,
                       world_size: int = 1) -> dict[str, Any] | None:
    """Write ``n`` examples of ``split`` as shards (resumable; see clipneg.shards.write_shards)."""
    from clipneg.shards import write_shards

    items, kwargs = train_shard_job(world, n, negatives=negatives, shard_size=shard_size, split=split,
                                    progress=progress)
    return write_shards(items, out_dir, rank=rank, world_size=world_size, **kwargs)


def shard_info(world: World, split: str, n: int, negatives: bool) -> dict[str, Any]:
    """The ``info`` block of the shards' manifest.json: everything needed to regenerate them."""
    return {"generator": GEN, "world": world.cfg.to_json(), "split": split, "n": n, "negatives": negatives,
            "heldout": world.heldout.to_json()}


def image_filename(index: int, ext: str = "jpg") -> str:
    """COCO-style 12-digit file names, as in SugarCrepe's ``000000085329.jpg`` (ids start at 1, like COCO)."""
    return f"{index + 1:012d}.{ext}"


def _box(renderer: Renderer, objs: Sequence[Obj]) -> dict[str, int]:
    """ARO's bbox fields: the union of the pixels the objects cover, in pixels of the saved image."""
    cover = np.zeros((renderer.size, renderer.size), bool)
    for o in objs:
        cover |= renderer.object_mask(o) > 0
    ys, xs = np.nonzero(cover)
    x, y = int(xs.min()), int(ys.min())
    return {"bbox_x": x, "bbox_y": y, "bbox_w": int(xs.max()) + 1 - x, "bbox_h": int(ys.max()) + 1 - y}


def _mention(o: Obj) -> Mention:
    return Mention(o.shape, o.colour)


def _write_images(examples: Sequence[Example], renderer: Renderer, folder: Path, fmt: str, desc: str,
                  progress: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for ex in tqdm(examples, desc=desc, unit="img", disable=not progress, dynamic_ncols=True):
        path = folder / image_filename(ex.index, fmt)
        path.write_bytes(encode_image(renderer.render(ex.scene), fmt, png_level=renderer.cfg.png_level))


def export_sugarcrepe(examples: Sequence[Example], renderer: Renderer, out_dir: str | os.PathLike, *,
                      image_format: str = "jpg", progress: bool = True) -> dict[str, int]:
    """SugarCrepe's 7 JSON files plus ``images/``; returns the item count per kind."""
    out = Path(out_dir)
    _write_images(examples, renderer, out / "images", image_format, f"sugarcrepe -> {out}", progress)
    files: dict[str, dict[str, dict[str, str]]] = {k: {} for k in SUGARCREPE_KINDS}
    for ex in examples:
        for neg in ex.negatives:
            items = files[neg.kind]
            items[str(len(items))] = {"filename": image_filename(ex.index, image_format), "caption": ex.text,
                                      "negative_caption": neg.text}
    for kind, items in files.items():
        (out / f"{kind}.json").write_text(json.dumps(items, indent=4))
    return {k: len(v) for k, v in files.items()}


def aro_items(ex: Example, renderer: Renderer, filename: str) -> tuple[list[dict], list[dict]]:
    """The VG-Relation items (one per stated fact) and the VG-Attribution item (at most one) of an example.

    Relation items follow ARO's construction: the false caption exchanges the two objects ("the X is left of the Y"
    -> "the Y is left of the X"). The attribution item exchanges two objects' colours ("the red circle and the blue
    square" -> "the blue circle and the red square"), preferring the pair the caption relates. Every false caption
    is checked to be false of the scene.
    """
    objs, binding, desc = ex.scene.objects, ex.caption.binding, ex.caption.desc
    relation, attribution = [], []
    for f in desc.facts:
        a, b = objs[binding[f.a]], objs[binding[f.b]]
        false = Description((_mention(b), _mention(a)), (Fact(0, f.rel, 1),))
        if scene_satisfies(ex.scene, false, strict=False):
            continue
        rel = ARO_RELATION_NAME[f.rel]
        relation.append({"image_path": filename, **_box(renderer, [a, b]),
                         "true_caption": f"the {a.colour} {a.shape} is {rel} the {b.colour} {b.shape}",
                         "false_caption": f"the {b.colour} {b.shape} is {rel} the {a.colour} {a.shape}",
                         "relation_name": rel})
    order = list(dict.fromkeys([*binding[:2], *range(len(objs))]))  # the related pair first
    for i, j in ((i, j) for n, i in enumerate(order) for j in order[n + 1:]):
        a, b = objs[i], objs[j]
        false = Description((Mention(a.shape, b.colour), Mention(b.shape, a.colour)))
        if a.colour == b.colour or a.shape == b.shape or scene_satisfies(ex.scene, false, strict=False):
            continue
        if b.colour < a.colour:
            # ARO's headline averages over attribute pairs "a0_a1" with >= 25 items; a canonical order halves the
            # number of pairs (55 for 11 colours), so about 2,000 test scenes fill every pair.
            a, b = b, a
        attribution.append({"image_path": filename, **_box(renderer, [a, b]),
                            "true_caption": f"the {a.colour} {a.shape} and the {b.colour} {b.shape}",
                            "false_caption": f"the {b.colour} {a.shape} and the {a.colour} {b.shape}",
                            "attributes": [a.colour, b.colour]})
        break
    return relation, attribution


def export_aro(examples: Sequence[Example], renderer: Renderer, out_dir: str | os.PathLike, *,
               image_format: str = "jpg", progress: bool = True) -> dict[str, int]:
    """ARO's ``vg_relation.json`` and ``vg_attribution.json`` plus ``images/``; returns item counts."""
    out = Path(out_dir)
    _write_images(examples, renderer, out / "images", image_format, f"aro -> {out}", progress)
    relation, attribution = [], []
    for ex in examples:
        r, a = aro_items(ex, renderer, image_filename(ex.index, image_format))
        relation += r
        attribution += a
    (out / "vg_relation.json").write_text(json.dumps(relation, indent=1))
    (out / "vg_attribution.json").write_text(json.dumps(attribution, indent=1))
    return {"vg_relation": len(relation), "vg_attribution": len(attribution)}


def export_benchmarks(world: World, out_dir: str | os.PathLike, n: int, *, image_format: str = "jpg",
                      progress: bool = True) -> dict[str, Any]:
    """Seen-composition and held-out benchmarks: out/sugarcrepe, out/aro, out/sugarcrepe_heldout, out/aro_heldout."""
    out = Path(out_dir)
    renderer = Renderer(world.cfg)
    counts: dict[str, Any] = {}
    for split, suffix in (("test", ""), ("test_heldout", "_heldout")):
        examples = list(_progress(world.examples(split, n), n, f"{split} scenes", progress))
        counts[f"sugarcrepe{suffix}"] = export_sugarcrepe(examples, renderer, out / f"sugarcrepe{suffix}",
                                                          image_format=image_format, progress=progress)
        counts[f"aro{suffix}"] = export_aro(examples, renderer, out / f"aro{suffix}", image_format=image_format,
                                            progress=progress)
        counts[f"{split}_kinds"] = dict(Counter(neg.kind for ex in examples for neg in ex.negatives))
    meta = {"generator": GEN, "world": world.cfg.to_json(), "n_per_split": n, "image_format": image_format,
            "heldout": world.heldout.to_json(), "counts": counts}
    (out / "world_benchmark.json").write_text(json.dumps(meta, indent=1))
    return counts


def _progress(it: Iterable[Example], n: int, desc: str, enabled: bool) -> Iterable[Example]:
    return tqdm(it, total=n, desc=desc, unit="scene", disable=not enabled, dynamic_ncols=True)
