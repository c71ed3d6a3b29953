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


# --------------------------------------------------------------------------- through Airflow

# Not a known key shape (no sk-, no "key"/"token" word before it): only the scrub of the
# configured key's own value keeps the bare copy the server echoes ("seen") out of the data.
DAG_KEY = "echoDAG-9Zq81unshaped7f3c9e2aX"


class EchoStraddle(Echo):
    """Echo for the first `plain` requests; after them, the bare key is echoed across the
    `at`-th character of the body (a client that truncates before it scrubs keeps the key's
    first characters, which the key's value no longer matches)."""

    plain, at = 4, 290

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            n = Echo.n
            Echo.n += 1
        self.send_response(self.codes[n % len(self.codes)])
        self.send_header("Retry-After", "0")
        self.end_headers()
        auth = self.headers.get("Authorization", "")
        raw = auth.split(" ", 1)[-1]
        if n < self.plain:
            body = f'{{"error": "bad", "authorization": "{auth}", "seen": "{raw}"}} Authorization: {auth}'
        else:
            head, mid = '{"error": "', '", "seen": "'
            body = f'{head}{"x" * (self.at - len(head) - len(mid))}{mid}{raw}", "authorization": "{auth}"}}'
        self.wfile.write(body.encode())


def _echo_server(plain: int = 4, at: int = 290):
    Echo.n = 0
    EchoStraddle.plain, EchoStraddle.at = plain, at
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EchoStraddle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def test_a_key_cut_by_the_body_limit_is_not_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every echo puts the bare key across the 300th character, where the stored body is cut:
    the body is scrubbed whole before the cut, so not even the key's first characters remain."""
    from pipeline.backends import openai_backend
    from pipeline.config import load_study
    from pipeline.prompts import write_prompts
    from tests.conftest import write_study

    orig = openai_backend.OpenAIClient.__init__

    def fast(self, spec, **kw):
        orig(self, spec, **{**kw, "max_retries": 1, "timeout_s": 2.0, "backoff_base_s": 0.0, "backoff_cap_s": 0.0})

    monkeypatch.setattr(openai_backend.OpenAIClient, "__init__", fast)
    monkeypatch.setenv("ECHO_DAG_KEY", DAG_KEY)
    httpd, base = _echo_server(plain=0, at=290)
    try:
        study = load_study(write_study(tmp_path / "study.yaml", repetitions=1, models=[
            {"name": "m", "deployment": "api", "backend": "openai", "base_url": base, "api_key_env": "ECHO_DAG_KEY"}]))
        write_prompts(study, tmp_path / "prompts")
        prompts = pq.read_table(tmp_path / "prompts" / "catalog.parquet")
        openai_backend.sample_openai(study, study.study.models[0], "r1", prompts, tmp_path / "samples")
    finally:
        httpd.shutdown()
        httpd.server_close()
    chunks = (tmp_path / "samples").rglob("*.parquet")
    errors = [e for f in chunks for e in pq.read_table(f).column("error").to_pylist()]
    assert len(errors) == 4 and all(e and '"seen": "' in e for e in errors), errors  # cut just after the key began
    assert not [e for e in errors if DAG_KEY[:10] in e], errors
    for f in (f for f in tmp_path.rglob("*") if f.is_file()):
        assert DAG_KEY[:10].encode() not in f.read_bytes(), f


