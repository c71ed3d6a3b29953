"""Stage 6: the warehouse. One DuckDB file built from the lake by the SQL files in `sql/`.

Incremental by run and week: loading a run deletes and re-inserts only that run's rows in
`samples`, `labels`, `prompts`, `runs` and `prompt_stats`; then `prompt_weeks`,
`refusal_rates` and `comparisons` are rebuilt for the weeks the load touched (and the week
after each, whose week-over-week tests look back at it), and the `compare_*` views read
`comparisons`. A full rebuild is `refusals warehouse --rebuild`. The statistics macros of
`sql/macros.sql` are stored in the file, so ad hoc SQL can use them too.

Each SQL file is a chain of statements separated by `;` at the end of a line, with named
parameters (`$run_id`, `$files`, `$weeks`) bound by DuckDB, never pasted in.

Readers never block writers: a build works on a copy of the file (`.tmp-warehouse-*.duckdb`
beside it) and swaps it in with `os.replace`, so a reader keeps the snapshot it opened and
the next reader sees the new file. `queries` (`refusals sql`) opens it read-only, with a time
limit, a memory limit and a thread cap, and runs each statement of a script in turn.

Self-documenting: `sql/comments.sql` comments every public table, view and column (meaning
and unit), applied after every mart rebuild (`apply_comments`), read by `refusals schema`.
The public objects are the `main` schema; bookkeeping lives in the `internal` schema
(`internal.sql_fingerprints`; a file with the older `main.warehouse_sql` is migrated).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pipeline.lake import parquet_files
from pipeline.paths import DataDir, partition_value, resource_dir

log = logging.getLogger(__name__)

SQL_DIR = resource_dir("sql")
PER_RUN = ("runs", "prompts", "samples", "labels")  # loaded from the lake, in this order
MARTS = ("prompt_stats",)  # per run, from the tables above
GLOBAL = ("prompt_weeks", "refusal_rates", "comparisons")  # per week, from the per-run marts
VIEWS = ("compare_weeks", "compare_languages", "compare_deployments", "compare_models")  # over `comparisons`
# the classifier's confusion matrices (`refusals eval-classifier --json` plus a top-level
# "classifier_version"), read by refusal_rates for the misclassification-corrected rates
CONFUSION_FILE = Path(__file__).resolve().parent / "semantic" / "confusion.json"


def _code(sql: str) -> str:
    """SQL without its `--` comments (the SQL files have no `--` inside strings)."""
    return re.sub(r"--[^\n]*", "", sql)


def statements(name: str) -> list[str]:
    """The statements of `sql/<name>.sql`, comments kept: a statement ends at a line whose
    code (comments aside) ends with `;`."""
    text = (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        current.append(line)
        if _code(line).rstrip().endswith(";"):
            out.append("\n".join(current))
            current = []
    if current:
        out.append("\n".join(current))
    return [s.strip().rstrip(";").rstrip() for s in out if _code(s).strip().rstrip(";").strip()]


def execute_file(con: Any, name: str, params: dict[str, Any] | None = None) -> None:
    """Run `sql/<name>.sql`, binding to each statement the named parameters its code uses."""
    params = params or {}
    for stmt in statements(name):
        used = {k: v for k, v in params.items() if re.search(rf"\${k}\b", _code(stmt))}
        con.execute(stmt, used) if used else con.execute(stmt)


def install_macros(con: Any) -> None:
    """The shared statistics macros (Wilson bounds, n_eff, p-values) of `sql/macros.sql`."""
    execute_file(con, "macros")


def sql_fingerprints() -> dict[str, str]:
    import hashlib

    out = {name: hashlib.sha256((SQL_DIR / f"{name}.sql").read_bytes()).hexdigest()[:16]
           for name in (*PER_RUN, *MARTS, *GLOBAL)}
    out["classifier_confusion"] = confusion_fingerprint()
    return out


def confusion_fingerprint(path=None) -> str:
    """Its SQL and the confusion file's content: a new matrix recomputes the marts."""
    import hashlib

    path = CONFUSION_FILE if path is None else path
    h = hashlib.sha256((SQL_DIR / "classifier_confusion.sql").read_bytes())
    if path.exists():
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def confusion_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (classifier_version, language, gold, predicted, n, ...) of one
    `eval-classifier --json` document with a top-level "classifier_version"."""
    version = doc.get("classifier_version")
    if not version:
        raise ValueError("confusion file: no top-level 'classifier_version'")
    rows = []
    for language, rep in (doc.get("languages") or {}).items():
        for gold, preds in (rep.get("confusion") or {}).items():
            for predicted, n in (preds or {}).items():
                rows.append({"classifier_version": str(version), "language": str(language), "gold": str(gold),
                             "predicted": str(predicted), "n": int(n), "dataset": doc.get("dataset"),
                             "split": doc.get("split"), "classifier": doc.get("classifier")})
    return rows


def load_confusion(con: Any, path=None) -> int:
    """Create `classifier_confusion` and (re)load the matrices of the confusion file, if there
    is one (none: the table stays as it is, empty in a new warehouse, and the corrected rates
    are NULL). Returns the rows loaded."""
    import json

    import pyarrow as pa

    path = CONFUSION_FILE if path is None else path
    create = statements("classifier_confusion")[0]
    con.execute(create)
    if not path.exists():
        return 0
    rows = confusion_rows(json.loads(path.read_text(encoding="utf-8")))
    schema = pa.schema([("classifier_version", pa.string()), ("language", pa.string()), ("gold", pa.string()),
                        ("predicted", pa.string()), ("n", pa.int64()), ("dataset", pa.string()),
                        ("split", pa.string()), ("classifier", pa.string())])
    con.register("confusion_rows", pa.Table.from_pylist(rows, schema=schema))
    try:
        for stmt in statements("classifier_confusion")[1:]:
            params = {"version": rows[0]["classifier_version"]} if "$version" in _code(stmt) else None
            con.execute(stmt, params) if params else con.execute(stmt)
    finally:
        con.unregister("confusion_rows")
    return len(rows)


INTERNAL_SCHEMA = "internal"  # bookkeeping, not for queries: left out of `refusals schema`
FINGERPRINTS = f"{INTERNAL_SCHEMA}.sql_fingerprints"


def ensure_internal(con: Any) -> None:
    """The `internal` schema and its fingerprint table; a file from before it keeps its
    fingerprints, moved out of the public `main.warehouse_sql`."""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {INTERNAL_SCHEMA}")
    con.execute(f"CREATE TABLE IF NOT EXISTS {FINGERPRINTS} (name VARCHAR, fingerprint VARCHAR)")
    legacy = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                         "AND schema_name = 'main' AND table_name = 'warehouse_sql'").fetchone()[0]
    if legacy:
        if not con.execute(f"SELECT count(*) FROM {FINGERPRINTS}").fetchone()[0]:
            con.execute(f"INSERT INTO {FINGERPRINTS} SELECT name, fingerprint FROM main.warehouse_sql")
        con.execute("DROP TABLE main.warehouse_sql")


def sql_changed(con: Any) -> set[str]:
    """Tables whose SQL file differs from the one this warehouse file was built with (all of
    them for a file from before fingerprints were kept, if it has any tables)."""
    ensure_internal(con)
    built = dict(con.execute(f"SELECT name, fingerprint FROM {FINGERPRINTS}").fetchall())
    if not built:
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
        return set(PER_RUN + MARTS + GLOBAL) & tables
    return {name for name, fp in sql_fingerprints().items() if built.get(name) != fp}


def record_sql(con: Any) -> None:
    ensure_internal(con)
    con.execute(f"DELETE FROM {FINGERPRINTS}")
    con.executemany(f"INSERT INTO {FINGERPRINTS} VALUES (?, ?)", list(sql_fingerprints().items()))


def create_tables(con: Any) -> None:
    """Every table, empty, so that marts and views can always be built and queried."""
    for name in PER_RUN + MARTS + GLOBAL:
        for stmt in statements(name):
            if _code(stmt).lstrip().upper().startswith("CREATE TABLE"):
                con.execute(stmt)


def weeks_touched(con: Any, weeks: list[str]) -> list[str]:
    """These weeks and, for each, the next week with a run (its week-over-week tests compare
    with the week before it)."""
    every = [r[0] for r in con.execute("SELECT DISTINCT week FROM runs ORDER BY week").fetchall()]
    out = set(weeks)
    for w in weeks:
        later = [x for x in every if x > w]
        if later:
            out.add(later[0])
    return sorted(out)


def build_global(con: Any, weeks: list[str] | None = None) -> None:
    """Rebuild the per-week marts for `weeks` (default: every week in `prompt_stats`) from
    `prompt_stats`, then the views over them."""
    install_macros(con)
    create_tables(con)
    load_confusion(con)
    if weeks is None:
        weeks = [r[0] for r in con.execute(
            "SELECT DISTINCT week FROM prompt_stats WHERE week IS NOT NULL ORDER BY week").fetchall()]
    if weeks:
        for name in GLOBAL:
            execute_file(con, name, {"weeks": [str(w) for w in weeks]})
    for name in VIEWS:
        execute_file(con, name)
    apply_comments(con)


def apply_comments(con: Any) -> None:
    """The comments of `sql/comments.sql` on every public table, view and column (and the
    internal ones). Run after each mart rebuild: a replaced view or a recreated table has
    lost its comments."""
    ensure_internal(con)
    execute_file(con, "comments")


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
    """The run ids of the lake's run records, read from the files (a long id's folder name is
    bounded, see `partition_value`, so it is not parsed back)."""
    import pyarrow.parquet as pq

    out = set()
    for p in parquet_files(data.dataset("runs")):
        out.update(pq.read_table(p, columns=["run_id"]).column("run_id").to_pylist())
    return sorted(out)


def load_run(con: Any, data: DataDir, run_id: str) -> None:
    """Load (or reload) one published run and its per-run marts, in one transaction."""
    import duckdb

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
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:  # the failure (e.g. a full disk) already ended the transaction
            pass
        raise


def build(data: DataDir, run_ids: list[str] | None = None, rebuild: bool = False) -> dict[str, int]:
    """`_build` with one load at a time (a flock on data/locks/warehouse.lock, bounded wait)."""
    from pipeline.locks import warehouse_lock

    with warehouse_lock(data):
        return _swap_build(data, run_ids, rebuild)


def _disk_full(exc: BaseException) -> bool:
    import errno

    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)


def _swap_build(data: DataDir, run_ids: list[str] | None, rebuild: bool) -> dict[str, int]:
    """Build into a copy of the warehouse file and swap it in atomically (readers keep their
    snapshot; a failed build leaves the old file as it was)."""
    import os
    import shutil
    import uuid

    from pipeline.errors import UserError

    data.root.mkdir(parents=True, exist_ok=True)
    for stale in data.root.glob(".tmp-warehouse-*"):  # left by a killed build (we hold the lock)
        stale.unlink(missing_ok=True)
    tmp = data.root / f".tmp-warehouse-{uuid.uuid4().hex[:12]}.duckdb"
    try:
        if data.warehouse.exists():
            shutil.copyfile(data.warehouse, tmp)
            wal = data.warehouse.with_name(data.warehouse.name + ".wal")
            if wal.exists():  # a file last written in place (before swaps) may hold a WAL
                shutil.copyfile(wal, tmp.with_name(tmp.name + ".wal"))
        counts = _build(data, run_ids, rebuild, path=tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, data.warehouse)
        data.warehouse.with_name(data.warehouse.name + ".wal").unlink(missing_ok=True)
        return counts
    except Exception as exc:
        if _disk_full(exc):
            raise UserError(f"the disk of {data.root} is full: the warehouse build stopped and "
                            f"{data.warehouse} was left as it was ({exc})") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)


def _build(data: DataDir, run_ids: list[str] | None = None, rebuild: bool = False, *, path=None) -> dict[str, int]:
    """Load the given runs (default: those not yet loaded; all with `rebuild`) and rebuild
    the global marts in the DuckDB file `path` (default the warehouse itself). Returns row
    counts of every table."""
    import duckdb

    if path is None:
        con = connect(data)
    else:
        con = duckdb.connect(str(path))
    try:
        if rebuild:
            for name in VIEWS:
                con.execute(f'DROP VIEW IF EXISTS "{name}"')
            for name in (*GLOBAL, *MARTS, *PER_RUN):
                con.execute(f'DROP TABLE IF EXISTS "{name}"')
        install_macros(con)
        stale = sql_changed(con)
        if stale & set(PER_RUN) and not rebuild:
            log.warning("warehouse: the SQL of %s changed since this file was built; rebuilding it from the lake",
                        ", ".join(sorted(stale & set(PER_RUN))))
            con.close()
            return _build(data, rebuild=True, path=path)
        if stale and not rebuild:
            log.warning("warehouse: the SQL of %s changed since this file was built; recomputing the marts",
                        ", ".join(sorted(stale)))
            for name in (*VIEWS,):
                con.execute(f'DROP VIEW IF EXISTS "{name}"')
            for name in (*GLOBAL, *MARTS):
                con.execute(f'DROP TABLE IF EXISTS "{name}"')
        create_tables(con)
        if stale and not rebuild:
            for (run_id,) in con.execute("SELECT DISTINCT run_id FROM runs ORDER BY 1").fetchall():
                for name in MARTS:
                    execute_file(con, name, {"run_id": run_id})
            rebuild_marts = True
        else:
            rebuild_marts = rebuild
        loaded = {r[0] for r in con.execute("SELECT DISTINCT run_id FROM runs").fetchall()}
        todo = run_ids if run_ids is not None else [r for r in published_runs(data) if r not in loaded]
        before = {r[0]: r[1] for r in con.execute("SELECT run_id, week FROM runs").fetchall()}
        for run_id in todo:
            log.info("warehouse: loading run %s", run_id)
            load_run(con, data, run_id)
        after = {r[0]: r[1] for r in con.execute("SELECT run_id, week FROM runs").fetchall()}
        # the weeks of the loaded runs, and a reloaded run's former week
        weeks = {after[r] for r in todo if r in after} | {before[r] for r in todo if r in before}
        build_global(con, None if rebuild_marts else weeks_touched(con, sorted(weeks)))
        record_sql(con)
        counts = {
            name: con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            for name in (*PER_RUN, *MARTS, *GLOBAL, *VIEWS)
        }
        con.execute("CHECKPOINT")
        return counts
    finally:
        con.close()


SQL_TIMEOUT_S = 60.0
SQL_MEMORY_LIMIT = "2GB"
SQL_THREADS = 2
SQL_MAX_ROWS = 1_000_000


def _limit(name: str, value: Any, default: Any, cast: Any) -> Any:
    import os

    raw = value if value is not None else os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError):
        from pipeline.errors import UserError

        raise UserError(f"{name}: not a valid value: {raw!r}") from None


def query(data: DataDir, sql: str, params: list[Any] | None = None, *, timeout: float | None = None,
          memory_limit: str | None = None, threads: int | None = None,
          max_rows: int | None = None) -> tuple[list[str], list[tuple]]:
    """Run one read-only query on the warehouse: (column names, rows); bounded as `queries`.
    Several statements are refused here (use `queries`): never only the last one's result."""
    results = queries(data, sql, params, timeout=timeout, memory_limit=memory_limit, threads=threads,
                      max_rows=max_rows, single=True)
    _, cols, rows = results[0]
    return cols or [], rows or []


