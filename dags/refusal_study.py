"""Run one study end to end: prompts → samples → labels → audit → publish → marts → report.

Wiring only: every task calls a stage function of `pipeline.run` (the tasks are shared with the
scheduled study DAGs, in `refusals_common.py`). Nothing heavy is imported at parse time. Run it
with
    airflow dags test refusal_study --conf '{"study": "studies/demo.yaml"}'
A retried or re-triggered run with the same run id resumes from what its staging folder holds.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag
from refusals_common import (
    DEFAULT_ARGS,
    TAGS,
    build_warehouse,
    label,
    prepare,
    publish,
    report,
    run_params,
    sample,
    validate,
)


@dag(
    dag_id="refusal_study",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "study"],
    params=run_params("studies/demo.yaml"),
    doc_md=__doc__,
)
def refusal_study():
    report(build_warehouse(publish(validate(label(sample(prepare()))))))


refusal_study()
