"""``clipneg inspect``: what is in a set of shards, as counts and as an HTML gallery people can look at."""

from __future__ import annotations

import argparse
import base64
import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from clipneg.schema import Sample
from clipneg.shards import Quarantined
from clipneg.sources import iter_clipneg_shards

MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", help="shard folder, file, or brace pattern")
    p.add_argument("--html", help="write an HTML gallery here")
    p.add_argument("--limit", type=int, default=48, help="samples shown in the gallery (default 48)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def summarize(spec: str) -> dict[str, Any]:
    n, invalid = 0, []
    text_kinds: Counter = Counter()
    image_kinds: Counter = Counter()
    gens: Counter = Counter()
    with_neg = paraphrases = 0
    # a sample that breaks the schema, or that damage in its shard makes unreadable, comes back Quarantined
    for s in iter_clipneg_shards(spec):
        if isinstance(s, Quarantined):
            invalid.append({"key": s.key, "error": s.reason})
            continue
        n += 1
        with_neg += bool(s.neg_texts or s.neg_images)
        text_kinds.update(t.kind for t in s.neg_texts)
        image_kinds.update(im.kind for im in s.neg_images)
        gens.update(t.gen for t in s.neg_texts)
        gens.update(im.gen for im in s.neg_images)
        paraphrases += len(s.paraphrases)
    return {"samples": n, "samples_with_negatives": with_neg, "paraphrases": paraphrases, "invalid": invalid,
            "neg_text_kinds": dict(sorted(text_kinds.items())), "neg_image_kinds": dict(sorted(image_kinds.items())),
            "generators": dict(sorted(gens.items()))}


def _img(data: bytes, ext: str, title: str = "") -> str:
    src = f"data:{MIME[ext]};base64,{base64.b64encode(data).decode()}"
    return f'<img src="{src}" title="{html.escape(title)}" alt="{html.escape(title)}">'


def _card(s: Sample) -> str:
    e = html.escape
    negs = "".join(
        f'<li><span class="kind">{e(t.kind)}</span> {e(t.text)} <span class="gen">{e(t.gen)}'
        f'{"" if t.score is None else f" {t.score:.3f}"}</span></li>' for t in s.neg_texts)
    imgs = "".join(
        f'<figure>{_img(im.data, im.ext, im.kind)}<figcaption><span class="kind">{e(im.kind)}</span> '
        f'{e(s.neg_texts[im.text].text) if im.text is not None else "(no caption)"}</figcaption></figure>'
        for im in s.neg_images)
    paras = "".join(f'<li><span class="kind">paraphrase</span> {e(p.text)} <span class="gen">{e(p.gen)}</span></li>'
                    + "".join(f'<li><span class="kind">word order</span> {e(n)}</li>' for n in p.negatives)
                    for p in s.paraphrases)
    return (f'<div class="card"><div class="key">{e(s.key)}</div>'
            f'<div class="row"><figure>{_img(s.image, s.image_ext)}'
            f'<figcaption class="pos">{e(s.caption)}</figcaption></figure>{imgs}</div>'
            f'<ul>{paras}{negs or "<li><i>no negative captions</i></li>"}</ul></div>')


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
table{border-collapse:collapse;margin:0 2em 1em 0;display:inline-table;vertical-align:top}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;margin:8px 0}
.row{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:140px}
img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #bbb}
figcaption{font-size:12px}.pos{font-weight:600}.key{font-family:monospace;color:#666;font-size:12px}
.kind{background:#e6eefc;border-radius:3px;padding:0 4px;font-family:monospace;font-size:12px}
.gen{color:#888;font-size:11px}ul{margin:4px 0;padding-left:1.2em;font-size:13px}"""


def _count_table(title: str, counts: dict[str, int]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in counts.items())
    rows = rows or "<tr><td>none</td><td>0</td></tr>"
    return f"<table><tr><th>{html.escape(title)}</th><th>n</th></tr>{rows}</table>"


def write_gallery(spec: str, out: str | Path, *, limit: int = 48, summary: dict[str, Any] | None = None) -> Path:
    summary = summary or summarize(spec)
    cards = []
    for s in iter_clipneg_shards(spec):
        if len(cards) >= limit:
            break
        if isinstance(s, Sample):
            cards.append(_card(s))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>clipneg: {html.escape(str(spec))}</title>"
            f"<style>{STYLE}</style></head><body><h1>clipneg shards</h1><p>{html.escape(str(spec))}: "
            f"{summary['samples']} samples, {summary['samples_with_negatives']} with negatives, "
            f"{summary['paraphrases']} paraphrases, "
            f"{len(summary['invalid'])} invalid.</p>"
            f"{_count_table('negative caption kind', summary['neg_text_kinds'])}"
            f"{_count_table('negative image kind', summary['neg_image_kinds'])}"
            f"{_count_table('generator', summary['generators'])}"
            f"<h2>First {len(cards)} samples</h2>{''.join(cards)}</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def run(args: argparse.Namespace) -> int:
    summary = summarize(args.shards)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{summary['samples']} samples ({summary['samples_with_negatives']} with negatives), "
              f"{len(summary['invalid'])} invalid")
        for title, key in (("negative captions", "neg_text_kinds"), ("negative images", "neg_image_kinds")):
            print(f"{title}: " + (", ".join(f"{k} {v}" for k, v in summary[key].items()) or "none"))
    if args.html:
        print(f"gallery: {write_gallery(args.shards, args.html, limit=args.limit, summary=summary)}")
    return 1 if summary["invalid"] else 0
