"""A run of a study: the stages in order, each a plain function the CLI and the DAG share.

    prepare → sample → label → validate → publish → warehouse → report

State lives on disk under `data/staging/<run_id>/` (`run.json`, prompts, samples, labels), so
each stage can run in its own process (an Airflow task) and a killed run resumes where it
stopped. `publish` moves the audited run into the lake; the run record is written last, so
the warehouse never sees half a run.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import LoadedStudy, load_study
from pipeline.errors import UserError
from pipeline.lake import (
    copy_parquet,
    distinct_values,
    hive_path,
    parquet_files,
    read_folder,
    replace_folder,
    write_json_atomic,
    write_parquet_atomic,
)
from pipeline.paths import REPO_ROOT, DataDir

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("refusals")
    except PackageNotFoundError:
        return "unknown"


def default_run_id(study: str, when: datetime | None = None) -> str:
    when = when or datetime.now(timezone.utc)
    return f"{study}-{when:%Y%m%dT%H%M%SZ}"


def iso_week(d: date) -> str:
    y, w, _ = d.isocalendar()
    return f"{y}-W{w:02d}"


def weekly_run_id(study: str, when: date) -> str:
    """The run id of a study's scheduled run in the ISO week of `when`: `<study>-<YYYY>-W<ww>`.

    A scheduled DAG derives it from the run's logical date, so a backfilled week gets that
    week's id (and is skipped when it is already published)."""
    return f"{study}-{iso_week(when)}"


def start_run(study_path: str | Path, run_id: str | None = None, data_dir: str | Path | None = None, *,
              when: datetime | None = None, weekly: bool = False, force: bool = False) -> dict[str, Any] | None:
    """Name a run, and prepare it unless it is already published (then None; `force` redoes it).

    The run id is `run_id` if given, else `weekly_run_id` (weekly) or `default_run_id` of
    `when` (an orchestrator's logical date); the run date is `when`'s date, so a backfilled
    week lands in that week of the marts. Returns what later stages need to find the run."""
    loaded = load_study(study_path)
    if run_id is None:
        run_id = weekly_run_id(loaded.study.name, (when or datetime.now(timezone.utc)).date()) if weekly \
            else default_run_id(loaded.study.name, when)
    ctx = context(loaded.path, run_id, data_dir)
    if skip_published(ctx, force):
        return None
    record = prepare(ctx, run_date=when.date() if when else None)
    return {"study": str(loaded.path), "run_id": run_id, "data_dir": None if data_dir is None else str(data_dir),
            "run_date": record["run_date"], "week": record["week"]}


@dataclass
class RunContext:
    """What every stage needs: the study, the run id and where its files are."""

    loaded: LoadedStudy
    run_id: str
    data: DataDir

    @property
    def staging(self) -> Path:
        return self.data.staging_run(self.run_id)

    @property
    def record_path(self) -> Path:
        return self.staging / "run.json"

    def record(self) -> dict[str, Any]:
        import json

        return json.loads(self.record_path.read_text(encoding="utf-8"))



def context(study_path: str | Path, run_id: str | None, data_dir: str | Path | None = None) -> RunContext:
    loaded = load_study(study_path)
    run_id = run_id or default_run_id(loaded.study.name)
    if not RUN_ID.match(run_id):
        raise UserError(f"run id {run_id!r}: use letters, digits and . _ : + - (at most 128)")
    return RunContext(loaded, run_id, DataDir.from_env(data_dir))


# --------------------------------------------------------------------------- stages


def prepare(ctx: RunContext, run_date: date | None = None) -> dict[str, Any]:
    """Create (or reuse, on resume) the staging folder, the run record and the prompt variants."""
    from pipeline.prompts import write_prompts

    ctx.staging.mkdir(parents=True, exist_ok=True)
    if ctx.record_path.exists():
        record = ctx.record()
        if record["study_hash"] != ctx.loaded.study_hash:
            raise UserError(
                f"{ctx.loaded.path}: run {ctx.run_id} was started from a different version of this study "
                f"(hash {record['study_hash']} vs {ctx.loaded.study_hash}); use a new --run-id"
            )
        log.info("resuming run %s (started %s)", ctx.run_id, record["started_at"])
    else:
        now = datetime.now(timezone.utc)
        run_date = run_date or now.date()
        record = {
            "run_id": ctx.run_id,
            "study": ctx.loaded.study.name,
            "study_path": str(ctx.loaded.path),
            "study_hash": ctx.loaded.study_hash,
            "run_date": run_date.isoformat(),
            "week": iso_week(run_date),
            "started_at": now.isoformat(),
            "code_version": code_version(),
            "repetitions": ctx.loaded.study.repetitions,
        }
        write_json_atomic(record, ctx.record_path)
    if ctx.loaded.study.models:
        write_prompts(ctx.loaded, ctx.staging / "prompts")
    return record


