"""An on-disk cache of LLM completions, so a rerun (or a resumed run) sends no request it already made.

One SQLite file (``<cache_dir>/llm_cache.sqlite``, WAL journal, so several processes of one ``accelerate launch``
can share it on a local disk). The key is a hash of everything that determines the reply: backend kind, model id,
template sha256, caption, kind, seed and the sampling parameters (not the base URL: the same model behind another
host or port gives the same replies); those parts are stored beside the value for inspection. Only completions that
came back are cached: a request that failed is asked again next time. The value holds the reply text, finish reason
and token counts, never request headers, so no secret can reach the file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .backends import Completion

FILENAME = "llm_cache.sqlite"


def cache_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(parts), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CompletionCache:
    def __init__(self, cache_dir: str | Path) -> None:
        self.path = Path(cache_dir) / FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, parts TEXT NOT NULL, "
                         "value TEXT NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
            part = unique[start:start + 500]
            rows = self._db.execute(f"SELECT key, value FROM completions WHERE key IN ({','.join('?' * len(part))})",
                                    part)
            found.update((k, Completion.from_json(json.loads(v))) for k, v in rows)
        return found

    def put_many(self, items: Iterable[tuple[str, Mapping[str, Any], Completion]]) -> None:
        rows = [(key, json.dumps(dict(parts), sort_keys=True), json.dumps(c.to_json()))
                for key, parts, c in items if c.error is None]
        if rows:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO completions (key, parts, value) VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        self._db.close()
