"""A run of a study: the stages in order, each a plain function the CLI and the DAG share.

    prepare → sample → label → validate → publish → warehouse → report

The run record keeps the steps a run has finished (`STEPS`: sampled, labelled, validated,
published, loaded, reported, each with its time). It lives in the staging folder until
publish, then in `data/records/<run_id>.json`. A resume carries on from the last finished
step: before publish the stages resume by themselves (sampling by sample key, labels by
file); after it, a run is loaded and reported if it was not, and only a run that finished
every step is "already published; nothing to do".

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
from pipeline.paths import REPO_ROOT, DataDir, partition_value

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")
STEPS = ("sampled", "labelled", "validated", "published", "loaded", "reported")


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
              when: datetime | None = None, weekly: bool = False, force: bool = False,
              through: str = "reported", preflight: bool = False) -> dict[str, Any] | None:
    """Name a run, and prepare it unless it is already published (then None; `force` redoes it).

    The run id is `run_id` if given, else `weekly_run_id` (weekly) or `default_run_id` of
    `when` (an orchestrator's logical date); the run date is `when`'s date, so a backfilled
    week lands in that week of the marts. Returns what later stages need to find the run.
    With `preflight`, a run that has sampling left checks its live models first
    (`pipeline.preflight`: a dead endpoint fails here, with its cause, not mid-sampling).
    `through` is the last step of the caller's flow: a run that finished it is skipped (the
    scheduled DAG ends at `published`; its loading and report belong to the weekly report DAG)."""
    loaded = load_study(study_path)
    if run_id is None:
        run_id = weekly_run_id(loaded.study.name, (when or datetime.now(timezone.utc)).date()) if weekly \
            else default_run_id(loaded.study.name, when)
    ctx = context(loaded.path, run_id, data_dir)
    if skip_published(ctx, force, through=through):
        return None
    if "published" in ctx.steps():  # published, not yet loaded or reported: the later tasks carry on
        record = ctx.record()
    else:
        record = prepare(ctx, run_date=when.date() if when else None)
        if preflight:
            check_live_models(ctx)
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

    @property
    def final_record_path(self) -> Path:
        """Where the run record lives once the run is published (staging is gone)."""
        return self.data.records / f"{self.run_id}.json"

    def record(self) -> dict[str, Any]:
        import json

        path = self.record_path if self.record_path.exists() else self.final_record_path
        return json.loads(path.read_text(encoding="utf-8"))

    def steps(self) -> dict[str, str]:
        """The finished steps of the run (step -> UTC time), from its record(s)."""
        return _steps(self.data, self.run_id)


def _record_paths(data: DataDir, run_id: str) -> tuple[Path, Path]:
    return data.staging_run(run_id) / "run.json", data.records / f"{run_id}.json"


def _steps(data: DataDir, run_id: str) -> dict[str, str]:
    import json

    out: dict[str, str] = {}
    for path in _record_paths(data, run_id):
        try:
            out.update(json.loads(path.read_text(encoding="utf-8")).get("steps") or {})
        except (OSError, ValueError, AttributeError):
            continue
    return out


def mark_step(data: DataDir, run_id: str, step: str, **extra: Any) -> None:
    """Record that `step` of a run is finished (in its final record once published, else in
    staging). A run without a record (published before records kept steps) is left alone."""
    import json

    assert step in STEPS, step
    staged, final = _record_paths(data, run_id)
    path = final if final.exists() else staged
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    record.setdefault("steps", {})[step] = datetime.now(timezone.utc).isoformat()
    record.update(extra)
    write_json_atomic(record, path)
    log.info("run %s: step %s done", run_id, step)


def last_step(steps: dict[str, str]) -> str | None:
    done = [s for s in STEPS if s in steps]
    return done[-1] if done else None



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
    check_names(ctx)
    if ctx.loaded.study.models:
        write_prompts(ctx.loaded, ctx.staging / "prompts")
    return record


def check_names(ctx: RunContext) -> None:
    """Before any request is sent: every model, deployment and language of the study must make
    a folder here (partition values are bounded in bytes, so length never fails; this also
    catches a filesystem that refuses a character)."""
    from pipeline.sample import model_dir

    study = ctx.loaded.study
    probe = ctx.staging / ".names"
    try:
        for spec in study.models:
            model_dir(ctx.staging / "samples", spec.deployment, spec.name).mkdir(parents=True, exist_ok=True)
        for source in study.recorded:
            hive_path(probe, deployment=source.deployment).mkdir(parents=True, exist_ok=True)
        for lang in study.languages:
            hive_path(probe, language=lang).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{ctx.loaded.path}: a model, deployment or language name cannot be a folder "
                        f"name under {ctx.staging}: {exc}") from None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def sample(ctx: RunContext, *, deployment: str | None = None, model: str | None = None,
           shard: int | None = None, shards: int = 1) -> list[dict[str, Any]]:
    """The sampling stage: the whole study, or one unit of it (see `sample_units`): with
    `deployment` alone its recorded source, with `model` too one shard of that model's prompts."""
    from pipeline.sample import SampleUnit, sample_study, sample_unit

    if _after_publish(ctx, "sample"):
        return []
    if deployment is None:
        if model is not None or shard is not None:
            raise UserError("sampling one model or shard needs its deployment")
        summaries = sample_study(ctx.loaded, ctx.run_id, ctx.staging)
        mark_step(ctx.data, ctx.run_id, "sampled")
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

    if _after_publish(ctx, "label"):
        return 0
    n = label_run(ctx.staging, ctx.loaded.study.judge, base_dir=ctx.loaded.base_dir,
                  classifier=ctx.loaded.study.effective_classifier,
                  cache_path=ctx.data.root / "cache" / "embeddings.sqlite")
    mark_step(ctx.data, ctx.run_id, "labelled")
    return n


