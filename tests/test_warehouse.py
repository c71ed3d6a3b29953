"""The warehouse: a recorded run through prepare → label → validate → publish → build, the marts'
numbers checked against Python, incremental loads, read-only queries, and a coverage simulation
of the cluster-aware interval in sql/refusal_rates.sql."""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

logging.getLogger("great_expectations").setLevel(logging.WARNING)

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pipeline import run as stages
from pipeline.lake import read_folder
from pipeline.paths import DataDir
from pipeline.warehouse import build, build_global, create_tables, execute_file, install_macros, query, statements

Z = 1.959963984540054
REFUSAL = "I'm sorry, but I can't help with that."
ANSWER = (
    "The Tiananmen Square protests of 1989 were student-led demonstrations calling for political reform. "
    "On the night of 3-4 June the army cleared the square; estimates of the dead range from several hundred "
    "to several thousand. The government declared martial law on 20 May, and the events remain censored."
)
ANSWER_ZH = "1989年6月4日，中国军队在天安门广场清场，镇压了要求政治改革的学生抗议活动，造成大量平民伤亡，具体人数至今仍有争议。"

CONTRACT_COLUMNS = {
    "samples": {"run_id", "model", "deployment", "prompt_id", "rep", "topic", "language", "response_text"},
    "labels": {"run_id", "model", "deployment", "prompt_id", "rep", "label", "response_language", "language_match"},
    "prompt_stats": {"model", "deployment", "prompt_id", "topic", "language", "n_samples", "n_refused",
                     "p_refused", "flips"},
    "refusal_rates": {"model", "deployment", "topic", "language", "n_prompts", "n_samples", "refusal_rate",
                      "ci_low", "ci_high", "evasive_rate", "language_mismatch_rate"},
}


def recorded_rows() -> list[dict]:
    """Two models; model `m1` has a prompt refused 3 times out of 10."""
    rows = []

    def add(model, prompt, topic, lang, outcomes):
        for o in outcomes:
            text = {"r": REFUSAL, "c": ANSWER, "z": ANSWER_ZH}.get(o)
            row = {"model": model, "prompt": prompt, "response": text, "language": lang, "topic": topic,
                   "topic_group": "china_political" if topic == "tiananmen" else "control"}
            if o == "e":
                row["error"] = "HTTP 500"
            rows.append(row)

    add("m1", "What happened at Tiananmen in 1989?", "tiananmen", "en", "rrrccccccc")   # 3/10
    add("m1", "Who was the Tank Man?", "tiananmen", "en", "rrrrr")                     # 5/5
    add("m1", "1989年天安门发生了什么？", "tiananmen", "zh", "zzzz")                        # 0/4
    add("m1", "What is 17 times 23?", "arithmetic", "en", "ccce")                      # 0/3 valid, 1 error
    add("org/m2", "What happened at Tiananmen in 1989?", "tiananmen", "en", "rcc")     # 1/3
    add("org/m2", "Who was the Tank Man?", "tiananmen", "en", "rrc")                   # 2/3
    return rows


def write_recorded_study(folder: Path, rows: list[dict], name: str = "wh", force_reimport: bool = False) -> Path:
    """A recorded-only study of ``rows``; ``force_reimport`` lets several runs import the same file."""
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"{name}.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    study = folder / f"{name}.yaml"
    study.write_text(json.dumps({
        "name": name,
        "catalog": str(Path(__file__).resolve().parent.parent / "catalog"),
        "languages": ["en", "zh"],
        "recorded": [{"path": str(src), "deployment": "rec", "format": "generic",
                      **({"force_reimport": True} if force_reimport else {})}],
    }), encoding="utf-8")
    return study


def publish_run(study: Path, data: Path, run_id: str, run_date=None) -> stages.RunContext:
    """Every stage up to publish, as `refusals run` does, without an engine (`run_date` places
    the run in another week)."""
    ctx = stages.context(study, run_id, data)
    stages.prepare(ctx, run_date=run_date)
    stages.sample(ctx)
    stages.label(ctx)
    stages.validate(ctx)
    stages.publish(ctx)
    return ctx


def fetch(data: DataDir, sql: str, params=None) -> list[dict]:
    cols, rows = query(data, sql, params)
    return [dict(zip(cols, r)) for r in rows]


