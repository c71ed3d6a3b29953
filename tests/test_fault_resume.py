"""A run finishes what it started: killed (here: an exception, or SIGKILL) at every step
boundary, then resumed, a run ends with the same keys, the same marts and the same report as
an uninterrupted run of the same seeds. `refusals warehouse` loads what a crash left unloaded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline import run as stages
from pipeline.paths import DataDir
from tests.conftest import REPO
from tests.test_warehouse import recorded_rows, write_recorded_study

RUN = "fault-1"
TABLES = ("runs", "prompts", "samples", "labels", "prompt_stats", "prompt_weeks", "refusal_rates", "comparisons",
          "compare_weeks", "compare_languages", "compare_deployments")
VOLATILE = {"validation", "published_at", "started_at", "sampled_at", "labelled_at", "latency_s"}


class Crash(Exception):
    """Stands for a kill: raised where the process would have died."""


def snapshot(data: Path) -> dict:
    """Every warehouse table without its clock columns, sorted, and the report text."""
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    out: dict = {}
    try:
        for t in TABLES:
            cols = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "AND data_type NOT LIKE 'TIMESTAMP%' ORDER BY ordinal_position", [t]).fetchall()]
            cols = [c for c in cols if c not in VOLATILE]
            sel = ", ".join(f'"{c}"' for c in cols)
            rows = con.execute(f'SELECT {sel} FROM "{t}" ORDER BY ALL').fetchall()
            # DuckDB's parallel sums differ in the last bits between two identical builds
            out[t] = [tuple(round(v, 12) if isinstance(v, float) else v for v in r) for r in rows]
    finally:
        con.close()
    reports = sorted((data / "reports").glob("*/report.md"))
    assert len(reports) == 1, reports
    out["report.md"] = _stable(reports[0].read_text(encoding="utf-8"))
    return out


def _stable(text: str) -> str:
    # the report states when it was generated and when the run was published
    return re.sub(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(\+00:00|Z| UTC)?", "<time>", text)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_recorded_study(tmp_path_factory.mktemp("fault") / "studies", recorded_rows(), name="fault",
                                force_reimport=True)  # several runs of one file, on purpose


@pytest.fixture(scope="module")
def reference(study: Path, tmp_path_factory) -> dict:
    data = tmp_path_factory.mktemp("ref") / "data"
    result = stages.run_all(study, RUN, data)
    assert set(stages._steps(DataDir(data), RUN)) == set(stages.STEPS)
    assert not result.get("skipped")
    return snapshot(data)


# (step, before): crash right after the step's work, before (True) or after (False) it is recorded
BOUNDARIES = [(s, b) for s in stages.STEPS for b in (True, False)]


@pytest.mark.parametrize("step,before", BOUNDARIES, ids=[f"{s}-{'unrecorded' if b else 'recorded'}"
                                                          for s, b in BOUNDARIES])
def test_crash_at_step_boundary_then_resume(step: str, before: bool, study: Path, reference: dict,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    real = stages.mark_step

    def crashing(d, run_id, s, **extra):
        if s == step and before:
            raise Crash(s)
        real(d, run_id, s, **extra)
        if s == step:
            raise Crash(s)

    monkeypatch.setattr(stages, "mark_step", crashing)
    with pytest.raises(Crash):
        stages.run_all(study, RUN, data)
    monkeypatch.setattr(stages, "mark_step", real)

    result = stages.run_all(study, RUN, data)
    if step == "reported" and not before:
        assert result.get("skipped")  # every step was recorded: nothing left to do
    else:
        assert not result.get("skipped"), f"a run crashed at {step} was not finished"
    assert set(stages._steps(DataDir(data), RUN)) == set(stages.STEPS)
    assert not (data / "staging" / RUN).exists()
    assert snapshot(data) == reference
    assert stages.run_all(study, RUN, data).get("skipped")  # and now it is finished


def test_crash_inside_publish_after_the_lake_record(study: Path, reference: dict, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the lake's run row was written but before the run record moved: the lake
    says published, staging still holds the run; the resume settles it and carries on."""
    data = tmp_path / "data"

    def crash(ctx, counts=None):
        raise Crash("publish")

    monkeypatch.setattr(stages, "_finish_publish", crash)
    with pytest.raises(Crash):
        stages.run_all(study, RUN, data)
    monkeypatch.undo()
    assert stages.is_published(DataDir(data), RUN) and (data / "staging" / RUN).exists()
    stages.run_all(study, RUN, data)
    assert snapshot(data) == reference


def test_warehouse_loads_every_published_run_not_loaded(study: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs published while the warehouse step failed (a lock, a full disk): `refusals
    warehouse` loads both and records the step."""
    data = tmp_path / "data"

    def no_warehouse(ctx):
        raise Crash("warehouse")

    monkeypatch.setattr(stages, "warehouse", no_warehouse)
    for run_id in ("a-1", "a-2"):
        with pytest.raises(Crash):
            stages.run_all(study, run_id, data)
    monkeypatch.undo()
    assert not (data / "warehouse.duckdb").exists()
    env = {**os.environ, "REFUSALS_DATA_DIR": str(data), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "warehouse"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    assert sorted(r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()) == ["a-1", "a-2"]
    con.close()
    for run_id in ("a-1", "a-2"):
        assert "loaded" in stages._steps(DataDir(data), run_id)


KILLER = """
import os, sys
from pipeline import run as stages
real = stages.mark_step
def mark(d, run_id, s, **extra):
    real(d, run_id, s, **extra)
    if s == sys.argv[1]:
        os._exit(137)  # SIGKILL-like: no cleanup, no finally
stages.mark_step = mark
from pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("step", ["published", "loaded"])
def test_cli_killed_after_step_is_finished_by_the_resume(step: str, study: Path, reference: dict,
                                                         tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "REFUSALS_DATA_DIR": str(data), "PYTHONPATH": str(REPO)}
    args = ["run", "--study", str(study), "--run-id", RUN]
    killed = subprocess.run([sys.executable, "-c", KILLER, step, *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr
    again = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" not in again.stdout and f"run {RUN} published" in again.stdout
    assert snapshot(data) == reference


def test_warehouse_lock_conflict_waits_then_the_resume_finishes(study: Path, reference: dict, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Another load holds the warehouse past the bounded wait: the run is published, stops with
    a clear message naming the holder and the setting, and a resume loads and reports it."""
    import signal

    from pipeline.errors import UserError
    from tests.test_locks import _holder

    data = tmp_path / "data"
    monkeypatch.setenv("REFUSALS_WAREHOUSE_LOCK_TIMEOUT", "1")
    holder = _holder(data, "@warehouse")
    try:
        with pytest.raises(UserError, match="REFUSALS_WAREHOUSE_LOCK_TIMEOUT") as info:
            stages.run_all(study, RUN, data)
        assert f"pid {holder.pid}" in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    steps = stages._steps(DataDir(data), RUN)
    assert "published" in steps and "loaded" not in steps
    assert not stages.run_all(study, RUN, data).get("skipped")
    assert snapshot(data) == reference
