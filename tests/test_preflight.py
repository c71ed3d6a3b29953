"""The preflight (`refusals plan`, the first step of `refusals run`) and failing fast mid-run,
against local HTTP servers on 127.0.0.1 that answer, refuse keys or fail with 500s, and a port
where nothing listens (connection refused)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_study
from pipeline.errors import DeploymentFailing
from pipeline.lake import read_folder
from pipeline.sample import model_dir
from tests.conftest import write_study
from tests.test_cli import assert_clean_error, cli

KEY = "sk-preflight-SECRET-0123456789"


class Api(BaseHTTPRequestHandler):
    """`ok` answers the first `ok_first` requests (None: all), then `fail_code`; `need_key`
    answers 401 to a request without the right key."""

    ok_first: int | None = None
    fail_code = 500
    need_key = False
    calls = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            Api.calls += 1
            n = Api.calls
        if self.need_key and self.headers.get("Authorization") != f"Bearer {KEY}":
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error": "invalid api key"}')
            return
        if self.ok_first is not None and n > self.ok_first:
            self.send_response(self.fail_code)
            self.end_headers()
            self.wfile.write(b"upstream exploded")
            return
        text = f"ok {body['messages'][-1]['content'][:20]}"
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for e in ({"choices": [{"delta": {"content": text}, "finish_reason": "stop"}]},
                      {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}):
                self.wfile.write(f"data: {json.dumps(e)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        out = json.dumps({"choices": [{"message": {"content": text}, "finish_reason": "length"}],
                          "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def api():
    Api.ok_first, Api.fail_code, Api.need_key, Api.calls = None, 500, False, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> str:
    """A base URL where nothing listens: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _model(base_url: str, **extra) -> dict:
    return {"name": "m", "deployment": "api", "backend": "openai", "base_url": base_url, **extra}


# --------------------------------------------------------------------------- the plan


def test_plan_counts_the_work(tmp_path: Path) -> None:
    from pipeline.preflight import estimate_tokens, format_plan, plan_study

    study = load_study(write_study(tmp_path / "s.yaml", models=[_model("http://127.0.0.1:9/v1"),
                                                                 _model("http://127.0.0.1:9/v1", deployment="b")]))
    plan = plan_study(study)
    assert plan.prompts == 4 and plan.repetitions == 3 and plan.live_models == 2
    assert plan.samples == 24 and plan.completion_tokens == 24 * 12  # max_tokens 12 per sample
    assert plan.prompt_tokens > 0 and plan.tokens == plan.prompt_tokens + plan.completion_tokens
    assert len(plan.cells) == 8 and {c.prompts for c in plan.cells} == {1}
    assert {(c.deployment, c.topic, c.language) for c in plan.cells} == {
        (d, t, lang) for d in ("api", "b") for t in ("tiananmen_1989", "arithmetic") for lang in ("en", "zh")}
    text = format_plan(plan)
    assert "samples:  24" in text and "an estimate" in text and "tiananmen_1989" in text
    assert estimate_tokens("abcdefgh") == 2 and estimate_tokens("天安门") == 3


def test_plan_fails_fast_on_a_refused_connection(tmp_path: Path) -> None:
    url = closed_port()
    study = write_study(tmp_path / "s.yaml", models=[_model(url)])
    t0 = time.monotonic()
    proc = cli("plan", "--study", str(study), data_dir=tmp_path / "data")
    assert time.monotonic() - t0 < 30
    assert_clean_error(proc)
    assert f"connection refused at {url}" in proc.stderr
    assert "samples:  12" in proc.stdout  # the work is printed before the checks
    assert not (tmp_path / "data").exists()  # a plan writes nothing


