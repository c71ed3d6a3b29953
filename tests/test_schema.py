"""A self-documenting warehouse (issue 13, item 4): every public table, view and column has a
comment (sql/comments.sql), bookkeeping lives in the `internal` schema, `refusals schema`
prints the comments, and `refusals sql` runs several statements and shows each result."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline import warehouse as wh
from pipeline.paths import DataDir
from tests.conftest import REPO
from tests.test_warehouse import publish_run, recorded_rows, write_recorded_study

PUBLIC = {*wh.PER_RUN, *wh.MARTS, *wh.GLOBAL, *wh.VIEWS, "classifier_confusion"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("schema")
    study = write_recorded_study(root / "studies", recorded_rows(), name="schema")
    data = root / "data"
    publish_run(study, data, "sc-1")
    wh.build(DataDir(data))
    return {"data": data, "study": study, "root": root}


def cli(data: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REFUSALS_DATA_DIR": str(data), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def objects(path: Path) -> tuple[dict, dict]:
    """{name: comment} of the main schema's tables and views, {(table, column): comment}."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        rels = dict(con.execute(
            "SELECT table_name, comment FROM duckdb_tables() WHERE schema_name = 'main' "
            "UNION ALL SELECT view_name, comment FROM duckdb_views() WHERE schema_name = 'main' "
            "AND NOT internal AND NOT temporary").fetchall())
        cols = {(t, c): comment for t, c, comment in con.execute(
            "SELECT table_name, column_name, comment FROM duckdb_columns() WHERE schema_name = 'main' "
            "AND NOT internal").fetchall()}
        return rels, cols
    finally:
        con.close()


def assert_documented(path: Path) -> None:
    rels, cols = objects(path)
    assert PUBLIC <= set(rels), PUBLIC - set(rels)
    assert not [n for n, c in rels.items() if not (c or "").strip()], "tables or views without a comment"
    missing = sorted(f"{t}.{c}" for (t, c), comment in cols.items() if not (comment or "").strip())
    assert not missing, f"columns without a comment (add them to sql/comments.sql): {missing}"


def test_every_public_table_view_and_column_has_a_comment(built) -> None:
    assert_documented(DataDir(built["data"]).warehouse)


def test_comments_survive_every_kind_of_build(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """An incremental load (marts of a week rebuilt, views replaced) and a full rebuild both
    leave every comment in place: the build swaps in a copy and comments.sql runs each time."""
    monkeypatch.setenv("REFUSALS_FORCE_REIMPORT", "1")  # the same recorded file, a second run
    data = DataDir(built["data"])
    publish_run(built["study"], built["data"], "sc-2")
    wh.build(data)
    assert_documented(data.warehouse)
    wh.build(data, rebuild=True)
    assert_documented(data.warehouse)


def test_bookkeeping_is_internal(built) -> None:
    con = duckdb.connect(str(DataDir(built["data"]).warehouse), read_only=True)
    try:
        main = {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()}
        internal = {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'internal'").fetchall()}
    finally:
        con.close()
    assert "warehouse_sql" not in main and main <= PUBLIC, main - PUBLIC
    assert internal == {"sql_fingerprints"}


def test_a_file_with_the_old_bookkeeping_table_is_migrated(built, tmp_path: Path) -> None:
    """A warehouse from before the `internal` schema: its fingerprints move there (so nothing
    is recomputed for nothing) and `main.warehouse_sql` is gone."""
    import shutil

    data = DataDir(tmp_path / "data")
    shutil.copytree(built["data"], data.root)
    con = duckdb.connect(str(data.warehouse))
    con.execute("CREATE TABLE main.warehouse_sql AS SELECT * FROM internal.sql_fingerprints")
    con.execute("DROP TABLE internal.sql_fingerprints")
    con.execute("DROP SCHEMA internal")
    con.close()
    con = duckdb.connect(str(data.warehouse))
    try:
        assert wh.sql_changed(con) == set()  # the old fingerprints were kept
        assert not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'warehouse_sql'").fetchone()[0]
    finally:
        con.close()
    wh.build(data)
    assert_documented(data.warehouse)


def test_comments_sql_names_only_what_exists() -> None:
    """Every COMMENT ON in sql/comments.sql is about a table the build creates (a typo fails the
    build anyway; this says where)."""
    import re

    text = (wh.SQL_DIR / "comments.sql").read_text(encoding="utf-8")
    named = set(re.findall(r"COMMENT ON (?:TABLE|VIEW) (?:main\.)?(\w+) IS", text))
    assert PUBLIC <= named


# ---------------------------------------------------------------- refusals schema

def test_schema_lists_public_tables_with_comments(built) -> None:
    proc = cli(built["data"], "schema")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "kind", "comment"]
    names = {ln.split()[0] for ln in lines[2:-1]}
    assert names == PUBLIC
    assert "internal" not in proc.stdout and "warehouse_sql" not in proc.stdout
    rr = next(ln for ln in lines if ln.startswith("refusal_rates "))
    assert "table" in rr and "main mart" in rr
    assert next(ln for ln in lines if ln.startswith("compare_weeks ")).split()[1] == "view"


def test_schema_of_one_table(built) -> None:
    proc = cli(built["data"], "schema", "refusal_rates")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.splitlines()[0].startswith("refusal_rates (table):")
    row = next(ln for ln in out.splitlines() if ln.startswith("refusal_rate "))
    assert "DOUBLE" in row and "share of valid answers labelled refused, 0-1" in row.lower()
    assert "95% interval lower bound" in next(ln for ln in out.splitlines() if ln.startswith("ci_low "))
    # json: every column, full comments
    cols = json.loads(cli(built["data"], "schema", "refusal_rates", "--format", "json").stdout)
    assert [c["column"] for c in cols][:3] == ["study", "model", "deployment"]
    assert all(c["comment"] for c in cols)


def test_schema_of_a_view_and_unknown_names(built) -> None:
    proc = cli(built["data"], "schema", "compare_languages")
    assert proc.returncode == 0 and "language_a" in proc.stdout, proc.stderr
    for name in ("nope", "sql_fingerprints", "internal.sql_fingerprints", "duckdb_tables"):
        bad = cli(built["data"], "schema", name)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, (name, bad.stderr)
        assert "no public table or view" in bad.stderr and "refusal_rates" in bad.stderr


def test_schema_without_warehouse(tmp_path: Path) -> None:
    proc = cli(tmp_path / "data", "schema")
    assert proc.returncode == 2 and "no warehouse" in proc.stderr


# ---------------------------------------------------------------- refusals sql, several statements

def test_several_statements_each_result_printed(built) -> None:
    proc = cli(built["data"], "sql", "SELECT 1 AS one; SELECT 2 AS two")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "-- statement 1 of 2: SELECT 1 AS one" in out and "-- statement 2 of 2: SELECT 2 AS two" in out
    assert out.splitlines() == ["-- statement 1 of 2: SELECT 1 AS one", "one", "---", "1", "(1 row)", "",
                                "-- statement 2 of 2: SELECT 2 AS two", "two", "---", "2", "(1 row)"]


def test_several_statements_json(built) -> None:
    proc = cli(built["data"], "sql", "SELECT 1 AS x; SELECT 'a;b' AS y", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"statement": "SELECT 1 AS x", "rows": [{"x": 1}]},
                                       {"statement": "SELECT 'a;b' AS y", "rows": [{"y": "a;b"}]}]


