"""DAG integrity (a DagBag with no import errors), the sampling units the scheduled DAGs map
over, and real `airflow dags test` runs of the study DAGs and the weekly report DAG."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO, tiny_model_spec, write_study

DAGS = REPO / "dags"


def _dagbag(monkeypatch: pytest.MonkeyPatch, registry: Path | None = None):
    """Parse the DAG folder as Airflow does: the folder (bundle) is on sys.path."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.syspath_prepend(str(DAGS))
    if registry is not None:
        monkeypatch.setenv("REFUSALS_SCHEDULES", str(registry))
    return DagBag(dag_folder=str(DAGS))


def _api_models(n: int) -> list[dict]:
    """Live models that need no weights (HTTP backend): enough to plan units without sampling."""
    return [{"name": f"org/model-{i}", "deployment": f"api-{i}", "backend": "openai",
             "base_url": "http://127.0.0.1:9/v1"} for i in range(n)]


def test_dagbag_imports_cleanly_and_dags_are_wired(monkeypatch: pytest.MonkeyPatch) -> None:
    bag = _dagbag(monkeypatch)
    assert bag.import_errors == {}
    assert {"refusal_study", "refusal_study__demo", "weekly_report"} <= set(bag.dags)
    for dag in bag.dags.values():  # every DAG: tags, and retries on every task but the audit
        assert "refusals" in dag.tags, dag.dag_id
        for t in dag.tasks:
            assert t.retries == 0 if t.task_id == "validate" else t.retries >= 1, (dag.dag_id, t.task_id)

    dag = bag.dags["refusal_study"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "prepare", "sample", "label", "validate", "publish", "build_warehouse", "report"
    ]
    assert dag.get_task("validate").retries == 0  # a failed audit is not retried into success

    weekly = bag.dags["refusal_study__demo"]
    assert [t.task_id for t in weekly.topological_sort()] == [
        "prepare", "sample_units", "sample_unit", "label", "validate", "publish", "mirror"
    ]
    assert weekly.timetable.expression == "0 3 * * 1" and weekly.catchup is False and weekly.max_active_runs == 1
    assert set(weekly.params) >= {"study", "run_id", "data_dir", "force", "ray_jobs_address", "shards", "lake_mirror"}
    assert weekly.params["study"] == str((REPO / "studies" / "demo.yaml").resolve())
    mapped = weekly.get_task("sample_unit")
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(mapped, MappedOperator)  # dynamic task mapping over the units
    assert set(mapped.op_kwargs_expand_input.value) == {"unit"} and set(mapped.partial_kwargs["op_kwargs"]) == {"run"}
    assert {a.name for a in weekly.get_task("publish").outlets} == {"refusals_published__demo"}
    assert weekly.get_task("label").upstream_task_ids == {"prepare", "sample_unit"}

    report = bag.dags["weekly_report"]
    assert [a.name for a in report.timetable.asset_condition.objects] == ["refusals_published__demo"]
    assert report.max_active_runs == 1


def test_registry_decides_the_scheduled_dags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "schedules.yaml"
    registry.write_text(yaml.safe_dump({"studies": {
        "alpha": {"study": "alpha.yaml", "schedule": "@weekly", "shards": 4, "catchup": True},
        "beta": {"study": "/abs/beta.yaml", "schedule": "0 6 * * 3"},
    }}))
    bag = _dagbag(monkeypatch, registry)
    assert bag.import_errors == {}
    assert {"refusal_study__alpha", "refusal_study__beta"} <= set(bag.dags)
    assert "refusal_study__demo" not in bag.dags
    alpha = bag.dags["refusal_study__alpha"]
    assert alpha.params["shards"] == 4 and alpha.catchup is True
    assert alpha.params["study"] == str(tmp_path / "alpha.yaml")  # relative to the registry
    assert {a.name for a in bag.dags["weekly_report"].timetable.asset_condition.objects} == {
        "refusals_published__alpha", "refusals_published__beta"}

    registry.write_text(yaml.safe_dump({"studies": {"alpha": {"study": "a.yaml", "schedule": "@weekly",
                                                              "shard": 2}}}))
    bag = _dagbag(monkeypatch, registry)
    errors = "\n".join(bag.import_errors.values())
    assert "field 'studies.alpha': unknown field 'shard'" in errors and str(registry) in errors
    assert "refusal_study" in bag.dags  # a bad registry does not take the manual DAG down with it