def test_plan_checks_the_key_and_never_prints_it(api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Api.need_key = True
    study = write_study(tmp_path / "s.yaml", models=[_model(api, api_key_env="PREFLIGHT_KEY")])
    monkeypatch.delenv("PREFLIGHT_KEY", raising=False)
    missing = cli("plan", "--study", str(study), data_dir=tmp_path / "data")
    assert_clean_error(missing)
    assert "PREFLIGHT_KEY" in missing.stderr and Api.calls == 0  # nothing sent without the key

    monkeypatch.setenv("PREFLIGHT_KEY", "sk-wrong-wrong-wrong-0000")
    wrong = cli("plan", "--study", str(study), data_dir=tmp_path / "data")
    assert_clean_error(wrong)
    assert "HTTP 401" in wrong.stderr and "API key was refused" in wrong.stderr
    assert "sk-wrong" not in wrong.stdout + wrong.stderr

    monkeypatch.setenv("PREFLIGHT_KEY", KEY)
    ok = cli("plan", "--study", str(study), data_dir=tmp_path / "data")
    assert ok.returncode == 0, ok.stderr
    assert "m @ api: ok" in ok.stdout and "API key present ($PREFLIGHT_KEY)" in ok.stdout
    assert KEY not in ok.stdout + ok.stderr


def test_weights_checked_without_an_engine(tmp_path: Path, tiny_model: Path) -> None:
    from pipeline.preflight import check_folder, run_checks

    study = load_study(write_study(tmp_path / "s.yaml", models=[
        {"name": "tiny", "deployment": "local", "backend": "vllm", "model_path": str(tiny_model)}]))
    [check] = run_checks(study)
    assert check.ok, check.message

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json" in check_folder(empty)
    (empty / "config.json").write_text("{}")
    assert "no weights" in check_folder(empty)
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text("{}")
    weights = next(tiny_model.glob("*.safetensors")).read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert "truncated" in check_folder(cut)
    assert "not found" in check_folder(tmp_path / "nope")


def test_run_checks_first(tmp_path: Path) -> None:
    """`refusals run` stops at the preflight with the cause; --no-preflight goes on to sample."""
    url = closed_port()
    study = write_study(tmp_path / "s.yaml", repetitions=1, models=[_model(url, max_consecutive_failures=2)])
    proc = cli("run", "--study", str(study), "--run-id", "pf-1", data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert "preflight failed" in proc.stderr and f"connection refused at {url}" in proc.stderr
    assert not list((tmp_path / "data").rglob("chunk-*.parquet"))  # nothing was sampled


# --------------------------------------------------------------------------- failing fast


def _fast_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.backends import openai_backend

    orig = openai_backend.OpenAIClient.__init__

    def fast(self, spec, **kw):
        orig(self, spec, **{**kw, "max_retries": 2, "timeout_s": 2.0, "backoff_base_s": 0.01, "backoff_cap_s": 0.02})

    monkeypatch.setattr(openai_backend.OpenAIClient, "__init__", fast)


def test_fail_fast_keeps_the_samples_and_resumes(api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture,
                                                 capsys: pytest.CaptureFixture) -> None:
    import logging

    from pipeline.backends.openai_backend import sample_openai
    from pipeline.prompts import write_prompts

    caplog.set_level(logging.INFO)
    _fast_client(monkeypatch)
    Api.ok_first = 5  # then 500s
    study = load_study(write_study(tmp_path / "s.yaml", repetitions=6,
                                   models=[_model(api, concurrency=1, max_consecutive_failures=3)]))
    write_prompts(study, tmp_path / "prompts")
    prompts = pq.read_table(tmp_path / "prompts" / "catalog.parquet")
    spec = study.study.models[0]
    with pytest.raises(DeploymentFailing) as info:
        sample_openai(study, spec, "ff-1", prompts, tmp_path / "samples")
    msg = str(info.value)
    assert "stopped after 3 requests in a row failed" in msg and "HTTP 500" in msg and api in msg
    assert "5 of 24 samples are written and kept" in msg and "run ff-1 resumes" in msg
    out = capsys.readouterr()  # (Airflow's logging, once imported in this process, writes to stdout)
    assert msg in caplog.text + out.out + out.err  # logged too: the Airflow task log shows it
    assert Api.calls == 5 + 3 * 3  # 3 failing requests × (1 + 2 retries), not 19 × 3
    kept = read_folder(model_dir(tmp_path / "samples", "api", "m"))
    assert kept.num_rows == 5 and kept.column("error").null_count == 5  # failures are not written

    Api.ok_first = None  # the endpoint is back: the resume asks only for the rest
    summary = sample_openai(study, spec, "ff-1", prompts, tmp_path / "samples")
    assert summary.sampled_now == 19 and summary.already_done == 5
    table = read_folder(model_dir(tmp_path / "samples", "api", "m"))
    keys = list(zip(table.column("prompt_id").to_pylist(), table.column("rep").to_pylist()))
    assert len(keys) == len(set(keys)) == 24 and table.column("error").null_count == 24


def test_isolated_failures_do_not_stop_a_run(api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure between successes resets the count; 0 never stops."""
    from pipeline.backends.openai_backend import FailureStreak

    streak = FailureStreak(2)
    for failed in (True, False, True, False, True):
        streak.add({"transport_failure": failed, "error": "x" if failed else None})
    assert not streak.stop.is_set() and streak.count == 1
    never = FailureStreak(0)
    for _ in range(100):
        never.add({"transport_failure": True, "error": "x"})
    assert not never.stop.is_set()


def test_fail_fast_through_the_cli(api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key the endpoint refuses on every request: `run --no-preflight` stops the deployment
    after 2 failed requests, exits 2 with the cause, no traceback, and the key is not printed."""
    Api.need_key = True
    study = write_study(tmp_path / "s.yaml", models=[
        _model(api, api_key_env="FF_KEY", max_consecutive_failures=2, concurrency=1)])
    monkeypatch.setenv("FF_KEY", "sk-refused-refused-0000")
    proc = cli("run", "--study", str(study), "--run-id", "ff-cli", "--no-preflight", data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert "sampling stopped after 2 requests in a row failed" in proc.stderr and "HTTP 401" in proc.stderr
    assert "run ff-cli resumes" in proc.stderr and "sk-refused" not in proc.stdout + proc.stderr
    assert Api.calls == 2  # 401 is not retried; the third request is never sent
    assert (tmp_path / "data" / "staging" / "ff-cli" / "run.json").exists()  # resumable


def test_fail_fast_setting_does_not_change_the_study_hash(tmp_path: Path) -> None:
    a = load_study(write_study(tmp_path / "a.yaml", models=[_model("http://127.0.0.1:9/v1")]))
    b = load_study(write_study(tmp_path / "b.yaml", models=[_model("http://127.0.0.1:9/v1",
                                                                   max_consecutive_failures=5)]))
    assert a.study_hash == b.study_hash
    assert a.study.models[0].max_consecutive_failures == 20


def test_the_dags_first_task_runs_the_preflight(tmp_path: Path) -> None:
    """`start_run` is what the DAGs' prepare task calls: with preflight (the DAG's default) a
    dead endpoint fails it with the cause, after the run is staged (a retry resumes it)."""
    from pipeline.preflight import PreflightFailed
    from pipeline.run import start_run

    url = closed_port()
    study = write_study(tmp_path / "s.yaml", models=[_model(url)])
    with pytest.raises(PreflightFailed, match=f"connection refused at {url}"):
        start_run(study, "dag-1", tmp_path / "data", preflight=True)
    assert (tmp_path / "data" / "staging" / "dag-1" / "run.json").exists()
    assert start_run(study, "dag-2", tmp_path / "data")["run_id"] == "dag-2"  # preflight off: staged only


def test_dag_prepare_passes_the_preflight_param() -> None:
    source = (Path(__file__).resolve().parent.parent / "dags" / "refusals_common.py").read_text()
    assert '"preflight": Param(True' in source and 'preflight=params.get("preflight", True)' in source
