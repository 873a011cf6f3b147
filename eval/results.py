"""One JSON per (model, benchmark): metrics, counts, protocol settings, data hashes, model identity.

Layout (CLIP_benchmark's name-template idea): `<out>/<benchmark>/<label>.json`, per-item predictions beside it as
`<label>.predictions.jsonl` when asked for.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RESULT_SCHEMA = "clipneg.eval.result/v1"


@dataclass
class BenchmarkResult:
    """What a benchmark computed; `write_result` adds model identity and runtime facts.

    metrics: percentages keyed by name; columns: the published column layout (metric keys, in order); headline: the
    single number a summary shows; counts: {metric: {"correct", "total", "ties"}}; details: per-relation / per-seed
    breakdowns; predictions: per-item decisions (written to JSONL only when asked).
    """

    benchmark: str
    metrics: dict[str, float]
    columns: list[str]
    headline: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def summary_line(self) -> str:
        cols = ", ".join(f"{c} {self.metrics[c]:.2f}" for c in self.columns if c in self.metrics)
        return f"{self.benchmark}: {self.headline} = {self.metrics.get(self.headline, math.nan):.2f} ({cols})"


def safe_label(text: str) -> str:
    """A file-name-safe label: 'ViT-B-32-quickgelu/openai' -> 'ViT-B-32-quickgelu__openai'."""
    label = re.sub(r"[/\\:]+", "__", text.strip())
    label = re.sub(r"[^A-Za-z0-9._+=-]+", "_", label).strip("._")
    return label or "model"


def result_path(out_dir: str | Path, benchmark: str, label: str) -> Path:
    return Path(out_dir) / benchmark / f"{safe_label(label)}.json"


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python, tuples -> lists, Paths -> str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj


def write_result(result: BenchmarkResult, out_dir: str | Path, label: str, *, model: dict[str, Any],
                 runtime: dict[str, Any] | None = None, predictions: bool = False,
                 extra_warnings: list[str] | None = None) -> Path:
    """Write `<out>/<benchmark>/<label>.json` (and the predictions JSONL when asked). Returns the JSON path."""
    path = result_path(out_dir, result.benchmark, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    pred_path = None
    if predictions and result.predictions:
        pred_path = path.with_name(path.stem + ".predictions.jsonl")
        with open(pred_path, "w", encoding="utf-8") as f:
            for row in result.predictions:
                f.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")
    doc = {
        "schema": RESULT_SCHEMA,
        "benchmark": result.benchmark,
        "label": safe_label(label),
        "headline": result.headline,
        "columns": result.columns,
        "metrics": result.metrics,
        "counts": result.counts,
        "protocol": result.protocol,
        "data": result.data,
        "model": model,
        "details": result.details,
        "warnings": list(result.warnings) + list(extra_warnings or []),
        "runtime": runtime or {},
        "predictions": pred_path.name if pred_path else None,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(doc), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    logger.info("wrote %s", path)
    return path


def load_result(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("schema") != RESULT_SCHEMA:
        raise ValueError(f"{path} is not a clipneg eval result (schema {doc.get('schema')!r}, want {RESULT_SCHEMA!r})")
    return doc


def load_results(root: str | Path) -> list[dict[str, Any]]:
    """Every result JSON under root (recursively), skipping other JSON files, sorted by (benchmark, label)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"results folder not found: {root} (run `clipneg eval ... --out {root}` first)")
    docs = []
    for p in sorted(root.rglob("*.json")):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            logger.warning("skipping unreadable %s: %s", p, e)
            continue
        if isinstance(doc, dict) and doc.get("schema") == RESULT_SCHEMA:
            doc["_path"] = str(p)
            docs.append(doc)
    return sorted(docs, key=lambda d: (d["benchmark"], d["label"]))
