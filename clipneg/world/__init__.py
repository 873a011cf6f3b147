"""The built-in synthetic world: coloured shapes in spatial relations, with exact captions, exact negatives of every
SugarCrepe kind, exact counterfactual images, held-out compositions, and writers for shards and benchmarks.

    from clipneg.world import World, WorldConfig, Renderer
    world = World(WorldConfig(image_size=64, seed=0))
    ex = world.example("train", 0)          # scene, caption, negatives (each with its counterfactual scene)
    img = Renderer(world.cfg).render(ex.scene)
"""

from __future__ import annotations

from clipneg.schema import SUGARCREPE_KINDS
from clipneg.world.bags import content_bag, meaning_key, same_bag_rate
from clipneg.world.captions import (
    Caption,
    CaptionParseError,
    Description,
    Fact,
    Mention,
    Style,
    parse_caption,
    render_text,
    scene_satisfies,
)
from clipneg.world.config import PRESETS, WorldConfig, world_config
from clipneg.world.export import (
    aro_items,
    example_to_sample,
    export_aro,
    export_benchmarks,
    export_sugarcrepe,
    image_filename,
    write_train_shards,
)
from clipneg.world.generate import Example, World, check_example, sample_scene
from clipneg.world.negatives import Negative, make_negative, make_negatives
from clipneg.world.render import Renderer, encode_image, encode_png
from clipneg.world.scene import Obj, Scene, relation_holds
from clipneg.world.splits import SPLITS, HeldOut, build_heldout, scene_seed

__all__ = [
    "PRESETS", "SPLITS", "SUGARCREPE_KINDS", "Caption", "CaptionParseError", "Description", "Example", "Fact",
    "HeldOut",
    "Mention", "Negative", "Obj", "Renderer", "Scene", "Style", "World", "WorldConfig", "aro_items", "build_heldout",
    "check_example", "content_bag", "encode_image", "encode_png", "example_to_sample", "export_aro",
    "export_benchmarks", "export_sugarcrepe", "image_filename", "make_negative", "make_negatives", "meaning_key",
    "parse_caption", "relation_holds", "render_text", "same_bag_rate", "sample_scene", "scene_seed",
    "scene_satisfies", "world_config", "write_train_shards",
]
