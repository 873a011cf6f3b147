"""The dependency rule of ARCHITECTURE.md, checked on every import statement (top-level and inside functions).

Layers: the core (clipneg's top-level modules and clipneg.text) imports none of the others; the world, generators,
eval and the training runtime build on the core (generators never read benchmarks: no eval); only the command layer
(clipneg.commands) knows every part.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name of each source folder (generators/ and eval/ are installed as clipneg.generators and clipneg.eval)
FOLDERS = {"clipneg": ROOT / "clipneg", "clipneg.generators": ROOT / "generators", "clipneg.eval": ROOT / "eval"}
LAYERS = ("commands", "train", "eval", "generators", "world", "text", "core")
# layer -> layers it may import besides itself
ALLOWED = {
    "core": set(),
    "text": {"core"},
    "world": {"core", "text"},
    "generators": {"core", "text", "world"},
    "eval": {"core", "text"},
    "train": {"core", "text", "eval"},  # in-training scores go through clipneg.eval's own code
    "commands": set(LAYERS),
}


def layer_of(module: str) -> str | None:
    if module != "clipneg" and not module.startswith("clipneg."):
        return None
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def modules() -> list[tuple[str, Path]]:
    out = []
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([package, *parts]), path))
    return out


def imports_of(module: str, path: Path) -> set[str]:
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from clipneg import train` names a layer too
            found.update(f"{target}.{a.name}" for a in node.names if target == "clipneg")
    return found


def test_every_layer_is_found() -> None:
    seen = {layer_of(m) for m, _ in modules()}
    assert {"core", "text", "world", "generators", "eval", "train", "commands"} <= seen


@pytest.mark.parametrize(("module", "path"), modules(), ids=lambda x: x if isinstance(x, str) else "")
def test_imports_point_one_way(module: str, path: Path) -> None:
    mine = layer_of(module)
    bad = sorted(imp for imp in imports_of(module, path)
                 if (other := layer_of(imp)) not in (None, mine) and other not in ALLOWED[mine])
    assert not bad, f"{module} ({mine}) imports {bad}; allowed: {sorted(ALLOWED[mine])} (ARCHITECTURE.md)"


def test_train_script_is_not_imported_by_the_library() -> None:
    for module, path in modules():
        assert "train" not in imports_of(module, path), module


def test_every_package_is_in_the_wheel() -> None:
    # A subpackage missing from pyproject's explicit list installs editable but not from the wheel.
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module for module, path in modules() if path.name == "__init__.py"}
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
