"""The ``clipneg`` command: one entry point, a subcommand per stage, one module per subcommand in this package.

Each module (``clipneg.commands.<name>``) exposes ``add_arguments(parser)`` and ``run(args) -> int``; this module only
wires them together. The command layer is the only part of clipneg that imports every other part. Command modules
import heavy libraries (torch, open_clip) inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

# (name, one-line help, examples); the module is clipneg.commands.<name>
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("world", "render the built-in synthetic world: training shards with exact negatives + benchmark files",
     "clipneg world --out runs/world --n-train 20000 --image-size 64"),
    ("shard", "convert source pairs (webdataset/img2dataset shards, COCO captions, CSV/TSV/JSONL) to clipneg shards",
     "clipneg shard captions_train2014.json --image-dir coco/train2014 --out shards/coco\n"
     "  clipneg shard pairs.tsv --image-dir images/ --out shards/mine --shard-size 5000"),
    ("generate", "make negative captions (rules, LLM) for source pairs or clipneg shards, with provenance",
     "clipneg generate shards/coco --out shards/coco-neg --text rules --k-text 4"),
    ("inspect", "summarise shards (counts per negative kind) and write an HTML gallery of samples and their negatives",
     "clipneg inspect runs/world/shards --html gallery.html --limit 48"),
    ("eval", "score a model on SugarCrepe, ARO and other benchmarks with the official protocols",
     "clipneg eval sugarcrepe --sugarcrepe-dir data/sugarcrepe --coco-dir data/val2017 "
     "--model ViT-B-32-quickgelu --pretrained openai --out results/"),
    ("report", "tables (markdown, csv) and bar charts from result JSONs",
     "clipneg report results/ --out report/ --baseline ViT-B-32-quickgelu__openai"),
    ("data", "download benchmark data from the official URLs with pinned hashes (needs internet)",
     "clipneg data download sugarcrepe --out data/"),
    ("demo", "the whole loop on the built-in world on a CPU: world -> shards -> train -> eval -> report",
     "clipneg demo --out runs/demo"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipneg",
        description="Hard-negative fine-tuning of CLIP models for compositional understanding.",
        epilog="Run `clipneg COMMAND --help` for the options and examples of each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, example in COMMANDS:
        mod = importlib.import_module(f"{__name__}.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Never reach for a model hub implicitly; real runs name hub models explicitly and have them cached.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
