"""The `openai` backend: any OpenAI-compatible chat endpoint (a hosted API, an app's API, a
`vllm serve` server).

- bounded concurrency (`concurrency` requests in flight);
- retries with exponential backoff and full jitter on 429, 5xx, timeouts and connection
  errors, honouring `Retry-After`; after the last try the sample becomes an `error` row;
- failing fast: after `max_consecutive_failures` requests in a row failed in transport
  (refused, timed out, 429/5xx after the retries, or 401/403/404), the deployment's sampling
  stops with `DeploymentFailing` naming the cause; what was sampled is kept, and the failed
  requests of the last chunk are not written, so a resume asks for them again;
- streaming capture: the streamed text is kept when it differs from the final answer (a
  provider that replaces or cuts an answer after streaming it: a retraction);
- the API key comes from the environment variable `api_key_env` or, failing that, from the
  Airflow connection `refusals_<deployment>` (its password); it is never logged or stored.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.backends.base import Request, SamplingSettings, error_result, split_reasoning
from pipeline.config import LoadedStudy, ModelSpec
from pipeline.errors import DeploymentFailing, UserError
from pipeline.scrub import scrub

log = logging.getLogger(__name__)

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
# A deployment that answers these refuses every request alike (a bad key, a wrong URL): they
# count towards failing fast like transport errors, without retries.
DEPLOYMENT_ERRORS = {401, 403, 404}


def api_key(spec: ModelSpec) -> str | None:
    """The key for a deployment: environment first, then an Airflow connection."""
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if key:
            return key
    conn_id = f"refusals_{spec.deployment}".replace("-", "_")
    try:
        from airflow.sdk import BaseHook  # only when running under Airflow

        return BaseHook.get_connection(conn_id).password or None
    except Exception:
        if spec.api_key_env:
            raise UserError(
                f"deployment {spec.deployment}: set the environment variable {spec.api_key_env} "
                f"or the Airflow connection {conn_id} with the API key"
            ) from None
        return None


class OpenAIClient:
    """One deployment's HTTP client; `complete` never raises for a failed request."""

    def __init__(self, spec: ModelSpec, *, max_retries: int = 5, timeout_s: float = 120.0,
                 backoff_base_s: float = 1.0, backoff_cap_s: float = 60.0, stream: bool = True) -> None:
        import httpx

        self.spec = spec
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self.model = spec.api_model or spec.name
        self.max_retries = max_retries
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.stream = stream
        headers = {"Content-Type": "application/json"}
        key = api_key(spec)
        self._secrets = (key,) if key else ()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits)

    def close(self) -> None:
        self.http.close()

    def _payload(self, req: Request, s: SamplingSettings) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": req.messages,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            # most servers take a 32-bit seed; the low bits of ours stay independent per sample
            "seed": req.seed % 2**31,
            "stream": self.stream,
            **({"stream_options": {"include_usage": True}} if self.stream else {}),
        }

    def _once(self, req: Request, s: SamplingSettings) -> dict[str, Any]:
        start = time.perf_counter()
        payload = self._payload(req, s)
        if not self.stream:
            resp = self.http.post(self.url, json=payload)
            resp.raise_for_status()
            body = resp.json()
            choice = body["choices"][0]
            msg = choice.get("message") or {}
            text, usage, streamed = msg.get("content"), body.get("usage") or {}, None
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            finish = choice.get("finish_reason")
        else:
            parts: list[str] = []
            reasoning_parts: list[str] = []
            final_text: str | None = None
            finish, usage = None, {}
            with self.http.stream("POST", self.url, json=payload) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    resp.raise_for_status()
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    error = event.get("error")
                    if error:
                        raise StreamError(str(error.get("message") or error) if isinstance(error, dict) else str(error))
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            parts.append(delta["content"])
                        r = delta.get("reasoning_content") or delta.get("reasoning")
                        if r:
                            reasoning_parts.append(r)
                        # a provider that replaces what it streamed sends a whole message
                        if choice.get("message") and choice["message"].get("content") is not None:
                            final_text = choice["message"]["content"]
                        finish = choice.get("finish_reason") or finish
            streamed_all = "".join(parts)
            text = final_text if final_text is not None else streamed_all
            streamed = streamed_all if streamed_all != text else None
            if finish == "content_filter" and streamed is None and streamed_all:
                streamed = streamed_all  # cut by a filter after streaming: keep what was shown
            reasoning = "".join(reasoning_parts) or None
        visible, think = split_reasoning(text)
        return {
            "prompt_id": req.prompt_id,
            "rep": req.rep,
            "seed": req.seed,
            "response_text": visible,
            "reasoning_text": reasoning if reasoning is not None else think,
            "finish_reason": finish,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "latency_s": time.perf_counter() - start,
            "error": None,
            "streamed_text": streamed,
        }

    def complete(self, req: Request, s: SamplingSettings,
                 stop: threading.Event | None = None) -> dict[str, Any] | None:
        """One sample, with retries; a request that keeps failing comes back as an error row,
        with `transport_failure` True when the cause was the connection or the deployment
        (not this request). With `stop` set (the deployment is failing), None: abandoned."""
        import httpx

        last = "unknown error"
        transport = False
        for attempt in range(self.max_retries + 1):
            if stop is not None and stop.is_set():
                return None
            retry_after: float | None = None
            try:
                return {**self._once(req, s), "transport_failure": False}
            except httpx.HTTPStatusError as exc:
                code = exc.response.status_code
                # scrub the whole body, then cut it: a cut first can split the key, and a split
                # key no longer matches its value (its first characters would be stored)
                last = f"HTTP {code}: {(scrub(exc.response.text, self._secrets) or '')[:300]}"
                transport = code in RETRYABLE or code in DEPLOYMENT_ERRORS
                if code not in RETRYABLE:
                    break
                ra = exc.response.headers.get("retry-after")
                retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                transport = True
            except (StreamError, json.JSONDecodeError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                transport = False
            except Exception as exc:  # a malformed answer: record it, never fail the whole stage
                last = f"unexpected response: {type(exc).__name__}: {exc}"
                transport = False
                break
            if attempt < self.max_retries:
                cap = min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)
                delay = retry_after if retry_after is not None else random.uniform(0, cap)
                if stop is None:
                    time.sleep(delay)
                elif stop.wait(delay):
                    return None
        return {**error_result(req, scrub(last, self._secrets)), "transport_failure": transport}


