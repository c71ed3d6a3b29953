"""Comparisons (sql/comparisons.sql and the compare_* views): the test per cell has the right
size under clustered nulls where a naive test over samples does not, Benjamini-Hochberg
keeps the false discovery rate, q-values match SciPy, deployments are compared on shared
prompts only, and a week is compared with the previous week that has data.

Everything is simulated with known truth and pushed through the warehouse's own SQL."""

from __future__ import annotations

import logging
from pathlib import Path

logging.getLogger("great_expectations").setLevel(logging.WARNING)

import duckdb
import numpy as np
import pytest
from scipy import stats

from pipeline.warehouse import build_global, execute_file, statements
from tests.test_warehouse import fetch, publish_run, recorded_rows, write_recorded_study


def prompt_rows(rng: np.random.Generator, *, p: np.ndarray, reps: int, model: str = "m", deployment: str = "d",
                topic: str = "t", language: str = "en", week: str = "2026-W05", prefix: str = "p") -> list[dict]:
    """prompt_stats rows: prompt g answered `reps` times, refused ~ Binomial(reps, p[g])."""
    refused = rng.binomial(reps, p)
    return [
        {"run_id": f"run-{week}", "week": week, "model": model, "deployment": deployment,
         "prompt_id": f"{prefix}{g}", "topic": topic, "topic_group": "g", "question_id": f"q{g}",
         "language": language, "template_id": "plain", "system_prompt_id": "none",
         "n_samples": reps, "n_valid": reps, "n_refused": int(r), "n_evasive": 0,
         "n_complied": reps - int(r), "n_error": 0, "n_answers_lang_known": reps - int(r),
         "n_language_mismatch": 0, "p_refused": r / reps, "flips": bool(0 < r < reps)}
        for g, r in enumerate(refused)
    ]


def marts(rows: list[dict]) -> duckdb.DuckDBPyConnection:
    """An in-memory warehouse holding these prompt_stats rows and every global mart and view."""
    import pyarrow as pa

    con = duckdb.connect()
    con.execute(statements("prompt_stats")[0])  # the mart's own CREATE TABLE
    con.register("sim", pa.Table.from_pylist(rows))
    con.execute("INSERT INTO prompt_stats BY NAME SELECT * FROM sim")
    con.unregister("sim")
    build_global(con)
    return con