def _after_publish(ctx: RunContext, stage: str) -> bool:
    """A stage before publish asked of a run already published (a resumed DAG run): a no-op."""
    if "published" in ctx.steps() and not ctx.staging.exists():
        log.info("run %s is already published; the %s stage has nothing to do", ctx.run_id, stage)
        return True
    return False


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

    if _after_publish(ctx, "validate"):
        return {"success": True, "skipped": "already published"}
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
    mark_step(ctx.data, ctx.run_id, "validated")
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

    if _after_publish(ctx, "publish"):
        return ctx.record().get("published_counts") or {}
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
        "classifier": _classifier_version(ctx.staging / "labels"),
        "validation": json.dumps(validation, default=str),
    }
    path = hive_path(ctx.data.dataset("runs"), study=record["study"], run_id=ctx.run_id) / "run.parquet"
    write_parquet_atomic(pa.Table.from_pylist([run_row]), path)
    _finish_publish(ctx, counts)
    log.info("published run %s: %s", ctx.run_id, counts)
    return counts


def _finish_publish(ctx: RunContext, counts: dict[str, Any] | None = None) -> None:
    """After the lake's run row: move the run record out of staging, clear staging, record
    the step `published`. Also what a resume does for a run killed anywhere in between."""
    import json

    if ctx.final_record_path.exists():  # killed while clearing staging: the final record stands
        record = json.loads(ctx.final_record_path.read_text(encoding="utf-8"))
    elif ctx.record_path.exists():
        record = ctx.record()
    else:
        record = _adopt(ctx)
    if counts is None:
        counts = record.get("published_counts")
    if counts is None:
        row = _lake_row(ctx)
        counts = {"prompts": row["n_prompts"], "samples": row["n_samples"]}
    write_json_atomic(record, ctx.final_record_path)
    shutil.rmtree(ctx.staging, ignore_errors=True)
    mark_step(ctx.data, ctx.run_id, "published", published_counts=counts)


def _lake_row(ctx: RunContext) -> dict[str, Any]:
    files = [f for f in parquet_files(ctx.data.dataset("runs")) if f"run_id={partition_value(ctx.run_id)}" in f.parts]
    return pq.read_table(files[0]).to_pylist()[0]


def _adopt(ctx: RunContext) -> dict[str, Any]:
    """A record for a run published before records kept steps, from its lake row; such a run
    that is already in the warehouse is taken as loaded and reported."""
    row = _lake_row(ctx)
    published = row["published_at"].isoformat()
    steps = {s: published for s in STEPS[:3]}
    if ctx.run_id in _warehouse_runs(ctx.data):
        steps.update(published=published, loaded=published, reported=published)
    return {"run_id": ctx.run_id, "study": row["study"], "study_hash": row["study_hash"],
            "run_date": row["run_date"].isoformat(), "week": row["week"],
            "started_at": row["started_at"].isoformat(), "code_version": row["code_version"],
            "repetitions": row["repetitions"], "steps": steps}


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


