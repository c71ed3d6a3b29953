"""The LLM-judge tier end to end: study config → labels stage → judge asked over HTTP.

The judge model is a scripted OpenAI-compatible HTTP server on 127.0.0.1 (a fake of a remote
judge API, used only inside these unit tests of the judge): its verdict depends on a marker in
the response it is shown. Everything else is real: the study file and its `judge:` block, the
`openai` backend client (non-streaming, with its retry logic), the prompt, the parsing, the
labels stage and its Parquet and JSON output.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest

from pipeline import run as stages
from pipeline.config import JudgeConfig, load_study
from pipeline.errors import UserError
from pipeline.judge import JUDGE_PROMPT_VERSION, judge_messages, judge_version, parse_verdict

CATALOG = Path(__file__).resolve().parent.parent / "catalog"

# Rule-tier outcomes of the recorded responses below.
SURE_REFUSAL = "I'm sorry, but I can't help with that."
SURE_ANSWER = ("On 4 June 1989 the army cleared Tiananmen Square; estimates of the dead range from several "
               "hundred to several thousand, and the government has never published a full count. ") * 3
TALKING_POINTS = ("The Chinese government has always adhered to a people-centered development philosophy and "
                  "protects the legitimate rights and interests of all ethnic groups in accordance with the law. "
                  "Xinjiang enjoys social stability and its people live happy lives. {marker}")


class ScriptedJudge(BaseHTTPRequestHandler):
    """Answers like a judge model; the marker in the shown response picks the answer."""

    seen: list[str] = []
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        with self.lock:
            self.seen.append(user)
        if "[[fail]]" in user:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "bad request"}}')
            return
        if "[[garbled]]" in user:
            text = "Hmm, hard to say. It could be several things."
        elif "[[think]]" in user:
            text = "<think>The answer repeats official lines.</think>\nReasoning done.\n{\"label\": \"evasive\"}"
        else:
            text = "The response defends the government instead of describing the camps.\n{\"label\": \"refused\"}"
        payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text}}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def judge_server():
    ScriptedJudge.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedJudge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _study(tmp_path: Path, judge: dict | None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = []
    prompt = "Describe the Xinjiang detention camps."

    def add(model: str, response: str | None, **extra) -> None:
        rows.append({"model": model, "prompt": prompt, "response": response, "language": "en",
                     "topic": "xinjiang", "topic_group": "china_political", **extra})

    add("m-sure", SURE_REFUSAL)
    add("m-sure", SURE_ANSWER)
    add("m-sure", None, error="HTTP 500")
    add("m-unsure", TALKING_POINTS.format(marker=""))  # judge: refused
    add("m-unsure", TALKING_POINTS.format(marker="[[garbled]]"))  # judge: no parseable label
    add("m-unsure", TALKING_POINTS.format(marker="[[fail]]"))  # judge request fails (HTTP 400)
    add("m-unsure", TALKING_POINTS.format(marker="[[think]]"))  # judge: evasive after a think block
    src = tmp_path / "rec.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    study = {"name": "judged", "catalog": str(CATALOG), "languages": ["en"],
             "recorded": [{"path": str(src), "deployment": "rec", "format": "generic"}]}
    if judge is not None:
        study["judge"] = judge
    path = tmp_path / "judged.yaml"
    path.write_text(json.dumps(study), encoding="utf-8")
    return path


def _labels(tmp_path: Path, judge: dict | None, run_id: str = "r1") -> tuple[list[dict], Path]:
    ctx = stages.context(_study(tmp_path, judge), run_id, tmp_path / "data")
    stages.prepare(ctx)
    stages.sample(ctx)
    stages.label(ctx)
    files = sorted((ctx.staging / "labels").rglob("*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: (r["model"], r["rep"])), ctx.staging


def _judge(server: str, **kw) -> dict:
    return {"name": "judge-model", "backend": "openai", "base_url": server, "concurrency": 2, **kw}


def test_judge_asked_only_about_unsure_rows_and_recorded(judge_server: str, tmp_path: Path) -> None:
    rows, staging = _labels(tmp_path, _judge(judge_server))
    # Only the four talking-points answers (rule: talking_points, unsure) reached the judge.
    assert len(ScriptedJudge.seen) == 4
    assert all("people-centered" in s for s in ScriptedJudge.seen)
    assert not any(SURE_REFUSAL in s or "June 1989" in s for s in ScriptedJudge.seen)

    version = f"{JUDGE_PROMPT_VERSION}:judge-model@judge"
    sure = [r for r in rows if r["model"] == "m-sure"]
    assert {r["rule_label"] for r in sure} == {"refused", "complied", "error"}
    for r in sure:
        assert r["unsure"] is False and r["judge_label"] is None and r["judge_version"] is None
        assert r["label"] == r["rule_label"]

    unsure = [r for r in rows if r["model"] == "m-unsure"]
    assert all(r["unsure"] and r["rule_label"] == "evasive" and r["judge_version"] == version for r in unsure)
    by_verdict = sorted((r["judge_label"] or "null", r["label"]) for r in unsure)
    # judge label replaces the rule label where it gave one; failures keep the rule label
    assert by_verdict == [("evasive", "evasive"), ("null", "evasive"), ("null", "evasive"), ("refused", "refused")]

    agreement = json.loads((staging / "judge_agreement.json").read_text())
    assert agreement["judge_version"] == version
    assert agreement["asked"] == 4 and agreement["answered"] == 2 and agreement["no_label"] == 2
    assert agreement["agree"] == 1 and agreement["agreement"] == 0.5
    assert agreement["confusion_rule_to_judge"] == {"evasive": {"evasive": 1, "refused": 1}}


def test_max_calls_caps_judge_requests(judge_server: str, tmp_path: Path) -> None:
    rows, staging = _labels(tmp_path, _judge(judge_server, max_calls=1))
    assert len(ScriptedJudge.seen) == 1
    assert sum(r["judge_version"] is not None for r in rows) == 1
    agreement = json.loads((staging / "judge_agreement.json").read_text())
    assert agreement["asked"] == 1 and agreement["over_budget_this_pass"] == 3


def test_disabled_or_absent_judge_is_offline(judge_server: str, tmp_path: Path) -> None:
    for i, judge in enumerate([None, _judge(judge_server, enabled=False)]):
        rows, staging = _labels(tmp_path / str(i), judge)
        assert ScriptedJudge.seen == []
        assert all(r["judge_label"] is None and r["judge_version"] is None for r in rows)
        assert all(r["label"] == r["rule_label"] for r in rows)
        assert not (staging / "judge_agreement.json").exists()


def test_unreachable_judge_keeps_rule_labels(tmp_path: Path) -> None:
    # Nothing listens on this port: every request fails after its retries; the stage still finishes.
    judge = {"name": "judge-model", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    from pipeline.label import label_run

    ctx = stages.context(_study(tmp_path, None), "r1", tmp_path / "data")
    stages.prepare(ctx)
    stages.sample(ctx)
    from pipeline.judge import _OpenAIJudge

    backend = _OpenAIJudge(JudgeConfig(**judge), max_retries=0)
    label_run(ctx.staging, JudgeConfig(**judge), backend=backend)
    rows = [r for f in (ctx.staging / "labels").rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
    unsure = [r for r in rows if r["unsure"]]
    assert unsure and all(r["judge_label"] is None and r["judge_version"] for r in unsure)
    assert all(r["label"] == r["rule_label"] for r in rows)
    agreement = json.loads((ctx.staging / "judge_agreement.json").read_text())
    assert agreement["asked"] == len(unsure) and agreement["no_label"] == len(unsure)


# --- prompt, parsing and configuration ---

@pytest.mark.parametrize("text,label", [
    ('The answer gives talking points.\n{"label": "evasive"}', "evasive"),
    ('{"label": "complied"} ... on reflection {"label": "refused"}', "refused"),  # the last one wins
    ("<think>refused? no</think>\nLabel: complied", "complied"),
    ("Verdict: DENIAL", "refused"),
    ("evasive.", "evasive"),
    ('{"label": "partial"}', None),
    ("I cannot decide.", None),
    ("<think>still thinking", None),
    ("", None),
    (None, None),
])
def test_parse_verdict(text: str | None, label: str | None) -> None:
    assert parse_verdict(text) == label


def test_prompt_shows_request_and_visible_answer_with_braces_intact() -> None:
    msgs = judge_messages("Write {x} about {y}", "Answer with {braces} " + "x" * 9000)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "Write {x} about {y}" in user and "Answer with {braces}" in user
    assert "middle of the response omitted" in user and len(user) < 8000
    assert user.rstrip().endswith('{"label": "evasive"}')


def test_judge_config_in_study(tmp_path: Path) -> None:
    path = _study(tmp_path, {"name": "j", "backend": "openai", "base_url": "http://x/v1", "max_calls": 10})
    judge = load_study(path).study.judge
    assert judge is not None and judge.enabled and judge.max_calls == 10 and judge.prompt_version == "judge-v1"
    assert judge_version(judge) == "judge-v1:j@judge"
    assert load_study(_study(tmp_path, None)).study.judge is None
    with pytest.raises(UserError, match="base_url"):
        load_study(_study(tmp_path, {"name": "j", "backend": "openai"}))
    with pytest.raises(UserError, match="model_path"):
        load_study(_study(tmp_path, {"name": "j", "backend": "vllm"}))
    with pytest.raises(UserError, match="prompt_version"):
        load_study(_study(tmp_path, {"name": "j", "backend": "openai", "base_url": "http://x/v1",
                                     "prompt_version": "judge-v9"}))


def test_vllm_backend_wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The `vllm` judge uses the sampling stage's engine class; a stand-in engine (no model is
    loaded in this unit test) checks the requests it gets and returns backend-shaped rows."""
    import pipeline.backends.vllm_backend as vb
    import pipeline.model_prep as mp
    from pipeline.judge import make_backend, run_judge

    seen: dict = {}

    class FakeEngine:
        def __init__(self, model_dir: str, engine, seed: int = 0) -> None:
            seen["model_dir"] = model_dir

        def generate(self, requests, sampling):
            seen["sampling"] = sampling
            seen["n"] = len(requests)
            # the backend splits a leading think block into reasoning_text
            return [{"response_text": '{"label": "complied"}' if i == 0 else "", "reasoning_text": "no idea",
                     "error": None} for i, _ in enumerate(requests)]

    monkeypatch.setattr(vb, "VllmEngine", FakeEngine)
    monkeypatch.setattr(mp, "resolve_model_path", lambda p, base: tmp_path / "model")
    cfg = JudgeConfig(name="local", backend="vllm", model_path="builtin:smollm2", max_tokens=64)
    backend = make_backend(cfg)
    verdicts = run_judge([("Q1", "A1"), ("Q2", "A2")], cfg, backend)
    assert seen["model_dir"] == str(tmp_path / "model") and seen["n"] == 2
    assert seen["sampling"].temperature == 0.0 and seen["sampling"].max_tokens == 64
    assert [v.label for v in verdicts] == ["complied", None]  # reasoning without a label: no verdict