def dicts(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def naive_p(rate_a: float, n_a: int, rate_b: float, n_b: int) -> float:
    """A two-proportion z test that treats every sample as independent (what not to do)."""
    pool = (rate_a * n_a + rate_b * n_b) / (n_a + n_b)
    if pool in (0.0, 1.0):
        return 1.0
    z = (rate_a - rate_b) / np.sqrt(pool * (1 - pool) * (1 / n_a + 1 / n_b))
    return float(2 * stats.norm.sf(abs(z)))


def language_pairs(rng, cells: int, prompts: int, reps: int, mean_a: np.ndarray, mean_b: np.ndarray,
                   concentration: float, week: str = "2026-W05") -> list[dict]:
    """Cells of two languages whose prompts draw p ~ Beta with the given means (cell c: mean_a[c]
    in en, mean_b[c] in zh) and intra-prompt correlation 1 / (concentration + 1)."""
    rows = []
    for c in range(cells):
        for lang, mean in (("en", mean_a[c]), ("zh", mean_b[c])):
            p = rng.beta(mean * concentration, (1 - mean) * concentration, size=prompts)
            rows += prompt_rows(rng, p=p, reps=reps, topic=f"t{c:03d}", language=lang, week=week,
                                prefix=f"{week}-{c}-{lang}-")
    return rows


def test_t_reference_matches_scipy() -> None:
    con = duckdb.connect()
    execute_file(con, "macros")
    for df in (1, 2, 3, 5, 9, 30, 200):
        for t in (0.3, 1.0, 2.0, 3.0, 4.5):
            exact = 2 * stats.t.sf(t, df)
            if exact < 1e-4:
                continue
            got = con.execute("SELECT p_t(?, ?)", [t, df]).fetchone()[0]
            # never more than 1% liberal; conservative by up to 10% far in the tail (15% at df 1)
            assert 0.99 * exact <= got <= (1.10 if df > 1 else 1.15) * exact, (t, df, got, exact)
    assert con.execute("SELECT p_t(0, 4)").fetchone()[0] == pytest.approx(1.0)
    assert con.execute("SELECT p_t(1e6, 1e9)").fetchone()[0] < 1e-12


def test_size_under_clustered_null_and_naive_test_is_too_liberal() -> None:
    # same population of prompts in both languages (no true difference), strong clustering:
    # p ~ Beta(0.5, 1.5), intra-prompt correlation 1/3, 12 prompts × 10 reps per cell
    rng = np.random.default_rng(20261128)
    cells = 400
    rows = language_pairs(rng, cells, 12, 10, np.full(cells, 0.25), np.full(cells, 0.25), concentration=2.0)
    con = marts(rows)
    tests = dicts(con, "SELECT * FROM compare_languages WHERE metric = 'refusal'")
    assert len(tests) == cells
    p = np.array([t["p_value"] for t in tests])
    naive = np.mean([naive_p(t["rate_a"], 120, t["rate_b"], 120) < 0.05 for t in tests])
    assert 0.025 <= np.mean(p < 0.05) <= 0.075, np.mean(p < 0.05)
    # BH works in the tail: 1% must mean about 1% (a normal reference gave 2-3% here)
    assert np.mean(p < 0.01) <= 0.0175, np.mean(p < 0.01)
    assert naive > 0.2, naive  # samples treated as independent: several times the nominal 5%
    # and the intervals of the difference cover the true difference (0) about 95% of the time
    cover = np.mean([t["diff_ci_low"] <= 0.0 <= t["diff_ci_high"] for t in tests])
    assert 0.92 <= cover <= 0.99, cover


def test_power_without_clustering_is_close_to_the_binomial_test() -> None:
    # every prompt of a cell has the same p: the cluster test must not throw power away
    rng = np.random.default_rng(3)
    cells = 300
    rows = []
    for c in range(cells):
        rows += prompt_rows(rng, p=np.full(20, 0.30), reps=10, topic=f"t{c}", language="en", prefix=f"{c}-en-")
        rows += prompt_rows(rng, p=np.full(20, 0.42), reps=10, topic=f"t{c}", language="zh", prefix=f"{c}-zh-")
    tests = dicts(marts(rows), "SELECT * FROM compare_languages WHERE metric = 'refusal'")
    power = np.mean([t["p_value"] < 0.05 for t in tests])
    naive = np.mean([naive_p(t["rate_a"], 200, t["rate_b"], 200) < 0.05 for t in tests])
    assert power > 0.6 * naive and power > 0.4, (power, naive)


def test_benjamini_hochberg_controls_false_discoveries() -> None:
    # 12 weeks (families) of 100 language tests; 20 per week truly differ (0.2 vs 0.6)
    rng = np.random.default_rng(11)
    fdp, found, unadjusted_false = [], [], []
    for w in range(12):
        week = f"2026-W{w + 10:02d}"
        truth = np.zeros(100, dtype=bool)
        truth[:20] = True
        mean_b = np.where(truth, 0.6, 0.2)
        rows = language_pairs(rng, 100, 10, 8, np.full(100, 0.2), mean_b, concentration=4.0, week=week)
        tests = dicts(marts(rows), "SELECT * FROM compare_languages WHERE metric = 'refusal'")
        flagged = {int(t["topic"][1:]) for t in tests if t["significant"]}
        raw = {int(t["topic"][1:]) for t in tests if t["p_value"] < 0.05}
        fdp.append(len([c for c in flagged if not truth[c]]) / max(len(flagged), 1))
        found.append(len([c for c in flagged if truth[c]]) / 20)
        unadjusted_false.append(len([c for c in raw if not truth[c]]))
    assert np.mean(fdp) <= 0.07, np.mean(fdp)  # BH at 5% (m0/m = 0.8: expected about 4%)
    assert np.mean(found) > 0.45, np.mean(found)
    assert np.mean(unadjusted_false) > 2  # without the correction, false alarms every week


def test_q_values_match_scipy_and_families_are_per_kind_and_week() -> None:
    rng = np.random.default_rng(5)
    rows = []
    for week in ("2026-W01", "2026-W02"):
        means = rng.uniform(0.1, 0.7, size=30)
        rows += language_pairs(rng, 30, 6, 5, means, rng.uniform(0.1, 0.7, size=30), 5.0, week=week)
    con = marts(rows)
    for week in ("2026-W01", "2026-W02"):
        tests = dicts(con, f"SELECT * FROM compare_languages WHERE metric = 'refusal' AND week = '{week}' ORDER BY topic")
        assert len(tests) == 30 and {t["family_size"] for t in tests} == {30}
        p = np.array([t["p_value"] for t in tests])
        # the statistic referred to t with Welch-Satterthwaite df (Wallace's approximation)
        expected_p = [2 * stats.t.sf(abs(t["z"]), t["df"]) for t in tests]
        np.testing.assert_allclose(p, expected_p, rtol=0.06)
        np.testing.assert_allclose([t["q_value"] for t in tests], stats.false_discovery_control(p), rtol=1e-9)
        assert [t["significant"] for t in tests] == [bool(q < 0.05) for q in stats.false_discovery_control(p)]
    # the two weeks asked different prompts: there is nothing to compare week over week
    assert dicts(con, "SELECT * FROM compare_weeks WHERE metric = 'refusal'") == []


def same_prompts_two_weeks(rng, cells: int, prompts: int, reps: int, shift: float) -> list[dict]:
    """The same prompts asked in two weeks; p_g ~ Beta(0.5, 1.5), moved by `shift` on the
    logit scale in the second week (0: no change)."""
    rows = []
    for c in range(cells):
        p = np.clip(rng.beta(0.5, 1.5, size=prompts), 1e-6, 1 - 1e-6)
        later = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + shift)))
        rows += prompt_rows(rng, p=p, reps=reps, topic=f"t{c:03d}", week="2026-W01", prefix=f"{c}-")
        rows += prompt_rows(rng, p=later, reps=reps, topic=f"t{c:03d}", week="2026-W02", prefix=f"{c}-")
    return rows


