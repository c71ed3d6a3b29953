"""Run one study end to end: prompts → samples → labels → audit → publish → marts → report.

Wiring only: every task calls a stage function of `pipeline.run`. Nothing heavy is imported
at parse time. Run it with
    airflow dags test refusal_study --conf '{"study": "studies/demo.yaml"}'
A retried or re-triggered run with the same run id resumes from what its staging folder holds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=1)}


def _ctx(run: dict):
    from pipeline.run import context

    return context(run["study"], run["run_id"], run["data_dir"])


@dag(
    dag_id="refusal_study",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["refusals", "study"],
    params={
        "study": Param("studies/demo.yaml", type="string", description="study YAML file"),
        "run_id": Param(None, type=["null", "string"], description="resume or name a run"),
        "data_dir": Param(None, type=["null", "string"], description="data folder (default ./data)"),
        "force": Param(False, type="boolean", description="redo a run id that is already published"),
        "ray_jobs_address": Param(
            None,
            type=["null", "string"],
            description="submit sampling as a Ray job to this cluster (e.g. http://head:8265); "
            "default $REFUSALS_RAY_JOBS_ADDRESS, else sample in the task",
        ),
    },
    doc_md=__doc__,
)
def refusal_study():
    @task
    def prepare() -> dict:
        from pipeline import run as stages

        params = get_current_context()["params"]
        logical = get_current_context().get("logical_date")
        loaded = stages.load_study(params["study"])
        run_id = params.get("run_id") or stages.default_run_id(loaded.study.name, logical)
        run = {"study": str(loaded.path), "run_id": run_id, "data_dir": params.get("data_dir")}
        ctx = _ctx(run)
        if stages.skip_published(ctx, bool(params.get("force"))):
            from airflow.exceptions import AirflowSkipException

            raise AirflowSkipException(f"run {run_id} is already published (set force to redo it)")
        record = stages.prepare(ctx, run_date=logical.date() if logical else None)
        return {**run, "run_date": record["run_date"]}

    @task(retries=3, execution_timeout=timedelta(hours=12))
    def sample(run: dict) -> dict:
        import os

        from pipeline import run as stages

        address = get_current_context()["params"].get("ray_jobs_address") or os.environ.get(
            "REFUSALS_RAY_JOBS_ADDRESS"
        )
        if address:  # production: the cluster samples; this task submits and follows the job
            from pipeline.jobs import stage_entrypoint, submit_and_wait

            entry = stage_entrypoint("sample", run["study"], run["run_id"], run["data_dir"])
            job = submit_and_wait(address, entry, submission_id=f"refusals-{run['run_id']}-sample")
            return {**run, "ray_job": job}
        return {**run, "summaries": stages.sample(_ctx(run))}

    @task
    def label(run: dict) -> dict:
        from pipeline import run as stages

        return {**run, "labelled": stages.label(_ctx(run))}

    @task(retries=0)
    def validate(run: dict) -> dict:
        from pipeline import run as stages

        outcome = stages.validate(_ctx(run))  # raises (task fails) when a suite fails
        return {**run, "validation": outcome["success"]}

    @task
    def publish(run: dict) -> dict:
        from pipeline import run as stages

        return {**run, "published": stages.publish(_ctx(run))}

    @task
    def build_warehouse(run: dict) -> dict:
        from pipeline import run as stages

        return {**run, "tables": stages.warehouse(_ctx(run))}

    @task
    def report(run: dict) -> dict:
        from pipeline import run as stages

        return {**run, "report": stages.report(_ctx(run))}

    report(build_warehouse(publish(validate(label(sample(prepare()))))))


refusal_study()
