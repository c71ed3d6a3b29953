"""The GPU path cannot run here (no GPU): its configuration is checked instead. The same
`engine_kwargs`/`engine_actor` build the CPU engines that the integration tests really run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.backends.vllm_backend import engine_kwargs, worker_env
from pipeline.config import EngineOptions

INFRA = Path(__file__).resolve().parent.parent / "infra"


def test_gpu_replica_settings_reach_vllm() -> None:
    e = EngineOptions(gpus_per_replica=4, tensor_parallel_size=4, replicas=2, gpu_memory_utilization=0.85,
                      max_model_len=8192, dtype="bfloat16", enforce_eager=False)
    kw = engine_kwargs("/models/x", e, seed=3)
    assert kw["tensor_parallel_size"] == 4 and kw["gpu_memory_utilization"] == 0.85
    assert kw["distributed_executor_backend"] == "mp"  # TP ranks inside the replica's actor
    assert "kv_cache_memory_bytes" not in kw  # on GPUs vLLM sizes the cache from utilization
    assert kw["dtype"] == "bfloat16" and kw["max_model_len"] == 8192 and kw["enforce_eager"] is False


def test_cpu_engine_settings() -> None:
    e = EngineOptions()
    kw = engine_kwargs("/models/x", e, seed=3)
    assert kw["kv_cache_memory_bytes"] == e.kv_cache_memory_bytes
    assert kw["enable_chunked_prefill"] is False  # per-request seeds stay exact
    assert "distributed_executor_backend" not in kw
    env = worker_env(e)
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and int(env["OMP_NUM_THREADS"]) >= 1


def test_gpu_actor_reserves_gpus() -> None:
    from pipeline.backends.vllm_backend import actor_options, engine_actor

    engine = EngineOptions(gpus_per_replica=2, tensor_parallel_size=2, cpus_per_replica=4)
    assert engine_actor(engine) is not None  # Ray accepts the options
    opts = actor_options(engine)
    assert opts["num_gpus"] == 2 and opts["num_cpus"] == 4
    assert opts["runtime_env"]["env_vars"]["OMP_NUM_THREADS"]


def test_too_few_gpus_for_tensor_parallelism_is_rejected() -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        EngineOptions(gpus_per_replica=1, tensor_parallel_size=2)


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "rayjob.yaml"])
def test_infra_files_parse(name: str) -> None:
    doc = yaml.safe_load((INFRA / name).read_text())
    assert isinstance(doc, dict)
    if name == "rayjob.yaml":
        assert doc["kind"] == "RayJob" and "refusals run --study" in doc["spec"]["entrypoint"]
        workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        assert workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    else:
        assert doc["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1


def test_ray_job_commands_use_the_cluster_python(monkeypatch) -> None:
    """A Ray job runs on the cluster, whose image may keep Python elsewhere than the machine
    that submits: $REFUSALS_RAY_PYTHON names it (else the submitting interpreter)."""
    import shlex
    import sys

    from pipeline.jobs import stage_entrypoint
    from pipeline.sample import SampleUnit, unit_entrypoint

    monkeypatch.delenv("REFUSALS_RAY_PYTHON", raising=False)
    assert shlex.split(stage_entrypoint("sample", "s.yaml", "r", None))[0] == sys.executable
    monkeypatch.setenv("REFUSALS_RAY_PYTHON", "/opt/conda/bin/python")
    assert shlex.split(stage_entrypoint("sample", "s.yaml", "r", "/lake"))[:3] == ["/opt/conda/bin/python", "-m", "pipeline"]
    unit = shlex.split(unit_entrypoint("s.yaml", "r", None, SampleUnit("dep", "m", 1, 2)))
    assert unit[:3] == ["/opt/conda/bin/python", "-m", "pipeline.sample"] and unit[unit.index("--shard") + 1] == "1"
