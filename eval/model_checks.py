"""Checks that run when a model is loaded for evaluation; they return warnings that go into every result JSON.

Two traps from PROTOCOLS.md §4:
- QuickGELU: OpenAI weights were trained with QuickGELU; an OpenAI-derived checkpoint file loaded into a GELU config
  (`ViT-B-32` + file instead of `ViT-B-32-quickgelu`) silently changes every score. clipneg.models enforces a recorded
  activation and warns on file names containing "openai"; here we also warn for any checkpoint file loaded into a GELU
  config of an architecture OpenAI released, and for exports whose provenance names OpenAI weights.
- Leakage: SugarCrepe's images are COCO val2017, which overlap COCO 2014 train/restval. When the training manifest
  of the evaluated model (found beside a local-dir export or its run folder) shows a COCO source that did not drop
  those images, benchmarks on COCO val2017 images get a warning.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

OPENAI_ARCHS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336")
MANIFEST_NAMES = ("manifest.json", "run.json", "config.json", "train_manifest.json")
COCO_VAL2017_BENCHMARKS = ("sugarcrepe", "sugarcrepe-pp")


def quickgelu_warnings(name: str, pretrained: str | None, identity: dict[str, Any]) -> list[str]:
    """Warnings about a likely QuickGELU/GELU mismatch for this model."""
    out = []
    activation = identity.get("activation")
    if activation != "gelu":
        return out
    base = name.split(":", 1)[-1]
    if pretrained and pretrained.lower() == "openai":
        out.append(f"{name} with pretrained='openai' runs GELU but OpenAI weights use QuickGELU: use "
                   f"'{base}-quickgelu' (PROTOCOLS.md §4)")
    elif pretrained and Path(pretrained).is_file() and base in OPENAI_ARCHS:
        record = (identity.get("export") or {})
        if record.get("activation") != "gelu":
            out.append(f"{pretrained} is loaded into {name}, a GELU config of an architecture OpenAI released: if "
                       "this checkpoint was fine-tuned from OpenAI weights (NegCLIP and most hard-negative "
                       f"fine-tunes), evaluate it as '{base}-quickgelu', otherwise scores are silently wrong "
                       "(PROTOCOLS.md §4)")
    export = identity.get("export") or {}
    base_tag = " ".join(str(export.get(k, "")) for k in ("base_model", "base_pretrained", "pretrained", "base"))
    if "openai" in base_tag.lower():
        out.append(f"{name}: its export record names OpenAI base weights ({base_tag.strip()}) but the model runs GELU "
                   "(OpenAI weights use QuickGELU); re-export with the -quickgelu config (PROTOCOLS.md §4)")
    return out


def _candidate_dirs(name: str, pretrained: str | None) -> list[Path]:
    if name.startswith("local-dir:"):
        start = Path(name[len("local-dir:"):])
    elif pretrained and Path(pretrained).exists():
        start = Path(pretrained).parent
    else:
        return []
    start = start.resolve()
    return [start, start.parent, start.parent.parent]


def find_manifests(name: str, pretrained: str | None, identity: dict[str, Any] | None = None
                   ) -> list[tuple[str, Any]]:
    """(where, document) pairs: the export record and the JSON manifests beside the export / its run folder, plus
    shard manifests those documents point at."""
    docs: list[tuple[str, Any]] = []
    if identity and identity.get("export"):
        docs.append(("export record", identity["export"]))
    seen: set[Path] = set()
    for d in _candidate_dirs(name, pretrained):
        for fname in MANIFEST_NAMES:
            p = d / fname
            if p.is_file() and p not in seen and p.name != "open_clip_config.json":
                seen.add(p)
                try:
                    docs.append((str(p), json.loads(p.read_text(encoding="utf-8"))))
                except (OSError, json.JSONDecodeError):
                    continue
    for _, doc in docs:  # shard folders a document names, and theirs (shard -> generate -> train): their manifests
        for s in _strings(doc):
            p = Path(s)
            if len(s) < 512 and "/" in s and not p.suffix:
                m = p / "manifest.json"
                if m.is_file() and m.resolve() not in seen:
                    seen.add(m.resolve())
                    try:
                        docs.append((str(m), json.loads(m.read_text(encoding="utf-8"))))
                    except (OSError, json.JSONDecodeError):
                        continue
    return docs


def _walk(doc: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield f"{path}.{k}" if path else str(k), v
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:1000]):
            yield from _walk(v, f"{path}[{i}]")


def _strings(doc: Any) -> Iterator[str]:
    for _, v in _walk(doc):
        if isinstance(v, str):
            yield v


def _count(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return int(v)
    if isinstance(v, dict):
        for k in ("images", "dropped", "count", "annotations", "n"):
            if isinstance(v.get(k), int | float) and not isinstance(v.get(k), bool):
                return int(v[k])
    return None


def leakage_findings(docs: list[tuple[str, Any]]) -> dict[str, Any]:
    """What the manifests say about COCO val2017 in the training data.

    Looks for a COCO source (a `kind: coco` record, or a captions_*2014/2017 file), dropped counts (fields such as
    `coco_dropped_leakage`, `dropped_val2017`) and overlap counts (`coco_val2017_overlap`, ...)."""
    uses_coco, dropped, overlap, where = False, None, None, []
    for src, doc in docs:
        for key, v in _walk(doc):
            leaf = key.rsplit(".", 1)[-1].lower()
            coco_file = isinstance(v, str) and re.search(r"captions_(train|val)201[47]", v)
            if (leaf == "kind" and v == "coco") or coco_file:
                uses_coco = True
                where.append(src)
            if re.search(r"overlap", leaf) and ("val2017" in leaf or "coco" in leaf or "sugarcrepe" in leaf):
                n = _count(v)
                if n is not None:
                    overlap = (overlap or 0) + n
                    where.append(src)
            elif re.search(r"drop", leaf) and re.search(r"leak|val2017|sugarcrepe", leaf):
                n = _count(v)
                if n is not None:
                    dropped = (dropped or 0) + n
                    where.append(src)
    return {"uses_coco": uses_coco, "dropped": dropped, "overlap": overlap, "sources": sorted(set(where))}


def leakage_warnings(findings: dict[str, Any], benchmark: str) -> list[str]:
    """Warnings for a benchmark whose images are COCO val2017 (SugarCrepe, SugarCrepe++)."""
    if not any(benchmark.startswith(b) for b in COCO_VAL2017_BENCHMARKS):
        return []
    if findings.get("overlap"):
        return [f"the training data overlaps {benchmark}'s COCO val2017 images ({findings['overlap']} records, per "
                f"{', '.join(findings['sources'])}): scores are inflated by leakage; rebuild the shards without "
                "--keep-val2017 (PROTOCOLS.md §4)"]
    if findings.get("uses_coco") and not findings.get("dropped"):
        return [f"the training data includes COCO (per {', '.join(findings['sources'])}) and no val2017/SugarCrepe "
                f"images are recorded as dropped: {benchmark} images may have been seen in training (PROTOCOLS.md §4)"]
    return []
