"""The `openai` backend against a local OpenAI-compatible test server on 127.0.0.1 that injects
429s, 500s, timeouts and a mid-stream retraction. (The server is a test double for a remote
API; the client, retries, streaming capture and the stage's Parquet output are real.)"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.backends.openai_backend import OpenAIClient, sample_openai
from pipeline.config import load_study
from pipeline.lake import read_folder
from pipeline.prompts import write_prompts
from pipeline.sample import model_dir
from tests.conftest import write_study

KEY = "sk-test-SECRET-123"
CANNED = "对不起，我还没有学会如何思考这类问题，我擅长数学、代码、逻辑类的题目，欢迎与我交流。"


class Scripted(BaseHTTPRequestHandler):
    """Behaviour chosen by the prompt text; `calls` counts attempts per prompt."""

    calls: dict[str, int] = {}
    auth: list[str] = []
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _sse(self, events: list[dict]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for e in events:
            self.wfile.write(f"data: {json.dumps(e, ensure_ascii=False)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with self.lock:
            n = self.calls[prompt] = self.calls.get(prompt, 0) + 1
            self.auth.append(self.headers.get("Authorization", ""))
        kind = prompt.split(":")[0]
        if kind == "rate" and n == 1:
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b'{"error": "slow down"}')
            return
        if kind == "flaky" and n <= 2:
            self.send_response(503)
            self.end_headers()
            return
        if kind == "slow" and n == 1:
            time.sleep(1.5)  # longer than the client's timeout
        if kind == "dead":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"upstream exploded")
            return
        if kind == "bad":
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "invalid model"}')
            return
        if kind == "retract":
            self._sse([
                {"choices": [{"delta": {"content": "The 1989 protests in Beijing began when "}}]},
                {"choices": [{"delta": {"content": "students gathered in Tiananmen Square"}}]},
                {"choices": [{"delta": {}, "message": {"content": CANNED}, "finish_reason": "content_filter"}]},
            ])
            return
        seed = body["seed"]
        self._sse([
            {"choices": [{"delta": {"content": f"Answer to {prompt} "}}]},
            {"choices": [{"delta": {"content": f"with seed {seed}."}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}},
        ])


@pytest.fixture
def server():
    Scripted.calls, Scripted.auth = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _client(base_url: str, monkeypatch: pytest.MonkeyPatch) -> OpenAIClient:
    from pipeline.config import ModelSpec

    monkeypatch.setenv("TEST_API_KEY", KEY)
    spec = ModelSpec(name="m", deployment="api", backend="openai", base_url=base_url,
                     api_key_env="TEST_API_KEY", concurrency=4)
    return OpenAIClient(spec, max_retries=3, timeout_s=0.5, backoff_base_s=0.01, backoff_cap_s=0.05)


def test_retries_streaming_and_errors(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.backends.base import Request, SamplingSettings

    caplog.set_level(logging.DEBUG)
    client = _client(server, monkeypatch)
    s = SamplingSettings(0.7, 0.9, 32)

    def ask(text: str, seed: int = 5) -> dict:
        return client.complete(Request("p", 0, seed, [{"role": "user", "content": text}]), s)

    ok = ask("ok:1", seed=2**40 + 3)
    assert ok["response_text"] == f"Answer to ok:1 with seed {(2**40 + 3) % 2**31}."
    assert ok["finish_reason"] == "stop" and ok["error"] is None and ok["streamed_text"] is None
    assert ok["prompt_tokens"] == 11 and ok["completion_tokens"] == 7

    assert ask("rate:1")["error"] is None and Scripted.calls["rate:1"] == 2  # 429 then success
    assert ask("flaky:1")["error"] is None and Scripted.calls["flaky:1"] == 3  # 503, 503, success
    assert ask("slow:1")["error"] is None and Scripted.calls["slow:1"] == 2  # timeout, then success

    dead = ask("dead:1")
    assert dead["response_text"] is None and "HTTP 500" in dead["error"] and "upstream exploded" in dead["error"]
    assert Scripted.calls["dead:1"] == 4  # 1 + max_retries
    bad = ask("bad:1")
    assert "HTTP 400" in bad["error"] and Scripted.calls["bad:1"] == 1  # not retryable

    retracted = ask("retract:1")
    assert retracted["response_text"] == CANNED
    assert retracted["streamed_text"].startswith("The 1989 protests")
    assert retracted["finish_reason"] == "content_filter"
    from pipeline.classify import classify

    verdict = classify(retracted["response_text"], prompt_language="zh", streamed_text=retracted["streamed_text"],
                       finish_reason="content_filter")
    assert verdict.label == "refused" and verdict.retracted and verdict.canned_refusal

    assert set(Scripted.auth) == {f"Bearer {KEY}"}
    assert KEY not in caplog.text
    client.close()


def test_stage_writes_every_key_once_and_no_secret(server: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_API_KEY", KEY)
    study = load_study(write_study(
        tmp_path / "study.yaml",
        models=[{"name": "m", "deployment": "api", "backend": "openai", "base_url": server,
                 "api_key_env": "TEST_API_KEY", "concurrency": 3}],
    ))
    write_prompts(study, tmp_path / "prompts")
    prompts = pq.read_table(tmp_path / "prompts" / "catalog.parquet")
    spec = study.study.models[0]
    summary = sample_openai(study, spec, "r1", prompts, tmp_path / "samples")
    assert summary.sampled_now == prompts.num_rows * 3
    table = read_folder(model_dir(tmp_path / "samples", "api", "m"))
    keys = list(zip(table.column("prompt_id").to_pylist(), table.column("rep").to_pylist()))
    assert len(keys) == len(set(keys)) == prompts.num_rows * 3
    assert table.column("error").null_count == table.num_rows
    assert set(table.column("backend").to_pylist()) == {"openai"}
    for f in (tmp_path / "samples").rglob("*.parquet"):
        assert KEY.encode() not in f.read_bytes()
    # finished: nothing is asked again
    before = sum(Scripted.calls.values())
    assert sample_openai(study, spec, "r1", prompts, tmp_path / "samples").sampled_now == 0
    assert sum(Scripted.calls.values()) == before


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import ModelSpec
    from pipeline.errors import UserError

    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    spec = ModelSpec(name="m", deployment="api", backend="openai", base_url="http://127.0.0.1:9/v1",
                     api_key_env="NO_SUCH_KEY")
    with pytest.raises(UserError, match="NO_SUCH_KEY"):
        OpenAIClient(spec)
