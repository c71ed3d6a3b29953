"""Stage 4: audit. Great Expectations suites from `expectations/` run on a staged run.

Write, audit, publish: nothing reaches the lake unless every suite passes. A failing run is
moved to `data/quarantine/<run_id>/` with `validation.md` (which expectation, which values)
and the full GX results as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ValidationFailed
from pipeline.lake import parquet_files, read_folder, write_json_atomic
from pipeline.paths import resource_dir

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = resource_dir("expectations")


@dataclass
class SuiteOutcome:
    suite: str
    success: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0


@dataclass
class ValidationOutcome:
    run_id: str
    success: bool
    suites: list[SuiteOutcome]

    def summary_markdown(self) -> str:
        """The outcome as Markdown. Every value in it may come from the data (run ids, column
        values of failing rows, error texts): each is an inert code span or escaped text
        (`pipeline.mdsafe`), so no link, image, HTML or list item can be injected."""
        from pipeline.mdsafe import code, word

        lines = [f"# Validation of run {code(self.run_id)}: {'passed' if self.success else 'FAILED'}", ""]
        for s in self.suites:
            lines.append(f"## {word(s.suite)}: {'passed' if s.success else 'FAILED'} "
                         f"({word(s.evaluated)} expectations)")
            for f in s.failures:
                where = f.get("column") or f.get("columns") or "table"
                if isinstance(where, (list, tuple)):
                    where = ", ".join(str(w) for w in where)
                lines.append(f"- {code(f.get('expectation'))} on {code(where)}: {code(f.get('detail'), 2000)}")
                for row in f.get("rows") or []:
                    lines.append("  - " + ", ".join(code(f"{k}={v}") for k, v in row.items()))
            lines.append("")
        return "\n".join(lines)

    def summary_html(self) -> str:
        """The same summary as a self-contained HTML page (this project's Data Docs)."""
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                          autoescape=select_autoescape(["html", "j2"]))
        return env.get_template("validation.html.j2").render(outcome=self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "success": self.success,
            "suites": [s.__dict__ for s in self.suites],
        }


