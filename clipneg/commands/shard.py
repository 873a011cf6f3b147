"""``clipneg shard``: source pairs -> validated clipneg shards (no negatives yet), resumable, with a quarantine.

Given clipneg shards (``--kind clipneg``, found automatically from their manifest.json), the samples are rewritten
with the negatives they already carry.
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a COCO captions .json, a .csv/.tsv/.jsonl table, or tar shards "
                                  "(folder, file, or brace pattern like 'data/{00000..00009}.tar'); "
                                  "clipneg shards keep their negatives")
    p.add_argument("--out", required=True, help="output folder for the shards")
    p.add_argument("--kind", choices=["auto", "wds", "clipneg", "coco", "table"], default="auto",
                   help="source format (auto: by suffix; a folder with clipneg's manifest.json is clipneg)")
    p.add_argument("--image-dir", help="folder the COCO JSON / table image paths are relative to")
    p.add_argument("--image-col", help="table column with the image path (default: image|filepath|file_name|path)")
    p.add_argument("--caption-col", help="table column with the caption (default: caption|title|text)")
    p.add_argument("--key-col", help="table column with a stable sample key (default: row number)")
    p.add_argument("--keep-val2017", action="store_true",
                   help="COCO: keep SugarCrepe's val2017 images (they are dropped by default to avoid leakage)")
    p.add_argument("--exclude-ids", help="COCO: file of image ids to drop instead (a COCO JSON such as "
                                         "captions_val2017.json drops all of val2017)")
    p.add_argument("--duplicates", choices=["quarantine", "keep"], default="quarantine",
                   help="an input with the same image and caption as an earlier one: quarantine it (default), or "
                        "keep both; either way the manifest's info counts them")
    p.add_argument("--shard-size", type=int, default=1000, help="inputs per shard (default 1000)")
    p.add_argument("--prefix", default="train", help="shard file prefix (default train)")


def run(args: argparse.Namespace) -> int:
    from clipneg.shards import write_shards
    from clipneg.sources import (
        CocoStats,
        DuplicateStats,
        filter_duplicates,
        guess_source_kind,
        load_exclude_ids,
        open_source,
        record_to_sample,
    )

    kind = guess_source_kind(args.source) if args.kind == "auto" else args.kind
    kw: dict = {}
    stats = CocoStats()
    if kind == "coco":
        kw["stats"] = stats
        if args.keep_val2017:
            kw["drop_ids"] = set()
        elif args.exclude_ids:
            kw["drop_ids"] = load_exclude_ids(args.exclude_ids)
    elif kind == "table":
        kw.update(image_col=args.image_col, caption_col=args.caption_col, key_col=args.key_col)
    duplicates = DuplicateStats()
    items = filter_duplicates(open_source(kind, args.source, image_dir=args.image_dir, **kw),
                              policy=args.duplicates, stats=duplicates)

    info = {"source": {"kind": kind, "path": args.source, "image_dir": args.image_dir}, "generators": []}

    def items_then_stats():
        yield from items
        # known only once the source is exhausted
        info["source"]["duplicates"] = {"policy": duplicates.policy, "found": duplicates.found}
        if kind == "coco":
            info["source"]["coco_dropped_leakage"] = {"annotations": stats.dropped_leakage,
                                                      "images": len(stats.dropped_images)}

    manifest = write_shards(items_then_stats(), args.out, process=record_to_sample, shard_size=args.shard_size,
                            prefix=args.prefix, info=info)
    if duplicates.found:
        log.warning("%d inputs repeat an earlier image and caption (%s)", duplicates.found,
                    "quarantined" if duplicates.policy == "quarantine" else "kept, as --duplicates keep asks")
    if kind == "coco":
        log.info("dropped %d captions of %d SugarCrepe/val2017 images (benchmark leakage)", stats.dropped_leakage,
                 len(stats.dropped_images))
    print(json.dumps(manifest["counts"]))
    return 0