def sample(ctx: RunContext, *, deployment: str | None = None, model: str | None = None,
           shard: int | None = None, shards: int = 1) -> list[dict[str, Any]]:
    """The sampling stage: the whole study, or one unit of it (see `sample_units`): with
    `deployment` alone its recorded source, with `model` too one shard of that model's prompts."""
    from pipeline.sample import SampleUnit, sample_study, sample_unit

    if deployment is None:
        if model is not None or shard is not None:
            raise UserError("sampling one model or shard needs its deployment")
        summaries = sample_study(ctx.loaded, ctx.run_id, ctx.staging)
    else:
        unit = SampleUnit(deployment, model, shard or 0, shards if model is not None else 1)
        summaries = sample_unit(ctx.loaded, ctx.run_id, ctx.staging, unit)
    return [s.__dict__ for s in summaries]


def sample_units(ctx: RunContext, shards: int = 1) -> list[dict[str, Any]]:
    """The independent units of the sampling stage, as keyword arguments of `sample`: one per
    recorded source, `shards` per live model. Units never write the same sample key."""
    from dataclasses import asdict

    from pipeline.sample import sample_units as units

    return [asdict(u) for u in units(ctx.loaded, shards)]


def label(ctx: RunContext) -> int:
    """The labels stage: the rule tier, and the study's LLM judge (if any) where the rules are unsure."""
    from pipeline.label import label_run

    return label_run(ctx.staging, ctx.loaded.study.judge, base_dir=ctx.loaded.base_dir,
                     classifier=ctx.loaded.study.effective_classifier, cache_path=ctx.data.root / "cache" / "embeddings.sqlite")


def expected_counts(ctx: RunContext) -> dict[str, Any]:
    """What a complete run must contain, from the study and the staged prompts."""
    study = ctx.loaded.study
    prompts = read_folder(ctx.staging / "prompts", columns=["prompt_id", "source", "language"])
    if prompts is None:
        from pipeline.runs import imported_before

        if imported_before(ctx.staging):
            raise UserError(f"run {ctx.run_id}: nothing new to import (every recorded file was imported by an "
                            "earlier run; force_reimport: true or --force-reimport imports it again)")
        raise UserError(f"run {ctx.run_id}: no prompts staged; run the prepare stage first")
    catalog_n = sum(1 for s in prompts.column("source").to_pylist() if s == "catalog")
    live_models = len(study.models)
    rows = catalog_n * study.repetitions * live_models
    max_rep = study.repetitions - 1
    for f in parquet_files(ctx.staging / "samples"):
        if f.name == "recorded.parquet":
            try:
                meta = pq.read_metadata(f)
                reps = pq.read_table(f, columns=["rep"]).column("rep")
            except (pa.ArrowInvalid, OSError, KeyError):
                continue  # a damaged file: the validation names it and fails the run
            rows += meta.num_rows
            max_rep = max(max_rep, pc.max(reps).as_py() or 0)
    return {
        "rows": rows,
        "languages": sorted(set(prompts.column("language").to_pylist()) | set(study.languages)),
        "max_rep": max_rep,
        "max_error_rate": study.validation.max_error_rate,
        "live_prompt_cells": catalog_n * live_models,
        "repetitions": study.repetitions,
    }


def validate(ctx: RunContext) -> dict[str, Any]:
    """Run the GX suites; on failure move the run to quarantine and raise ValidationFailed."""
    from pipeline.validate import quarantine, validate_run

    outcome = validate_run(ctx.staging, ctx.run_id, expected_counts(ctx))
    docs = ctx.data.validation / ctx.run_id
    docs.mkdir(parents=True, exist_ok=True)
    tmp = docs / ".tmp-index.html"
    shutil.copyfile(ctx.staging / "validation.html", tmp)
    tmp.replace(docs / "index.html")
    log.info("validation summary: %s", docs / "index.html")
    if not outcome.success:
        quarantine(ctx.staging, ctx.data.quarantine, outcome)
    log.info("run %s passed validation (%d suites)", ctx.run_id, len(outcome.suites))
    return outcome.to_dict()


