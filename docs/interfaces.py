"""Write docs/INTERFACES.md from the code: each public module's summary and its public names with their signatures.

    python docs/interfaces.py            # rewrite docs/INTERFACES.md
    python docs/interfaces.py --check    # exit 1 if it is out of date (the test suite runs this)

The page is generated so it cannot drift from the code: change a docstring or a signature, then rerun this.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "INTERFACES.md"

# (section title, modules) in reading order: the core, then each layer that builds on it
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Core: contracts, sources, shards, models, shared encoder and text", (
        "clipneg.schema", "clipneg.sources", "clipneg.shards", "clipneg.tars", "clipneg.models", "clipneg.encoder",
        "clipneg.text.nlp", "clipneg.text.order")),
    ("Generators (clipneg.generators)", (
        "clipneg.generators.base", "clipneg.generators.pipeline", "clipneg.generators.rules",
        "clipneg.generators.llm", "clipneg.generators.images")),
    ("Training runtime (clipneg.train, used by train.py)", (
        "clipneg.train.config", "clipneg.train.data", "clipneg.train.losses", "clipneg.train.task",
        "clipneg.train.backends", "clipneg.train.checkpoints", "clipneg.train.export", "clipneg.train.evaluation")),
    ("Evaluation (clipneg.eval)", ("clipneg.eval.items", "clipneg.eval.scorer", "clipneg.eval.registry")),
)


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _public(module: object) -> list[tuple[str, object]]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    out = []
    for name in names:
        obj = getattr(module, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "") .startswith(
                module.__name__):
            out.append((name, obj))
    return out


def _class_lines(name: str, cls: type) -> list[str]:
    if dataclasses.is_dataclass(cls):
        fields = ", ".join(f.name for f in dataclasses.fields(cls))
        head = f"@dataclass {name}({fields})"
    else:
        bases = [b.__name__ for b in cls.__bases__ if b is not object]
        head = f"class {name}" + (f"({', '.join(bases)})" if bases else "")
    summary = _summary(cls)
    if summary.startswith(f"{cls.__name__}("):  # the dataclass's generated docstring repeats the fields
        summary = ""
    lines = [head + (f"  # {summary}" if summary else "")]
    for attr, member in vars(cls).items():
        if attr.startswith("_") and attr != "__call__":
            continue
        if inspect.isfunction(member):
            lines.append(f"    {attr}{_signature(member)}")
    return lines


def render() -> str:
    parts = ["# Interfaces", "",
             "Generated from the code by `python docs/interfaces.py`; do not edit by hand. ARCHITECTURE.md gives the "
             "on-disk shard sample and the in-memory batch; this page gives the Python API by layer.", ""]
    for title, modules in SECTIONS:
        parts += [f"## {title}", ""]
        for name in modules:
            module = importlib.import_module(name)
            parts += [f"### {name}", "", _summary(module), "", "```python"]
            for attr, obj in _public(module):
                if inspect.isclass(obj):
                    parts += _class_lines(attr, obj)
                else:
                    parts.append(f"def {attr}{_signature(obj)}")
            parts += ["```", ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/INTERFACES.md is out of date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/interfaces.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
