"""Readers never block writers, and ad hoc SQL is bounded in time, memory, threads and rows.

The warehouse is built into a copy and swapped in with os.replace: a reader (even one in the
middle of a long query) keeps its snapshot while a load completes; `refusals sql` stops a
never-ending recursive CTE, a huge cross join and a memory hog with a clear message."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from pipeline import warehouse as wh
from pipeline.errors import UserError
from pipeline.paths import DataDir
from tests.conftest import REPO
from tests.test_warehouse import publish_run, recorded_rows, write_recorded_study

FOREVER = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"
CROSS = "SELECT count(*) FROM range(100000) a, range(100000) b, range(100000) c"
HOG = "SELECT a.range % 1000 AS k, list(b.range) FROM range(3000) a, range(30000) b GROUP BY 1"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sqlb")
    study = write_recorded_study(root / "studies", recorded_rows(), name="sqlb")
    data = root / "data"
    publish_run(study, data, "s-1")
    wh.build(DataDir(data))
    return {"data": data, "study": study}


def sql(data: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = {**os.environ, "REFUSALS_DATA_DIR": str(data), "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", "sql", *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


def _clean(proc: subprocess.CompletedProcess, words: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and words in proc.stderr, proc.stderr


@pytest.mark.parametrize("query", [FOREVER, CROSS], ids=["recursive-cte", "cross-join"])
def test_time_limit_flag(built, query: str) -> None:
    t0 = time.monotonic()
    proc = sql(built["data"], query, "--timeout", "2")
    assert time.monotonic() - t0 < 30
    _clean(proc, "time limit of 2 s")


def test_time_limit_env(built) -> None:
    t0 = time.monotonic()
    proc = sql(built["data"], FOREVER, env={"REFUSALS_SQL_TIMEOUT": "1.5"})
    assert time.monotonic() - t0 < 30
    _clean(proc, "time limit of 1.5 s")


def test_default_time_limit_is_60_s() -> None:
    assert wh.SQL_TIMEOUT_S == 60 and wh.SQL_MEMORY_LIMIT == "2GB"


def test_memory_limit(built) -> None:
    _clean(sql(built["data"], HOG, "--memory-limit", "100MB", "--timeout", "60"), "memory limit of 100MB")


def test_the_query_cannot_lift_its_bounds(built) -> None:
    for stmt in ("SET memory_limit = '100GB'", "SET threads = 64", "RESET memory_limit", "PRAGMA threads=64"):
        proc = sql(built["data"], stmt)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (stmt, proc.stderr)


def test_settings_are_applied(built) -> None:
    cols, rows = wh.query(DataDir(built["data"]), "SELECT current_setting('threads'), current_setting('memory_limit')",
                          threads=1, memory_limit="300MB")
    assert rows[0][0] == 1 and rows[0][1].replace(" ", "").upper().startswith(("286.1MIB", "300", "286"))


def test_row_cap(built) -> None:
    _clean(sql(built["data"], "SELECT * FROM range(5000)", "--max-rows", "1000"), "more than 1000 rows")


def test_bad_limits_are_user_errors(built) -> None:
    _clean(sql(built["data"], "SELECT 1", "--memory-limit", "lots"), "memory limit")
    _clean(sql(built["data"], "SELECT 1", env={"REFUSALS_SQL_TIMEOUT": "soon"}), "REFUSALS_SQL_TIMEOUT")


def test_a_reader_does_not_block_a_load_and_keeps_its_snapshot(built, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFUSALS_FORCE_REIMPORT", "1")  # the same recorded file, a second run
    data = DataDir(built["data"])
    reader = duckdb.connect(str(data.warehouse), read_only=True)
    before = reader.execute("SELECT count(*) FROM runs").fetchone()[0]
    # a long query in flight while the load runs
    slow = subprocess.Popen([sys.executable, "-m", "pipeline", "sql", FOREVER, "--timeout", "20"], cwd=REPO,
                            env={**os.environ, "REFUSALS_DATA_DIR": str(data.root), "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        publish_run(built["study"], data.root, "s-2")
        t0 = time.monotonic()
        wh.build(data)  # neither the open connection nor the running query holds it up
        assert time.monotonic() - t0 < 15
        assert slow.poll() is None, "the reader should still be running"
        assert reader.execute("SELECT count(*) FROM runs").fetchone()[0] == before  # its snapshot
        # a new reader (another process: DuckDB caches open files per process) sees the new file
        fresh = sql(data.root, "SELECT count(*) AS n FROM runs", "--format", "csv")
        assert fresh.returncode == 0 and fresh.stdout.split() == ["n", str(before + 1)], fresh.stderr
    finally:
        reader.close()
        slow.kill()
        slow.wait()
    assert not list(data.root.glob(".tmp-warehouse-*"))


def test_full_disk_during_build_says_so_and_keeps_the_old_file(built, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFUSALS_FORCE_REIMPORT", "1")  # the same recorded file, a second run
    data = DataDir(built["data"])
    publish_run(built["study"], data.root, "s-disk")
    old = data.warehouse.read_bytes()
    real = wh.execute_file

    def full(con, name, params=None):
        if name == "samples":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(con, name, params)

    monkeypatch.setattr(wh, "execute_file", full)
    with pytest.raises(UserError, match="disk .* is full") as info:
        wh.build(data)
    assert "rollback" not in str(info.value).lower()
    assert data.warehouse.read_bytes() == old
    assert not list(data.root.glob(".tmp-warehouse-*"))
    monkeypatch.undo()
    counts = wh.build(data)  # room again: the pending run is loaded
    assert counts["runs"] >= 2


def test_full_disk_as_duckdb_reports_it(built, monkeypatch: pytest.MonkeyPatch) -> None:
    data = DataDir(built["data"])

    def full(*a, **k):
        raise duckdb.IOException('IO Error: Could not write file ".tmp-warehouse.duckdb": No space left on device')

    monkeypatch.setattr(wh, "build_global", full)
    with pytest.raises(UserError, match="is full"):
        wh.build(data, rebuild=True)


def test_a_killed_build_leaves_nothing_behind(built) -> None:
    data = DataDir(built["data"])
    (data.root / ".tmp-warehouse-deadbeef0000.duckdb").write_bytes(b"half a build")
    (data.root / ".tmp-warehouse-deadbeef0000.duckdb.wal").write_bytes(b"x")
    wh.build(data)
    assert not list(data.root.glob(".tmp-warehouse-*"))