def test_several_statements_csv_refused(built) -> None:
    proc = cli(built["data"], "sql", "SELECT 1; SELECT 2", "--format", "csv")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "csv holds one result" in proc.stderr
    assert proc.stdout == ""


def test_temp_table_then_select(built) -> None:
    """A statement without a result (a temporary table, in memory) then a query of it."""
    proc = cli(built["data"], "sql", "CREATE TEMP TABLE t AS SELECT 41 + 1 AS n; SELECT n FROM t",
               "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert list(csv.reader(io.StringIO(proc.stdout))) == [["n"], ["42"]]


@pytest.mark.parametrize("script", ["SELECT 1; DELETE FROM samples", "SELECT 1; CREATE TABLE x(a INT)",
                                    "SELECT 1; SET memory_limit = '100GB'", "SELECT 1; COPY samples TO '/tmp/x.csv'"])
def test_every_statement_is_guarded(built, script: str) -> None:
    proc = cli(built["data"], "sql", script)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "statement 2 of 2" in proc.stderr
    n = cli(built["data"], "sql", "SELECT count(*) AS n FROM samples", "--format", "json")
    assert json.loads(n.stdout)[0]["n"] > 0


def test_time_limit_covers_every_statement(built) -> None:
    forever = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"
    proc = cli(built["data"], "sql", f"SELECT 1; {forever}", "--timeout", "2")
    assert proc.returncode == 2 and "time limit of 2 s" in proc.stderr


def test_row_cap_per_statement(built) -> None:
    proc = cli(built["data"], "sql", "SELECT 1; SELECT * FROM range(5000)", "--max-rows", "1000")
    assert proc.returncode == 2 and "more than 1000 rows" in proc.stderr


# ---------------------------------------------------------------- widths and full values

LONG = "x" * 150


def test_table_cuts_at_60_by_default_and_width_changes_it(built) -> None:
    q = f"SELECT '{LONG}' AS v"
    default = cli(built["data"], "sql", q).stdout.splitlines()[2]
    assert default.rstrip() == "x" * 59 + "…"
    assert cli(built["data"], "sql", q, "--width", "20").stdout.splitlines()[2].rstrip() == "x" * 19 + "…"
    assert cli(built["data"], "sql", q, "--width", "0").stdout.splitlines()[2].rstrip() == LONG
    bad = cli(built["data"], "sql", q, "--width", "-1")
    assert bad.returncode == 2 and "--width" in bad.stderr


def test_csv_and_json_print_full_values(built) -> None:
    q = f"SELECT '{LONG}' AS v, 1/3 AS third"
    (row,) = list(csv.DictReader(io.StringIO(cli(built["data"], "sql", q, "--format", "csv").stdout)))
    assert row["v"] == LONG and float(row["third"]) == pytest.approx(1 / 3, abs=1e-15)
    (obj,) = json.loads(cli(built["data"], "sql", q, "--format", "json").stdout)
    assert obj["v"] == LONG and obj["third"] == pytest.approx(1 / 3, abs=1e-15)
