"""The built-in world's vocabulary as a domain lexicon of the rule engine (docs/LEXICON.md).

    from clipneg.generators.rules.world_lexicon import write_world_lexicons
    paths = write_world_lexicons(world_cfg, "runs/demo/lexicon")     # [world_free.json, world.json]
    clipneg generate SRC --out OUT --text rules --lexicon runs/demo/lexicon/world_free.json \\
        --lexicon runs/demo/lexicon/world.json

Two files, merged in this order over the built-in lexicon:

- ``world_free.json`` takes the world's words out of the built-in groups (``remove``): "red" would otherwise be
  replaced by "gold" or "light blue", "small" by "huge", "above" by "under", none of which the world can say or draw.
  A file's ``remove`` applies to every group after that file's groups are merged, so the words are freed in one file
  and given their world groups in the next.
- ``world.json``: shapes as one co-hyponym object group; colours and sizes as the attribute groups ``colour`` and
  ``size`` (the names the rules use for English adjective order: "a large red circle"), applying to the shapes; each
  relation wording family the world uses as one relation group of four phrases, and ``relations.converse`` mapping
  each phrase to its converse ("left of" <-> "right of", "above" <-> "below"), from which the rule engine makes the
  converse paraphrases (generators/rules/paraphrase.py).

Only the wording families the world config uses are listed, so a negative never switches wording family (the world's
own negatives keep the caption's family).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipneg.world.config import WorldConfig
from clipneg.world.vocab import INVERSE, REL_WORDS, SIZES

from .lexicon import BUILTIN

VERSION = "1.0.0"
FREED_GROUPS = ("colour", "size")  # built-in attribute groups whose members are all freed: the world has its own


def world_lexicons(cfg: WorldConfig | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(world_free, world) lexicon data for a world config (default: the full world)."""
    cfg = cfg or WorldConfig()
    families = [REL_WORDS[f] for f in sorted(set(cfg.rel_families))]
    phrases = sorted({p for fam in families for p in fam.values()})
    builtin = json.loads(BUILTIN.read_text())
    freed = {m for g in FREED_GROUPS for m in builtin["attributes"]["groups"][g]["members"]}
    words = set(cfg.shapes) | set(cfg.colours) | set(SIZES) | set(phrases) | {"left", "right", "with"}
    # a synonym of a world word ("under" of "below", "over" of "above") lends it its groups: free the whole set
    for sec in ("objects", "attributes", "relations"):
        for syn in builtin[sec].get("synonyms", []):
            if words & set(syn):
                words |= set(syn)
    free = {"name": "clipneg-world-free", "version": VERSION,
            "about": "Takes the world's words out of the built-in lexicon's groups; merge world.json after it.",
            "remove": sorted(words | freed)}
    converse: dict[str, str] = {}
    for fam in families:
        for rel, phrase in fam.items():
            converse[phrase] = fam[INVERSE[rel]]
    world = {
        "name": "clipneg-world", "version": VERSION,
        "about": "The built-in world's vocabulary (clipneg.world.vocab) for the world config "
                 f"rel_families={list(cfg.rel_families)}: shapes, colours, sizes, relation phrases and converses.",
        # the world's captions name extra objects after the facts: an object is added at the end
        "objects": {"groups": {"world_shapes": {"add": True, "members": list(cfg.shapes)}}, "add_position": "end"},
        "attributes": {"groups": {
            "colour": {"add": True, "applies_to": ["world_shapes"], "members": list(cfg.colours)},
            "size": {"add": True, "applies_to": ["world_shapes"], "members": list(SIZES)}}},
        "relations": {"groups": {f"world_rel_{f}": {"pos": "ADP", "members": list(REL_WORDS[f].values())}
                                 for f in sorted(set(cfg.rel_families))},
                      "converse": dict(sorted(converse.items()))},
    }
    return free, world


def write_world_lexicons(cfg: WorldConfig | None, folder: str | Path) -> list[Path]:
    """Write world_free.json and world.json into ``folder``; the paths in merge order (pass both to --lexicon)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in zip(("world_free.json", "world.json"), world_lexicons(cfg), strict=True):
        path = folder / name
        path.write_text(json.dumps(data, indent=1) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m clipneg.generators.rules.world_lexicon: regenerate lexicon/world*.json
    write_world_lexicons(None, Path(__file__).with_name("lexicon"))