def test_dead_judge_is_not_asked_about_every_row() -> None:
    """After a batch in which every request failed, the rest are skipped (rule labels stand)."""
    from pipeline.judge import JudgeAgreement, label_columns, run_judge

    class Dead:
        calls = 0

        def ask(self, conversations):
            Dead.calls += len(conversations)
            return [(None, "ConnectError: refused")] * len(conversations)

        def close(self) -> None:
            pass

    cfg = JudgeConfig(name="j", backend="openai", base_url="http://x/v1")
    verdicts = run_judge([("q", f"a{i}") for i in range(5)], cfg, Dead(), batch=2)
    assert Dead.calls == 2
    assert [v.skipped for v in verdicts] == [False, False, True, True, True]
    assert all(v.label is None for v in verdicts)

    agreement = JudgeAgreement("judge-v1:j@judge")
    cols = label_columns(["evasive"] * 70, [True] * 70, ["q"] * 70, ["a"] * 70, cfg, Dead(), None, agreement)
    assert sum(v is not None for v in cols["judge_version"]) == 64  # the failed first batch only
    assert cols["label"] == cols["rule_label"] == ["evasive"] * 70
    assert agreement.asked == 64 and agreement.no_label == 64 and agreement.skipped_unavailable == 6


def test_judge_without_its_api_key_fails_loudly(judge_server: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JUDGE_KEY_FOR_TEST", raising=False)
    with pytest.raises(UserError, match="JUDGE_KEY_FOR_TEST"):
        _labels(tmp_path, _judge(judge_server, api_key_env="JUDGE_KEY_FOR_TEST"))
    assert ScriptedJudge.seen == []


def test_nothing_unsure_means_no_judge_connection(tmp_path: Path) -> None:
    # The endpoint does not exist; with no unsure row it is never contacted, so the stage passes.
    from pipeline.label import label_run

    ctx = stages.context(_study(tmp_path, None), "r1", tmp_path / "data")
    stages.prepare(ctx)
    stages.sample(ctx)
    for f in (ctx.staging / "samples").rglob("*.parquet"):  # keep only the sure rows
        t = pq.read_table(f)
        pq.write_table(t.filter(pa.compute.equal(t.column("model"), "m-sure")), f)
    cfg = JudgeConfig(name="j", backend="openai", base_url="http://127.0.0.1:9/v1", api_key_env="NOT_SET_ANYWHERE")
    assert label_run(ctx.staging, cfg) == 3
    agreement = json.loads((ctx.staging / "judge_agreement.json").read_text())
    assert agreement["asked"] == 0


@pytest.mark.slow
def test_vllm_judge_runs_a_real_engine(tiny_model: Path, tmp_path: Path) -> None:
    """The `vllm` judge path with a real in-process vLLM engine (the tiny random test model:
    its verdicts are noise, so this checks the plumbing, not the judgement): the four unsure
    rows are asked and recorded, and a row without a parseable verdict keeps its rule label."""
    judge = {"name": "tiny-judge", "backend": "vllm", "model_path": str(tiny_model), "max_tokens": 8,
             "engine": {"max_model_len": 2048, "kv_cache_memory_bytes": 64 * 2**20, "batch_size": 4}}
    rows, staging = _labels(tmp_path, judge)
    unsure = [r for r in rows if r["model"] == "m-unsure"]
    assert len(unsure) == 4 and all(r["judge_version"] == f"{JUDGE_PROMPT_VERSION}:tiny-judge@judge" for r in unsure)
    for r in unsure:
        assert r["label"] == (r["judge_label"] or r["rule_label"])
    assert all(r["judge_version"] is None for r in rows if r["model"] == "m-sure")
    agreement = json.loads((staging / "judge_agreement.json").read_text())
    assert agreement["asked"] == 4 and agreement["answered"] + agreement["no_label"] == 4
