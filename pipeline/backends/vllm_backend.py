"""The `vllm` backend: an offline vLLM engine, loaded once per worker.

`VllmEngine` is a plain class (usable in-process and in benchmarks); `engine_actor` wraps it
as a Ray actor so the sampling stage can run one engine per GPU (or CPU slot) anywhere in a
Ray cluster. Environment variables vLLM reads at import time are set through Ray's
`runtime_env`, before the actor imports vllm.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pipeline.backends.base import Request, SamplingSettings, error_result, split_reasoning
from pipeline.config import EngineOptions


def worker_env(engine: EngineOptions) -> dict[str, str]:
    """Environment for an engine process.

    Ray sets OMP_NUM_THREADS from the actor's CPU reservation (1 for a fraction), which
    halves vLLM's CPU speed: set it to the cores we mean to use.
    """
    threads = os.environ.get("REFUSALS_OMP_THREADS") or str(max(1, os.cpu_count() or 1))
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    }
    if engine.kv_cache_memory_bytes:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, engine.kv_cache_memory_bytes // 2**30))
    return env


def engine_kwargs(model_dir: str, engine: EngineOptions, seed: int) -> dict[str, Any]:
    """Arguments of `vllm.LLM` for one replica (GPU and CPU alike)."""
    kwargs: dict[str, Any] = {
        "model": model_dir,
        "max_model_len": engine.max_model_len,
        "dtype": engine.dtype,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "enable_prefix_caching": engine.enable_prefix_caching,
        # Per-request seeds are only honoured exactly without chunked prefill on CPU.
        "enable_chunked_prefill": False,
        "enforce_eager": engine.enforce_eager,
        "seed": seed,
    }
    if engine.gpus_per_replica == 0 and engine.kv_cache_memory_bytes:
        kwargs["kv_cache_memory_bytes"] = engine.kv_cache_memory_bytes
    if engine.gpus_per_replica > 0:
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
        if engine.tensor_parallel_size > 1:
            # Inside one Ray actor that holds all the replica's GPUs.
            kwargs["distributed_executor_backend"] = "mp"
    return kwargs


class VllmEngine:
    """One vLLM engine; `generate` turns requests into result rows."""

    def __init__(self, model_dir: str, engine: EngineOptions, seed: int = 0) -> None:
        for key, value in worker_env(engine).items():
            os.environ.setdefault(key, value)
        from vllm import LLM

        self.llm = LLM(**engine_kwargs(model_dir, engine, seed))

    def ready(self) -> bool:
        """Returns once the engine is loaded (the constructor has run)."""
        return True

    def generate(self, requests: list[Request], sampling: SamplingSettings) -> list[dict]:
        """One result dict per request, in order; a request that fails on its own is an error row."""
        from vllm import SamplingParams

        if not requests:
            return []
        params = [
            SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=r.seed,
            )
            for r in requests
        ]
        start = time.perf_counter()
        try:
            outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        except Exception:
            # One bad request (e.g. a prompt longer than max_model_len) fails the whole batch:
            # retry one by one so only the requests that fail on their own become error rows.
            # If every request fails, the engine itself is broken: raise, so that Ray retries
            # the call and, failing that, the stage fails and the run can be resumed later.
            outputs = []
            for r, p in zip(requests, params):
                try:
                    outputs.append(self.llm.chat([r.messages], [p], use_tqdm=False)[0])
                except Exception as exc:
                    outputs.append(exc)
            if all(isinstance(o, Exception) for o in outputs):
                raise outputs[0]
        elapsed = time.perf_counter() - start
        rows = []
        for r, out in zip(requests, outputs, strict=True):
            if isinstance(out, Exception):
                rows.append(error_result(r, f"{type(out).__name__}: {out}"))
                continue
            completion = out.outputs[0]
            visible, reasoning = split_reasoning(completion.text)
            rows.append(
                {
                    "prompt_id": r.prompt_id,
                    "rep": r.rep,
                    "seed": r.seed,
                    "response_text": visible,
                    "reasoning_text": reasoning,
                    "finish_reason": completion.finish_reason,
                    "prompt_tokens": len(out.prompt_token_ids or []),
                    "completion_tokens": len(completion.token_ids),
                    # Offline batches have no per-request latency; record the batch's share.
                    "latency_s": elapsed / len(requests),
                    "error": None,
                    "streamed_text": None,
                }
            )
        return rows


def actor_options(engine: EngineOptions) -> dict[str, Any]:
    """Ray resources and environment of one engine replica."""
    from pipeline.paths import REPO_ROOT

    env = worker_env(engine)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "num_cpus": engine.cpus_per_replica,
        "num_gpus": engine.gpus_per_replica,
        "runtime_env": {"env_vars": env},
        # A replica that dies (OOM, a killed process) is restarted and its call retried;
        # the chunk's samples are only written once the call returns, so nothing is doubled.
        "max_restarts": 3,
        "max_task_retries": 3,
    }


def engine_actor(engine: EngineOptions):  # -> ray actor class
    """`VllmEngine` as a Ray actor class with this engine's resources and environment."""
    import ray

    return ray.remote(VllmEngine).options(**actor_options(engine))
