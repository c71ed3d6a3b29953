"""Issue 11 in the marts: `blocked` counted among the non-answers (and never as an error),
truncation and evidence columns, studies never pooled, compare_models, and Benjamini-Hochberg
within (metric, kind). Through the warehouse's own SQL."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.warehouse import build_global, execute_file, install_macros, statements
from tests.test_comparisons import dicts, marts, prompt_rows

WEEK = "2026-W05"


def labelled_run(con, run_id: str, study: str, labels: list[tuple[str, str, bool]]) -> None:
    """runs, prompts and labels rows of one run: labels = (prompt_id, label, truncated)."""
    for name in ("runs", "prompts", "labels"):
        con.execute(statements(name)[0])
    con.execute("INSERT INTO runs (run_id, study, week) VALUES (?, ?, ?)", [run_id, study, WEEK])
    for pid in sorted({p for p, _, _ in labels}):
        con.execute("""INSERT INTO prompts (run_id, prompt_id, study, topic, topic_group, language)
                       VALUES (?, ?, ?, 't', 'g', 'en')""", [run_id, pid, study])
    for rep, (pid, label, truncated) in enumerate(labels):
        con.execute("""INSERT INTO labels (run_id, model, deployment, prompt_id, rep, label, truncated,
                                           language_match, classifier_version)
                       VALUES (?, 'm', 'd', ?, ?, ?, ?, true, '0.3.0')""", [run_id, pid, rep, label, truncated])


def test_blocked_is_a_non_answer_not_an_error() -> None:
    con = duckdb.connect()
    install_macros(con)
    labels = ([("p1", "refused", False), ("p1", "blocked", False), ("p1", "complied", True), ("p1", "error", False)]
              + [("p2", "evasive", True), ("p2", "evasive", False), ("p2", "complied", False)]
              + [("p3", "blocked", False)] * 3)
    labelled_run(con, "r1", "s1", labels)
    execute_file(con, "prompt_stats", {"run_id": "r1"})
    got = {r["prompt_id"]: r for r in dicts(con, "SELECT * FROM prompt_stats")}
    p1, p2, p3 = got["p1"], got["p2"], got["p3"]
    assert (p1["n_valid"], p1["n_refused"], p1["n_blocked"], p1["n_non_answer"], p1["n_error"]) == (3, 1, 1, 2, 1)
    assert p1["p_refused"] == pytest.approx(1 / 3) and p1["p_non_answer"] == pytest.approx(2 / 3)
    assert p1["flips"] and p1["flips_non_answer"] and p1["n_truncated"] == 1
    assert (p2["n_refused"], p2["n_non_answer"], p2["flips"], p2["flips_non_answer"]) == (0, 2, False, True)
    assert (p3["n_valid"], p3["n_non_answer"], p3["p_non_answer"], p3["flips_non_answer"]) == (3, 3, 1.0, False)
    assert p1["non_answer_ci_low"] < p1["p_non_answer"] < p1["non_answer_ci_high"]
    assert {r["study"] for r in got.values()} == {"s1"} and p1["classifier_version"] == "0.3.0"
    assert con.execute("SELECT n_blocked FROM runs").fetchone() == (4,)
    build_global(con)
    (cell,) = dicts(con, "SELECT * FROM refusal_rates")
    assert (cell["study"], cell["n_valid"], cell["n_refused"], cell["n_evasive"], cell["n_blocked"],
            cell["n_non_answer"], cell["n_error"]) == ("s1", 9, 1, 2, 4, 7, 1)
    assert cell["non_answer_rate"] == pytest.approx(7 / 9) and cell["blocked_rate"] == pytest.approx(4 / 9)
    assert cell["evasive_rate"] == pytest.approx(2 / 9)
    assert cell["truncated_rate"] == pytest.approx(2 / 9)
    assert cell["error_rate"] == pytest.approx(1 / 10)
    assert cell["non_answer_flip_rate"] == pytest.approx(2 / 3) and cell["flip_rate"] == pytest.approx(1 / 3)
    assert cell["evasive_ci_low"] <= cell["evasive_rate"] <= cell["evasive_ci_high"]
    assert cell["non_answer_ci_low"] <= cell["non_answer_rate"] <= cell["non_answer_ci_high"]
    assert cell["well_measured"] is False  # 3 prompts < min_prompts()


def test_audit_error_rates_do_not_count_blocks(tmp_path) -> None:
    samples = [{"model": "m", "deployment": "d", "prompt_id": f"p{i}", "rep": 0,
                "error": None if i < 4 else ("HTTP 451" if i < 8 else "timeout")} for i in range(10)]
    labels = [{"model": "m", "deployment": "d", "prompt_id": f"p{i}", "rep": 0, "moderation": False,
               "label": "complied" if i < 4 else ("blocked" if i < 8 else "error")} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(samples), tmp_path / "s.parquet")
    pq.write_table(pa.Table.from_pylist(labels), tmp_path / "l.parquet")
    (stmt,) = statements("audit_error_rates")
    cur = duckdb.connect().execute(stmt, {"samples": [str(tmp_path / "s.parquet")],
                                          "labels": [str(tmp_path / "l.parquet")]})
    cols = [d[0] for d in cur.description]
    (row,) = [dict(zip(cols, r)) for r in cur.fetchall()]
    assert (row["n_samples"], row["n_errors"], row["n_blocked"], row["error_rate"]) == (10, 2, 4, 0.2)


def test_label_expectations_accept_blocked() -> None:
    import json

    from pipeline.paths import resource_dir

    suite = json.loads((resource_dir("expectations") / "labels.json").read_text())
    sets = {e["kwargs"]["column"]: e["kwargs"]["value_set"] for e in suite["expectations"]
            if e["type"] == "expect_column_values_to_be_in_set"}
    assert "blocked" in sets["label"] and "blocked" in sets["rule_label"]


def with_study(rows: list[dict], study: str) -> list[dict]:
    return [{**r, "study": study, "run_id": f"{study}-{r['run_id']}"} for r in rows]


def test_two_studies_in_one_week_are_never_pooled() -> None:
    rng = np.random.default_rng(2)
    rows = with_study(prompt_rows(rng, p=np.ones(6), reps=5, prefix="p"), "a")
    rows += with_study(prompt_rows(rng, p=np.zeros(6), reps=5, prefix="p"), "b")
    rows += with_study(prompt_rows(rng, p=np.zeros(6), reps=5, language="zh", prefix="z"), "b")
    con = marts(rows)
    cells = {(r["study"], r["language"]): r for r in dicts(con, "SELECT * FROM refusal_rates")}
    assert set(cells) == {("a", "en"), ("b", "en"), ("b", "zh")}
    assert cells[("a", "en")]["refusal_rate"] == 1.0 and cells[("b", "en")]["refusal_rate"] == 0.0
    assert cells[("a", "en")]["n_samples"] == 30
    weeks = dicts(con, "SELECT DISTINCT study, n_runs FROM prompt_weeks ORDER BY study")
    assert weeks == [{"study": "a", "n_runs": 1}, {"study": "b", "n_runs": 1}]
    langs = dicts(con, "SELECT * FROM compare_languages")
    # only study b has two languages; study a's en is never set against b's zh
    assert {(t["study"], t["metric"]) for t in langs} == {("b", "refusal"), ("b", "non_answer")}
    assert all(t["study"] is not None for t in dicts(con, "SELECT * FROM comparisons"))


def test_compare_models_on_shared_prompts() -> None:
    rng = np.random.default_rng(3)
    rows = prompt_rows(rng, p=np.ones(6), reps=5, model="r1", prefix="p")
    rows += prompt_rows(rng, p=np.zeros(6), reps=5, model="r1-1776", prefix="p")
    rows += prompt_rows(rng, p=np.zeros(3), reps=5, model="r1-1776", prefix="only")  # not shared
    rows += prompt_rows(rng, p=np.zeros(6), reps=5, model="other", deployment="elsewhere", prefix="p")
    con = marts(rows)
    got = dicts(con, "SELECT * FROM compare_models ORDER BY metric")
    assert [(t["metric"], t["model_a"], t["model_b"], t["deployment"], t["n_shared_prompts"]) for t in got] == [
        ("non_answer", "r1", "r1-1776", "d", 6), ("refusal", "r1", "r1-1776", "d", 6)]
    for t in got:
        assert t["rate_a"] == 1.0 and t["rate_b"] == 0.0 and t["diff"] == 1.0
        assert t["test"] == "cmh" and t["significant"] and t["diff_ci_low"] > 0.6
        assert t["family_size"] == 1


def test_benjamini_hochberg_is_within_metric_and_kind() -> None:
    rng = np.random.default_rng(4)
    rows = []
    for c in range(10):
        p_en, p_zh = rng.uniform(0.1, 0.9, 2)
        for lang, p in (("en", p_en), ("zh", p_zh)):
            r = prompt_rows(rng, p=np.full(8, p), reps=6, topic=f"t{c}", language=lang, prefix=f"{c}{lang}")
            for x in r:  # some evasions: the two metrics differ
                x["n_evasive"] = int(rng.binomial(x["n_complied"], 0.5))
            rows += r
    con = marts(rows)
    fam = dicts(con, "SELECT metric, kind, count(*) AS n, min(family_size) AS lo, max(family_size) AS hi "
                     "FROM comparisons GROUP BY ALL ORDER BY ALL")
    assert fam == [{"metric": "non_answer", "kind": "language", "n": 10, "lo": 10, "hi": 10},
                   {"metric": "refusal", "kind": "language", "n": 10, "lo": 10, "hi": 10}]
    from scipy import stats

    for metric in ("refusal", "non_answer"):
        t = dicts(con, f"SELECT p_value, q_value FROM comparisons WHERE metric = '{metric}' ORDER BY topic")
        np.testing.assert_allclose([x["q_value"] for x in t], stats.false_discovery_control([x["p_value"] for x in t]),
                                   rtol=1e-9)
    na = dicts(con, "SELECT * FROM refusal_rates ORDER BY topic, language")
    assert all(r["non_answer_rate"] >= r["refusal_rate"] for r in na)
    assert any(r["non_answer_rate"] > r["refusal_rate"] for r in na)


def test_well_measured_follows_min_prompts() -> None:
    rng = np.random.default_rng(5)
    rows = prompt_rows(rng, p=np.full(9, 0.3), reps=3, topic="nine", prefix="n")
    rows += prompt_rows(rng, p=np.full(10, 0.3), reps=3, topic="ten", prefix="t")
    con = marts(rows)
    got = {r["topic"]: r["well_measured"] for r in dicts(con, "SELECT topic, well_measured FROM refusal_rates")}
    assert got == {"nine": False, "ten": True}
    assert con.execute("SELECT min_prompts()").fetchone() == (10,)


def test_deployments_pair_across_studies_on_shared_prompts() -> None:
    # the app's answers imported by one study, the local weights sampled by another: the
    # same prompts in the same week are compared (cells stay apart, one per study)
    rng = np.random.default_rng(6)
    rows = with_study(prompt_rows(rng, p=np.ones(5), reps=4, deployment="app", prefix="p"), "import")
    rows += with_study(prompt_rows(rng, p=np.zeros(5), reps=4, deployment="local", prefix="p"), "demo")
    con = marts(rows)
    (d,) = dicts(con, "SELECT * FROM compare_deployments WHERE metric = 'refusal'")
    assert (d["study"], d["study_b"], d["deployment_a"], d["deployment_b"], d["n_shared_prompts"]) == (
        "import", "demo", "app", "local", 5)
    assert d["significant"]
    assert {r["study"] for r in dicts(con, "SELECT study FROM refusal_rates")} == {"import", "demo"}
    # weeks and languages never cross studies
    assert all(r["study_b"] == r["study"] for r in dicts(con, "SELECT * FROM comparisons WHERE kind IN ('week', 'language')"))
