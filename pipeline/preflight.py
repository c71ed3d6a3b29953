"""The preflight: what a study will do, and whether its live models can be reached, before a
single sample is asked for (`refusals plan`, and the first step of `refusals run` and the DAG).

- `plan_study` counts the work: prompt variants, samples, an *estimate* of the tokens (the
  prompt's characters turned into tokens by a rule of thumb, plus `max_tokens` per sample) and
  the cells (model × deployment × topic × language) with their prompt counts;
- `check_model` checks one live model within seconds: for the `openai` backend that its API
  key is present (its value is never printed) and that the endpoint answers one chat
  completion of `max_tokens: 1`; for `vllm` that the model folder has a config and readable
  weights (no engine is started);
- `preflight` runs both and raises `PreflightFailed` (a `UserError`: exit 2, no traceback)
  naming every cause, e.g. `connection refused at http://127.0.0.1:8000/v1`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import LoadedStudy
from pipeline.errors import UserError

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 10.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class PreflightFailed(UserError):
    """A live model cannot be reached (or its weights are missing): the message names why."""


# --------------------------------------------------------------------------- the work


def estimate_tokens(text: str) -> int:
    """A rough token count: about 4 characters per token for Latin, Cyrillic and Arabic script,
    one per CJK character or kana/hangul syllable (tokenizers differ; this is an estimate)."""
    wide = sum(1 for ch in text if ord(ch) >= 0x2E80)
    return wide + math.ceil((len(text) - wide) / 4)


@dataclass
class Cell:
    model: str
    deployment: str
    topic: str
    language: str
    prompts: int


@dataclass
class Plan:
    study: str
    prompts: int  # catalog prompt variants (each asked of every live model)
    repetitions: int
    live_models: int
    samples: int
    prompt_tokens: int  # estimated, over every sample
    completion_tokens: int  # the bound: max_tokens per sample
    cells: list[Cell] = field(default_factory=list)
    recorded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def plan_study(loaded: LoadedStudy) -> Plan:
    """The work of a study, without sending anything."""
    from pipeline.prompts import build_prompts

    study = loaded.study
    prompts = build_prompts(loaded).to_pylist() if study.models else []
    per_prompt = [sum(estimate_tokens(m["content"] or "") + 4 for m in p["messages"]) for p in prompts]
    reps, n_models = study.repetitions, len(study.models)
    counts: dict[tuple[str, str], int] = {}
    for p in prompts:
        counts[(p["topic"], p["language"])] = counts.get((p["topic"], p["language"]), 0) + 1
    cells = [Cell(m.name, m.deployment, topic, lang, n) for m in study.models for (topic, lang), n in counts.items()]
    recorded = []
    for r in study.recorded:
        path = loaded.resolve(r.path)
        rows = None
        if path.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq

                rows = pq.read_metadata(path).num_rows
            except Exception:  # a damaged file: the sampling stage names it
                rows = None
        recorded.append({"deployment": r.deployment, "path": str(path), "rows": rows})
    return Plan(
        study=study.name, prompts=len(prompts), repetitions=reps, live_models=n_models,
        samples=len(prompts) * reps * n_models, prompt_tokens=sum(per_prompt) * reps * n_models,
        completion_tokens=len(prompts) * reps * n_models * study.sampling.max_tokens,
        cells=cells, recorded=recorded,
    )


def format_plan(plan: Plan) -> str:
    lines = [
        f"study {plan.study}",
        f"  prompts:  {plan.prompts} prompt variants × {plan.repetitions} repetitions × "
        f"{plan.live_models} live model(s)",
        f"  samples:  {plan.samples}",
        f"  tokens:   about {plan.tokens:,} (an estimate: ~{plan.prompt_tokens:,} prompt tokens at ~4 characters or "
        f"1 CJK character per token, plus at most {plan.completion_tokens:,} completion tokens = "
        f"max_tokens per sample)",
    ]
    for r in plan.recorded:
        rows = f"{r['rows']} rows" if r["rows"] is not None else "rows counted on import"
        lines.append(f"  recorded: {r['deployment']}: {r['path']} ({rows}; imported, not sampled)")
    if plan.cells:
        lines.append(f"  cells (model × deployment × topic × language): {len(plan.cells)}")
        cols = ("model", "deployment", "topic", "language", "prompts")
        rows = [(c.model, c.deployment, c.topic, c.language, str(c.prompts)) for c in plan.cells]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(cols)]
        lines.append(("    " + "  ".join(h.ljust(w) for h, w in zip(cols, widths))).rstrip())
        lines += [("    " + "  ".join(v.ljust(w) for v, w in zip(r, widths))).rstrip() for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- checks


@dataclass
class Check:
    model: str
    deployment: str
    ok: bool
    message: str

    def __str__(self) -> str:
        return f"{self.model} @ {self.deployment}: {'ok' if self.ok else 'FAILED'}: {self.message}"


def _transport_cause(exc: Exception, url: str, timeout_s: float) -> str:
    """A person's sentence for an httpx failure (the errno text of a refused connection)."""
    import httpx

    text = str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout_s:g}s from {url}"
    if isinstance(exc, httpx.ConnectError):
        low = text.lower()
        if "refused" in low:
            return f"connection refused at {url}"
        if "name or service not known" in low or "nodename nor servname" in low or "name resolution" in low:
            return f"host not found: {url}"
        return f"cannot connect to {url}: {text or type(exc).__name__}"
    return f"{type(exc).__name__} at {url}: {text}"


