"""Secrets never reach the data: the scrubber's shapes, and a server echoing the key in error bodies."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.scrub import REDACTED, scrub

KEY = "sk-test-ECHOED-secret-0123456789"


@pytest.mark.parametrize("text,secret", [
    ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
    ('{"authorization": "Token zzzyyyxxx"}', "zzzyyyxxx"),
    ("GET /v1?api_key=qwertyuiop123&x=1", "qwertyuiop123"),
    ('{"api_key": "hunter2hunter2"}', "hunter2hunter2"),
    ("key sk-abcdefghijklmnop1234", "sk-abcdefghijklmnop1234"),
    ("sk-proj-AbC_123-xyz", "sk-proj-AbC_123-xyz"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("aws AKIAABCDEFGHIJKLMNOP here", "AKIAABCDEFGHIJKLMNOP"),
    ("slack xoxb-1234-5678-abcdef", "xoxb-1234-5678-abcdef"),
    ("access_token=QUJDREVGR0hJSktMTU5PUFFSU1RVVg==", "QUJDREVGR0hJSktMTU5PUFFSU1RVVg=="),
    ("secret: 0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
])
def test_shapes(text: str, secret: str) -> None:
    out = scrub(text)
    assert secret not in out and REDACTED in out


def test_configured_secret_and_plain_text() -> None:
    assert scrub("the key is plainvalue!", ["plainvalue!"]) == f"the key is {REDACTED}"
    assert scrub("HTTP 500: upstream exploded") == "HTTP 500: upstream exploded"
    assert scrub(None) is None


class Echo(BaseHTTPRequestHandler):
    codes = [401, 403, 429, 500]
    n = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            code = self.codes[Echo.n % len(self.codes)]
            Echo.n += 1
        self.send_response(code)
        self.send_header("Retry-After", "0")
        self.end_headers()
        auth = self.headers.get("Authorization", "")
        raw = auth.split(" ", 1)[-1]
        self.wfile.write(f'{{"error": "bad", "authorization": "{auth}", "seen": "{raw}"}} Authorization: {auth}'.encode())


def test_echoed_key_never_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.backends import openai_backend
    from pipeline.config import load_study
    from pipeline.prompts import write_prompts
    from tests.conftest import write_study

    caplog.set_level(logging.DEBUG)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    orig = openai_backend.OpenAIClient.__init__

    def fast(self, spec, **kw):  # keep retries short
        orig(self, spec, **{**kw, "max_retries": 1, "timeout_s": 2.0, "backoff_base_s": 0.0, "backoff_cap_s": 0.0})

    monkeypatch.setattr(openai_backend.OpenAIClient, "__init__", fast)
    monkeypatch.setenv("ECHO_KEY", KEY)
    try:
        study = load_study(write_study(tmp_path / "study.yaml", models=[
            {"name": "m", "deployment": "api", "backend": "openai", "base_url": base,
             "api_key_env": "ECHO_KEY", "concurrency": 2}]))
        write_prompts(study, tmp_path / "prompts")
        prompts = pq.read_table(tmp_path / "prompts" / "catalog.parquet")
        openai_backend.sample_openai(study, study.study.models[0], "r1", prompts, tmp_path / "samples")
    finally:
        httpd.shutdown()
        httpd.server_close()
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    parquet = [f for f in files if f.suffix == ".parquet" and "samples" in f.parts]
    assert parquet
    errors = []
    for f in parquet:
        t = pq.read_table(f)
        errors += [e for e in t.column("error").to_pylist() if e]
        assert KEY not in str(t.to_pylist())
    assert errors and all("HTTP" in e for e in errors)
    for f in files:
        assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in caplog.text


def test_echoed_key_never_stored_through_the_cli(tmp_path: Path) -> None:
    """The same echoing server, through `python -m pipeline -v plan` (refused: exit 2) and
    `python -m pipeline -v run --no-preflight` as a user runs it: every
    request fails, the run is quarantined (exit 3), and neither the data folder (lake,
    staging, quarantine, validation pages, records, locks) nor the DEBUG log holds the key."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO, write_study

    Echo.n = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    data = tmp_path / "data"
    study = write_study(tmp_path / "study.yaml", name="echo", repetitions=1, models=[
        {"name": "m", "deployment": "api", "backend": "openai", "base_url": base,
         "api_key_env": "ECHO_KEY", "concurrency": 4}])
    env = {**os.environ, "ECHO_KEY": KEY, "REFUSALS_DATA_DIR": str(data), "PYTHONPATH": str(REPO)}
    try:
        # the preflight's one request gets the 401 (echoing the key): it fails, and says so without the key
        plan = subprocess.run([sys.executable, "-m", "pipeline", "-v", "plan", "--study", str(study)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
        assert plan.returncode == 2 and "HTTP 401" in plan.stderr and "Traceback" not in plan.stderr, plan.stderr
        assert KEY not in plan.stdout + plan.stderr
        proc = subprocess.run([sys.executable, "-m", "pipeline", "-v", "run", "--study", str(study),
                               "--run-id", "echo-1", "--no-preflight"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert Echo.n > 0, "the server was never asked"
    assert proc.returncode == 3, proc.stderr[-3000:]  # every sample an error: quarantined
    assert list((data / "quarantine").rglob("*.parquet"))
    assert "Traceback" not in proc.stderr
    assert KEY not in proc.stdout and KEY not in proc.stderr
    files = [f for f in data.rglob("*") if f.is_file()]
    assert any(f.suffix == ".parquet" for f in files)
    errors = []
    for f in files:
        assert KEY.encode() not in f.read_bytes(), f
        if f.suffix == ".parquet" and "samples" in f.parts:
            t = pq.read_table(f)
            assert KEY not in str(t.to_pylist())
            errors += [e for e in t.column("error").to_pylist() if e]
    assert errors and all("HTTP" in e for e in errors)