def _gx_context():
    import logging as _logging

    _logging.getLogger("great_expectations").setLevel(_logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def load_suite(name: str):
    """An ExpectationSuite from `expectations/<name>.json` (GX's own suite format)."""
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    path = EXPECTATIONS_DIR / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return ExpectationSuite(
        name=data["name"],
        expectations=[ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"], meta=e.get("meta"))
                      for e in data["expectations"]],
        meta=data.get("meta", {}),
    )


def _plain(value: Any) -> Any:
    """A value fit for a summary: Python scalars kept, long text cut."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _cell(value: Any) -> str:
    return str(_plain(value))


def _describe(result: Any, index_columns: list[str]) -> dict[str, Any]:
    """One failed expectation: which expectation, which column, which values and which rows."""
    cfg = result.expectation_config
    res = result.result or {}
    rows = [
        {k: _plain(v) for k, v in row.items()}
        for row in (res.get("partial_unexpected_index_list") or [])[:10]
        if isinstance(row, dict)
    ]
    unexpected = res.get("unexpected_count")
    if result.exception_info and result.exception_info.get("raised_exception"):
        detail = f"could not run: {result.exception_info.get('exception_message')}"
        unexpected = None
    elif "observed_value" in res and unexpected is None:
        detail = f"observed {_cell(res['observed_value'])}"
    else:
        sample = [_plain(v) for v in (res.get("partial_unexpected_list") or [])[:5]]
        detail = f"{unexpected} unexpected value(s), e.g. {sample}"
    return {
        "expectation": cfg.type,
        "column": cfg.kwargs.get("column"),
        "columns": cfg.kwargs.get("column_list") or (
            [cfg.kwargs["column_A"], cfg.kwargs["column_B"]] if "column_A" in cfg.kwargs else None),
        "kwargs": {k: _cell(v) if not isinstance(v, (list, dict)) else v
                   for k, v in cfg.kwargs.items() if k not in ("batch_id",)},
        "notes": (cfg.meta or {}).get("notes"),
        "detail": detail,
        "unexpected_count": unexpected,
        "rows": rows,
        "row_columns": [c for c in index_columns if rows and c in rows[0]],
    }


def run_suite(ctx: Any, name: str, table: pa.Table | Any, parameters: dict[str, Any]) -> SuiteOutcome:
    """Validate one dataset (an Arrow table or a pandas frame) against one suite."""
    import pandas as pd

    df = table if isinstance(table, pd.DataFrame) else table.to_pandas()
    source = ctx.data_sources.add_or_update_pandas(f"staging_{name}")
    asset = source.add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": df})
    suite_def = load_suite(name)
    index_columns = [c for c in (suite_def.meta or {}).get("index_columns", []) if c in df.columns]
    suite = ctx.suites.add_or_update(suite_def)
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 10}
    if index_columns:  # the failure summary names the rows, not only the values
        result_format["unexpected_index_column_names"] = index_columns
    result = batch.validate(suite, expectation_parameters=parameters, result_format=result_format)
    failures = [_describe(r, index_columns) for r in result.results if not r.success]
    return SuiteOutcome(name, bool(result.success), failures, len(result.results))


def merge_outcomes(name: str, parts: list[SuiteOutcome]) -> SuiteOutcome:
    """One outcome for a suite run batch by batch: a failure per expectation, counts summed."""
    merged: dict[tuple, dict[str, Any]] = {}
    for part in parts:
        for f in part.failures:
            key = (f["expectation"], f.get("column"), str(f.get("columns")), str(f.get("kwargs")))
            if key not in merged:
                merged[key] = {**f, "rows": list(f.get("rows") or []), "batches": 1}
                continue
            m = merged[key]
            m["batches"] += 1
            if m.get("unexpected_count") is not None and f.get("unexpected_count") is not None:
                m["unexpected_count"] += f["unexpected_count"]
                m["detail"] = f"{m['unexpected_count']} unexpected value(s) in {m['batches']} batches; first: {m['detail'].split(', e.g. ', 1)[-1]}"
            m["rows"] = (m["rows"] + list(f.get("rows") or []))[:10]
    return SuiteOutcome(name, all(p.success for p in parts), list(merged.values()),
                        max((p.evaluated for p in parts), default=0))


def batch_rows() -> int:
    """Rows per validation batch ($REFUSALS_VALIDATION_BATCH_ROWS, default 200,000)."""
    return max(1, int(os.environ.get("REFUSALS_VALIDATION_BATCH_ROWS", "200000")))


def unreadable_files(files: list[Path]) -> list[dict[str, Any]]:
    """Files whose Parquet footer cannot be read (a truncated or foreign file)."""
    bad = []
    for f in files:
        try:
            pq.read_metadata(f)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for every kind of damage
            bad.append({"expectation": "file is readable Parquet", "column": None, "file": str(f),
                        "detail": f"{f}: {exc}", "rows": []})
    return bad


def row_batches(files: list[Path], rows: int) -> Iterator[pa.Table]:
    """The rows of these files in tables of at most `rows` rows; files with another schema
    start a new batch (so a drifted file is checked, and reported, on its own)."""
    pending: list[pa.Table] = []
    count = 0
    schema = None
    for f in files:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=rows):
            t = pa.Table.from_batches([rb])
            if pending and (not t.schema.equals(schema) or count + t.num_rows > rows):
                yield pa.concat_tables(pending)
                pending, count = [], 0
            pending.append(t)
            schema = t.schema
            count += t.num_rows
    if pending:
        yield pa.concat_tables(pending)


def run_suite_batched(ctx: Any, name: str, files: list[Path], parameters: dict[str, Any]) -> SuiteOutcome:
    """A row-level suite over many files, batch by batch (memory bounded by the batch size)."""
    parts: list[SuiteOutcome] = []
    try:
        for table in row_batches(files, batch_rows()):
            parts.append(run_suite(ctx, name, table, parameters))
    except Exception as exc:  # a file damaged past its footer
        parts.append(SuiteOutcome(name, False, [{"expectation": "file is readable Parquet", "column": None,
                                                 "detail": f"reading {name}: {exc}", "rows": []}], 1))
    return merge_outcomes(name, parts)


def audit_table(name: str, samples: list[Path], labels: list[Path]) -> pa.Table:
    """An aggregate of the staged run by `sql/<name>.sql`, streamed by DuckDB."""
    import duckdb

    from pipeline.warehouse import statements

    con = duckdb.connect()
    try:
        con.execute("SET memory_limit = '1GB'")
        con.execute("SET preserve_insertion_order = false")
        (stmt,) = statements(name)
        params = {"samples": [str(f) for f in samples], "labels": [str(f) for f in labels]}
        return con.sql(stmt, params=params).to_arrow_table()
    finally:
        con.close()


def validate_run(staging_run: Path, run_id: str, expected: dict[str, Any]) -> ValidationOutcome:
    """Run every suite on a staged run. `expected` comes from the run's manifest.

    Row-level suites (`samples`, `labels`) run batch by batch over the staged files;
    whole-run suites (`keys`, `sample_counts`, `error_rates`) run on aggregates computed by
    DuckDB over the same files (`sql/audit_*.sql`). Memory is bounded by the batch size and
    the number of prompts, never by the number of samples.
    """
    ctx = _gx_context()
    sample_files = parquet_files(staging_run / "samples")
    label_files = parquet_files(staging_run / "labels")
    outcomes: list[SuiteOutcome] = []
    damaged = unreadable_files(sample_files + label_files)
    if damaged:
        outcomes.append(SuiteOutcome("files", False, damaged, len(sample_files) + len(label_files)))
    damaged_paths = {Path(d["file"]) for d in damaged}
    sample_files = [f for f in sample_files if f not in damaged_paths]
    label_files = [f for f in label_files if f not in damaged_paths]
    if not sample_files:
        outcomes.append(SuiteOutcome("samples", False, [
            {"expectation": "samples exist", "detail": "the run has no samples", "rows": []}], 1))
    else:
        outcomes.append(run_suite_batched(ctx, "samples", sample_files, {
            "run_ids": [run_id], "languages": expected["languages"], "max_rep": expected["max_rep"]}))
    if not label_files:
        outcomes.append(SuiteOutcome("labels", False, [
            {"expectation": "labels exist", "detail": "the run has no labels", "rows": []}], 1))
    else:
        outcomes.append(run_suite_batched(ctx, "labels", label_files, {}))
    if sample_files and label_files:
        try:
            keys = audit_table("audit_keys", sample_files, label_files)
            errors = audit_table("audit_error_rates", sample_files, label_files)
        except Exception as exc:  # e.g. a key column missing from a file: also named by `samples`
            outcomes.append(SuiteOutcome("keys", False, [
                {"expectation": "keys can be counted", "detail": f"could not aggregate the run: {exc}", "rows": []}], 1))
        else:
            outcomes.append(run_suite(ctx, "keys", keys, {"expected_rows": expected["rows"]}))
            live = keys.filter(keys.column("live")).select(["model", "deployment", "prompt_id", "samples_rows"])
            if expected["live_prompt_cells"]:
                outcomes.append(run_suite(ctx, "sample_counts", live.rename_columns(
                    ["model", "deployment", "prompt_id", "n"]), {
                    "expected_prompt_cells": expected["live_prompt_cells"],
                    "repetitions": expected["repetitions"]}))
            outcomes.append(run_suite(ctx, "error_rates", errors, {"max_error_rate": expected["max_error_rate"]}))
    prompts = read_folder(staging_run / "prompts")
    if prompts is not None:
        outcomes.append(run_suite(ctx, "prompts", prompts, {}))
    outcome = ValidationOutcome(run_id, all(o.success for o in outcomes), outcomes)
    write_json_atomic(outcome.to_dict(), staging_run / "validation.json")
    (staging_run / "validation.md").write_text(outcome.summary_markdown(), encoding="utf-8")
    (staging_run / "validation.html").write_text(outcome.summary_html(), encoding="utf-8")
    return outcome


def quarantine(staging_run: Path, quarantine_dir: Path, outcome: ValidationOutcome) -> Path:
    """Move a failed run out of staging, keep its summary, and raise ValidationFailed."""
    target = quarantine_dir / staging_run.name
    if target.exists():
        shutil.rmtree(target)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    os.replace(staging_run, target)
    summary = target / "validation.md"
    failed = [f"{s.suite}: " + "; ".join(f"{f['expectation']} ({f.get('column') or 'table'}): {f['detail']}" for f in s.failures)
              for s in outcome.suites if not s.success]
    raise ValidationFailed(
        f"run {outcome.run_id} failed validation and is quarantined in {target}\n" + "\n".join(failed),
        str(summary),
    )
