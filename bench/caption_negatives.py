"""Coverage, throughput and a sample of the rule generator's negatives on real captions (SugarCrepe's positives).

    python bench/caption_negatives.py --sugarcrepe-dir ../shared/data/sugarcrepe
    python bench/caption_negatives.py --sugarcrepe-dir DIR --kinds replace_obj,add_att --k 2 --show 20 --out neg.jsonl
    python bench/caption_negatives.py --negclip-tsv ../shared/data/negclip/valid_neg_clip.tsv

Captions: SugarCrepe's 7,511 positives (4,345 distinct: a caption serves several kinds), or NegCLIP's COCO
captions. Coverage per kind: share of captions with at least one negative of that kind; overall: share with at
least one negative of any requested kind. Throughput: captions/s of the whole rule stage (parse + rules) against
spaCy's own ``nlp.pipe`` parse of the same captions with the same pipes (the ratio is what the rules cost on top of
the parse); the two alternate ``--repeat`` times and the fastest pass of each counts, as the machine may be shared.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from collections import Counter
from pathlib import Path

from clipneg.generators.rules import ALL_KINDS, SUGARCREPE_KINDS, RuleConfig, RuleGenerator

from clipneg.schema import Sample


def load_captions(root: Path) -> list[str]:
    files = sorted(root.glob("*.json"))
    if not files:
        raise SystemExit(f"--sugarcrepe-dir must hold SugarCrepe's *.json files (got: {root})")
    caps = []
    for f in files:
        for item in json.loads(f.read_text(encoding="utf-8")).values():  # keys skip numbers: iterate items
            caps.append(item["caption"])
    return caps


def load_negclip_captions(path: Path) -> list[str]:
    """The positive captions (column ``title``) of NegCLIP's COCO TSV (valid_neg_clip.tsv, train_neg_clip.tsv)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "title" not in rows[0]:
        raise SystemExit(f"--negclip-tsv must be NegCLIP's TSV with a 'title' column (got: {path})")
    return [r["title"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--sugarcrepe-dir", type=Path, help="SugarCrepe's 7 JSONs: their positives")
    src.add_argument("--negclip-tsv", type=Path, help="NegCLIP's COCO TSV: its captions")
    ap.add_argument("--kinds", default=",".join(ALL_KINDS), help="comma-separated kinds (default: all)")
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--show", type=int, default=0, help="print this many random examples per kind")
    ap.add_argument("--out", type=Path, default=None, help="write caption + negatives as JSONL")
    ap.add_argument("--repeat", type=int, default=2, help="timing passes (the fastest counts)")
    args = ap.parse_args()

    caps = (load_captions(args.sugarcrepe_dir) if args.sugarcrepe_dir else load_negclip_captions(args.negclip_tsv))
    caps = caps[: args.limit]
    kinds = tuple(k for k in args.kinds.split(",") if k)
    gen = RuleGenerator(RuleConfig(kinds=kinds, k=args.k, seed=args.seed))
    nlp = gen.nlp
    list(nlp.pipe(caps[:200]))  # warm up
    gen.generate(caps[:50])
    gen.stats = type(gen.stats)()

    # parse-only and whole-stage passes alternate and the fastest of each counts: the machine may be shared
    parse_s = stage_s = float("inf")
    for rep in range(args.repeat):
        t0 = time.perf_counter()
        for _ in nlp.pipe(caps, batch_size=gen.config.batch_size):
            pass
        parse_s = min(parse_s, time.perf_counter() - t0)
        if rep:
            gen.stats = type(gen.stats)()
        samples = [Sample(key=f"s{i}", image=b"x", image_ext="jpg", caption=c) for i, c in enumerate(caps)]
        t0 = time.perf_counter()
        chunk = 1024
        for i in range(0, len(samples), chunk):
            gen(samples[i:i + chunk])
        stage_s = min(stage_s, time.perf_counter() - t0)

    n = len(caps)
    per_kind = Counter()
    any_neg = 0
    for s in samples:
        got = {t.kind for t in s.neg_texts}
        per_kind.update(got)
        any_neg += bool(got)
    print(f"captions: {n}   kinds: {','.join(kinds)}   k: {args.k}   seed: {args.seed}")
    print(f"lexicon: {gen.lexicon.version} ({gen.lexicon.hash})   spaCy: {gen.manifest()['spacy']}")
    print(f"coverage overall: {100 * any_neg / n:.1f}%")
    for k in kinds:
        print(f"  {k:30s} {100 * per_kind[k] / n:5.1f}%")
    sc = [k for k in kinds if k in SUGARCREPE_KINDS]
    if sc:
        print(f"coverage of the SugarCrepe kinds (any): "
              f"{100 * sum(any(t.kind in sc for t in s.neg_texts) for s in samples) / n:.1f}%")
    print(f"throughput: parse only {n / parse_s:.0f} cap/s, rule stage {n / stage_s:.0f} cap/s, "
          f"ratio {parse_s / stage_s:.2f}x")
    stats = gen.stats.to_json()
    print("samples_without:", stats["samples_without"], " extra:", stats["extra"])
    print("rejected:", json.dumps(stats["rejected"], indent=None))
    if args.show:
        rng = random.Random(args.seed)
        for k in kinds:
            pairs = [(s.caption, t.text) for s in samples for t in s.neg_texts if t.kind == k]
            print(f"\n== {k} ({len(pairs)})")
            for c, t in rng.sample(pairs, min(args.show, len(pairs))):
                print(f"  {c.strip()}\n    -> {t}")
    if args.out:
        with args.out.open("w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps({"caption": s.caption, "negatives": [t.to_json() for t in s.neg_texts]}) + "\n")


if __name__ == "__main__":
    main()
