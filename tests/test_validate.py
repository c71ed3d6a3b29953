"""The audit gate: real Great Expectations suites on small staged runs built by hand."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logging.getLogger("great_expectations").setLevel(logging.WARNING)

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.errors import ValidationFailed
from pipeline.label import label_table
from pipeline.lake import hive_path, write_parquet_atomic
from pipeline.prompts import PROMPT_SCHEMA, prompt_row
from pipeline.sample import SAMPLE_SCHEMA
from pipeline.validate import SuiteOutcome, ValidationOutcome, quarantine, validate_run

RUN = "r1"
REPS = 4
LANGS = ["en", "zh"]
COMPLIED_EN = (
    "The Tiananmen Square protests of 1989 were student-led demonstrations calling for political reform. "
    "On the night of 3-4 June the army cleared the square; estimates of the dead range from several hundred "
    "to several thousand."
)
REFUSED_EN = "I'm sorry, but I can't help with that."


def make_prompts() -> pa.Table:
    rows = []
    for i, (lang, text) in enumerate(
        [("en", "What happened in 1989?"), ("zh", "1989年发生了什么？"), ("en", "What is 17 times 23?")]
    ):
        rows.append(prompt_row(
            study="t", source="catalog", topic="tiananmen_1989" if i < 2 else "arithmetic",
            topic_group="china_political" if i < 2 else "control", question_id=f"q{i}", language=lang,
            template_id="direct", system_prompt_id="none", system_prompt=None, prompt_text=text,
        ))
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


def make_samples(prompts: pa.Table, reps: int = REPS, run_id: str = RUN) -> list[dict[str, Any]]:
    now = datetime(2026, 1, 27, tzinfo=timezone.utc)
    rows = []
    for p in prompts.to_pylist():
        for rep in range(reps):
            text = (REFUSED_EN if rep % 2 else COMPLIED_EN) if p["language"] == "en" else "1989年，军队清场。"
            rows.append({
                "run_id": run_id, "study": "t", "model": "m", "deployment": "d", "backend": "vllm",
                "prompt_id": p["prompt_id"], "rep": rep, "seed": 1000 + rep, "topic": p["topic"],
                "topic_group": p["topic_group"], "question_id": p["question_id"], "language": p["language"],
                "template_id": p["template_id"], "system_prompt_id": p["system_prompt_id"],
                "temperature": 0.8, "top_p": 0.95, "max_tokens": 64, "response_text": text,
                "reasoning_text": None, "finish_reason": "stop", "prompt_tokens": 10, "completion_tokens": 20,
                "latency_s": 0.1, "error": None, "streamed_text": None, "source_label": None, "sampled_at": now,
            })
    return rows


def stage(root: Path, prompts: pa.Table, samples: list[dict[str, Any]] | pa.Table,
          labels: pa.Table | None = None, run_id: str = RUN) -> Path:
    """Write a staged run in the layout the pipeline uses; labels by the real classifier unless given."""
    staging = root / "staging" / run_id
    table = samples if isinstance(samples, pa.Table) else pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA)
    write_parquet_atomic(prompts, staging / "prompts" / "catalog.parquet")
    rel = hive_path(Path("."), deployment="d", model="m") / "chunk-1.parquet"
    write_parquet_atomic(table, staging / "samples" / rel)
    if labels is None:
        texts = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("prompt_text").to_pylist()))
        labels = label_table(table, texts)
    write_parquet_atomic(labels, staging / "labels" / rel)
    return staging


def expected(prompts: pa.Table, reps: int = REPS, rows: int | None = None, max_error_rate: float = 0.2) -> dict:
    """What run.expected_counts returns for one live model."""
    return {
        "rows": prompts.num_rows * reps if rows is None else rows,
        "languages": sorted(LANGS),
        "max_rep": reps - 1,
        "max_error_rate": max_error_rate,
        "live_prompt_cells": prompts.num_rows,
        "repetitions": reps,
    }


def failed(outcome) -> dict[str, list[dict]]:
    return {s.suite: s.failures for s in outcome.suites if not s.success}


def failed_types(outcome) -> set[tuple[str, str]]:
    return {(suite, f["expectation"]) for suite, fs in failed(outcome).items() for f in fs}


@pytest.fixture(scope="module")
def prompts() -> pa.Table:
    return make_prompts()


def test_clean_run_passes(tmp_path: Path, prompts) -> None:
    staging = stage(tmp_path, prompts, make_samples(prompts))
    outcome = validate_run(staging, RUN, expected(prompts))
    assert outcome.success, outcome.summary_markdown()
    assert {s.suite for s in outcome.suites} == {"samples", "labels", "keys", "sample_counts", "error_rates", "prompts"}
    assert all(s.evaluated > 0 for s in outcome.suites)
    saved = json.loads((staging / "validation.json").read_text())
    assert saved["success"] is True and saved["run_id"] == RUN
    assert "passed" in (staging / "validation.md").read_text()
    assert "passed" in (staging / "validation.html").read_text()
    # the hand-made labels are real classifier output, with both labels present
    labels = set(pc.unique(label_table(pa.Table.from_pylist(make_samples(prompts), schema=SAMPLE_SCHEMA),
                                       {}).column("label")).to_pylist())
    assert {"refused", "complied"} <= labels


@pytest.fixture(scope="module")
def duplicate_run(tmp_path_factory, prompts):
    """A staged run where two samples share a key (row count unchanged), validated once."""
    root = tmp_path_factory.mktemp("dup")
    rows = make_samples(prompts)
    rows[0] = {**rows[1], "response_text": "another answer"}
    staging = stage(root, prompts, rows)
    return staging, validate_run(staging, RUN, expected(prompts))


def test_duplicate_sample_keys_fail(duplicate_run) -> None:
    staging, outcome = duplicate_run
    assert not outcome.success
    failures = {tuple(f["columns"]): f for f in failed(outcome)["keys"]}
    # duplicate keys in samples and in labels, named down to the prompt; nothing else is wrong
    assert set(failures) == {("samples_rows", "samples_keys"), ("labels_rows", "labels_keys")}
    assert set(failed(outcome)) == {"keys"}
    dup_prompt = make_samples(make_prompts())[1]["prompt_id"]
    assert failures[("samples_rows", "samples_keys")]["rows"][0]["prompt_id"] == dup_prompt
    md = (staging / "validation.md").read_text()
    assert "expect_column_pair_values_to_be_equal" in md and f"prompt_id={dup_prompt}" in md
    assert dup_prompt in (staging / "validation.html").read_text()


def test_missing_row_fails_row_count(tmp_path: Path, prompts) -> None:
    rows = make_samples(prompts)[:-1]
    staging = stage(tmp_path, prompts, rows)
    outcome = validate_run(staging, RUN, expected(prompts))
    assert not outcome.success
    sums = {f["column"]: f for f in failed(outcome)["keys"] if f["expectation"] == "expect_column_sum_to_be_between"}
    assert set(sums) == {"samples_rows", "labels_rows"}
    assert str(prompts.num_rows * REPS - 1) in sums["samples_rows"]["detail"]


def test_label_lost_between_stages_fails(tmp_path: Path, prompts) -> None:
    samples = pa.Table.from_pylist(make_samples(prompts), schema=SAMPLE_SCHEMA)
    labels = label_table(samples, {}).slice(1)
    staging = stage(tmp_path, prompts, samples, labels=labels)
    outcome = validate_run(staging, RUN, expected(prompts))
    keys = failed(outcome)["keys"]
    assert set(failed(outcome)) == {"keys"}
    # the lost label is named: a sample key without a label, and the label count one short
    assert {(f["expectation"], str(f["columns"] or f["column"])) for f in keys} == {
        ("expect_column_pair_values_to_be_equal", "['samples_keys', 'matched_keys']"),
        ("expect_column_sum_to_be_between", "labels_rows")}
    lost = samples.slice(0, 1).to_pylist()[0]
    pair = next(f for f in keys if f["columns"])
    assert pair["rows"][0]["prompt_id"] == lost["prompt_id"]


def test_wrong_label_value_fails(tmp_path: Path, prompts) -> None:
    samples = pa.Table.from_pylist(make_samples(prompts), schema=SAMPLE_SCHEMA)
    labels = label_table(samples, {})
    bad = labels.column("label").to_pylist()
    bad[2] = "maybe"
    labels = labels.set_column(labels.column_names.index("label"), "label", pa.array(bad, pa.string()))
    staging = stage(tmp_path, prompts, samples, labels=labels)
    outcome = validate_run(staging, RUN, expected(prompts))
    assert failed_types(outcome) == {("labels", "expect_column_values_to_be_in_set")}
    failure = failed(outcome)["labels"][0]
    assert failure["column"] == "label"
    assert "maybe" in failure["detail"]


def test_prompt_with_one_rep_missing_fails_sample_counts(tmp_path: Path, prompts) -> None:
    rows = make_samples(prompts)
    short_prompt = prompts.column("prompt_id")[1].as_py()
    rows = [r for r in rows if not (r["prompt_id"] == short_prompt and r["rep"] == REPS - 1)]
    staging = stage(tmp_path, prompts, rows)
    # even if the expected total were (wrongly) met, the per-prompt count catches it
    outcome = validate_run(staging, RUN, expected(prompts, rows=len(rows)))
    assert failed_types(outcome) == {("sample_counts", "expect_column_values_to_be_between")}
    failure = failed(outcome)["sample_counts"][0]
    assert failure["column"] == "n"
    assert f"[{REPS - 1}]" in failure["detail"]


def test_error_rate_above_bound_fails(tmp_path: Path, prompts) -> None:
    rows = make_samples(prompts)  # 12 rows
    for r in rows[:3]:  # 25% > 20%
        r.update(response_text=None, error="HTTP 500", finish_reason=None)
    staging = stage(tmp_path, prompts, rows)
    outcome = validate_run(staging, RUN, expected(prompts, max_error_rate=0.2))
    assert failed_types(outcome) == {("error_rates", "expect_column_values_to_be_between")}
    failure = failed(outcome)["error_rates"][0]
    assert failure["column"] == "error_rate" and failure["rows"] == [
        {"model": "m", "deployment": "d", "error_rate": 0.25}]


def test_error_rate_within_bound_passes(tmp_path: Path, prompts) -> None:
    rows = make_samples(prompts)
    for r in rows[:2]:  # 16.7% <= 20%
        r.update(response_text=None, error="HTTP 500", finish_reason=None)
    staging = stage(tmp_path, prompts, rows)
    outcome = validate_run(staging, RUN, expected(prompts, max_error_rate=0.2))
    assert outcome.success, outcome.summary_markdown()


def test_samples_suite_catches_values_and_schema_drift(tmp_path: Path, prompts) -> None:
    rows = make_samples(prompts)
    rows[0]["language"] = "ja"
    rows[1]["run_id"] = "someone-else"
    rows[2]["rep"] = REPS + 5  # unique key, but not a repetition the study asked for
    samples = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    samples = samples.append_column("api_key", pa.array(["sk-secret"] * samples.num_rows))
    staging = stage(tmp_path, prompts, samples, labels=label_table(samples.drop_columns(["api_key"]), {}))
    outcome = validate_run(staging, RUN, expected(prompts))
    samples_failures = {(f["expectation"], f["column"]) for f in failed(outcome)["samples"]}
    assert ("expect_column_values_to_be_in_set", "language") in samples_failures
    assert ("expect_column_values_to_be_in_set", "run_id") in samples_failures
    assert ("expect_column_values_to_be_between", "rep") in samples_failures
    assert ("expect_table_columns_to_match_set", None) in samples_failures


def test_duplicate_prompt_ids_fail(tmp_path: Path, prompts) -> None:
    doubled = pa.concat_tables([prompts, prompts.slice(0, 1)])
    staging = stage(tmp_path, doubled, make_samples(prompts))
    outcome = validate_run(staging, RUN, expected(prompts))
    assert failed_types(outcome) == {("prompts", "expect_compound_columns_to_be_unique")}


def test_recorded_rows_skip_repetition_count(tmp_path: Path, prompts) -> None:
    # recorded data has one response per prompt: no per-prompt repetition check applies
    rows = make_samples(prompts, reps=1)
    for r in rows:
        r.update(backend="recorded", seed=None)
    staging = stage(tmp_path, prompts, rows)
    exp = {**expected(prompts, reps=1), "live_prompt_cells": 0, "repetitions": 10, "max_rep": 9}
    outcome = validate_run(staging, RUN, exp)
    assert outcome.success, outcome.summary_markdown()
    assert "sample_counts" not in {s.suite for s in outcome.suites}


def test_no_samples_fails(tmp_path: Path, prompts) -> None:
    staging = tmp_path / "staging" / RUN
    write_parquet_atomic(prompts, staging / "prompts" / "catalog.parquet")
    outcome = validate_run(staging, RUN, expected(prompts))
    assert not outcome.success
    assert {"samples", "labels"} <= set(failed(outcome))


def test_quarantine_moves_run_and_explains(tmp_path: Path, duplicate_run) -> None:
    original, outcome = duplicate_run
    staging = tmp_path / "staging" / RUN
    shutil.copytree(original, staging)
    assert not outcome.success
    qdir = tmp_path / "quarantine"
    with pytest.raises(ValidationFailed) as info:
        quarantine(staging, qdir, outcome)
    target = qdir / RUN
    assert not staging.exists()
    assert target.is_dir()
    assert (target / "samples").is_dir() and (target / "labels").is_dir()
    summary = (target / "validation.md").read_text(encoding="utf-8")
    assert "FAILED" in summary
    assert "expect_column_pair_values_to_be_equal" in summary
    assert info.value.summary_path == str(target / "validation.md")
    assert "expect_column_pair_values_to_be_equal" in str(info.value)
    assert str(target) in str(info.value)
    assert json.loads((target / "validation.json").read_text())["success"] is False


def test_quarantine_replaces_an_earlier_attempt(tmp_path: Path, prompts) -> None:
    qdir = tmp_path / "quarantine"
    (qdir / RUN).mkdir(parents=True)
    (qdir / RUN / "stale.txt").write_text("old attempt")
    staging = stage(tmp_path, prompts, make_samples(prompts))
    outcome = ValidationOutcome(RUN, False, [SuiteOutcome("samples", False, [
        {"expectation": "expect_table_row_count_to_equal", "detail": "observed 11"}], 1)])
    (staging / "validation.md").write_text(outcome.summary_markdown())
    with pytest.raises(ValidationFailed, match="expect_table_row_count_to_equal"):
        quarantine(staging, qdir, outcome)
    assert not (qdir / RUN / "stale.txt").exists()
    assert "expect_table_row_count_to_equal" in (qdir / RUN / "validation.md").read_text()


# --------------------------------------------------------------------------- bad data, bounded memory


def test_truncated_parquet_file_is_named(tmp_path: Path, prompts) -> None:
    staging = stage(tmp_path, prompts, make_samples(prompts))
    chunk = next((staging / "samples").rglob("chunk-1.parquet"))
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])  # a writer killed half-way (no footer)
    outcome = validate_run(staging, RUN, expected(prompts))
    assert not outcome.success
    (damage,) = failed(outcome)["files"]
    assert str(chunk) in damage["detail"] and "parquet" in damage["detail"].lower()
    # the rest is still checked: without the file, no samples are left
    assert "samples" in failed(outcome)
    assert str(chunk) in (staging / "validation.md").read_text()


def test_missing_key_column_is_named(tmp_path: Path, prompts) -> None:
    samples = pa.Table.from_pylist(make_samples(prompts), schema=SAMPLE_SCHEMA)
    labels = label_table(samples, {})
    staging = stage(tmp_path, prompts, samples.drop_columns(["rep"]), labels=labels)
    outcome = validate_run(staging, RUN, expected(prompts))
    assert ("samples", "expect_table_columns_to_match_set") in failed_types(outcome)
    schema = next(f for f in failed(outcome)["samples"] if f["expectation"] == "expect_table_columns_to_match_set")
    assert "rep" in json.dumps(schema["detail"]) or "rep" in json.dumps(schema["kwargs"])
    (keys,) = failed(outcome)["keys"]
    assert "rep" in keys["detail"]


def test_empty_run_fails(tmp_path: Path, prompts) -> None:
    # zero rows where zero were expected (e.g. an empty recorded file) is still not a run
    empty = pa.Table.from_pylist([], schema=SAMPLE_SCHEMA)
    staging = stage(tmp_path, prompts, empty, labels=label_table(empty, {}))
    outcome = validate_run(staging, RUN, {**expected(prompts, rows=0), "live_prompt_cells": 0})
    assert failed_types(outcome) == {("keys", "expect_table_row_count_to_be_between")}
    assert "empty run" in failed(outcome)["keys"][0]["notes"]


def test_error_gate_is_per_model_and_deployment(tmp_path: Path, prompts) -> None:
    # a large clean recorded import must not hide a live model that only errors
    live = make_samples(prompts, reps=2)
    for r in live:
        r.update(response_text=None, error="engine died", finish_reason=None)
    recorded = []
    for k in range(200):
        row = {**make_samples(prompts, reps=1)[0], "model": "rec", "deployment": "archive", "backend": "recorded",
               "prompt_id": f"rec-{k}", "rep": 0, "seed": None}
        recorded.append(row)
    rows = live + recorded
    assert sum(r["error"] is not None for r in rows) / len(rows) < 0.05  # the run as a whole looks fine
    staging = stage(tmp_path, prompts, rows)
    exp = {**expected(prompts, reps=2, rows=len(rows), max_error_rate=0.05)}
    outcome = validate_run(staging, RUN, exp)
    (failure,) = failed(outcome)["error_rates"]
    assert failure["rows"] == [{"model": "m", "deployment": "d", "error_rate": 1.0}]


def test_moderation_errors_are_measured_not_gated(tmp_path: Path, prompts) -> None:
    rows = make_samples(prompts)
    for r in rows[:6]:  # half the run blocked by the provider's moderation
        r.update(response_text=None, finish_reason=None,
                 error="Upstream error from Alibaba: Output data may contain inappropriate content.")
    samples = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    labels = label_table(samples, {})
    assert sum(labels.column("moderation").to_pylist()) == 6
    staging = stage(tmp_path, prompts, samples, labels=labels)
    outcome = validate_run(staging, RUN, expected(prompts, max_error_rate=0.05))
    assert outcome.success, outcome.summary_markdown()


def test_batched_validation_merges_failures(tmp_path: Path, prompts, monkeypatch) -> None:
    samples = pa.Table.from_pylist(make_samples(prompts), schema=SAMPLE_SCHEMA)
    labels = label_table(samples, {})
    bad = labels.column("label").to_pylist()
    bad[0], bad[-1] = "maybe", "perhaps"  # in the first and in the last batch
    labels = labels.set_column(labels.column_names.index("label"), "label", pa.array(bad, pa.string()))
    staging = stage(tmp_path, prompts, samples, labels=labels)
    whole = validate_run(staging, RUN, expected(prompts))
    monkeypatch.setenv("REFUSALS_VALIDATION_BATCH_ROWS", "5")  # 12 rows: batches of 5, 5, 2
    batched = validate_run(staging, RUN, expected(prompts))
    assert failed_types(batched) == failed_types(whole) == {("labels", "expect_column_values_to_be_in_set")}
    (f,) = failed(batched)["labels"]
    assert f["unexpected_count"] == 2 and f["batches"] == 2
    assert {r["rep"] for r in f["rows"]} == {0, REPS - 1}


def test_row_batches_are_bounded_and_split_on_schema(tmp_path: Path) -> None:
    from pipeline.validate import row_batches

    a = pa.table({"x": list(range(7))})
    b = pa.table({"x": list(range(3)), "y": ["s"] * 3})
    for name, t in (("1", a), ("2", a), ("3", b)):
        write_parquet_atomic(t, tmp_path / f"{name}.parquet")
    files = sorted(tmp_path.glob("*.parquet"))
    sizes = [(t.num_rows, t.column_names) for t in row_batches(files, 4)]
    assert all(n <= 4 for n, _ in sizes)
    assert sum(n for n, _ in sizes) == 17
    assert sizes[-1] == (3, ["x", "y"])  # the drifted file is a batch of its own