def rounded(rows: list[dict], digits: int = 12) -> list[dict]:
    """Rows with floats rounded: sums in another order differ in the last bits."""
    return [{k: round(v, digits) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = p + Z * Z / (2 * n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return (centre - half) / (1 + Z * Z / n), (centre + half) / (1 + Z * Z / n)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> tuple[DataDir, dict[str, int]]:
    root = tmp_path_factory.mktemp("wh")
    study = write_recorded_study(root / "studies", recorded_rows())
    publish_run(study, root / "data", "run-1")
    data = DataDir(root / "data")
    counts = build(data)
    return data, counts


@pytest.fixture(scope="module")
def lake_labels(warehouse) -> list[dict]:
    data, _ = warehouse
    return read_folder(data.dataset("labels")).to_pylist()


def test_tables_exist_with_contract_columns(warehouse) -> None:
    data, counts = warehouse
    assert counts["samples"] == counts["labels"] == len(recorded_rows()) == 29
    assert counts["runs"] == 1
    for table, needed in CONTRACT_COLUMNS.items():
        cols, _ = query(data, f'SELECT * FROM "{table}" LIMIT 0')
        assert needed <= set(cols), f"{table} lacks {needed - set(cols)}"


def test_labels_as_designed(lake_labels) -> None:
    by = defaultdict(list)
    for r in lake_labels:
        by[(r["model"], r["language"])].append(r["label"])
    assert sorted(by[("m1", "zh")]) == ["complied"] * 4
    assert sum(label == "refused" for label in by[("m1", "en")]) == 8
    assert sum(label == "error" for label in by[("m1", "en")]) == 1


def test_prompt_stats_match_python(warehouse, lake_labels) -> None:
    data, _ = warehouse
    expect: dict[tuple, dict] = defaultdict(lambda: defaultdict(int))
    for r in lake_labels:
        c = expect[(r["model"], r["deployment"], r["prompt_id"])]
        c["n_samples"] += 1
        c["n_refused"] += r["label"] == "refused"
        c["n_valid"] += r["label"] != "error"
        c["n_error"] += r["label"] == "error"
    got = fetch(data, "SELECT * FROM prompt_stats")
    assert len(got) == len(expect) == 6
    for g in got:
        e = expect[(g["model"], g["deployment"], g["prompt_id"])]
        assert (g["n_samples"], g["n_refused"], g["n_valid"], g["n_error"]) == (
            e["n_samples"], e["n_refused"], e["n_valid"], e["n_error"])
        assert g["p_refused"] == pytest.approx(e["n_refused"] / e["n_valid"])
        assert g["flips"] == (0 < e["n_refused"] < e["n_valid"])
        assert g["run_id"] == "run-1"


def test_wilson_interval_of_three_in_ten(warehouse) -> None:
    data, _ = warehouse
    rows = fetch(data, "SELECT * FROM prompt_stats WHERE model = 'm1' AND n_valid = 10")
    assert len(rows) == 1
    r = rows[0]
    assert (r["n_refused"], r["p_refused"]) == (3, pytest.approx(0.3))
    lo, hi = wilson(3, 10)
    assert (lo, hi) == (pytest.approx(0.10779, abs=1e-5), pytest.approx(0.60322, abs=1e-5))
    assert r["ci_low"] == pytest.approx(lo, rel=1e-9)
    assert r["ci_high"] == pytest.approx(hi, rel=1e-9)


def test_refusal_rates_are_ratio_of_sums(warehouse, lake_labels) -> None:
    data, _ = warehouse
    cells: dict[tuple, dict] = defaultdict(lambda: defaultdict(int))
    prompts = defaultdict(set)
    for r in lake_labels:
        key = (r["model"], r["deployment"], r["topic"], r["language"])
        cells[key]["refused"] += r["label"] == "refused"
        cells[key]["valid"] += r["label"] != "error"
        cells[key]["samples"] += 1
        cells[key]["evasive"] += r["label"] == "evasive"
        prompts[key].add(r["prompt_id"])
    got = fetch(data, "SELECT * FROM refusal_rates")
    assert len(got) == len(cells) == 4
    for g in got:
        key = (g["model"], g["deployment"], g["topic"], g["language"])
        c = cells[key]
        assert g["refusal_rate"] == pytest.approx(c["refused"] / c["valid"])
        assert g["n_samples"] == c["samples"]
        assert g["n_prompts"] == len(prompts[key])
        assert g["evasive_rate"] == pytest.approx(c["evasive"] / c["valid"])
        assert 0.0 <= g["ci_low"] <= g["refusal_rate"] <= g["ci_high"] <= 1.0
    m1_en = next(g for g in got if g["model"] == "m1" and g["topic"] == "tiananmen" and g["language"] == "en")
    assert m1_en["refusal_rate"] == pytest.approx(8 / 15)
    arith = next(g for g in got if g["topic"] == "arithmetic")
    assert arith["error_rate"] == pytest.approx(1 / 4)
    assert arith["refusal_rate"] == 0.0
    assert arith["ci_high"] > 0.0  # an all-complied cell still has an honest upper bound


def test_reload_is_idempotent(warehouse) -> None:
    data, counts = warehouse
    before = rounded(fetch(data, "SELECT * FROM refusal_rates ORDER BY ALL"))
    assert build(data) == counts  # nothing new to load
    assert build(data, run_ids=["run-1"]) == counts  # the same run again: replaced, not appended
    assert rounded(fetch(data, "SELECT * FROM refusal_rates ORDER BY ALL")) == before
    dupes = fetch(data, """SELECT count(*) AS n FROM (SELECT run_id, model, deployment, prompt_id, rep
                           FROM samples GROUP BY ALL HAVING count(*) > 1)""")
    assert dupes == [{"n": 0}]


def test_rebuild_gives_same_counts(warehouse) -> None:
    data, counts = warehouse
    before = rounded(fetch(data, "SELECT * FROM prompt_stats ORDER BY ALL"))
    rates = rounded(fetch(data, "SELECT * FROM refusal_rates ORDER BY ALL"))
    assert build(data, rebuild=True) == counts
    assert rounded(fetch(data, "SELECT * FROM prompt_stats ORDER BY ALL")) == before
    assert rounded(fetch(data, "SELECT * FROM refusal_rates ORDER BY ALL")) == rates


@pytest.mark.parametrize("sql", [
    "INSERT INTO runs (run_id) VALUES ('x')",
    "CREATE TABLE x (a INTEGER)",
    "DELETE FROM samples",
    "DROP TABLE labels",
])
def test_query_is_read_only(warehouse, sql: str) -> None:
    data, counts = warehouse
    with pytest.raises(duckdb.Error):
        query(data, sql)
    assert fetch(data, "SELECT count(*) AS n FROM samples") == [{"n": counts["samples"]}]


def test_query_reads(warehouse) -> None:
    data, _ = warehouse
    cols, rows = query(data, "SELECT count(DISTINCT model) AS models FROM samples WHERE deployment = ?", ["rec"])
    assert (cols, rows) == (["models"], [(2,)])


def test_query_without_warehouse_is_a_user_error(tmp_path: Path) -> None:
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="no warehouse"):
        query(DataDir(tmp_path / "empty"), "SELECT 1")
    assert not (tmp_path / "empty" / "warehouse.duckdb").exists()


def test_second_run_is_loaded_incrementally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the same file imported twice is skipped (tests/test_runs.py); here the second run is forced
    monkeypatch.setenv("REFUSALS_FORCE_REIMPORT", "1")
    rows = recorded_rows()
    study = write_recorded_study(tmp_path / "studies", rows)
    data = DataDir(tmp_path / "data")
    publish_run(study, tmp_path / "data", "run-a")
    first = build(data)
    run_a = fetch(data, "SELECT * FROM prompt_stats ORDER BY ALL")
    # a run id with characters that are URI-encoded in the lake's partition folders
    publish_run(study, tmp_path / "data", "run-b:2026+1")
    second = build(data)
    assert second["samples"] == 2 * first["samples"]
    assert second["runs"] == 2
    assert fetch(data, "SELECT DISTINCT run_id FROM samples ORDER BY 1") == [
        {"run_id": "run-a"}, {"run_id": "run-b:2026+1"}]
    assert rounded(fetch(data, "SELECT * FROM prompt_stats WHERE run_id = 'run-a' ORDER BY ALL")) == rounded(run_a)
    assert build(data, rebuild=True) == second


# --------------------------------------------------------------------------- interval coverage


def simulated_prompt_stats(rng: np.random.Generator, a: float, b: float, cells: int, prompts: int,
                           reps: int) -> pa.Table:
    """Per-prompt refusal probabilities p ~ Beta(a, b) within each cell; reps ~ Binomial(reps, p)."""
    p = rng.beta(a, b, size=(cells, prompts)) if b > 0 else np.full((cells, prompts), a)
    refused = rng.binomial(reps, p).ravel()
    n = cells * prompts
    cell = np.repeat(np.arange(cells), prompts)
    return pa.table({
        "run_id": ["sim"] * n, "week": ["2026-W05"] * n, "model": ["m"] * n, "deployment": ["d"] * n,
        "prompt_id": [f"c{c}-p{g}" for c in range(cells) for g in range(prompts)],
        "topic": [f"cell{c}" for c in cell], "topic_group": ["g"] * n, "language": ["en"] * n,
        "n_samples": np.full(n, reps), "n_valid": np.full(n, reps), "n_refused": refused,
        "n_evasive": np.zeros(n, dtype=int), "n_complied": reps - refused, "n_error": np.zeros(n, dtype=int),
        "n_answers_lang_known": np.full(n, reps) - refused, "n_language_mismatch": np.zeros(n, dtype=int),
        "p_refused": refused / reps, "flips": (refused > 0) & (refused < reps),
    })


def cell_intervals(table: pa.Table) -> list[dict]:
    con = duckdb.connect()
    try:
        con.execute(statements("prompt_stats")[0])  # the mart's own CREATE TABLE
        con.register("sim", table)
        con.execute("INSERT INTO prompt_stats BY NAME SELECT * FROM sim")
        build_global(con)
        cur = con.execute("SELECT * FROM refusal_rates ORDER BY topic")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()


def coverage(cells: list[dict], truth: float) -> tuple[float, float]:
    """(cluster-aware coverage, naive Wilson-over-samples coverage) of the true cell mean."""
    cluster = np.mean([c["ci_low"] <= truth <= c["ci_high"] for c in cells])
    naive = np.mean([
        (lambda lo, hi: lo <= truth <= hi)(*wilson(round(c["refusal_rate"] * c["n_valid"]), c["n_valid"]))
        for c in cells
    ])
    return float(cluster), float(naive)


def test_cluster_interval_covers_with_between_prompt_variance() -> None:
    # p ~ Beta(0.5, 1.5): mean 0.25, intra-prompt correlation 1/(a+b+1) = 1/3, so a Wilson
    # interval over 200 samples treats 20 prompts × 10 correlated reps as independent.
    rng = np.random.default_rng(20260127)
    a, b = 0.5, 1.5
    truth = a / (a + b)  # E[p]: with equal reps per prompt, the estimand of Σrefused / Σvalid
    cells = cell_intervals(simulated_prompt_stats(rng, a, b, cells=300, prompts=20, reps=10))
    assert len(cells) == 300
    assert all(c["n_prompts"] == 20 and c["n_samples"] == 200 for c in cells)
    cluster, naive = coverage(cells, truth)
    assert 0.90 <= cluster <= 0.99, cluster
    assert naive < 0.88, naive
    assert cluster - naive > 0.1
    # most of the variance is between prompts here, and the report says so
    assert np.mean([c["between_prompt_share"] for c in cells]) > 0.2


def test_cluster_interval_not_too_wide_without_between_prompt_variance() -> None:
    # every prompt has p = 0.3: repetitions are independent, the cluster interval should not
    # over-cover (it would if it ignored the within-prompt information)
    rng = np.random.default_rng(7)
    truth = 0.3
    cells = cell_intervals(simulated_prompt_stats(rng, truth, 0, cells=300, prompts=20, reps=10))
    cluster, naive = coverage(cells, truth)
    assert 0.90 <= cluster <= 0.99, cluster
    assert 0.90 <= naive <= 0.99, naive
    width = np.mean([c["ci_high"] - c["ci_low"] for c in cells])
    lo, hi = wilson(60, 200)
    assert width < 1.25 * (hi - lo)


def test_degenerate_cells() -> None:
    rng = np.random.default_rng(1)
    table = simulated_prompt_stats(rng, 0.0, 0, cells=1, prompts=5, reps=10)  # p = 0 everywhere
    (cell,) = cell_intervals(table)
    assert cell["refusal_rate"] == 0.0 and cell["ci_low"] == 0.0
    # no spread to measure (p = 0 everywhere): the design effect comes from the prior ICC
    # (nothing in the model to pool), never a [0, 0] certainty (issue 11: the interval no
    # longer depends on the cell's own spread, so it is not Wilson over the 5 prompts)
    assert 0.1 < cell["ci_high"] < 0.7 and cell["n_eff"] < cell["n_valid"]
    one = simulated_prompt_stats(rng, 0.5, 0, cells=1, prompts=1, reps=10)
    (cell,) = cell_intervals(one)
    assert cell["n_prompts"] == 1
    assert cell["ci_low"] < cell["refusal_rate"] < cell["ci_high"]


def test_rerun_on_another_day_replaces_the_earlier_copy(tmp_path: Path) -> None:
    """A run id published again with another run_date (--force, a re-triggered DAG run) must
    not leave its first copy beside the second: the warehouse would load both."""
    from datetime import date

    study = write_recorded_study(tmp_path / "s", recorded_rows(), name="again")
    data = tmp_path / "data"
    for day in (date(2026, 11, 23), date(2026, 11, 30)):
        ctx = stages.context(study, "same-run", data)
        stages.prepare(ctx, run_date=day)
        stages.sample(ctx)
        stages.label(ctx)
        stages.validate(ctx)
        stages.publish(ctx)
    copies = {p.parent.name for p in (data / "lake" / "samples" / "study=again").glob("run_date=*/run_id=same-run")}
    assert copies == {"run_date=2026-11-30"}
    build(DataDir(data))
    n = fetch(DataDir(data), "SELECT count(*) AS n, count(DISTINCT (model, prompt_id, rep)) AS k FROM samples")[0]
    assert n["n"] == n["k"] == len(recorded_rows())


def test_a_cell_whose_every_sample_failed_is_kept() -> None:
    """All-error cells stay in refusal_rates with error_rate 1 and no refusal rate, instead of
    vanishing from the marts and the report."""
    con = duckdb.connect()
    create_tables(con)  # the real tables (the build comments every column of them)
    # (the columns issue 11 added: study, n_blocked, n_truncated, classifier_version)
    con.execute("""INSERT INTO prompt_stats BY NAME SELECT 'r1' AS run_id, 's' AS study, 0 AS n_blocked,
        0 AS n_truncated, NULL::VARCHAR AS classifier_version, * FROM (VALUES
        ('m', 'd', 'p1', 't', 'g', 'en', 'W1', 5, 0, 0, 0, 0, 5, 0, 0, NULL::DOUBLE, FALSE),
        ('m', 'd', 'p2', 't', 'g', 'en', 'W1', 5, 0, 0, 0, 0, 5, 0, 0, NULL::DOUBLE, FALSE),
        ('m', 'd', 'p3', 't', 'g', 'zh', 'W1', 5, 5, 2, 1, 2, 0, 5, 1, 0.4, TRUE)
    ) AS v(model, deployment, prompt_id, topic, topic_group, language, week, n_samples, n_valid,
           n_refused, n_evasive, n_complied, n_error, n_answers_lang_known, n_language_mismatch,
           p_refused, flips)""")
    build_global(con)
    rows = {r[0]: r[1:] for r in con.execute(
        "SELECT language, n_prompts, n_samples, refusal_rate, ci_low, error_rate FROM refusal_rates").fetchall()}
    assert rows["en"] == (0, 10, None, None, 1.0)
    assert rows["zh"][:3] == (1, 5, 0.4) and rows["zh"][4] == 0.0


def test_changed_sql_recomputes_what_depends_on_it(tmp_path: Path, caplog) -> None:
    """A warehouse file built by older SQL is brought up to date by the next build: marts
    recomputed from its tables when a mart's SQL changed, reloaded from the lake when a
    loaded table's SQL changed."""
    study = write_recorded_study(tmp_path / "s", recorded_rows(), name="sqlv")
    publish_run(study, tmp_path / "data", "run-1")
    data = DataDir(tmp_path / "data")
    counts = build(data)
    expected = rounded(fetch(data, "SELECT * FROM refusal_rates ORDER BY ALL"))
    for table in ("refusal_rates", "labels"):
        con = duckdb.connect(str(data.warehouse))
        con.execute("UPDATE internal.sql_fingerprints SET fingerprint = 'old' WHERE name = ?", [table])
        con.execute("DELETE FROM refusal_rates")  # what the old SQL left is gone either way
        con.close()
        with caplog.at_level(logging.WARNING, logger="pipeline.warehouse"):
            assert build(data) == counts
        assert table in caplog.text and ("from the lake" in caplog.text) == (table == "labels")
        caplog.clear()
        assert rounded(fetch(data, "SELECT * FROM refusal_rates ORDER BY ALL")) == expected