def _airflow_dags_test(tmp_path: Path, run_id: str, server: dict | None = None, **conf):
    """`airflow dags test refusal_study` (as tests/test_dags.py runs it) of a study whose only
    model is an openai deployment at the echoing server, the key in $ECHO_DAG_KEY."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO, write_study
    from tests.test_dags import _airflow, _airflow_env

    httpd, base = _echo_server(**(server or {}))
    study = write_study(tmp_path / "study.yaml", name="echodag", repetitions=1, models=[
        {"name": "m", "deployment": "api", "backend": "openai", "base_url": base,
         "api_key_env": "ECHO_DAG_KEY", "concurrency": 4}])
    home, data = tmp_path / "airflow", tmp_path / "data"
    env = _airflow_env(home, ECHO_DAG_KEY=DAG_KEY, AIRFLOW__LOGGING__LOGGING_LEVEL="DEBUG")
    try:
        _airflow(env, "db", "migrate", timeout=300)
        out = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", "refusal_study", "--conf",
                              json.dumps({"study": str(study), "data_dir": str(data), "run_id": run_id, **conf})],
                             env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    finally:
        httpd.shutdown()
        httpd.server_close()
    return out.stdout + out.stderr, home, data


def _assert_key_nowhere(log: str, home: Path, data: Path) -> list[str]:
    """The key in neither the process output, nor any file under the data folder (bytes, and
    Parquet read back as text), nor Airflow's task logs, nor its metadata database (XComs,
    conf, rendered fields). Returns the samples' error texts."""
    assert DAG_KEY not in log and DAG_KEY[:10] not in log
    # `dags test` runs the tasks in its own process: their logs are in `log`; whatever Airflow
    # wrote under AIRFLOW_HOME (logs/, the config, the metadata database) is checked too
    for f in (f for f in home.rglob("*") if f.is_file()):
        assert DAG_KEY[:10].encode() not in f.read_bytes(), f  # nor its first characters
    errors: list[str] = []
    for f in (f for f in data.rglob("*") if f.is_file()) if data.exists() else ():
        assert DAG_KEY[:10].encode() not in f.read_bytes(), f
        if f.suffix == ".parquet":
            t = pq.read_table(f)
            assert DAG_KEY[:10] not in str(t.to_pylist()), f
            if "samples" in f.parts and "error" in t.column_names:
                errors += [e for e in t.column("error").to_pylist() if e]
    return errors


@pytest.mark.slow
def test_echoed_key_never_stored_through_airflow_dags_test(tmp_path: Path) -> None:
    """The echoing server under `airflow dags test refusal_study`, the preflight skipped (its
    param; a DAG without one ignores the extra conf key): the sample task sends every request
    (401, 403, 429, 500 in turn, each body echoing the key), every sample is an error, the
    validate task fails and the run waits in quarantine. The key is nowhere."""
    import re

    log, home, data = _airflow_dags_test(tmp_path, "echo-dag-1", preflight=False)
    assert Echo.n >= 6, "the server was not asked (every code, then the straddling echoes)"
    assert "sampling m @ api: 4/4 samples" in log  # the tasks' own log lines are in the output
    assert "failed validation" in log, log[-4000:]
    assert re.search(r"DagRun Finished: dag_id=refusal_study[^\n]*state=failed", log), log[-4000:]
    assert list((data / "quarantine").rglob("*.parquet"))
    errors = _assert_key_nowhere(log, home, data)
    assert errors and all(e.startswith("HTTP 4") or e.startswith("HTTP 5") for e in errors), errors
    assert "[REDACTED]" in " ".join(errors)  # the echoes were there, and were scrubbed


def _dag_has_preflight() -> bool:
    from tests.conftest import REPO

    return '"preflight"' in (REPO / "dags" / "refusals_common.py").read_text(encoding="utf-8")


@pytest.mark.slow
def test_preflight_refusal_under_airflow_keeps_the_key_out(tmp_path: Path) -> None:
    """With the preflight on (the DAG's default), its request gets the 401 echoing the key:
    the prepare task fails at once (a failed preflight is not retried), the message names the
    HTTP status, nothing is sampled, and the key is nowhere."""
    import re

    if not _dag_has_preflight():
        pytest.skip("the DAG has no preflight on this branch")
    # the preflight's one request: the key echoed across the 200th character of the body
    log, home, data = _airflow_dags_test(tmp_path, "echo-dag-2", {"plain": 0, "at": 190})
    assert Echo.n >= 1
    assert "preflight failed" in log and "HTTP 401" in log, log[-4000:]
    assert re.search(r"DagRun Finished: dag_id=refusal_study[^\n]*state=failed", log), log[-4000:]
    assert not list(data.rglob("chunk-*.parquet"))
    _assert_key_nowhere(log, home, data)
