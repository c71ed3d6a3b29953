"""The weekly report: runs when a scheduled study publishes a week's data.

Triggered by the Assets `refusals_published__<study>` of every study in the registry (any of
them). It loads the newly published runs (and any other published run not yet loaded) into the
warehouse, then writes the report of each week those runs belong to. One active run at a time:
it is the only writer of the DuckDB warehouse among the scheduled DAGs.

Run by hand for one week:
    airflow dags test weekly_report --conf '{"week": "2026-W10"}'
Without `week` and without triggering events, it reports the week of its logical date.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import AssetAny, Param, dag, get_current_context, task
from refusals_common import DEFAULT_ARGS, TAGS, published_asset, scheduled_studies

ASSETS = [published_asset(entry.name) for entry in scheduled_studies()]


@task
def published_runs() -> list[dict]:
    """The publish events that triggered this run (run id, week, data folder of each)."""
    events = get_current_context().get("triggering_asset_events") or {}
    return [dict(event.extra or {}) for asset in events for event in events[asset]]


@task
def build_and_report(events: list[dict]) -> dict:
    from pipeline import run as stages

    context = get_current_context()
    params = context["params"]
    logical = context.get("logical_date")
    return stages.report_published(events, data_dir=params.get("data_dir"), week=params.get("week"),
                                   when=logical.date() if logical else None)


@dag(
    dag_id="weekly_report",
    schedule=AssetAny(*ASSETS) if ASSETS else None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "report"],
    params={
        "week": Param(None, type=["null", "string"], pattern=r"^\d{4}-W\d{2}$",
                      description="the ISO week to report (default: the weeks just published)"),
        "data_dir": Param(None, type=["null", "string"],
                          description="data folder (default: the one the publish events name, else ./data)"),
    },
    doc_md=__doc__,
)
def weekly_report():
    build_and_report(published_runs())


weekly_report()