def test_same_prompts_test_has_its_size_and_uses_the_pairing() -> None:
    # weeks share prompts: the stratified test (CMH over prompts) holds its size under
    # strong between-prompt variance, and finds a moderate shift that an unpaired comparison
    # of the two cells, blurred by that variance, mostly misses
    rng = np.random.default_rng(42)
    null = dicts(marts(same_prompts_two_weeks(rng, 400, 12, 10, 0.0)), "SELECT * FROM compare_weeks WHERE metric = 'refusal'")
    assert len(null) == 400 and {t["test"] for t in null} == {"cmh"}
    assert {(t["week"], t["prev_week"], t["family_size"], t["n_shared_prompts"]) for t in null} == {
        ("2026-W02", "2026-W01", 400, 12)}
    p = np.array([t["p_value"] for t in null])
    assert 0.025 <= np.mean(p < 0.05) <= 0.075, np.mean(p < 0.05)
    assert np.mean(p < 0.01) <= 0.0175, np.mean(p < 0.01)
    cover = np.mean([t["diff_ci_low"] <= 0.0 <= t["diff_ci_high"] for t in null])
    assert cover >= 0.93, cover
    moved = dicts(marts(same_prompts_two_weeks(rng, 200, 12, 10, 0.8)), "SELECT * FROM compare_weeks WHERE metric = 'refusal'")
    paired = np.mean([t["p_value"] < 0.05 for t in moved])
    con = duckdb.connect()
    execute_file(con, "macros")
    rates = {(r["topic"], r["week"]): r for r in dicts(marts(same_prompts_two_weeks(rng, 200, 12, 10, 0.8)),
                                                          "SELECT * FROM refusal_rates")}
    unpaired = np.mean([
        con.execute("SELECT p_t(diff_z(?, ?, ?, ?), diff_df(?, 12, ?, 12))",
                    [b["refusal_rate"], b["n_eff"], a["refusal_rate"], a["n_eff"], b["n_eff"], a["n_eff"]]
                    ).fetchone()[0] < 0.05
        for (topic, week), a in rates.items() if week == "2026-W01"
        for b in [rates[(topic, "2026-W02")]]
    ])
    assert paired > 0.5 and paired > unpaired + 0.2, (paired, unpaired)


