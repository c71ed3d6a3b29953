"""One writer per run id, and one warehouse load at a time.

`run_lock` takes an exclusive, non-blocking flock on `data/locks/<run_id>.lock` and writes the
holder (pid, host, command, start time) into it; a second writer of the same run id fails at
once with a UserError naming the holder. The kernel drops a flock when its process exits, so
a crashed or killed holder never leaves a stale lock. `warehouse_lock` serializes warehouse
loads on `data/locks/warehouse.lock`, waiting at most $REFUSALS_WAREHOUSE_LOCK_TIMEOUT
seconds (default 120).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError
from pipeline.paths import DataDir


def _locks(data: DataDir) -> Path:
    d = data.root / "locks"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {h['pid']} on {h['host']} since {h['started_at']} ({h['command']})"
    except (OSError, ValueError, KeyError):
        return "another process"


def _write_holder(f) -> None:
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
    f.flush()


@contextmanager
def run_lock(data: DataDir, run_id: str) -> Iterator[None]:
    path = _locks(data) / f"{run_id}.lock"
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"run {run_id} is in use by {_holder(path)}; wait for it or stop it "
                            f"(lock {path})") from None
        _write_holder(f)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def warehouse_lock(data: DataDir, timeout: float | None = None) -> Iterator[None]:
    if timeout is None:
        timeout = float(os.environ.get("REFUSALS_WAREHOUSE_LOCK_TIMEOUT", "120"))
    path = _locks(data) / "warehouse.lock"
    deadline = time.monotonic() + timeout
    with open(path, "a+", encoding="utf-8") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UserError(f"the warehouse {data.warehouse} is being loaded by {_holder(path)}; "
                                    f"gave up after {timeout:g} s (REFUSALS_WAREHOUSE_LOCK_TIMEOUT)") from None
                time.sleep(0.2)
        _write_holder(f)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