# statements whose DuckDB result is a status, not data (CREATE TEMP TABLE … AS returns a count)
NO_RESULT = frozenset({"CREATE", "DROP", "ALTER", "SET", "VARIABLE_SET", "TRANSACTION", "PREPARE",
                       "DEALLOCATE", "LOAD", "ATTACH", "DETACH", "COPY", "CHECKPOINT"})
WRITES = frozenset({"INSERT", "UPDATE", "DELETE"})  # a result only with RETURNING


def split_statements(con: Any, sql: str) -> list[tuple[str, str]]:
    """The statements of `sql` as DuckDB's parser splits them (a `;` inside a string or a
    comment does not split): (text without its final `;`, statement type name)."""
    out = []
    for stmt in con.extract_statements(sql):
        text = stmt.query.strip()
        while text.endswith(";"):
            text = text[:-1].rstrip()
        if text:
            out.append((text, getattr(stmt.type, "name", str(stmt.type))))
    return out


def queries(data: DataDir, sql: str, params: list[Any] | None = None, *, timeout: float | None = None,
            memory_limit: str | None = None, threads: int | None = None, max_rows: int | None = None,
            single: bool = False) -> list[tuple[str, list[str] | None, list[tuple] | None]]:
    """Run each read-only statement of `sql` on the warehouse, in order, on one connection (a
    temporary table made by one is seen by the next): [(statement, column names, rows)], with
    None for a statement without a result (e.g. CREATE TEMP TABLE). `params` only with one
    statement. A failing statement stops the script with a UserError naming it (nothing is
    returned for the others).

    Bounded: `timeout` seconds for the whole script ($REFUSALS_SQL_TIMEOUT, default 60),
    `memory_limit` ($REFUSALS_SQL_MEMORY_LIMIT, default 2GB, nothing spilled to disk),
    `threads` ($REFUSALS_SQL_THREADS, default 2) and `max_rows` rows returned per statement
    ($REFUSALS_SQL_MAX_ROWS, default 1,000,000). A statement that hits a bound stops with a
    UserError saying which."""
    import re as _re
    import threading

    import duckdb

    from pipeline.errors import UserError

    timeout = _limit("REFUSALS_SQL_TIMEOUT", timeout, SQL_TIMEOUT_S, float)
    memory_limit = _limit("REFUSALS_SQL_MEMORY_LIMIT", memory_limit, SQL_MEMORY_LIMIT, str)
    threads = _limit("REFUSALS_SQL_THREADS", threads, SQL_THREADS, int)
    max_rows = _limit("REFUSALS_SQL_MAX_ROWS", max_rows, SQL_MAX_ROWS, int)
    if not _re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", memory_limit.strip(), _re.IGNORECASE):
        raise UserError(f"memory limit {memory_limit!r}: expected e.g. 512MB or 2GB")
    if timeout <= 0 or threads < 1 or max_rows < 1:
        raise UserError("the SQL time limit, thread cap and row cap must be positive")
    con = connect(data, read_only=True)
    timer = threading.Timer(timeout, con.interrupt)
    timer.daemon = True
    try:
        # Read-only file, and no reading or writing other files (COPY … TO, read_csv('/etc/…')):
        # ad hoc SQL can look at the warehouse and nothing else. The bounds are set before the
        # user's statements, then the configuration is locked (no statement can SET them back).
        con.execute(f"SET memory_limit = '{memory_limit.strip()}'")
        con.execute(f"SET threads = {threads:d}")
        con.execute("SET max_temp_directory_size = '0B'")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        stmts = split_statements(con, sql)
        if not stmts:
            raise UserError("no SQL statement to run")
        if len(stmts) > 1 and (single or params):
            raise UserError(f"{len(stmts)} statements given where one is expected"
                            + (" (parameters bind to a single statement)" if params else ""))
        where = (lambda i: f"statement {i + 1} of {len(stmts)}: ") if len(stmts) > 1 else (lambda i: "")
        results: list[tuple[str, list[str] | None, list[tuple] | None]] = []
        timer.start()
        for i, (stmt, kind) in enumerate(stmts):
            try:
                cur = con.execute(stmt, params or []) if params else con.execute(stmt)
                cols = None if cur.description is None else [d[0] for d in cur.description]
                if cols is None or kind in NO_RESULT or (kind in WRITES and cols == ["Count"]):
                    results.append((stmt, None, None))
                    continue
                rows = cur.fetchmany(max_rows + 1)
            except duckdb.InterruptException:
                raise UserError(f"{where(i)}the query was stopped after the time limit of {timeout:g} s "
                                "(--timeout or $REFUSALS_SQL_TIMEOUT)") from None
            except duckdb.OutOfMemoryException:
                raise UserError(f"{where(i)}the query was stopped: it needed more than the memory limit of "
                                f"{memory_limit} (--memory-limit or $REFUSALS_SQL_MEMORY_LIMIT)") from None
            except duckdb.Error as exc:
                if len(stmts) > 1:
                    raise UserError(f"{where(i)}SQL error: {exc}") from None
                raise
            if len(rows) > max_rows:
                raise UserError(f"{where(i)}the query returns more than {max_rows} rows (--max-rows or "
                                "$REFUSALS_SQL_MAX_ROWS); aggregate or add a LIMIT")
            results.append((stmt, cols, rows))
        return results
    finally:
        timer.cancel()
        con.close()


