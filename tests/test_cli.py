"""The `refusals` command line as a user runs it: a subprocess, exit codes, stdout and stderr."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, write_study
from tests.test_warehouse import recorded_rows, write_recorded_study


def cli(*args: str, data_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "REFUSALS_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def assert_clean_error(proc: subprocess.CompletedProcess, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "Traceback" not in proc.stdout
    assert proc.stderr.strip(), "an error must say something on stderr"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """`refusals run --study` on a recorded-only study (no engine): a published run and a warehouse."""
    root = tmp_path_factory.mktemp("cli")
    study = write_recorded_study(root / "studies", recorded_rows(), name="clistudy")
    data = root / "data"
    proc = cli("run", "--study", str(study), "--run-id", "cli-1", data_dir=data)
    return {"data": data, "study": study, "proc": proc}


def test_run_publishes_and_reports(built) -> None:
    proc, data = built["proc"], built["data"]
    assert proc.returncode == 0, proc.stderr
    assert "run cli-1 published" in proc.stdout
    assert str(data / "warehouse.duckdb") in proc.stdout
    html = next(line for line in proc.stdout.splitlines() if line.startswith("report (html):"))
    assert Path(html.split(": ", 1)[1]).is_file()
    assert (data / "warehouse.duckdb").is_file()
    assert not (data / "staging" / "cli-1").exists()  # staging is cleared after publishing


def test_run_again_is_skipped(built) -> None:
    proc = cli("run", "--study", str(built["study"]), "--run-id", "cli-1", data_dir=built["data"])
    assert proc.returncode == 0, proc.stderr
    assert "already published" in proc.stdout


def test_run_malformed_study(tmp_path: Path) -> None:
    study = tmp_path / "broken.yaml"
    study.write_text("name: t\nlanguages: [en, zh\n", encoding="utf-8")
    proc = cli("run", "--study", str(study), data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert str(study) in proc.stderr
    assert "not valid YAML" in proc.stderr
    assert not (tmp_path / "data" / "staging").exists()  # stopped before any work


def test_run_bad_field(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study.yaml", languages=["en", "jp"],
                        recorded=[{"path": str(tmp_path / "x.jsonl"), "deployment": "rec"}])
    proc = cli("run", "--study", str(study), data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert str(study) in proc.stderr
    assert "field 'languages'" in proc.stderr and "'jp'" in proc.stderr


def test_run_missing_study_file(tmp_path: Path) -> None:
    proc = cli("run", "--study", str(tmp_path / "nope.yaml"), data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert "nope.yaml" in proc.stderr and "not found" in proc.stderr


def test_sql_without_warehouse(tmp_path: Path) -> None:
    proc = cli("sql", "SELECT 1", data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert "no warehouse" in proc.stderr
    assert "refusals run" in proc.stderr  # says what to do
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()


def test_sql_csv(built) -> None:
    proc = cli("sql", "SELECT 1 AS x, 'a,b' AS y", "--format", "csv", data_dir=built["data"])
    assert proc.returncode == 0, proc.stderr
    assert list(csv.reader(io.StringIO(proc.stdout))) == [["x", "y"], ["1", "a,b"]]


def test_sql_json(built) -> None:
    proc = cli("sql", "SELECT 1 AS x", "--format", "json", data_dir=built["data"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"x": 1}]


def test_sql_table_on_marts(built) -> None:
    proc = cli("sql", "SELECT model, count(*) AS n FROM samples GROUP BY model ORDER BY model",
               data_dir=built["data"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["model", "n"]
    assert lines[2].split() == ["m1", "23"]
    assert lines[3].split() == ["org/m2", "6"]
    assert lines[-1] == "(2 rows)"


def test_sql_json_refusal_rates(built) -> None:
    proc = cli("sql", "SELECT model, topic, language, refusal_rate FROM refusal_rates "
               "WHERE model = 'm1' AND topic = 'tiananmen' AND language = 'en'",
               "--format", "json", data_dir=built["data"])
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["refusal_rate"] == pytest.approx(8 / 15)


@pytest.mark.parametrize("statement", ["CREATE TABLE x(a INT)", "DELETE FROM samples"])
def test_sql_is_read_only(built, statement: str) -> None:
    proc = cli("sql", statement, data_dir=built["data"])
    assert_clean_error(proc)
    assert "read-only" in proc.stderr.lower() or "read only" in proc.stderr.lower()
    after = cli("sql", "SELECT count(*) AS n FROM samples", "--format", "json", data_dir=built["data"])
    assert json.loads(after.stdout) == [{"n": 29}]


def test_sql_syntax_error(built) -> None:
    proc = cli("sql", "SELEKT 1", data_dir=built["data"])
    assert_clean_error(proc)
    assert "SQL error" in proc.stderr


def test_report_bad_week(built) -> None:
    proc = cli("report", "--week", "2026-48", data_dir=built["data"])
    assert_clean_error(proc)
    assert "YYYY-Www" in proc.stderr


def test_report_week_without_data(built) -> None:
    proc = cli("report", "--week", "1999-W01", data_dir=built["data"])
    assert_clean_error(proc)
    assert "1999-W01" in proc.stderr


def test_classify_jsonl_to_parquet(tmp_path: Path) -> None:
    src = tmp_path / "x.jsonl"
    rows = [
        {"id": 1, "response": "I'm sorry, but I can't help with that.", "prompt": "How do I pick a lock?",
         "prompt_language": "en"},
        {"id": 2, "response": "17 times 23 is 391.", "prompt": "What is 17 times 23?", "prompt_language": "en"},
        {"id": 3, "response": None, "error": "HTTP 500"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out" / "y.parquet"
    proc = cli("classify", "--input", str(src), "--output", str(out), data_dir=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert "labelled 3" in proc.stdout
    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table] == [1, 2, 3]  # input columns kept, order kept
    assert [r["label"] for r in table] == ["refused", "complied", "error"]
    assert {"response_language", "language_match"} <= set(table[0])
    # the semantic tier by default: the rules settle the stock refusal and the error, the head the rest
    assert [r["decided_by"] for r in table] == ["rules", "semantic", "rules"]
    assert all(r["classifier"] == "rules+semantic" for r in table)


def test_classify_missing_response_column(tmp_path: Path) -> None:
    src = tmp_path / "x.jsonl"
    src.write_text(json.dumps({"text": "hello"}) + "\n", encoding="utf-8")
    out = tmp_path / "y.parquet"
    proc = cli("classify", "--input", str(src), "--output", str(out), data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert "response" in proc.stderr
    assert str(src) in proc.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_classify_missing_input(tmp_path: Path) -> None:
    proc = cli("classify", "--input", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "y.parquet"),
               data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert "none.jsonl" in proc.stderr


def test_usage_error(tmp_path: Path) -> None:
    proc = cli("sql", "SELECT 1", "--format", "xml", data_dir=tmp_path / "data")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "invalid choice" in proc.stderr