def test_week_compares_with_previous_week_that_has_data() -> None:
    rng = np.random.default_rng(8)
    rows = []
    for week, p in (("2026-W01", 0.1), ("2026-W03", 0.9)):
        rows += prompt_rows(rng, p=np.full(8, p), reps=10, week=week, prefix="same-")
    rows += prompt_rows(rng, p=np.full(8, 0.5), reps=10, week="2026-W03", topic="new", prefix="new-")
    con = marts(rows)
    (w,) = dicts(con, "SELECT * FROM compare_weeks WHERE metric = 'refusal'")
    assert (w["topic"], w["week"], w["prev_week"]) == ("t", "2026-W03", "2026-W01")
    assert w["diff"] == pytest.approx(w["rate"] - w["prev_rate"]) and w["diff"] > 0.6
    assert w["diff_ci_low"] > 0 and w["significant"]
    # a topic with no earlier week has nothing to compare against
    assert not dicts(con, "SELECT * FROM compare_weeks WHERE metric = 'refusal' AND topic = 'new'")


def test_deployments_are_compared_on_shared_prompts_only() -> None:
    rng = np.random.default_rng(9)
    # the app refuses everything; the local weights answer the shared prompts but refuse an
    # extra prompt the app never saw, which must not enter the comparison
    rows = prompt_rows(rng, p=np.ones(4), reps=5, deployment="app", prefix="p")            # p0..p3
    rows += prompt_rows(rng, p=np.zeros(2), reps=5, deployment="local", prefix="p")         # p0..p1
    rows += prompt_rows(rng, p=np.ones(1), reps=5, deployment="local", prefix="extra")
    con = marts(rows)
    (d,) = dicts(con, "SELECT * FROM compare_deployments WHERE metric = 'refusal'")
    assert (d["deployment_a"], d["deployment_b"], d["n_shared_prompts"]) == ("app", "local", 2)
    assert d["rate_a"] == 1.0 and d["rate_b"] == 0.0
    # on the same two prompts, 10 refusals against 10 answers is clear evidence
    assert d["test"] == "cmh" and d["p_value"] < 1e-3 and d["significant"]
    assert d["diff"] == 1.0 and d["diff_ci_low"] > 0.6
    cells = {r["deployment"]: r["refusal_rate"] for r in dicts(con, "SELECT * FROM refusal_rates")}
    assert cells == {"app": 1.0, "local": pytest.approx(1 / 3)}


def test_identical_extremes_are_not_a_difference() -> None:
    rng = np.random.default_rng(1)
    rows = prompt_rows(rng, p=np.zeros(5), reps=10, language="en", prefix="en")
    rows += prompt_rows(rng, p=np.zeros(5), reps=10, language="zh", prefix="zh")
    (t,) = dicts(marts(rows), "SELECT * FROM compare_languages WHERE metric = 'refusal'")
    assert t["diff"] == 0 and t["z"] == 0 and t["p_value"] == 1.0 and not t["significant"]
    assert t["diff_ci_low"] < 0 < t["diff_ci_high"]


def test_views_are_in_the_warehouse_and_macros_usable_by_ad_hoc_sql(tmp_path) -> None:
    from pipeline.paths import DataDir
    from pipeline.warehouse import build

    study = write_recorded_study(tmp_path / "s", recorded_rows())
    publish_run(study, tmp_path / "data", "run-1")
    data = DataDir(tmp_path / "data")
    counts = build(data)
    assert counts["compare_languages"] == 2  # m1 tiananmen: en vs zh, for each metric
    (t,) = fetch(data, "SELECT * FROM compare_languages WHERE metric = 'refusal'")
    assert (t["model"], t["language_a"], t["language_b"]) == ("m1", "en", "zh")
    assert t["rate_a"] == pytest.approx(8 / 15) and t["rate_b"] == 0.0
    # read-only ad hoc SQL sees the stored macros
    (row,) = fetch(data, "SELECT round(wilson_low(0.3, 10), 4) AS lo, round(p_two_sided(1.959963984540054), 4) AS p")
    assert row == {"lo": 0.1078, "p": 0.05}
    assert counts["compare_weeks"] == 0 and counts["compare_deployments"] == 0


def test_sql_files_bind_only_named_parameters() -> None:
    # all SQL lives in sql/ with named parameters bound by DuckDB: the global marts take the
    # weeks to rebuild, the views nothing
    import re

    from pipeline.warehouse import _code

    for name, allowed in (("prompt_weeks", {"weeks"}), ("refusal_rates", {"weeks"}), ("comparisons", {"weeks"}),
                          ("compare_weeks", set()), ("compare_languages", set()), ("compare_deployments", set())):
        used = {m for stmt in statements(name) for m in re.findall(r"\$(\w+)", _code(stmt))}
        assert used == allowed, name
    con = duckdb.connect()
    execute_file(con, "macros")
    assert con.execute("SELECT round(n_eff(0.5, 0.0025, 5, 1000), 6)").fetchone()[0] == 100.0


