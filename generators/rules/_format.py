"""Write a lexicon file in the house layout (one line per word list) so diffs of the data stay readable.

    python -m clipneg.generators.rules._format generators/rules/lexicon/en_core.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def dumps(x: Any, ind: int = 0) -> str:
    pad = "  " * ind
    if isinstance(x, dict):
        flat = all(not isinstance(v, (dict, list)) or (isinstance(v, list) and all(isinstance(i, str) for i in v))
                   for v in x.values())
        if flat and len(json.dumps(x)) < 110:
            return json.dumps(x, ensure_ascii=False)
        items = [f"{pad}  {json.dumps(k)}: {dumps(v, ind + 1)}" for k, v in x.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(x, list):
        if all(isinstance(i, str) for i in x):
            return json.dumps(x, ensure_ascii=False)
        return "[\n" + ",\n".join(f"{pad}  {dumps(i, ind + 1)}" for i in x) + "\n" + pad + "]"
    return json.dumps(x, ensure_ascii=False)


def main(paths: list[str]) -> None:
    for path in map(Path, paths):
        data = json.loads(path.read_text(encoding="utf-8"))
        text = dumps(data) + "\n"
        assert json.loads(text) == data
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
