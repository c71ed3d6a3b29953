"""Shared wiring of the study DAGs: the tasks (each calls one stage of `pipeline.run`), the
registry of scheduled studies and the Assets that mark published data.

Not a DAG file itself (listed in `.airflowignore`); the DAG files import it, which works
because Airflow puts the DAG folder (the bundle) on `sys.path`. Nothing heavy is imported at
module level: `pipeline` is imported inside the tasks, so parsing stays cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import Asset, Param, get_current_context, task

DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=1)}
TAGS = ["refusals"]
REGISTRY_ENV = "REFUSALS_SCHEDULES"
DEFAULT_REGISTRY = Path(__file__).resolve().with_name("schedules.yaml")


def run_params(study: str, shards: int | None = None) -> dict[str, Param]:
    """The params that override a run (the same names in every study DAG)."""
    params = {
        "study": Param(study, type="string", description="study YAML file"),
        "run_id": Param(None, type=["null", "string"], description="resume or name a run"),
        "data_dir": Param(None, type=["null", "string"], description="data folder (default ./data)"),
        "force": Param(False, type="boolean", description="redo a run id that is already published"),
        "preflight": Param(True, type="boolean",
                           description="check the live models (endpoint answers, key present, weights there) "
                           "before sampling, as `refusals plan` does"),
        "ray_jobs_address": Param(
            None,
            type=["null", "string"],
            description="submit sampling as Ray jobs to this cluster (e.g. http://head:8265); "
            "default $REFUSALS_RAY_JOBS_ADDRESS, else sample in the task",
        ),
    }
    if shards is not None:  # the scheduled study DAGs
        params["lake_mirror"] = Param(None, type=["null", "string"],
                                      description="copy published runs to this object-store URI (s3://..., gs://...); "
                                      "default $REFUSALS_LAKE_MIRROR, else no copy")
        params["shards"] = Param(shards, type="integer", minimum=1, maximum=256,
                                 description="shards per model: parallel sampling tasks, each a part of the prompts")
    return params


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ScheduledStudy:
    """One entry of the registry: a study sampled on a schedule by `refusal_study__<name>`."""

    name: str
    study: str
    schedule: str
    start_date: datetime
    catchup: bool = False
    shards: int = 1

    @property
    def dag_id(self) -> str:
        return f"refusal_study__{self.name}"


def registry_path() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)


def scheduled_studies(path: Path | None = None) -> list[ScheduledStudy]:
    """Read the registry (a small YAML file; no study is loaded at parse time).

    Raises ValueError naming the file and field, which Airflow shows as the DAG file's import error."""
    path = path or registry_path()
    if not path.exists():
        raise ValueError(f"{path}: registry of scheduled studies not found (set ${REGISTRY_ENV} or create it)")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = data.get("studies") if isinstance(data, dict) else None
    if entries is None:
        return []
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: field 'studies': expected a mapping of study name to its schedule")
    allowed = {"study", "schedule", "start_date", "catchup", "shards"}
    out = []
    for name, entry in entries.items():
        where = f"{path}: field 'studies.{name}'"
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{where}: the name must be letters, digits, _ or -")
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with 'study' and 'schedule'")
        unknown = set(entry) - allowed
        if unknown:
            raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(allowed))})")
        for key in ("study", "schedule"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ValueError(f"{where}.{key}: required, a string")
        start = entry.get("start_date", "2026-01-05")
        try:
            start_dt = datetime.fromisoformat(str(start))
        except ValueError:
            raise ValueError(f"{where}.start_date: expected an ISO date, got {start!r}") from None
        if start_dt.tzinfo is None:
            start_dt = start_dt.replace(tzinfo=timezone.utc)
        shards = entry.get("shards", 1)
        if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
            raise ValueError(f"{where}.shards: expected an integer of at least 1, got {shards!r}")
        catchup = entry.get("catchup", False)
        if not isinstance(catchup, bool):
            raise ValueError(f"{where}.catchup: expected true or false, got {catchup!r}")
        study = Path(os.path.expandvars(entry["study"]))
        study = study if study.is_absolute() else (path.parent / study).resolve()
        out.append(ScheduledStudy(name, str(study), entry["schedule"], start_dt, catchup, shards))
    return out


def published_asset(study: str) -> Asset:
    """The Asset a study's scheduled DAG updates when it publishes a run into the lake."""
    return Asset(name=f"refusals_published__{study}", uri=f"refusals://lake/published/{study}", group="refusals")


# --------------------------------------------------------------------------- tasks


def _ctx(run: dict[str, Any]):
    from pipeline.run import context

    return context(run["study"], run["run_id"], run["data_dir"])


def _ray_jobs_address() -> str | None:
    return get_current_context()["params"].get("ray_jobs_address") or os.environ.get("REFUSALS_RAY_JOBS_ADDRESS")


@task
def prepare(weekly: bool = False) -> dict:
    """Name the run (params, else from the logical date), skip it if published, else stage it and
    run the preflight (a dead endpoint or missing weights fail here, with the cause in the log)."""
    from airflow.exceptions import AirflowSkipException

    from pipeline import run as stages

    context = get_current_context()
    params = context["params"]
    when = context.get("logical_date")
    if weekly and when is None:  # a manual run without a logical date samples for this week
        when = getattr(context.get("dag_run"), "run_after", None)
    run = stages.start_run(params["study"], params.get("run_id"), params.get("data_dir"), when=when,
                           weekly=weekly, force=bool(params.get("force")),
                           # the scheduled DAG ends at publish (the weekly report DAG loads and reports)
                           through="published" if weekly else "reported",
                           preflight=params.get("preflight", True) is not False)
    if run is None:
        raise AirflowSkipException("this run is already published (set force to redo it)")
    return run


@task(retries=3, execution_timeout=timedelta(hours=12))
def sample(run: dict) -> dict:
    """The whole sampling stage in one task (or one Ray job)."""
    from pipeline import run as stages

    address = _ray_jobs_address()
    if address:  # production: the cluster samples; this task submits and follows the job
        from pipeline.jobs import stage_entrypoint, submit_and_wait

        entry = stage_entrypoint("sample", run["study"], run["run_id"], run["data_dir"])
        job = submit_and_wait(address, entry, submission_id=f"refusals-{run['run_id']}-sample")
        return {**run, "ray_job": job}
    return {**run, "summaries": stages.sample(_ctx(run))}


@task
def sample_units(run: dict) -> list[dict]:
    """The units the sampling stage is mapped over: recorded sources, and models × shards."""
    from pipeline import run as stages

    return stages.sample_units(_ctx(run), int(get_current_context()["params"].get("shards") or 1))


@task(retries=3, execution_timeout=timedelta(hours=12), map_index_template="{{ unit_label }}")
def sample_unit(run: dict, unit: dict) -> list[dict]:
    """One mapped unit: a recorded source, or one shard of one model (in the task or a Ray job)."""
    from pipeline import run as stages
    from pipeline.sample import SampleUnit

    u = SampleUnit(**unit)
    get_current_context()["unit_label"] = u.label()  # names the mapped instance in the UI
    address = _ray_jobs_address()
    if address and u.model is not None:  # a recorded import needs no engine: it stays in the task
        from pipeline.jobs import submit_and_wait
        from pipeline.sample import unit_entrypoint, unit_submission_id

        entry = unit_entrypoint(run["study"], run["run_id"], run["data_dir"], u)
        return [submit_and_wait(address, entry, submission_id=unit_submission_id(run["run_id"], u))]
    return stages.sample(_ctx(run), **unit)


@task
def label(run: dict) -> dict:
    from pipeline import run as stages

    return {**run, "labelled": stages.label(_ctx(run))}


@task(retries=0)
def validate(run: dict) -> dict:
    """Retries 0: a failed audit is not retried into success (the run goes to quarantine)."""
    from pipeline import run as stages

    outcome = stages.validate(_ctx(run))  # raises (task fails) when a suite fails
    return {**run, "validation": outcome["success"]}


@task
def publish(run: dict) -> dict:
    """Move the audited run into the lake; the task's outlets (if any) carry the run's week."""
    from pipeline import run as stages

    ctx = _ctx(run)
    counts = stages.publish(ctx)
    context = get_current_context()
    for asset in context["task"].outlets:
        context["outlet_events"][asset].extra = {
            "run_id": run["run_id"], "week": run["week"], "run_date": run["run_date"],
            "study": ctx.loaded.study.name, "data_dir": str(ctx.data.root),
        }
    return {**run, "published": counts}


@task
def mirror(run: dict) -> dict:
    """Copy the published run to object storage (param or $REFUSALS_LAKE_MIRROR); skipped if unset."""
    from airflow.exceptions import AirflowSkipException

    uri = get_current_context()["params"].get("lake_mirror") or os.environ.get("REFUSALS_LAKE_MIRROR")
    if not uri:
        raise AirflowSkipException("no lake mirror configured (param lake_mirror or $REFUSALS_LAKE_MIRROR)")
    from pipeline.mirror import mirror_run
    from pipeline.paths import DataDir

    return {**run, "mirrored": mirror_run(DataDir.from_env(run["data_dir"]), run["run_id"], uri)}


@task
def build_warehouse(run: dict) -> dict:
    from pipeline import run as stages

    return {**run, "tables": stages.warehouse(_ctx(run))}


@task
def report(run: dict) -> dict:
    from pipeline import run as stages

    return {**run, "report": stages.report(_ctx(run))}
