"""Stage 6: the warehouse. One DuckDB file built from the lake by the SQL files in `sql/`.

Incremental by run: loading a run deletes and re-inserts only that run's rows in `samples`,
`labels`, `prompts`, `runs` and `prompt_stats`; `refusal_rates` and `comparisons` are then
rebuilt from `prompt_stats` (one row per prompt and run, small), and the `compare_*` views
read `comparisons`. A full rebuild is `refusals warehouse --rebuild`. The statistics macros
of `sql/macros.sql` are stored in the file, so ad hoc SQL can use them too.

Each SQL file is a chain of statements separated by `;` at the end of a line, with named
parameters (`$run_id`, `$files`) bound by DuckDB, never pasted in.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pipeline.lake import parquet_files
from pipeline.paths import REPO_ROOT, DataDir, partition_value

log = logging.getLogger(__name__)

SQL_DIR = REPO_ROOT / "sql"
PER_RUN = ("runs", "prompts", "samples", "labels")  # loaded from the lake, in this order
MARTS = ("prompt_stats",)  # per run, from the tables above
GLOBAL = ("refusal_rates", "comparisons")  # rebuilt from the per-run marts
VIEWS = ("compare_weeks", "compare_languages", "compare_deployments")  # over `comparisons`


def statements(name: str) -> list[str]:
    """The statements of `sql/<name>.sql`, comments kept."""
    text = (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")
    parts = re.split(r";[ \t]*(?:\n|$)", text)
    return [p.strip() for p in parts if re.sub(r"--[^\n]*", "", p).strip()]


def execute_file(con: Any, name: str, params: dict[str, Any] | None = None) -> None:
    """Run `sql/<name>.sql`, binding to each statement the named parameters it uses."""
    params = params or {}
    for stmt in statements(name):
        used = {k: v for k, v in params.items() if re.search(rf"\${k}\b", stmt)}
        con.execute(stmt, used) if used else con.execute(stmt)


def install_macros(con: Any) -> None:
    """The shared statistics macros (Wilson bounds, n_eff, p-values) of `sql/macros.sql`."""
    execute_file(con, "macros")


def build_global(con: Any) -> None:
    """Rebuild the marts over all runs from `prompt_stats`, then the views over them."""
    install_macros(con)
    for name in (*GLOBAL, *VIEWS):
        execute_file(con, name)


def connect(data: DataDir, read_only: bool = False):
    import duckdb

    if read_only and not data.warehouse.exists():
        from pipeline.errors import UserError

        raise UserError(f"{data.warehouse}: no warehouse yet; run `refusals run --study ...` first")
    data.root.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(data.warehouse), read_only=read_only)


def run_files(data: DataDir, dataset: str, run_id: str) -> list[str]:
    """The lake files of one published run of one dataset."""
    base = data.dataset(dataset)
    # partition folders hold the URI-encoded value (lake.hive_path): `a:b` is `run_id=a%3Ab`
    part = f"run_id={partition_value(run_id)}"
    return [str(p) for p in parquet_files(base) if part in p.parts]


def published_runs(data: DataDir) -> list[str]:
    from urllib.parse import unquote

    out = []
    for p in parquet_files(data.dataset("runs")):
        for part in p.parts:
            if part.startswith("run_id="):
                out.append(unquote(part.removeprefix("run_id=")))
    return sorted(set(out))


def load_run(con: Any, data: DataDir, run_id: str) -> None:
    """Load (or reload) one published run and its per-run marts, in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        for name in PER_RUN:
            files = run_files(data, name, run_id)
            if not files:
                raise FileNotFoundError(f"run {run_id}: no {name} files in {data.dataset(name)}")
            execute_file(con, name, {"run_id": run_id, "files": files})
        for name in MARTS:
            execute_file(con, name, {"run_id": run_id})
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def build(data: DataDir, run_ids: list[str] | None = None, rebuild: bool = False) -> dict[str, int]:
    """Load the given runs (default: those not yet loaded; all with `rebuild`) and rebuild
    the global marts. Returns row counts of every table."""
    con = connect(data)
    try:
        if rebuild:
            for name in VIEWS:
                con.execute(f'DROP VIEW IF EXISTS "{name}"')
            for name in (*GLOBAL, *MARTS, *PER_RUN):
                con.execute(f'DROP TABLE IF EXISTS "{name}"')
        install_macros(con)
        for name in PER_RUN + MARTS:
            # create empty tables so that the global marts can always be built
            for stmt in statements(name):
                if re.sub(r"--[^\n]*", "", stmt).lstrip().upper().startswith("CREATE TABLE"):
                    con.execute(stmt)
        loaded = {r[0] for r in con.execute("SELECT DISTINCT run_id FROM runs").fetchall()}
        todo = run_ids if run_ids is not None else [r for r in published_runs(data) if r not in loaded]
        for run_id in todo:
            log.info("warehouse: loading run %s", run_id)
            load_run(con, data, run_id)
        build_global(con)
        counts = {
            name: con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            for name in (*PER_RUN, *MARTS, *GLOBAL, *VIEWS)
        }
        con.execute("CHECKPOINT")
        return counts
    finally:
        con.close()


def query(data: DataDir, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Run one read-only query on the warehouse: (column names, rows)."""
    con = connect(data, read_only=True)
    try:
        # Read-only file, and no reading or writing other files (COPY … TO, read_csv('/etc/…')):
        # ad hoc SQL can look at the warehouse and nothing else.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        cur = con.execute(sql, params or [])
        if cur.description is None:
            return [], []
        cols = [d[0] for d in cur.description]
        return cols, cur.fetchall()
    finally:
        con.close()