def check_endpoint(spec: Any, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """An `openai` model: its key is present, and one `max_tokens: 1` chat completion answers."""
    import httpx

    from pipeline.backends.openai_backend import api_key
    from pipeline.scrub import scrub

    base = (spec.base_url or "").rstrip("/")
    try:
        key = api_key(spec)
    except UserError as exc:
        return Check(spec.name, spec.deployment, False, f"API key missing: {exc}")
    notes = []
    if spec.api_key_env:
        notes.append(f"API key present (${spec.api_key_env})" if os.environ.get(spec.api_key_env)
                     else "API key present (Airflow connection)")
    secrets = (key,) if key else ()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    payload = {"model": spec.api_model or spec.name, "messages": [{"role": "user", "content": "Hi"}],
               "max_tokens": 1, "temperature": 0, "seed": 0, "stream": False}
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))) as http:
            resp = http.post(f"{base}/chat/completions", json=payload, headers=headers)
    except httpx.HTTPError as exc:
        return Check(spec.name, spec.deployment, False, scrub(_transport_cause(exc, base, timeout_s), secrets))
    code = resp.status_code
    body = (scrub(resp.text, secrets) or "")[:200].strip()  # scrubbed whole, then cut (a cut key would stay)
    if code < 300:
        notes.append(f"{base} answers (HTTP {code})")
        return Check(spec.name, spec.deployment, True, "; ".join(notes))
    if code == 429:
        notes.append(f"{base} answers but is rate limiting (HTTP 429)")
        return Check(spec.name, spec.deployment, True, "; ".join(notes))
    hint = {401: "the API key was refused", 403: "the API key was refused",
            404: f"wrong base_url, or no model {payload['model']!r} there (api_model)"}.get(code, body)
    return Check(spec.name, spec.deployment, False, scrub(f"HTTP {code} at {base}: {hint}", secrets))


def _safetensors_ok(path: Path) -> str | None:
    """None if the file's header parses and the file is as long as the header says, else why not."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name}: truncated"
            n = struct.unpack("<Q", head)[0]
            if n > min(size, 100 << 20):
                return f"{path.name}: not a safetensors file"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if size < 8 + n + end:
            return f"{path.name}: truncated ({size} bytes, header says {8 + n + end})"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        return f"{path.name}: unreadable ({exc})"
    return None


def check_folder(folder: Path) -> str | None:
    """None if `folder` is a Hugging Face model folder with a config and complete weights."""
    if not folder.is_dir():
        return f"model folder {folder} not found"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{folder}: no config.json (not a Hugging Face model folder)"
    except (OSError, ValueError) as exc:
        return f"{folder}/config.json: unreadable ({exc})"
    if not isinstance(config, dict):
        return f"{folder}/config.json: not a JSON object"
    weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        return f"{folder}: no weights (*.safetensors or *.bin)"
    for index in folder.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            return f"{index}: unreadable ({exc})"
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return f"{folder}: weight shards missing: {', '.join(missing[:3])}"
    for w in weights:
        if w.suffix == ".safetensors":
            why = _safetensors_ok(w)
            if why:
                return f"{folder}: {why}"
    return None


def check_weights(loaded: LoadedStudy, spec: Any) -> Check:
    """A `vllm` model: the folder (or the builtin model's package) is there with its weights."""
    import importlib.util

    from pipeline.model_prep import BUILTIN_MODELS, _gguf_path, model_cache

    path = spec.model_path or ""
    notes = []
    if path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        folder = model_cache() / BUILTIN_MODELS[name]["folder"]
        if not (folder / "config.json").exists():
            try:
                gguf = _gguf_path(BUILTIN_MODELS[name])
            except UserError as exc:
                return Check(spec.name, spec.deployment, False, str(exc))
            notes.append(f"{path}: not converted yet; {gguf.name} is converted once on first use")
            folder = None
    else:
        folder = loaded.resolve(path)
    if folder is not None:
        why = check_folder(folder)
        if why:
            return Check(spec.name, spec.deployment, False, why)
        notes.append(f"weights in {folder}")
    if importlib.util.find_spec("vllm") is None:
        # not a failure: with Ray (ray_address, or the DAG's Ray jobs) the engine runs elsewhere
        notes.append("vllm is not installed in this Python environment (needed where the engine runs)")
    return Check(spec.name, spec.deployment, True, "; ".join(notes))


def check_model(loaded: LoadedStudy, spec: Any, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    return check_endpoint(spec, timeout_s) if spec.backend == "openai" else check_weights(loaded, spec)


def run_checks(loaded: LoadedStudy, timeout_s: float = CHECK_TIMEOUT_S) -> list[Check]:
    """Every live model, and the LLM judge if the study has one."""
    served = list(loaded.study.models)
    judge = loaded.study.judge
    if judge is not None and judge.enabled:
        served.append(judge)
    return [check_model(loaded, spec, timeout_s) for spec in served]


def preflight(loaded: LoadedStudy, timeout_s: float = CHECK_TIMEOUT_S) -> list[Check]:
    """Check every live model; log each result; raise PreflightFailed naming every failure."""
    checks = run_checks(loaded, timeout_s)
    for c in checks:
        (log.info if c.ok else log.error)("preflight: %s", c)
    failed = [c for c in checks if not c.ok]
    if failed:
        causes = "; ".join(f"{c.model} @ {c.deployment}: {c.message}" for c in failed)
        raise PreflightFailed(f"{loaded.path}: preflight failed: {causes}")
    return checks
