"""One writer per run id: a second writer fails at once naming the holder; a killed holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.locks import run_lock, warehouse_lock
from pipeline.paths import DataDir
from tests.conftest import REPO

HOLD = """
import sys, time
from pipeline.locks import run_lock, warehouse_lock
from pipeline.paths import DataDir
data = DataDir(__import__('pathlib').Path(sys.argv[1]))
cm = warehouse_lock(data) if sys.argv[2] == '@warehouse' else run_lock(data, sys.argv[2])
with cm:
    print('held', flush=True)
    time.sleep(60)
"""


def _holder(tmp_path: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), name], stdout=subprocess.PIPE, env=env, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_writer_fails_fast_naming_the_holder_and_kill_releases(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    p = _holder(tmp_path, "r1")
    try:
        t0 = time.monotonic()
        with pytest.raises(UserError) as info:
            with run_lock(data, "r1"):
                pass
        assert time.monotonic() - t0 < 2
        assert f"pid {p.pid}" in str(info.value) and "r1" in str(info.value)
        with run_lock(data, "r2"):  # another run id proceeds
            pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with run_lock(data, "r1"):  # the kernel dropped the killed holder's lock
        pass


def test_cli_stage_refuses_without_traceback(tmp_path: Path, capsys) -> None:
    from pipeline.cli import main
    from tests.conftest import write_study

    rec = tmp_path / "rec.jsonl"
    rec.write_text('{"model": "m", "prompt": "Hello?", "response": "Hi.", "language": "en"}\n', encoding="utf-8")
    study = write_study(tmp_path / "s.yaml", recorded=[{"path": str(rec), "deployment": "rec"}])
    p = _holder(tmp_path / "data", "r1")
    try:
        rc = main(["--data-dir", str(tmp_path / "data"), "stage", "prepare", "--study", str(study), "--run-id", "r1"])
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert rc == 2
    err = capsys.readouterr().err
    assert "in use by" in err and f"pid {p.pid}" in err and "Traceback" not in err


def test_warehouse_lock_waits_bounded(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    p = _holder(tmp_path, "@warehouse")
    try:
        t0 = time.monotonic()
        with pytest.raises(UserError, match="REFUSALS_WAREHOUSE_LOCK_TIMEOUT"):
            with warehouse_lock(data, timeout=0.5):
                pass
        assert 0.4 < time.monotonic() - t0 < 5
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with warehouse_lock(data, timeout=1):
        pass