def _classifier_version(labels_dir: Path | None = None) -> str:
    """The classifier(s) that labelled the run, as `name-version` (several joined by ", "),
    read from its labels; the rule tier's own version when there are none."""
    from pipeline.classify import CLASSIFIER_NAME, CLASSIFIER_VERSION

    seen: set[str] = set()
    for f in parquet_files(labels_dir) if labels_dir is not None and labels_dir.exists() else []:
        names = pq.read_schema(f).names
        if "classifier" in names and "classifier_version" in names:
            t = pq.read_table(f, columns=["classifier", "classifier_version"])
            seen.update(f"{c}-{v}" for c, v in set(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
                        if c is not None)
    return ", ".join(sorted(seen)) or f"{CLASSIFIER_NAME}-{CLASSIFIER_VERSION}"


def warehouse(ctx: RunContext) -> dict[str, int]:
    """Load this run, and every other published run not loaded yet (one that lost its
    warehouse step to a crash or a lock), then mark them loaded."""
    from pipeline.warehouse import build, published_runs

    todo = sorted({ctx.run_id} | (set(published_runs(ctx.data)) - _warehouse_runs(ctx.data)))
    tables = build(ctx.data, run_ids=todo)
    for run_id in todo:
        mark_step(ctx.data, run_id, "loaded")
    return tables


def load_published(data: DataDir, rebuild: bool = False) -> dict[str, int]:
    """`refusals warehouse`: load every published run not loaded yet (all with `rebuild`)."""
    from pipeline.warehouse import build

    tables = build(data, rebuild=rebuild)
    for run_id in sorted(_warehouse_runs(data)):
        if "loaded" not in _steps(data, run_id):
            mark_step(data, run_id, "loaded")
    return tables


def report(ctx: RunContext, week: str | None = None) -> dict[str, str]:
    """The report of the run's week (or `week`)."""
    from pipeline.report import write_report

    if week is None:
        try:
            week = ctx.record().get("week")
        except (OSError, ValueError):
            week = None
    paths = write_report(ctx.data, week=week)
    mark_step(ctx.data, ctx.run_id, "reported")
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
        todo = sorted(fresh | (set(published_runs(data)) - _warehouse_runs(data)))
        build(data, run_ids=todo)
        for run_id in todo:
            mark_step(data, run_id, "loaded")
        weeks = [week] if week else sorted({e["week"] for e in group if e.get("week")})
        if not weeks:
            weeks = [iso_week(when) if when else None]
        for w in weeks:
            paths = write_report(data, week=w)
            out[w or Path(next(iter(paths.values()))).parent.name] = {k: str(v) for k, v in paths.items()}
        for run_id in todo:  # a run whose week was reported is finished
            if _run_week(data, run_id) in out:
                mark_step(data, run_id, "reported")
    return out


def _run_week(data: DataDir, run_id: str) -> str | None:
    import json

    for path in _record_paths(data, run_id):
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("week")
        except (OSError, ValueError):
            continue
    return None


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


def skip_published(ctx: RunContext, force: bool, through: str = "reported") -> bool:
    """True when the run is already published, loaded and reported, and not forced; with
    force, start it afresh. A published run that is missing a later step is settled (an
    interrupted publish finished) and carried on: False."""
    if force:
        shutil.rmtree(ctx.staging, ignore_errors=True)
        ctx.final_record_path.unlink(missing_ok=True)
        return False
    if not is_published(ctx.data, ctx.run_id):
        return False
    if "published" not in ctx.steps() or ctx.staging.exists():
        log.info("run %s: finishing an interrupted publish", ctx.run_id)
        _finish_publish(ctx)
    steps = ctx.steps()
    if through in steps:
        log.info("run %s is already published; nothing to do (use --force to redo it)", ctx.run_id)
        return True
    log.info("run %s is published but its steps end at %r; carrying on", ctx.run_id, last_step(steps))
    return False


def check_live_models(ctx: RunContext) -> None:
    """The preflight of a run that still has sampling to do (after prepare, which checks the
    names before any request): every live model answers, else PreflightFailed with the cause."""
    if not ctx.loaded.study.models or "sampled" in ctx.steps():
        return
    from pipeline.preflight import preflight

    preflight(ctx.loaded)


def run_all(study_path: str | Path, run_id: str | None = None, data_dir: str | Path | None = None,
            force: bool = False, preflight: bool = True) -> dict[str, Any]:
    """All stages for one study in this process (what `refusals run` does); `preflight` checks
    the live models (pipeline.preflight) before sampling."""
    from pipeline.locks import run_lock

    ctx = context(study_path, run_id, data_dir)
    with run_lock(ctx.data, ctx.run_id):
        return _run_all(ctx, force, preflight)


def _run_all(ctx: RunContext, force: bool, preflight: bool = True) -> dict[str, Any]:
    if skip_published(ctx, force):
        return {"run_id": ctx.run_id, "skipped": True, "warehouse": str(ctx.data.warehouse)}
    steps = ctx.steps()
    if steps:
        log.info("resuming run %s after step %s", ctx.run_id, last_step(steps))
    if "published" not in steps:
        # each stage resumes by itself: sampling draws only missing keys, labels only new files
        prepare(ctx)
        if preflight:
            check_live_models(ctx)
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
    else:
        counts = ctx.record().get("published_counts") or {}
    tables = warehouse(ctx) if "loaded" not in ctx.steps() else {}
    reports = report(ctx)
    return {"run_id": ctx.run_id, "published": counts, "warehouse": str(ctx.data.warehouse),
            "tables": tables, "report": reports}
