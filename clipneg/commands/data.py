"""``clipneg data``: download and verify benchmark data from the official URLs with pinned hashes."""

from __future__ import annotations

import argparse
import sys

DATA_EXAMPLES = """examples:
  clipneg data list
  clipneg data download sugarcrepe coco-val2017 --out data/
  clipneg data download aro --out data/          # VG-Relation, VG-Attribution JSONs and images (Google Drive)
  clipneg data verify sugarcrepe --out data/
Downloads resume where they stopped (HTTP Range) and are checked against pinned hashes where one is known; files
without a pinned hash get their sha256 recorded beside them (<file>.sha256).
"""



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clipneg.eval.download import DATASETS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = DATA_EXAMPLES
    parser.add_argument("action", choices=("download", "verify", "list"), help="what to do")
    parser.add_argument("datasets", nargs="*", metavar="NAME",
                        help=f"datasets: {', '.join(DATASETS)} (groups: aro, all-public)")
    parser.add_argument("--out", default="data", help="data root (default data/); eval reads it with --data-root")
    parser.add_argument("--no-extract", action="store_true", help="keep zips, do not unpack them")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network read (default 60)")


def run(args: argparse.Namespace) -> int:
    from clipneg.eval.download import DATASETS, describe, download_dataset, expand_names, verify_dataset

    if args.action == "list":
        print(describe())
        return 0
    if not args.datasets:
        print(f"name at least one dataset: {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    status = 0
    for name in expand_names(args.datasets):
        if args.action == "download":
            download_dataset(name, args.out, extract=not args.no_extract, timeout=args.timeout)
        else:
            problems = verify_dataset(name, args.out)
            for p in problems:
                print(f"{name}: {p}", file=sys.stderr)
            status = status or int(bool(problems))
            if not problems:
                print(f"{name}: ok")
    return status
