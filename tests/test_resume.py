"""Exactly once: a run killed mid-sampling (the driver, or an engine worker) ends, after a
resume, with every sample key present exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_model_spec, write_study

pytestmark = pytest.mark.slow


def _count_keys(data: Path) -> dict:
    q = subprocess.run(
        [sys.executable, "-m", "pipeline", "sql",
         "SELECT count(*) AS n, count(DISTINCT (prompt_id, rep)) AS keys FROM samples", "--format", "json"],
        env={**os.environ, "REFUSALS_DATA_DIR": str(data)}, capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert q.returncode == 0, q.stderr
    return json.loads(q.stdout)[0]


def _chunks(data: Path, run_id: str) -> list[Path]:
    return [p for p in (data / "staging" / run_id / "samples").rglob("chunk-*.parquet")]


def _pids_in_session(sid: int, pattern: str) -> list[int]:
    """Processes of one session (the run was started with start_new_session=True)."""
    out = subprocess.run(["pgrep", "-s", str(sid), "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _study(tmp_path: Path, tiny_model: Path) -> Path:
    # 4 prompts × 10 reps in chunks of 2: twenty chunk files, many chances to die in between
    spec = tiny_model_spec(tiny_model, batch_size=2)
    return write_study(tmp_path / "study.yaml", name="resume", models=[spec], repetitions=10,
                       sampling={"temperature": 0.8, "top_p": 0.95, "max_tokens": 24})


def _start(study: Path, data: Path, run_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--study", str(study), "--run-id", run_id],
        env={**os.environ, "REFUSALS_DATA_DIR": str(data)}, cwd=REPO, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_chunks(data: Path, run_id: str, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(_chunks(data, run_id)) < n:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "sampling did not start in time"
        time.sleep(0.2)


def test_killed_driver_resumes_exactly_once(tmp_path: Path, tiny_model: Path) -> None:
    study, data = _study(tmp_path, tiny_model), tmp_path / "data"
    proc = _start(study, data, "kill-driver")
    _wait_for_chunks(data, "kill-driver", 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-run
    proc.wait(timeout=60)
    time.sleep(2)
    partial = len(_chunks(data, "kill-driver"))
    assert 3 <= partial < 20

    again = _start(study, data, "kill-driver")
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out[-3000:]
    import re

    found = re.findall(r"(\d+) samples to draw \((\d+) already present\)", out)
    assert found, out[-2000:]
    to_draw, present = map(int, found[0])
    assert present == 2 * partial and to_draw == 40 - present  # only what the killed run had not written
    assert _count_keys(data) == {"n": 40, "keys": 40}


def test_killed_engine_worker_is_restarted_and_nothing_is_lost(tmp_path: Path, tiny_model: Path) -> None:
    study, data = _study(tmp_path, tiny_model), tmp_path / "data"
    proc = _start(study, data, "kill-worker")
    _wait_for_chunks(data, "kill-worker", 2, proc)
    workers = _pids_in_session(proc.pid, "ray::VllmEngine")  # this run's engine only
    assert workers, "no engine actor process found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert _count_keys(data) == {"n": 40, "keys": 40}
