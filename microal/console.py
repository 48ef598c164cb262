"""What the terminal shows: microal's own lines. Everything else a run produces (Ray's logs, its
workers' other output) goes to a log file, shown on the terminal too with `--verbose`.

Training loops run in Ray worker processes, whose output Ray streams to the driver. A loop's
lines for people are said with `say()`, which marks them in a worker; the driver
(microal.backend.ray) prints marked lines without Ray's prefix and logs the rest.
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import datetime
from pathlib import Path

MARK = "[microal] "  # a worker's line for the terminal
_lock = threading.Lock()
_state: dict = {"verbose": False, "log": None, "pending": []}


def in_ray_worker() -> bool:
    return "RAY_RAYLET_PID" in os.environ  # set by Ray in every worker process it starts


def say(text: str) -> None:
    """A line for people: printed here, or marked for the driver to print when in a Ray worker."""
    print(f"{MARK}{text}" if in_ray_worker() else text, flush=True)


def configure(verbose: bool = False, log_file: str | Path | None = None) -> None:
    """Verbose: show Ray's lines as well. Log file: where they go (lines logged before it is
    known are kept and written once it is)."""
    with _lock:
        _state["verbose"] = verbose
        if log_file is not None:
            _state["log"] = Path(log_file)
            pending, _state["pending"] = _state["pending"], []
    if log_file is not None and pending:
        log_lines(pending)


def verbose() -> bool:
    return bool(_state["verbose"])


def log_file() -> Path | None:
    return _state["log"]


def log_lines(lines: list[str]) -> None:
    """Append lines to the log file (kept in memory until one is configured)."""
    with _lock:
        path = _state["log"]
        if path is None:
            _state["pending"].extend(lines)
            del _state["pending"][:-10_000]  # a bound, for processes that never name a file
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = f"{datetime.now():%H:%M:%S}"
        with open(path, "a", encoding="utf-8") as handle:
            handle.writelines(f"{stamp} {line.rstrip()}\n" for line in lines)


def show(line: str, error: bool = False) -> None:
    print(line, file=sys.stderr if error else sys.stdout, flush=True)