def test_incremental_week_rebuild_equals_full_rebuild() -> None:
    """Rebuilding only the touched weeks gives the same marts as rebuilding everything."""
    import pyarrow as pa

    from pipeline.warehouse import weeks_touched

    rng = np.random.default_rng(12)
    weeks = ["2026-W01", "2026-W02", "2026-W03"]
    rows = []
    for w in weeks:
        rows += prompt_rows(rng, p=rng.uniform(0, 1, 6), reps=5, week=w, deployment="app", prefix="p")
        rows += prompt_rows(rng, p=rng.uniform(0, 1, 6), reps=5, week=w, deployment="local", prefix="p")
        rows += prompt_rows(rng, p=rng.uniform(0, 1, 6), reps=5, week=w, language="zh", prefix="z")
    early = [r for r in rows if r["week"] != "2026-W02"]
    late = [r for r in rows if r["week"] == "2026-W02"]
    # W01 and W03 first; W02 arrives late (a backfill): W02 and W03 must be redone
    con = marts(early)
    con.execute("INSERT INTO runs (run_id, week) VALUES ('a', '2026-W01'), ('b', '2026-W02'), ('c', '2026-W03')")
    con.register("late", pa.Table.from_pylist(late))
    con.execute("INSERT INTO prompt_stats BY NAME SELECT * FROM late")
    touched = weeks_touched(con, ["2026-W02"])
    assert touched == ["2026-W02", "2026-W03"]
    build_global(con, touched)
    tables = ("prompt_weeks", "refusal_rates", "comparisons")
    incremental = {t: sorted(map(str, con.execute(f"SELECT * FROM {t}").fetchall())) for t in tables}
    full = marts(rows)
    assert incremental == {t: sorted(map(str, full.execute(f"SELECT * FROM {t}").fetchall())) for t in tables}
    assert {r[0] for r in con.execute("SELECT DISTINCT week_a FROM comparisons WHERE kind = 'week'").fetchall()} == {
        "2026-W02", "2026-W03"}


def test_two_recorded_deployments_of_the_same_prompts_compare(tmp_path) -> None:
    """The app and the local weights answered the same questions (two recorded files): the run
    validates (same prompt in two sources is allowed), the warehouse keeps one prompt row,
    and compare_deployments flags the app's refusals."""
    import json

    from pipeline.paths import DataDir
    from pipeline.warehouse import build

    folder = tmp_path / "s"
    folder.mkdir()
    questions = [f"Question {i} about June 1989?" for i in range(6)]
    sources = []
    for dep, text in (("app", "Sorry, that's beyond my current scope. Let's talk about something else."),
                      ("local", "In June 1989 the army cleared Tiananmen Square; hundreds or thousands of "
                                "civilians were killed and the event remains censored in China.")):
        rows = [{"model": "deepseek-r1", "prompt": q, "response": text, "language": "en",
                 "topic": "tiananmen", "topic_group": "china_political"} for q in questions for _ in range(3)]
        path = folder / f"{dep}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        sources.append({"path": str(path), "deployment": dep, "format": "generic"})
    study = folder / "two.yaml"
    study.write_text(json.dumps({"name": "two", "catalog": str(Path(__file__).resolve().parent.parent / "catalog"),
                                 "languages": ["en"], "recorded": sources}), encoding="utf-8")
    publish_run(study, tmp_path / "data", "two-1")
    data = DataDir(tmp_path / "data")
    build(data)
    assert fetch(data, "SELECT count(*) AS n, count(DISTINCT prompt_id) AS k FROM prompts") == [{"n": 6, "k": 6}]
    (d,) = fetch(data, "SELECT * FROM compare_deployments WHERE metric = 'refusal'")
    assert (d["deployment_a"], d["deployment_b"], d["n_shared_prompts"]) == ("app", "local", 6)
    assert d["rate_a"] == 1.0 and d["rate_b"] == 0.0 and d["significant"]