def test_dag_files_do_no_work_at_parse_time() -> None:
    """Parsing a DAG file must not import the heavy stack (ray, vllm, duckdb, GX, torch) nor the
    pipeline package (whose stage modules pull in pyarrow and more)."""
    code = (
        "import sys, runpy; sys.path.insert(0, sys.argv[2]); runpy.run_path(sys.argv[1]);"
        "heavy = [m for m in ('ray', 'vllm', 'duckdb', 'great_expectations', 'torch', 'pipeline', 'pyarrow')"
        " if m in sys.modules];"
        "print(','.join(heavy))"
    )
    files = sorted(DAGS.glob("*.py"))
    assert {f.name for f in files} >= {"refusal_study.py", "scheduled_studies.py", "weekly_report.py"}
    for dag_file in files:
        out = subprocess.run([sys.executable, "-c", code, str(dag_file), str(DAGS)], capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"{dag_file.name} imports {out.stdout}"


# --------------------------------------------------------------------------- units and run ids


def test_units_cover_models_shards_and_recorded_sources(tmp_path: Path, shared_data: Path) -> None:
    from pipeline.run import context, sample_units

    study = write_study(tmp_path / "study.yaml", models=_api_models(2), recorded=[
        {"path": str(shared_data / "speechmap_responses.parquet"), "deployment": "rec", "format": "speechmap"}])
    units = sample_units(context(study, "u-1", tmp_path / "data"), shards=3)
    assert units[0] == {"deployment": "rec", "model": None, "shard": 0, "shards": 1}
    assert [(u["model"], u["deployment"], u["shard"], u["shards"]) for u in units[1:]] == [
        (f"org/model-{m}", f"api-{m}", s, 3) for m in range(2) for s in range(3)]
    assert len(sample_units(context(study, "u-1", tmp_path / "data"), shards=1)) == 3


def test_shards_partition_the_keys(tmp_path: Path) -> None:
    """Every (prompt_id, rep) key belongs to exactly one shard, for any shard count."""
    from pipeline.config import load_study
    from pipeline.prompts import write_prompts
    from pipeline.sample import plan_requests, shard_prompts

    loaded = load_study(write_study(tmp_path / "study.yaml", models=_api_models(1), questions_per_topic=2,
                                   topics=["tiananmen_1989", "arithmetic", "weapons"]))
    prompts = pq.read_table(write_prompts(loaded, tmp_path / "prompts"))
    n = prompts.num_rows
    everything = {(r.prompt_id, r.rep) for r in plan_requests(prompts, 3, 1, "r", set())}
    for shards in (1, 2, 3, 5, n + 2):
        parts = [shard_prompts(prompts, s, shards) for s in range(shards)]
        sizes = [p.num_rows for p in parts]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1  # balanced
        keys = [{(r.prompt_id, r.rep) for r in plan_requests(p, 3, 1, "r", set())} for p in parts]
        assert set().union(*keys) == everything
        assert sum(len(k) for k in keys) == len(everything)  # disjoint


def test_a_shard_plans_only_its_own_missing_keys(tmp_path: Path) -> None:
    """Shards share a model's staging folder: one shard's chunks are neither the other's work
    nor its progress, and a resumed shard asks only for its own missing keys."""
    from pipeline.config import load_study
    from pipeline.prompts import write_prompts
    from pipeline.sample import model_dir, plan_model, shard_prompts

    loaded = load_study(write_study(tmp_path / "study.yaml", models=_api_models(1), repetitions=2))
    spec = loaded.study.models[0]
    prompts = pq.read_table(write_prompts(loaded, tmp_path / "prompts"))
    a, b = shard_prompts(prompts, 0, 2), shard_prompts(prompts, 1, 2)
    samples = tmp_path / "samples"
    folder = model_dir(samples, spec.deployment, spec.name)
    done_a = [(p, r) for p in a.column("prompt_id").to_pylist() for r in range(2)]
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"prompt_id": [p for p, _ in done_a], "rep": pa.array([r for _, r in done_a], pa.int32())}),
                   folder / "chunk-a.parquet")
    pq.write_table(pa.table({"prompt_id": [b.column("prompt_id")[0].as_py()], "rep": pa.array([1], pa.int32())}),
                   folder / "chunk-b.parquet")  # shard b was killed after one sample
    plan_a = plan_model(loaded, spec, "r", a, samples)
    assert plan_a.requests == [] and plan_a.summary.already_done == len(done_a) == plan_a.expected
    plan_b = plan_model(loaded, spec, "r", b, samples)
    assert plan_b.expected == b.num_rows * 2 and plan_b.summary.already_done == 1
    assert {(r.prompt_id, r.rep) for r in plan_b.requests}.isdisjoint(done_a)
    assert len(plan_b.requests) == plan_b.expected - 1