def public_relations(data: DataDir) -> list[tuple[str, str, str | None]]:
    """(name, 'table' or 'view', comment) of the warehouse's public tables and views: the
    `main` schema, without DuckDB's own views or the `internal` schema's bookkeeping."""
    _, _, rows = queries(data, """
        SELECT table_name AS name, 'table' AS kind, comment FROM duckdb_tables()
        WHERE database_name = current_database() AND schema_name = 'main' AND NOT temporary
        UNION ALL
        SELECT view_name, 'view', comment FROM duckdb_views()
        WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal AND NOT temporary
        ORDER BY kind, name""")[0]
    return list(rows or [])


def describe(data: DataDir, name: str) -> tuple[str, str | None, list[tuple[str, str, str | None]]]:
    """(kind, comment, [(column, type, comment)]) of one public table or view; `main.` may
    prefix its name. An unknown (or internal) name is a UserError listing the public ones."""
    from pipeline.errors import UserError

    rels = {n: (k, c) for n, k, c in public_relations(data)}
    bare = name[5:] if name.lower().startswith("main.") else name
    if bare not in rels:
        raise UserError(f"{name!r}: no public table or view of that name; the public ones are "
                        f"{', '.join(sorted(rels))}")
    kind, comment = rels[bare]
    _, _, cols = queries(data, """
        SELECT column_name, data_type, comment FROM duckdb_columns()
        WHERE database_name = current_database() AND schema_name = 'main' AND table_name = ?
        ORDER BY column_index""", [bare])[0]
    return kind, comment, list(cols or [])
