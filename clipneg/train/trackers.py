"""Where training metrics go: a JSONL file in the run folder always, TensorBoard and W&B through Accelerate when
they are installed (and, for W&B, configured).

The JSONL log is the dependable record (tests and bench scripts read it; it needs nothing installed): one JSON object
per line, ``{"step": int, "time": float, ...values}``, plus a first line ``{"config": {...}}``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

log = logging.getLogger(__name__)

KNOWN = ("auto", "jsonl", "tensorboard", "wandb")


class JSONLTracker(GeneralTracker):
    """An Accelerate tracker that appends one JSON line per ``accelerator.log`` call (main process only)."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self) -> Path:
        return self.path

    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def store_init_configuration(self, values: dict) -> None:
        self._write({"config": values, "time": time.time()})

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self._write({"step": step, "time": time.time(), **values})


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_trackers(names: tuple[str, ...] | list[str], run_dir: Path) -> list[Any]:
    """The ``log_with`` list for ``Accelerator``: JSONL always, plus the requested (or, for "auto", available) ones.

    "auto" adds TensorBoard when ``tensorboard`` is importable, and W&B when ``wandb`` is importable and configured
    (WANDB_API_KEY or WANDB_MODE set), because an unconfigured W&B stops a headless job at a login prompt.
    Naming a tracker that is not installed is an error, not a silent skip.
    """
    unknown = set(names) - set(KNOWN)
    if unknown:
        raise ValueError(f"run.trackers: unknown {sorted(unknown)}; choose from {KNOWN}")
    out: list[Any] = [JSONLTracker(run_dir / "log.jsonl")]
    want_tb = "tensorboard" in names or ("auto" in names and (_installed("tensorboard") or _installed("tensorboardX")))
    wandb_configured = bool(os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"))
    want_wb = "wandb" in names or ("auto" in names and _installed("wandb") and wandb_configured)
    for name, wanted, module in (("tensorboard", want_tb, "tensorboard"), ("wandb", want_wb, "wandb")):
        if not wanted:
            continue
        if name in names and not (_installed(module) or (name == "tensorboard" and _installed("tensorboardX"))):
            raise ValueError(f"run.trackers names {name} but it is not installed: pip install {module}")
        out.append(name)
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The step records of a run's log.jsonl (the config line left out)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if "config" not in r]
