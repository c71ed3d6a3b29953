"""One scheduled sampling DAG per study of the registry (`schedules.yaml`): `refusal_study__<name>`.

    prepare → sample_units → sample_unit (mapped: one per recorded source and per model × shard)
            → label → validate → publish (updates the Asset `refusals_published__<name>`)
            → mirror (a copy in object storage, when `lake_mirror` is set; else skipped)

The run id comes from the logical date: `<study>-<ISO year>-W<week>`, and the run date is that
date, so a backfilled or caught-up week samples under its own id and lands in its own week of
the marts; a week that is already published is skipped (param `force` redoes it). Publishing
triggers the `weekly_report` DAG, which builds the warehouse and writes the week's report (the
warehouse is built there, by one DAG with one active run, so concurrent studies never contend
for the DuckDB file).

Wiring only; the registry is the only thing read at parse time (a small YAML file). Backfill:
    airflow backfill create --dag-id refusal_study__demo --from-date 2026-02-02 --to-date 2026-02-23
"""

from __future__ import annotations

from airflow.sdk import dag
from refusals_common import (
    DEFAULT_ARGS,
    TAGS,
    label,
    mirror,
    prepare,
    publish,
    published_asset,
    run_params,
    sample_unit,
    sample_units,
    scheduled_studies,
    validate,
)


def study_dag(entry):
    @dag(
        dag_id=entry.dag_id,
        schedule=entry.schedule,
        start_date=entry.start_date,
        catchup=entry.catchup,
        max_active_runs=1,  # one week at a time per study: backfills queue instead of piling onto Ray
        default_args=DEFAULT_ARGS,
        tags=[*TAGS, "study", "scheduled"],
        params=run_params(entry.study, shards=entry.shards),
        doc_md=__doc__,
    )
    def scheduled_study():
        run = prepare(weekly=True)
        sampled = sample_unit.partial(run=run).expand(unit=sample_units(run))
        labelled = label(run)
        sampled >> labelled
        published = publish.override(outlets=[published_asset(entry.name)])(validate(labelled))
        mirror(published)

    return scheduled_study()


for _entry in scheduled_studies():
    study_dag(_entry)
