"""Sampling on a real multi-process Ray cluster on localhost: a head and a second node
process, started by infra/local-cluster.sh; the run reaches it through RAY_ADDRESS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_model_spec, write_study

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sampling_on_a_two_node_cluster(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port, dash = _free_port(), _free_port()
    ray_tmp = f"/tmp/refusals-ray-{port}"  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_PORT": str(port), "RAY_DASHBOARD_PORT": str(dash), "RAY_AUTH_MODE": "disabled",
           "RAY": str(Path(sys.executable).parent / "ray"), "RAY_TMP": ray_tmp}
    script = REPO / "infra" / "local-cluster.sh"
    up = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr[-2000:]
    address = f"127.0.0.1:{port}"
    try:
        nodes = subprocess.run(
            [sys.executable, "-c",
             "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
             "print(sum(1 for n in ray.nodes() if n['Alive']))", address],
            capture_output=True, text=True, timeout=120,
        )
        assert nodes.stdout.strip().splitlines()[-1] == "2", nodes.stderr[-2000:]

        # two engine replicas, one CPU each: one lands on each node
        spec = tiny_model_spec(tiny_model, replicas=2, cpus_per_replica=1, batch_size=4)
        study = write_study(tmp_path / "study.yaml", name="cluster", models=[spec], repetitions=4)
        data = tmp_path / "data"
        run = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", "--study", str(study), "--run-id", "cluster-1"],
            env={**env, "RAY_ADDRESS": address, "REFUSALS_DATA_DIR": str(data)},
            capture_output=True, text=True, timeout=900, cwd=REPO,
        )
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        q = subprocess.run(
            [sys.executable, "-m", "pipeline", "sql",
             "SELECT count(*) AS n, count(DISTINCT (prompt_id, rep)) AS keys FROM samples", "--format", "json"],
            env={**env, "REFUSALS_DATA_DIR": str(data)}, capture_output=True, text=True, timeout=120, cwd=REPO,
        )
        assert json.loads(q.stdout) == [{"n": 16, "keys": 16}]

        # the production path: the sampling stage submitted through the Ray Jobs API
        from pipeline import run as stages
        from pipeline.jobs import stage_entrypoint, submit_and_wait
        from pipeline.lake import read_folder

        data2 = tmp_path / "data-jobs"
        ctx = stages.context(study, "jobs-1", data2)
        stages.prepare(ctx)
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # this process is a Jobs API client of the cluster
        status = submit_and_wait(f"http://127.0.0.1:{dash}",
                                 stage_entrypoint("sample", str(study), "jobs-1", str(data2)), poll_s=1)
        assert status["status"] == "SUCCEEDED"
        staged = read_folder(ctx.staging / "samples")
        assert staged.num_rows == 16 and set(staged.column("run_id").to_pylist()) == {"jobs-1"}
        with pytest.raises(RuntimeError, match="FAILED"):
            submit_and_wait(f"http://127.0.0.1:{dash}",
                            stage_entrypoint("sample", str(tmp_path / "missing.yaml"), "jobs-2", str(data2)),
                            poll_s=1)

        # stop takes down this cluster's processes and nothing else on the machine
        down = subprocess.run([str(script), "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True)
        assert left.stdout.strip() == "", left.stdout
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=120)