def test_a_unit_runs_as_its_own_command(tmp_path: Path, shared_data: Path) -> None:
    """What a Ray job runs for one mapped unit (`python -m pipeline.sample ...`), here on a
    recorded source so that no engine is needed."""
    import shlex

    from pipeline.lake import read_folder
    from pipeline.run import context, prepare
    from pipeline.sample import SampleUnit, unit_entrypoint, unit_submission_id

    study = write_study(tmp_path / "study.yaml", recorded=[
        {"path": str(shared_data / "speechmap_responses.parquet"), "deployment": "rec", "format": "speechmap",
         "models": ["deepseek/deepseek-r1"], "languages": ["zh"]}])
    data = tmp_path / "data"
    prepare(context(study, "job-1", data))
    unit = SampleUnit("rec")
    cmd = unit_entrypoint(str(study), "job-1", str(data), unit)
    out = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert read_folder(data / "staging" / "job-1" / "samples").num_rows == 50
    assert unit_submission_id("job-1", unit) == unit_submission_id("job-1", SampleUnit("rec"))  # stable on retry
    assert unit_submission_id("job-1", SampleUnit("m", "d", 0, 2)) != unit_submission_id("job-1", SampleUnit("m", "d", 1, 2))
    bad = subprocess.run(shlex.split(unit_entrypoint(str(study), "job-1", str(data), SampleUnit("nope"))),
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and "no recorded source with deployment 'nope'" in bad.stderr


def test_weekly_run_id_and_date_follow_the_logical_date(tmp_path: Path) -> None:
    from pipeline.run import start_run, weekly_run_id

    assert weekly_run_id("demo", datetime(2026, 3, 4).date()) == "demo-2026-W10"
    assert weekly_run_id("demo", datetime(2027, 1, 1).date()) == "demo-2026-W53"  # ISO year
    study = write_study(tmp_path / "study.yaml", name="wk", models=_api_models(1))
    run = start_run(study, data_dir=tmp_path / "data", when=datetime(2026, 3, 4, 3, tzinfo=timezone.utc), weekly=True)
    assert run["run_id"] == "wk-2026-W10" and run["run_date"] == "2026-03-04" and run["week"] == "2026-W10"
    record = json.loads((tmp_path / "data" / "staging" / "wk-2026-W10" / "run.json").read_text())
    assert record["week"] == "2026-W10"
    # an explicit run id wins over the derived one; the run date still follows the logical date
    named = start_run(study, "wk-manual", tmp_path / "data", when=datetime(2026, 2, 25, tzinfo=timezone.utc),
                      weekly=True)
    assert named["run_id"] == "wk-manual" and named["week"] == "2026-W09"


# --------------------------------------------------------------------------- airflow dags test


def _airflow_env(home: Path, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        **extra,
    }


def _airflow(env: dict[str, str], *args: str, timeout: int = 900) -> str:
    """Run `python -m airflow ARGS` (the project's interpreter: Ray workers need its vLLM)."""
    out = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    return log


@pytest.mark.slow
def test_airflow_dags_test_runs_the_study(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    env = _airflow_env(tmp_path / "airflow")
    study = write_study(
        tmp_path / "study.yaml",
        name="dagtest",
        models=[tiny_model_spec(tiny_model)],
        recorded=[{"path": str(shared_data / "speechmap_responses.parquet"), "deployment": "speechmap-recorded",
                   "format": "speechmap", "models": ["deepseek/deepseek-r1"], "languages": ["zh"]}],
        validation={"max_error_rate": 0.5},
    )
    _airflow(env, "db", "migrate", timeout=300)
    data = tmp_path / "data"
    conf = json.dumps({"study": str(study), "data_dir": str(data), "run_id": "dag-1"})
    log = _airflow(env, "dags", "test", "refusal_study", "--conf", conf)
    assert "sampling tiny-random @ local-test: 12/12 samples" in log  # progress reaches Airflow's log
    assert "preflight: tiny-random @ local-test: ok: weights in" in log  # the first task checked the model
    assert (data / "warehouse.duckdb").exists()
    assert list((data / "reports").glob("*/report.html"))
    import duckdb

    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM samples WHERE run_id = 'dag-1'").fetchone()[0] == 12 + 50
    assert con.execute("SELECT count(*) FROM refusal_rates").fetchone()[0] > 0
    con.close()


@pytest.fixture(scope="module")
def scheduled_week(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, shared_data: Path):
    """`airflow dags test refusal_study__dagweek 2026-03-04`: one tiny model in 2 shards plus a
    recorded source (3 mapped units), then the same week again. Shared by the tests below."""
    tmp = tmp_path_factory.mktemp("scheduled")
    study = write_study(
        tmp / "study.yaml",
        name="dagweek",
        models=[tiny_model_spec(tiny_model)],
        recorded=[{"path": str(shared_data / "speechmap_responses.parquet"), "deployment": "speechmap-recorded",
                   "format": "speechmap", "models": ["deepseek/deepseek-r1"], "languages": ["zh"]}],
        validation={"max_error_rate": 0.5},
    )
    registry = tmp / "schedules.yaml"
    registry.write_text(yaml.safe_dump({"studies": {"dagweek": {"study": str(study), "schedule": "0 3 * * 1",
                                                                "shards": 2}}}))
    home = tmp / "airflow"
    env = _airflow_env(home, REFUSALS_SCHEDULES=str(registry))
    _airflow(env, "db", "migrate", timeout=300)
    data = tmp / "data"
    conf = json.dumps({"data_dir": str(data), "lake_mirror": f"file://{tmp}/bucket/lake"})
    first = _airflow(env, "dags", "test", "refusal_study__dagweek", "2026-03-04", "--conf", conf)
    again = _airflow(env, "dags", "test", "refusal_study__dagweek", "2026-03-04T12:00:00+00:00", "--conf", conf)
    return {"env": env, "home": home, "data": data, "log": first, "again": again, "bucket": tmp / "bucket" / "lake"}


@pytest.mark.slow
def test_scheduled_study_dag_samples_the_logical_week_in_shards(scheduled_week) -> None:
    data, log = scheduled_week["data"], scheduled_week["log"]
    run_id = "dagweek-2026-W10"  # 2026-03-04 is in ISO week 10
    assert "sampling tiny-random @ local-test [shard 1/2]: 6/6 samples" in log
    assert "sampling tiny-random @ local-test [shard 2/2]: 6/6 samples" in log

    db = sqlite3.connect(scheduled_week["home"] / "airflow.db")
    mapped = db.execute("SELECT map_index, state FROM task_instance WHERE dag_id = 'refusal_study__dagweek' "
                        "AND task_id = 'sample_unit' ORDER BY map_index").fetchall()
    # the first run: 3 mapped units (recorded source, 2 shards of the model); the second run of
    # the week was skipped before mapping (one unexpanded, skipped instance)
    assert mapped == [(-1, "skipped"), (0, "success"), (1, "success"), (2, "success")]
    names = [r[0] for r in db.execute("SELECT rendered_map_index FROM task_instance WHERE task_id = 'sample_unit' "
                                      "AND map_index >= 0 ORDER BY map_index")]
    assert names == ["recorded speechmap-recorded", "tiny-random @ local-test shard 1/2",
                     "tiny-random @ local-test shard 2/2"]  # mapped instances named in the UI
    events = db.execute("SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                        "WHERE a.name = 'refusals_published__dagweek'").fetchall()
    assert len(events) == 1  # the second run of the week was skipped: no second event
    extra = json.loads(events[0][0])
    assert extra["run_id"] == run_id and extra["week"] == "2026-W10" and extra["data_dir"] == str(data)
    db.close()

    # published: the run record, with the logical date's day and week
    from pipeline.lake import read_folder  # files carry their keys; partition folders are not parsed

    runs = read_folder(data / "lake" / "runs").to_pylist()
    assert [(r["run_id"], str(r["run_date"]), r["week"]) for r in runs] == [(run_id, "2026-03-04", "2026-W10")]
    samples = read_folder(data / "lake" / "samples", columns=["run_id", "model", "deployment", "prompt_id", "rep"])
    assert set(samples.column("run_id").to_pylist()) == {run_id}
    live = [r for r in samples.to_pylist() if r["deployment"] == "local-test"]
    keys = [(r["prompt_id"], r["rep"]) for r in live]
    assert len(keys) == 12 and len(set(keys)) == 12  # 4 prompts × 3 reps, each key exactly once
    assert samples.num_rows == 12 + 50
    assert (data / "lake" / "samples" / "study=dagweek" / "run_date=2026-03-04").is_dir()
    assert not (data / "staging" / run_id).exists()
    mirrored = read_folder(scheduled_week["bucket"] / "runs").column("run_id").to_pylist()
    assert mirrored == [run_id]  # the lake_mirror param copied the published run

    assert "already published" in scheduled_week["again"]  # the same week again: skipped, not resampled
    assert "sampling tiny-random" not in scheduled_week["again"]


@pytest.mark.slow
def test_weekly_report_dag_reports_the_published_week(scheduled_week) -> None:
    data = scheduled_week["data"]
    conf = json.dumps({"data_dir": str(data)})
    _airflow(scheduled_week["env"], "dags", "test", "weekly_report", "2026-03-04", "--conf", conf)
    week = data / "reports" / "2026-W10"
    assert (week / "report.html").stat().st_size > 0 and (week / "report.md").stat().st_size > 0
    import duckdb

    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT run_id, week FROM runs").fetchall() == [("dagweek-2026-W10", "2026-W10")]
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 12 + 50
    con.close()

    # Asset-triggered, the DAG's task gets the publish events' extras: the week and data folder
    # come from them (here the event the sampling DAG recorded), and the run is reloaded, not doubled.
    import shutil

    from pipeline.run import report_published

    db = sqlite3.connect(scheduled_week["home"] / "airflow.db")
    (extra,) = db.execute("SELECT extra FROM asset_event").fetchone()
    db.close()
    shutil.rmtree(week)
    out = report_published([json.loads(extra)])
    assert list(out) == ["2026-W10"] and Path(out["2026-W10"]["html"]).parent == week
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 12 + 50
    con.close()


@pytest.mark.slow
def test_a_run_that_fails_validation_fails_the_dag_and_touches_nothing(tmp_path: Path) -> None:
    """Write, audit, publish under Airflow: a run whose error rate is above the study's bound
    fails the validate task, waits in quarantine with its summary, and neither the lake, the
    warehouse nor a report sees it."""
    rows = [{"model": "flaky", "prompt": f"Question {i}?", "response": None if i % 2 else "An answer.",
             "error": "HTTP 503" if i % 2 else None, "language": "en"} for i in range(20)]
    source = tmp_path / "flaky.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    study = write_study(tmp_path / "study.yaml", name="flaky",
                        recorded=[{"path": str(source), "deployment": "api", "format": "generic"}],
                        validation={"max_error_rate": 0.05})
    env = _airflow_env(tmp_path / "airflow")
    _airflow(env, "db", "migrate", timeout=300)
    data = tmp_path / "data"
    conf = json.dumps({"study": str(study), "data_dir": str(data), "run_id": "flaky-1"})
    out = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", "refusal_study", "--conf", conf],
                         env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    log = out.stdout + out.stderr
    assert "failed validation" in log and "error_rate" in log
    assert "new_state=failed" in log, log[-3000:]  # the validate task failed, loudly
    assert re.search(r"DagRun Finished: dag_id=refusal_study[^\n]*state=failed", log), log[-3000:]
    assert "published run" not in log
    summary = (data / "quarantine" / "flaky-1" / "validation.md").read_text(encoding="utf-8")
    assert "error_rates: FAILED" in summary and "model=flaky" in summary
    assert (data / "validation" / "flaky-1" / "index.html").exists()
    assert not list((data / "lake").rglob("*.parquet")) if (data / "lake").exists() else True
    assert not (data / "warehouse.duckdb").exists() and not (data / "reports").exists()


@pytest.mark.slow
def test_a_dead_endpoint_fails_the_first_task_with_its_cause(tmp_path: Path) -> None:
    """The preflight in the prepare task: a live model whose endpoint refuses connections fails
    the DAG run at its first task (after its 2 retries, a minute apart: an endpoint that comes
    back within them is not a failure), the cause in the task log; nothing is sampled."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    study = write_study(tmp_path / "study.yaml", name="deadapi", models=[
        {"name": "m", "deployment": "api", "backend": "openai", "base_url": url}])
    env = _airflow_env(tmp_path / "airflow")
    _airflow(env, "db", "migrate", timeout=300)
    data = tmp_path / "data"
    conf = json.dumps({"study": str(study), "data_dir": str(data), "run_id": "dead-1"})
    out = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", "refusal_study", "--conf", conf],
                         env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    log = out.stdout + out.stderr
    assert f"connection refused at {url}" in log and "preflight failed" in log, log[-3000:]
    assert re.search(r"DagRun Finished: dag_id=refusal_study[^\n]*state=failed", log), log[-3000:]
    assert not list(data.rglob("chunk-*.parquet"))