class FailureStreak:
    """Requests that failed in transport in a row (in completion order, across threads); sets
    `stop` when there are `limit` of them (0: never)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count, self.last = limit, 0, ""
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def add(self, result: dict[str, Any]) -> None:
        with self._lock:
            if result.get("transport_failure"):
                self.count += 1
                self.last = result.get("error") or ""
                if self.limit and self.count >= self.limit:
                    self.stop.set()
            elif not self.stop.is_set():
                self.count = 0


class StreamError(Exception):
    """An error event inside a stream (e.g. a provider's moderation stop)."""


def sample_openai(loaded: LoadedStudy, spec: ModelSpec, run_id: str, prompts: pa.Table, samples_dir: Path,
                  client: OpenAIClient | None = None):
    """Sample one deployment over HTTP, in chunks written atomically (resumable like vLLM's)."""
    from pipeline.lake import write_parquet_atomic
    from pipeline.sample import Progress, _rows_to_table, plan_model

    study = loaded.study
    plan = plan_model(loaded, spec, run_id, prompts, samples_dir)
    if not plan.requests:
        return plan.summary
    folder, requests, summary, settings, by_id = plan.folder, plan.requests, plan.summary, plan.settings, plan.by_id
    expected, done = plan.expected, plan.done
    client = client or OpenAIClient(spec)
    progress = Progress(f"sampling {spec.name} @ {spec.deployment}", expected, len(done))
    chunk = max(spec.concurrency * 4, spec.engine.batch_size)
    streak = FailureStreak(spec.max_consecutive_failures)

    def ask(req: Request) -> dict[str, Any] | None:
        if streak.stop.is_set():
            return None
        result = client.complete(req, settings, stop=streak.stop)
        if result is not None:
            streak.add(result)
        return result

    try:
        with ThreadPoolExecutor(max_workers=spec.concurrency) as pool:
            for i in range(0, len(requests), chunk):
                results = list(pool.map(ask, requests[i : i + chunk]))
                if streak.stop.is_set():
                    # keep what was answered; the transport failures are asked again on resume
                    results = [r for r in results if r is not None and not r["transport_failure"]]
                if results:
                    table = _rows_to_table(results, run_id=run_id, study=study.name, spec_model=spec.name,
                                           deployment=spec.deployment, backend="openai", prompts=by_id,
                                           settings=settings)
                    write_parquet_atomic(table, folder / f"chunk-{uuid.uuid4().hex[:12]}.parquet")
                    progress.update(table.num_rows)
                if streak.stop.is_set():
                    cause = (f"{spec.name} @ {spec.deployment}: sampling stopped after {streak.count} requests in "
                             f"a row failed (max_consecutive_failures: {streak.limit}); last error at "
                             f"{spec.base_url}: {streak.last}. {progress.done} of {expected} samples are written "
                             f"and kept; run {run_id} resumes with the rest once the endpoint answers")
                    log.error("%s", cause)
                    raise DeploymentFailing(cause)
    finally:
        client.close()
    return summary
