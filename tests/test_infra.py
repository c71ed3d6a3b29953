"""What can be checked here of running beyond one machine: the infra/ configuration files parse
and hold the keys the docs rely on, and the object-store mirror of published runs works (on a
`file://` URI; S3/GCS use the same pyarrow.fs calls). The local Ray cluster scripts are
exercised for real in tests/test_ray_cluster.py."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.lake import hive_path, write_parquet_atomic
from pipeline.paths import DataDir

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"


def _load(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def test_every_infra_yaml_parses() -> None:
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml"), REPO / "dags" / "schedules.yaml"])
    assert {f.relative_to(REPO).as_posix() for f in files} >= {
        "infra/ray-cluster.yaml", "infra/rayjob.yaml", "infra/kuberay-cluster.yaml", "infra/lake-pvc.yaml",
        "infra/airflow/values.yaml", "dags/schedules.yaml"}
    for f in files:
        docs = _load(f)
        assert docs and all(isinstance(d, dict) for d in docs), f


def test_helm_values_have_what_the_docs_rely_on() -> None:
    (values,) = _load(INFRA / "airflow" / "values.yaml")
    assert values["executor"] in {"KubernetesExecutor", "CeleryExecutor"}
    assert values["airflowVersion"] == "3.3.2"  # the version pinned in pyproject.toml
    assert values["images"]["airflow"]["repository"] and values["images"]["airflow"]["tag"]
    git = values["dags"]["gitSync"]
    assert git["enabled"] is True and git["subPath"] == "dags" and git["repo"] and git["branch"]
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["REFUSALS_DATA_DIR"].startswith("/lake/")
    assert env["REFUSALS_RAY_JOBS_ADDRESS"].startswith("http")
    # API keys: connections refusals_<deployment> as AIRFLOW_CONN_REFUSALS_<DEPLOYMENT> from Secrets
    conns = [s for s in values["secret"] if s["envName"].startswith("AIRFLOW_CONN_REFUSALS_")]
    assert conns and all(s["secretName"] and s["secretKey"] for s in conns)
    # the lake volume is the same claim the KubeRay job mounts, at the same path
    mounts = {m["name"]: m["mountPath"] for m in values["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in values["volumes"]}
    (job,) = _load(INFRA / "rayjob.yaml")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert claims["lake"] == head["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert mounts["lake"] == head["containers"][0]["volumeMounts"][0]["mountPath"]
    assert values["config"]["core"]["load_examples"] == "False"


def test_airflow_reaches_the_kuberay_cluster_and_shares_its_lake() -> None:
    (values,) = _load(INFRA / "airflow" / "values.yaml")
    (cluster,) = _load(INFRA / "kuberay-cluster.yaml")
    (pvc,) = _load(INFRA / "lake-pvc.yaml")
    env = {e["name"]: e["value"] for e in values["env"]}
    # KubeRay names the head Service <cluster>-head-svc; the Jobs API is the dashboard port
    assert env["REFUSALS_RAY_JOBS_ADDRESS"].startswith(f"http://{cluster['metadata']['name']}-head-svc.")
    assert env["REFUSALS_RAY_JOBS_ADDRESS"].endswith(":8265")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert {"containerPort": 8265, "name": "dashboard"} in head["containers"][0]["ports"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    groups = [head, *(g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"])]
    for spec in groups:  # every Ray pod mounts the same claim at the same path as Airflow
        assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert spec["containers"][0]["volumeMounts"][0]["mountPath"] == values["volumeMounts"][0]["mountPath"]
        ray_env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert ray_env["REFUSALS_DATA_DIR"] == env["REFUSALS_DATA_DIR"]
    assert any(s["envName"] == "RAY_AUTH_TOKEN" for s in values["secret"])


def test_ray_configs_have_their_key_parts() -> None:
    (cluster,) = _load(INFRA / "ray-cluster.yaml")
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert any(t["resources"].get("GPU") for t in cluster["available_node_types"].values())
    (job,) = _load(INFRA / "rayjob.yaml")
    assert job["kind"] == "RayJob" and job["apiVersion"].startswith("ray.io/")
    assert "refusals run" in job["spec"]["entrypoint"] and "--run-id demo-${WEEK}" in job["spec"]["entrypoint"]
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["REFUSALS_DATA_DIR"]


def test_schedules_registry_points_at_real_studies() -> None:
    (registry,) = _load(REPO / "dags" / "schedules.yaml")
    for name, entry in registry["studies"].items():
        study = (REPO / "dags" / entry["study"]).resolve()
        assert study.exists(), (name, study)
        assert yaml.safe_load(study.read_text())["name"] == name  # DAG suffix = study name


# --------------------------------------------------------------------------- mirror


def _publish_fake_run(data: DataDir, run_id: str, run_date: str, languages=("en", "zh")) -> None:
    """The lake layout `publish` writes, with tiny tables (the mirror copies files, never reads rows)."""
    t = pa.table({"run_id": [run_id], "x": [1]})
    for name in ("samples", "labels"):
        for lang in languages:
            write_parquet_atomic(t, hive_path(data.dataset(name), study="s", run_date=run_date, run_id=run_id,
                                              language=lang) / "part-0.parquet")
    write_parquet_atomic(t, hive_path(data.dataset("prompts"), study="s", run_date=run_date, run_id=run_id)
                         / "part-0.parquet")
    write_parquet_atomic(t, hive_path(data.dataset("runs"), study="s", run_id=run_id) / "run.parquet")


def test_mirror_copies_a_published_run_and_replaces_an_earlier_copy(tmp_path: Path) -> None:
    from pipeline.mirror import mirror_run

    data = DataDir(tmp_path / "data")
    _publish_fake_run(data, "s-2026-W10", "2026-03-04")
    _publish_fake_run(data, "s-2026-W09", "2026-02-25")
    bucket = tmp_path / "bucket"
    uri = f"file://{bucket}/refusals/lake"
    assert mirror_run(data, "s-2026-W10", uri) == 6  # 2 samples + 2 labels + prompts + run record
    remote = bucket / "refusals" / "lake"
    copied = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*.parquet"))
    assert copied == sorted(p.relative_to(data.lake).as_posix() for p in data.lake.rglob("*.parquet")
                            if "run_id=s-2026-W10" in p.parts)
    assert pq.read_table(remote / "runs" / "study=s" / "run_id=s-2026-W10" / "run.parquet").num_rows == 1

    # the same run republished on another day with fewer languages: the copy follows, nothing stale
    import shutil

    for name in ("samples", "labels", "prompts"):
        shutil.rmtree(data.dataset(name) / "study=s" / "run_date=2026-03-04")
    _publish_fake_run(data, "s-2026-W10", "2026-03-05", languages=("en",))
    assert mirror_run(data, "s-2026-W10", uri) == 4
    after = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*.parquet"))
    assert not [p for p in after if "run_date=2026-03-04" in p]
    assert len(after) == 4

    with pytest.raises(FileNotFoundError, match="not published"):
        mirror_run(data, "s-2026-W11", uri)
