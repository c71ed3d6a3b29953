"""The `recorded` backend: SpeechMap and generic files become prompts and sample rows."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.backends.recorded import SPEECHMAP_LABELS, load_recorded
from pipeline.config import RecordedSource
from pipeline.errors import UserError
from pipeline.prompts import PROMPT_SCHEMA


def speechmap(**kw) -> RecordedSource:
    return RecordedSource(path="speechmap_responses.parquet", deployment="sm", format="speechmap", **kw)


@pytest.fixture(scope="module")
def sm_path(shared_data: Path) -> Path:
    return shared_data / "speechmap_responses.parquet"


@pytest.fixture(scope="module")
def sm_all(sm_path: Path):
    return load_recorded(speechmap(), sm_path, "t")


@pytest.fixture(scope="module")
def sm_raw(sm_path: Path):
    return pq.read_table(
        sm_path, columns=["model", "question_id", "question", "prompt_language", "criticism_target", "judge_label"]
    ).to_pylist()


# --------------------------------------------------------------------------- speechmap


def test_speechmap_counts(sm_all, sm_raw) -> None:
    prompts, rows = sm_all
    assert len(rows) == len(sm_raw) == 11_050
    assert len({r["model"] for r in rows}) == 37
    # 6 categories × 50 questions, each its own prompt variant
    assert prompts.num_rows == 300
    assert prompts.schema == PROMPT_SCHEMA
    assert len(set(prompts.column("prompt_id").to_pylist())) == 300
    assert {r["rep"] for r in rows} == {0}
    keys = [(r["model"], r["prompt_id"], r["rep"]) for r in rows]
    assert len(set(keys)) == len(keys)


def test_speechmap_topic_group_language(sm_all) -> None:
    _, rows = sm_all
    cells = collections.Counter((r["topic"], r["topic_group"], r["language"]) for r in rows)
    assert cells == {
        ("china_criticism", "china_political", "en"): 1850,
        ("china_criticism", "china_political", "zh"): 1800,
        ("china_criticism", "china_political", "fi"): 1850,
        ("us_criticism", "government_criticism", "en"): 1850,
        ("eu_criticism", "government_criticism", "en"): 1850,
        ("russia_criticism", "government_criticism", "en"): 1850,
    }


def test_speechmap_labels_mapped(sm_all, sm_raw) -> None:
    _, rows = sm_all
    assert SPEECHMAP_LABELS["COMPLETE"] == "complied"
    assert SPEECHMAP_LABELS["DENIAL"] == "refused"
    assert SPEECHMAP_LABELS["EVASIVE"] == "evasive"
    counts = collections.Counter(r["source_label"] for r in rows)
    # the data card's totals per judge label
    assert counts == {"complied": 9389, "evasive": 1226, "refused": 385, "error": 50}
    # row by row, in file order
    for raw, row in zip(sm_raw, rows):
        assert row["source_label"] == SPEECHMAP_LABELS[raw["judge_label"]]
        assert row["question_id"] == raw["question_id"]
        assert row["model"] == raw["model"]


def test_speechmap_prompt_ids_shared_across_models(sm_all) -> None:
    _, rows = sm_all
    by_question: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    models_per_prompt: dict[str, set[str]] = collections.defaultdict(set)
    for r in rows:
        by_question[(r["question_id"], r["language"])].add(r["prompt_id"])
        models_per_prompt[r["prompt_id"]].add(r["model"])
    # one prompt id per (question, language), whichever model answered it
    assert all(len(ids) == 1 for ids in by_question.values())
    assert len(by_question) == 300
    assert max(len(m) for m in models_per_prompt.values()) == 37
    # the translated China questions share a question id but not a prompt id
    china = {lang: next(iter(by_question[("china_criticism_01", lang)])) for lang in ("en", "zh", "fi")}
    assert len(set(china.values())) == 3


def test_speechmap_prompt_rows(sm_all) -> None:
    prompts, _ = sm_all
    rows = prompts.to_pylist()
    assert {r["source"] for r in rows} == {"recorded:sm"}
    assert {r["template_id"] for r in rows} == {"recorded"}
    assert {r["system_prompt_id"] for r in rows} == {"unknown"}
    assert all(r["messages"] == [{"role": "user", "content": r["prompt_text"]}] for r in rows)


def test_speechmap_think_blocks_split(sm_all) -> None:
    _, rows = sm_all
    visible_think = [r for r in rows if r["response_text"] and "<think>" in r["response_text"]]
    assert not visible_think
    qwen3 = [r for r in rows if r["model"] == "qwen/qwen3-32b" and r["reasoning_text"]]
    assert qwen3, "qwen3-32b puts reasoning in <think> blocks; it should end up in reasoning_text"


def test_speechmap_filter_languages(sm_path: Path) -> None:
    prompts, rows = load_recorded(speechmap(languages=["zh"]), sm_path, "t")
    assert len(rows) == 1800
    assert len({r["model"] for r in rows}) == 36  # kimi-vl has no zh responses
    assert {r["language"] for r in rows} == {"zh"}
    assert prompts.num_rows == 50


def test_speechmap_filter_models_and_limit(sm_path: Path) -> None:
    models = ["openai/gpt-4o-2024-11-20", "moonshotai/kimi-vl-a3b-thinking"]
    _, rows = load_recorded(speechmap(models=models), sm_path, "t")
    per_model = collections.Counter(r["model"] for r in rows)
    assert per_model == {"openai/gpt-4o-2024-11-20": 300, "moonshotai/kimi-vl-a3b-thinking": 250}

    _, rows = load_recorded(speechmap(models=models, languages=["fi", "zh"], limit_per_model=7), sm_path, "t")
    assert collections.Counter(r["model"] for r in rows) == {m: 7 for m in models}
    assert {r["language"] for r in rows} <= {"fi", "zh"}


def test_speechmap_filter_leaving_nothing(sm_path: Path) -> None:
    with pytest.raises(UserError, match="no rows left"):
        load_recorded(speechmap(models=["no/such-model"]), sm_path, "t")


def test_speechmap_wrong_file(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"model": ["m"], "prompt": ["p"], "response": ["r"]}), path)
    with pytest.raises(UserError) as info:
        load_recorded(speechmap(), path, "t")
    assert str(path) in str(info.value) and "criticism_target" in str(info.value)


# --------------------------------------------------------------------------- generic


def generic(**kw) -> RecordedSource:
    return RecordedSource(path="x.jsonl", deployment="gen", format="generic", **kw)


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def test_generic_minimal(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"model": "a", "prompt": "Why?", "response": "Because."},
        {"model": "b", "prompt": "Why?", "response": "I can't help with that."},
    ])
    prompts, rows = load_recorded(generic(), path, "t")
    assert prompts.num_rows == 1
    p = prompts.to_pylist()[0]
    assert (p["topic"], p["topic_group"], p["language"]) == ("recorded", "recorded", "und")
    assert p["question_id"].startswith("q-")
    assert [r["prompt_id"] for r in rows] == [p["prompt_id"]] * 2
    assert [r["rep"] for r in rows] == [0, 0]
    assert [r["response_text"] for r in rows] == ["Because.", "I can't help with that."]


@pytest.mark.parametrize("missing", ["model", "prompt", "response"])
def test_generic_required_columns(tmp_path: Path, missing: str) -> None:
    row = {"model": "a", "prompt": "Why?", "response": "Because.", "language": "en"}
    del row[missing]
    path = write_jsonl(tmp_path / "x.jsonl", [row])
    with pytest.raises(UserError) as info:
        load_recorded(generic(), path, "t")
    assert str(path) in str(info.value)
    assert missing in str(info.value)


def test_generic_required_columns_parquet(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"model": ["a"], "prompt": ["Why?"]}), path)
    with pytest.raises(UserError) as info:
        load_recorded(generic(), path, "t")
    assert str(path) in str(info.value) and "response" in str(info.value)


def test_generic_empty_model_named_by_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"model": "a", "prompt": "Why?", "response": "Because."},
        {"model": "", "prompt": "Why?", "response": "Because."},
    ])
    with pytest.raises(UserError, match=r"row 2"):
        load_recorded(generic(), path, "t")


def test_generic_reps_numbered_per_model_and_prompt(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"model": "a", "prompt": "P1", "response": "r"},
        {"model": "a", "prompt": "P1", "response": "r"},
        {"model": "b", "prompt": "P1", "response": "r"},
        {"model": "a", "prompt": "P2", "response": "r"},
        {"model": "a", "prompt": "P1", "response": "r"},
    ])
    _, rows = load_recorded(generic(), path, "t")
    assert [(r["model"], r["rep"]) for r in rows] == [("a", 0), ("a", 1), ("b", 0), ("a", 0), ("a", 2)]
    keys = [(r["model"], r["prompt_id"], r["rep"]) for r in rows]
    assert len(set(keys)) == len(keys)


def test_generic_explicit_reps_kept(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"model": "a", "prompt": "P1", "response": "r", "rep": 5},
        {"model": "a", "prompt": "P1", "response": "r", "rep": 2},
    ])
    _, rows = load_recorded(generic(), path, "t")
    assert [r["rep"] for r in rows] == [5, 2]


def test_generic_duplicate_keys_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"model": "a", "prompt": "P1", "response": "r1", "rep": 0},
        {"model": "a", "prompt": "P1", "response": "r2", "rep": 0},
    ])
    with pytest.raises(UserError) as info:
        load_recorded(generic(), path, "t")
    assert str(path) in str(info.value) and "duplicate" in str(info.value)


def test_generic_malformed_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"model": "a", "prompt": "P1", "response": "r"},
        "",
        '{"model": "a", "prompt": "P2", "response": ',
    ])
    with pytest.raises(UserError) as info:
        load_recorded(generic(), path, "t")
    assert str(path) in str(info.value)
    assert "line 3" in str(info.value)


def test_generic_line_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"model": "a", "prompt": "P1", "response": "r"}, "[1, 2]"])
    with pytest.raises(UserError) as info:
        load_recorded(generic(), path, "t")
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_generic_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("model,prompt,response\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"\.parquet or \.jsonl"):
        load_recorded(generic(), path, "t")


def test_generic_optional_columns_carried(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"model": "a", "prompt": "天安门？", "response": "<think>hmm</think>对不起。", "language": "zh",
         "topic": "tiananmen", "topic_group": "china_political", "question_id": "tam1", "label": "refused",
         "finish_reason": "stop"},
    ])
    prompts, rows = load_recorded(generic(), path, "t")
    r = rows[0]
    assert (r["topic"], r["topic_group"], r["question_id"], r["language"]) == (
        "tiananmen", "china_political", "tam1", "zh")
    assert r["response_text"] == "对不起。"
    assert r["reasoning_text"] == "hmm"
    assert r["source_label"] == "refused"
    assert r["finish_reason"] == "stop"
    assert prompts.to_pylist()[0]["language"] == "zh"


def test_generic_columns_first_seen_after_row_one_are_kept(tmp_path: Path) -> None:
    # A JSONL writer usually omits keys it has no value for: an `error` (or `language`, `rep`)
    # that first appears on row 2 must not be dropped silently.
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"model": "a", "prompt": "P1", "response": "fine"},
        {"model": "a", "prompt": "P2", "response": None, "error": "HTTP 500", "language": "en", "rep": 3},
    ])
    _, rows = load_recorded(generic(), path, "t")
    assert rows[0]["error"] is None and rows[0]["language"] == "und"
    assert rows[1]["error"] == "HTTP 500"
    assert rows[1]["language"] == "en"
    assert rows[1]["rep"] == 3


def test_generic_required_column_absent_from_first_row_only(tmp_path: Path) -> None:
    # a failed request written without `response` on row 1 does not hide the column
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"model": "a", "prompt": "P1", "error": "timeout"},
        {"model": "a", "prompt": "P2", "response": "ok"},
    ])
    _, rows = load_recorded(generic(), path, "t")
    assert [r["response_text"] for r in rows] == [None, "ok"]
    assert rows[0]["error"] == "timeout"


@pytest.mark.parametrize(
    "row, needle",
    [
        ({"model": "m", "prompt": "p", "response": "r", "language": "klingon"}, "row 2: field 'language'"),
        ({"model": "m", "prompt": "p", "response": "r", "rep": "one"}, "row 2: field 'rep'"),
        ({"model": "m", "prompt": "p", "response": "r", "rep": -1}, "row 2: field 'rep'"),
        ({"model": "m", "prompt": "p", "response": "r", "label": "maybe"}, "row 2: field 'label'"),
    ],
)
def test_bad_recorded_rows_name_file_row_and_field(tmp_path, row, needle):
    import json as _json

    from pipeline.backends.recorded import _generic_rows, _read_any

    f = tmp_path / "rec.jsonl"
    good = {"model": "m", "prompt": "q", "response": "r", "language": "en"}
    f.write_text(_json.dumps(good) + "\n" + _json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        _generic_rows(_read_any(f), f)
    assert str(f) in str(err.value) and needle in str(err.value)


def test_non_utf8_recorded_file_names_file_and_line(tmp_path):
    from pipeline.backends.recorded import _read_any

    f = tmp_path / "rec.jsonl"
    f.write_bytes(b'{"model": "m", "prompt": "q", "response": "r"}\n{"model": "\xff\xfe"}\n')
    with pytest.raises(UserError) as err:
        _read_any(f)
    assert str(f) in str(err.value) and "line 2" in str(err.value) and "UTF-8" in str(err.value)


def test_jsonl_line_separator_inside_a_string_stays_one_row(tmp_path):
    from pipeline.backends.recorded import _read_any

    f = tmp_path / "rec.jsonl"
    f.write_text('{"model": "m", "prompt": "q", "response": "a\u2028b"}\n', encoding="utf-8")
    assert _read_any(f).to_pylist()[0]["response"] == "a\u2028b"
