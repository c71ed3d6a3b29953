"""Submitting a stage to a Ray cluster through the Ray Jobs API, as production does.

The Airflow task stays light: it submits `refusals stage sample --study … --run-id …` as a Ray
job, streams the job's log lines into its own log (progress lines included), and fails if the
job fails. The job runs on the cluster's head node against the cluster's engines and writes to
the shared data folder, so a retried task resubmits the same run id and resumes.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


def job_python(python: str | None = None) -> str:
    """The interpreter a Ray job runs on the cluster: given, else $REFUSALS_RAY_PYTHON (set it
    when the cluster's image has Python elsewhere than the submitting machine), else this one."""
    import os

    return python or os.environ.get("REFUSALS_RAY_PYTHON") or sys.executable


def stage_entrypoint(stage: str, study: str, run_id: str, data_dir: str | None, python: str | None = None) -> str:
    """The command a Ray job runs for one stage."""
    args = [job_python(python), "-m", "pipeline"]
    if data_dir:
        args += ["--data-dir", data_dir]
    args += ["stage", stage, "--study", study, "--run-id", run_id]
    return " ".join(shlex.quote(a) for a in args)


def submit_and_wait(address: str, entrypoint: str, *, env: dict[str, str] | None = None,
                    submission_id: str | None = None, poll_s: float = 2.0, timeout_s: float = 86400) -> dict[str, Any]:
    """Submit a Ray job, echo its logs, and return its final status; raise if it did not succeed."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    previous = None
    if submission_id:
        try:
            previous = client.get_job_status(submission_id)
        except Exception:  # no such job yet
            previous = None
    if previous in (JobStatus.PENDING, JobStatus.RUNNING):
        # A retried Airflow task finds its run's job still going: follow it, never start a
        # second sampler on the same staging folder.
        job_id = submission_id
        log.info("following Ray job %s, already %s", job_id, previous.value)
    else:
        if previous is not None:
            submission_id = f"{submission_id}-{int(time.time())}"
        job_id = client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                                   runtime_env={"env_vars": env or {}})
        log.info("submitted Ray job %s to %s: %s", job_id, address, entrypoint)
    seen = 0
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while True:
        logs = client.get_job_logs(job_id)
        for line in logs[seen:].splitlines():
            log.info("[ray job %s] %s", job_id, line)
        seen = len(logs)
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"Ray job {job_id} did not finish within {timeout_s:.0f}s; stopped")
        time.sleep(poll_s)
    logs = client.get_job_logs(job_id)
    for line in logs[seen:].splitlines():
        log.info("[ray job %s] %s", job_id, line)
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        raise RuntimeError(f"Ray job {job_id} {status.value}: {info.message or ''}".strip())
    return {"job_id": job_id, "status": status.value}
