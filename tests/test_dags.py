"""DAG integrity (a DagBag with no import errors) and a real `airflow dags test` run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_model_spec, write_study


def test_dagbag_imports_cleanly_and_dags_are_wired() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags.get("refusal_study")
    assert dag is not None
    assert "refusals" in dag.tags
    assert [t.task_id for t in dag.topological_sort()] == [
        "prepare", "sample", "label", "validate", "publish", "build_warehouse", "report"
    ]
    assert all(t.retries >= 1 for t in dag.tasks if t.task_id != "validate")
    assert dag.get_task("sample").retries >= 1
    assert dag.get_task("validate").retries == 0  # a failed audit is not retried into success


def test_dag_files_do_no_work_at_parse_time() -> None:
    """Parsing a DAG file must not import the heavy stack (ray, vllm, duckdb, GX, torch)."""
    code = (
        "import sys, runpy; runpy.run_path(sys.argv[1]);"
        "heavy = [m for m in ('ray', 'vllm', 'duckdb', 'great_expectations', 'torch', 'pipeline.sample') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    for dag_file in (REPO / "dags").glob("*.py"):
        out = subprocess.run([sys.executable, "-c", code, str(dag_file)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"{dag_file.name} imports {out.stdout}"


@pytest.mark.slow
def test_airflow_dags_test_runs_the_study(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    home = tmp_path / "airflow"
    home.mkdir()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }
    study = write_study(
        tmp_path / "study.yaml",
        name="dagtest",
        models=[tiny_model_spec(tiny_model)],
        recorded=[{"path": str(shared_data / "speechmap_responses.parquet"), "deployment": "speechmap-recorded",
                   "format": "speechmap", "models": ["deepseek/deepseek-r1"], "languages": ["zh"]}],
        validation={"max_error_rate": 0.5},
    )
    migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    data = tmp_path / "data"
    conf = f'{{"study": "{study}", "data_dir": "{data}", "run_id": "dag-1"}}'
    run = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", "refusal_study", "--conf", conf],
                         env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "sampling tiny-random @ local-test: 12/12 samples" in log  # progress reaches Airflow's log
    assert (data / "warehouse.duckdb").exists()
    assert list((data / "reports").glob("*/report.html"))
    import duckdb

    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM samples WHERE run_id = 'dag-1'").fetchone()[0] == 12 + 50
    assert con.execute("SELECT count(*) FROM refusal_rates").fetchone()[0] > 0
    con.close()