def _publish_dataset(ctx: RunContext, name: str, split_language: bool) -> int:
    """Copy one staged dataset into the lake layout and swap it in atomically."""
    record = ctx.record()
    target = hive_path(ctx.data.dataset(name), study=ctx.loaded.study.name, run_date=record["run_date"], run_id=ctx.run_id)
    build = target.parent / f".tmp-publish-{ctx.run_id}"
    shutil.rmtree(build, ignore_errors=True)
    n = 0
    src_root = ctx.staging / name
    groups: dict[Path, list[Path]] = {}
    for f in parquet_files(src_root):
        groups.setdefault(f.parent, []).append(f)
    for folder, files in groups.items():
        # streamed (pipeline.lake.copy_parquet): memory is bounded by a batch, not by the run
        rel = folder.relative_to(src_root)
        if split_language:
            for lang in distinct_values(files, "language"):
                n += copy_parquet(files, hive_path(build / rel, language=lang) / "part-0.parquet", language=lang)
        else:
            n += copy_parquet(files, build / rel / "part-0.parquet")
    replace_folder(build, target)
    # A rerun of the same run id on another day (--force, a re-triggered DAG run) must replace
    # the earlier copy, not sit beside it under another run_date.
    for stale in target.parent.parent.glob(f"run_date=*/{target.name}"):
        if stale != target:
            shutil.rmtree(stale, ignore_errors=True)
    return n


