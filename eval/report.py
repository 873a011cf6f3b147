"""`clipneg report`: tables (markdown, CSV) and bar charts from result JSONs, one row per model.

Tables follow the published column layouts: SugarCrepe as in the paper (7 subsets, then the REPLACE/SWAP/ADD
micro-averages) plus vl_compo's 7-subset macro mean; ARO as VG-Relation, VG-Attribution, COCO-Order, Flickr30k-Order
(the ARO paper's four numbers); other benchmarks with their own columns. Benchmarks evaluated on a custom folder with
`--name-suffix X` (e.g. the built-in world) get their own table, "SugarCrepe (X)".
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .results import load_results

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Table:
    """A published layout: (benchmark, metric key, column header) triples."""

    title: str
    columns: tuple[tuple[str, str, str], ...]
    note: str = ""


LAYOUTS: dict[str, Table] = {
    "sugarcrepe": Table("SugarCrepe", (
        ("sugarcrepe", "replace_obj", "replace-obj"), ("sugarcrepe", "replace_att", "replace-att"),
        ("sugarcrepe", "replace_rel", "replace-rel"), ("sugarcrepe", "swap_obj", "swap-obj"),
        ("sugarcrepe", "swap_att", "swap-att"), ("sugarcrepe", "add_obj", "add-obj"),
        ("sugarcrepe", "add_att", "add-att"), ("sugarcrepe", "replace", "REPLACE"), ("sugarcrepe", "swap", "SWAP"),
        ("sugarcrepe", "add", "ADD"), ("sugarcrepe", "macro", "macro-7")),
        "accuracy (%); REPLACE/SWAP/ADD are micro-averages (items pooled, the SugarCrepe paper's columns); macro-7 is "
        "the unweighted mean of the 7 subsets (vl_compo's 'sugarcrepe')"),
    "aro": Table("ARO", (
        ("aro-vg-relation", "macro", "VG-Relation"), ("aro-vg-attribution", "macro", "VG-Attribution"),
        ("aro-coco-order", "mean", "COCO-Order"), ("aro-flickr30k-order", "mean", "Flickr30k-Order")),
        "VG-Relation: macro over relations minus 157 symmetric ones; VG-Attribution: macro over attribute pairs with "
        ">= 25 items; Order: precision@1 of the original caption, mean over seeds"),
    "winoground": Table("Winoground", (("winoground", "text", "text"), ("winoground", "image", "image"),
                                       ("winoground", "group", "group"))),
}
BENCH_TO_LAYOUT = {"sugarcrepe": "sugarcrepe", "aro-vg-relation": "aro", "aro-vg-attribution": "aro",
                   "aro-coco-order": "aro", "aro-flickr30k-order": "aro", "winoground": "winoground"}
KNOWN = ("sugarcrepe-pp", "sugarcrepe", "aro-vg-relation", "aro-vg-attribution", "aro-coco-order",
         "aro-flickr30k-order", "winoground", "valse", "zeroshot", "retrieval-coco", "retrieval-flickr30k",
         "retrieval")


@dataclass(frozen=True)
class ReportConfig:
    results_dir: str
    out_dir: str
    baseline: str | None = None
    benchmarks: tuple[str, ...] = ()
    plots: bool = True


@dataclass
class BuiltTable:
    key: str
    title: str
    headers: list[str]
    rows: dict[str, list[float]] = field(default_factory=dict)  # label -> values
    note: str = ""


def split_benchmark(name: str) -> tuple[str, str]:
    """'sugarcrepe-world' -> ('sugarcrepe', 'world'); unknown names are their own base."""
    for base in KNOWN:
        if name == base:
            return base, ""
        if name.startswith(base + "-"):
            return base, name[len(base) + 1:]
    return name, ""


def _value(doc: dict[str, Any], key: str) -> float:
    v = doc["metrics"].get(key)
    return math.nan if v is None else float(v)


def build_tables(docs: list[dict[str, Any]]) -> list[BuiltTable]:
    by_bench: dict[str, dict[str, dict]] = defaultdict(dict)
    for d in docs:
        by_bench[d["benchmark"]][d["label"]] = d
    tables: dict[str, BuiltTable] = {}
    order: list[str] = []
    for bench in sorted(by_bench, key=lambda b: (KNOWN.index(split_benchmark(b)[0])
                                                 if split_benchmark(b)[0] in KNOWN else len(KNOWN), b)):
        base, suffix = split_benchmark(bench)
        layout = LAYOUTS.get(BENCH_TO_LAYOUT.get(base, ""))
        if layout is not None:
            key = BENCH_TO_LAYOUT[base] + (f"-{suffix}" if suffix else "")
            title = layout.title + (f" ({suffix})" if suffix else "")
            if key not in tables:
                tables[key] = BuiltTable(key, title, [c[2] for c in layout.columns], note=layout.note)
                order.append(key)
            t = tables[key]
            for label, d in by_bench[bench].items():
                row = t.rows.setdefault(label, [math.nan] * len(layout.columns))
                for i, (b, metric, _) in enumerate(layout.columns):
                    if b == base:
                        row[i] = _value(d, metric)
        else:
            cols: list[str] = []
            for d in by_bench[bench].values():
                cols += [c for c in d.get("columns") or [d["headline"]] if c not in cols]
            headline = next(iter(by_bench[bench].values()))["headline"]
            if headline not in cols:
                cols.append(headline)
            t = BuiltTable(bench, bench, cols, note=f"headline: {headline}")
            for label, d in by_bench[bench].items():
                t.rows[label] = [_value(d, c) for c in cols]
            tables[bench] = t
            order.append(bench)
    for t in tables.values():
        t.rows = dict(sorted(t.rows.items()))
    return [tables[k] for k in order]


def _fmt(v: float, signed: bool = False) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "table"


def plot_table(t: BuiltTable, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(t.rows)
    n_models, n_cols = len(labels), len(t.headers)
    width = 0.8 / max(n_models, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n_cols * max(1, n_models) * 0.5 + 2), 4.2))
    x = np.arange(n_cols)
    for i, label in enumerate(labels):
        vals = np.array([0.0 if math.isnan(v) else v for v in t.rows[label]])
        ax.bar(x + (i - (n_models - 1) / 2) * width, vals, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(t.headers, rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.set_title(t.title)
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_report(config: ReportConfig) -> list[Path]:
    """Write summary.md, summary.csv (and summary_delta.csv with a baseline) and plots/*.png; return the paths."""
    docs = load_results(config.results_dir)
    if config.benchmarks:
        docs = [d for d in docs if d["benchmark"] in config.benchmarks]
    if not docs:
        raise FileNotFoundError(f"no clipneg result JSONs under {config.results_dir} "
                                "(write some with `clipneg eval ... --out DIR`)")
    labels = sorted({d["label"] for d in docs})
    if config.baseline and config.baseline not in labels:
        raise ValueError(f"--baseline {config.baseline!r} is not among the models: {', '.join(labels)}")
    tables = build_tables(docs)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    # CSV: one row per model, every table's columns side by side.
    flat_headers = [f"{t.title}: {h}" for t in tables for h in t.headers]

    def flat(label: str) -> list[float]:
        return [v for t in tables for v in t.rows.get(label, [math.nan] * len(t.headers))]

    def write_csv(path: Path, rows: dict[str, list[float]], signed: bool = False) -> None:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["model", *flat_headers])
            for label, vals in rows.items():
                w.writerow([label, *["" if math.isnan(v) else (f"{v:+.4f}" if signed else f"{v:.4f}")
                                     for v in vals]])
        written.append(path)

    values = {label: flat(label) for label in labels}
    write_csv(out / "summary.csv", values)
    deltas = None
    if config.baseline:
        base = values[config.baseline]
        deltas = {label: [a - b for a, b in zip(vals, base, strict=True)] for label, vals in values.items()}
        write_csv(out / "summary_delta.csv", deltas, signed=True)

    md = ["# clipneg evaluation report", "",
          f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} from `{config.results_dir}`: "
          f"{len(docs)} result files, {len(labels)} models." + (f" Deltas against `{config.baseline}`."
                                                                 if config.baseline else ""), ""]
    for t in tables:
        md += [f"## {t.title}", ""]
        if t.note:
            md += [t.note, ""]
        md += _md_table(["model", *t.headers], [[label, *[_fmt(v) for v in vals]] for label, vals in t.rows.items()])
        md.append("")
        if config.baseline and config.baseline in t.rows:
            b = t.rows[config.baseline]
            md += [f"Delta against `{config.baseline}`:", ""]
            md += _md_table(["model", *t.headers],
                            [[label, *[_fmt(v - bv, signed=True) for v, bv in zip(vals, b, strict=True)]]
                             for label, vals in t.rows.items() if label != config.baseline])
            md.append("")
        if config.plots and t.rows:
            png = plot_table(t, out / "plots" / f"{_slug(t.key)}.png")
            written.append(png)
            md += [f"![{t.title}](plots/{png.name})", ""]

    md += ["## How each number was computed", ""]
    rows = []
    for d in docs:
        p, data = d.get("protocol", {}), d.get("data", {})
        seeds = p.get("seeds")
        rows.append([d["benchmark"], d["label"], str(p.get("precision", "?")), str(p.get("tie_policy", "?")),
                     " ".join(map(str, seeds)) if seeds else "-",
                     "yes" if p.get("mask_identical") else "-",
                     str(data.get("n_items", data.get("n_captions", data.get("n_images", "?")))),
                     {True: "yes", False: "no"}.get(data.get("official"), "-"),
                     str((d.get("model") or {}).get("activation", "?")),
                     str((d.get("model") or {}).get("weights_sha256", "?"))[:12]])
    md += _md_table(["benchmark", "model", "precision", "ties", "seeds", "masked", "items", "pinned data",
                     "activation", "weights sha256"], rows)
    md.append("")
    warns = [(d["benchmark"], d["label"], w) for d in docs for w in d.get("warnings", [])]
    if warns:
        md += ["## Warnings", ""] + [f"- **{lab}** / {b}: {w}" for b, lab, w in warns] + [""]
    (out / "summary.md").write_text("\n".join(md), encoding="utf-8")
    written.insert(0, out / "summary.md")
    return written