def publish(ctx: RunContext, validation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Move an audited run from staging into the lake; write the run record last."""
    import json

    if not (ctx.staging / "validation.json").exists():
        raise UserError(f"run {ctx.run_id}: not validated; run the validate stage first")
    validation = validation or json.loads((ctx.staging / "validation.json").read_text())
    if not validation["success"]:
        raise UserError(f"run {ctx.run_id}: validation failed; it cannot be published")
    counts = {
        "prompts": _publish_dataset(ctx, "prompts", split_language=False),
        "samples": _publish_dataset(ctx, "samples", split_language=True),
        "labels": _publish_dataset(ctx, "labels", split_language=True),
    }
    from pipeline.runs import publish_imports

    counts["imports"] = publish_imports(ctx.data, ctx.staging, ctx.loaded.study.name, ctx.run_id)
    record = ctx.record()
    samples = _run_totals(parquet_files(ctx.staging / "samples"))
    run_row = {
        "run_id": ctx.run_id,
        "study": record["study"],
        "study_hash": record["study_hash"],
        "run_date": date.fromisoformat(record["run_date"]),
        "week": record["week"],
        "started_at": datetime.fromisoformat(record["started_at"]),
        "published_at": datetime.now(timezone.utc),
        "code_version": record["code_version"],
        "n_prompts": counts["prompts"],
        "n_samples": counts["samples"],
        "n_errors": samples["n_errors"],
        "repetitions": record["repetitions"],
        "models": json.dumps(samples["models"], ensure_ascii=False),
        "deployments": json.dumps(samples["deployments"]),
        "classifier": _classifier_version(),
        "validation": json.dumps(validation, default=str),
    }
    path = hive_path(ctx.data.dataset("runs"), study=record["study"], run_id=ctx.run_id) / "run.parquet"
    write_parquet_atomic(pa.Table.from_pylist([run_row]), path)
    shutil.rmtree(ctx.staging, ignore_errors=True)
    log.info("published run %s: %s", ctx.run_id, counts)
    return counts


def _run_totals(files: list[Path]) -> dict[str, Any]:
    """Errors, models and deployments of a staged run, streamed by DuckDB."""
    import duckdb

    con = duckdb.connect()
    try:
        n_errors, models, deployments = con.execute(
            "SELECT count(error), list(DISTINCT model ORDER BY model), list(DISTINCT deployment ORDER BY deployment) "
            "FROM read_parquet($files, union_by_name = true, hive_partitioning = false)",
            {"files": [str(f) for f in files]},
        ).fetchone()
        return {"n_errors": n_errors, "models": models, "deployments": deployments}
    finally:
        con.close()


def _classifier_version() -> str:
    from pipeline.classify import CLASSIFIER_NAME, CLASSIFIER_VERSION

    return f"{CLASSIFIER_NAME}-{CLASSIFIER_VERSION}"


def warehouse(ctx: RunContext) -> dict[str, int]:
    from pipeline.warehouse import build

    return build(ctx.data, run_ids=[ctx.run_id])


def report(ctx: RunContext, week: str | None = None) -> dict[str, str]:
    from pipeline.report import write_report

    paths = write_report(ctx.data, week=week)
    return {k: str(v) for k, v in paths.items()}


def report_published(events: list[dict[str, Any]], data_dir: str | Path | None = None, week: str | None = None,
                     when: date | None = None) -> dict[str, dict[str, str]]:
    """What the weekly report DAG does: bring the warehouse up to date and write reports.

    `events` are the extras of the publish events that triggered it (`run_id`, `week`,
    `data_dir`): their runs are (re)loaded, with any other published run not yet loaded, and
    their weeks reported. Without events: `week`, else the week of `when`, else the latest.
    Returns {week: {kind: path}}."""
    from pipeline.report import write_report
    from pipeline.warehouse import build, published_runs

    groups: dict[Path, list[dict[str, Any]]] = {}
    for e in events:
        groups.setdefault(DataDir.from_env(data_dir or e.get("data_dir")).root, []).append(e)
    if not groups:
        groups[DataDir.from_env(data_dir).root] = []
    out: dict[str, dict[str, str]] = {}
    for root, group in groups.items():
        data = DataDir(root)
        fresh = {e["run_id"] for e in group if e.get("run_id")}
        build(data, run_ids=sorted(fresh | (set(published_runs(data)) - _warehouse_runs(data))))
        weeks = [week] if week else sorted({e["week"] for e in group if e.get("week")})
        if not weeks:
            weeks = [iso_week(when) if when else None]
        for w in weeks:
            paths = write_report(data, week=w)
            out[w or Path(next(iter(paths.values()))).parent.name] = {k: str(v) for k, v in paths.items()}
    return out


def _warehouse_runs(data: DataDir) -> set[str]:
    """Run ids already loaded into the warehouse (none when it does not exist yet)."""
    if not data.warehouse.exists():
        return set()
    import duckdb

    con = duckdb.connect(str(data.warehouse), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT DISTINCT run_id FROM runs").fetchall()}
    except duckdb.CatalogException:
        return set()
    finally:
        con.close()


def is_published(data: DataDir, run_id: str) -> bool:
    from pipeline.paths import partition_value

    part = f"run_id={partition_value(run_id)}"
    return any(part in p.parts for p in parquet_files(data.dataset("runs")))


def skip_published(ctx: RunContext, force: bool) -> bool:
    """True when the run is already published and not forced; with force, start it afresh."""
    if force:
        shutil.rmtree(ctx.staging, ignore_errors=True)
        return False
    if is_published(ctx.data, ctx.run_id):
        log.info("run %s is already published; nothing to do (use --force to redo it)", ctx.run_id)
        return True
    return False


def run_all(study_path: str | Path, run_id: str | None = None, data_dir: str | Path | None = None,
            force: bool = False) -> dict[str, Any]:
    """All stages for one study in this process (what `refusals run` does)."""
    from pipeline.locks import run_lock

    ctx = context(study_path, run_id, data_dir)
    with run_lock(ctx.data, ctx.run_id):
        return _run_all(ctx, force)


def _run_all(ctx: RunContext, force: bool) -> dict[str, Any]:
    if skip_published(ctx, force):
        return {"run_id": ctx.run_id, "skipped": True, "warehouse": str(ctx.data.warehouse)}
    prepare(ctx)
    sample(ctx)
    from pipeline.runs import nothing_staged

    if nothing_staged(ctx.staging):  # every recorded file was imported before (pipeline.runs): a no-op
        shutil.rmtree(ctx.staging, ignore_errors=True)
        log.info("run %s: nothing new to import; not published", ctx.run_id)
        return {"run_id": ctx.run_id, "skipped": True, "reason": "nothing new to import",
                "warehouse": str(ctx.data.warehouse)}
    label(ctx)
    validate(ctx)
    counts = publish(ctx)
    tables = warehouse(ctx)
    reports = report(ctx)
    return {"run_id": ctx.run_id, "published": counts, "warehouse": str(ctx.data.warehouse),
            "tables": tables, "report": reports}
