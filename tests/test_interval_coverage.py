"""Coverage of the cell intervals of sql/refusal_rates.sql (issue 11), by simulation through
the warehouse's own SQL: synthetic prompt_stats rows go through prompt_weeks and
refusal_rates exactly as a load does.

Design: p ∈ {0, 0.01, 0.05, 0.2, 0.5} (the cell's true rate, the mean over the population of
prompts), prompts per cell G ∈ {2, 5, 20, 50}, repetitions k ∈ {1, 5, 10}, intra-prompt
correlation ICC ∈ {0, 0.2, 0.6} (beta-binomial prompt effects: p_g ~ Beta with mean p and
1 / (a + b + 1) = ICC). Cells are grouped into models of CELLS_PER_MODEL cells of one
configuration, so the ICC pooled over a model's cells is as noisy as in a real study.

Run `python -m tests.test_interval_coverage` to print the coverage table as Markdown."""

from __future__ import annotations

import itertools
import math
import time

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pipeline.warehouse import execute_file, install_macros, load_confusion, statements

PS = (0.0, 0.01, 0.05, 0.2, 0.5)
GS = (2, 5, 20, 50)
KS = (1, 5, 10)
ICCS = (0.0, 0.2, 0.6)
CELLS_PER_MODEL = 30
MODELS = 40  # per configuration: 1200 replicate cells (coverage ± 0.006)
WEEK = "2026-W05"


def prompt_effects(rng: np.random.Generator, p: float, icc: float, size) -> np.ndarray:
    """Per-prompt probabilities with mean p and intra-prompt correlation icc."""
    if p <= 0 or p >= 1 or icc <= 0:
        return np.full(size, p)
    conc = (1 - icc) / icc  # a + b
    return rng.beta(p * conc, (1 - p) * conc, size=size)


def simulate(rng: np.random.Generator, configs, models: int = MODELS, cells_per_model: int = CELLS_PER_MODEL):
    """prompt_stats-shaped columns (as numpy arrays) for every configuration; each
    configuration c has models × cells_per_model cells, model ids c * models + j."""
    cols: dict[str, list] = {"model_id": [], "cell_id": [], "n": [], "y": []}
    for c, (p, g, k, icc) in enumerate(configs):
        n_cells = models * cells_per_model
        pg = prompt_effects(rng, p, icc, (n_cells, g))
        y = rng.binomial(k, pg)
        cell = np.repeat(np.arange(n_cells), g)
        cols["model_id"].append(c * models + cell // cells_per_model)
        cols["cell_id"].append(c * 100000 + cell)
        cols["n"].append(np.full(n_cells * g, k))
        cols["y"].append(y.ravel())
    return {k: np.concatenate(v) for k, v in cols.items()}


def warehouse_with(arrays: dict[str, np.ndarray], metric: str = "refusal") -> duckdb.DuckDBPyConnection:
    """An in-memory warehouse whose prompt_stats hold these prompts, with prompt_weeks and
    refusal_rates built by their SQL: y of n valid answers refused (metric 'refusal'), or
    y non-answers split at random into refused, evasive and blocked ('non_answer')."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    install_macros(con)
    for name in ("prompt_stats", "prompt_weeks", "refusal_rates"):
        con.execute(statements(name)[0])
    load_confusion(con, path=_NO_FILE)
    if metric == "refusal":
        arrays = {**arrays, "r": arrays["y"], "e": np.zeros_like(arrays["y"])}
    else:
        rng = np.random.default_rng(len(arrays["y"]))
        r = rng.binomial(arrays["y"], 0.4)
        arrays = {**arrays, "r": r, "e": rng.binomial(arrays["y"] - r, 0.7)}
    con.register("sim", pa.table(arrays))
    con.execute(f"""
        INSERT INTO prompt_stats BY NAME
        SELECT 'sim' AS run_id, 'study' AS study, '{WEEK}' AS week, 'm' || model_id AS model, 'd' AS deployment,
               'p' || row_number() OVER () AS prompt_id, 'c' || cell_id AS topic, 'g' AS topic_group,
               'en' AS language, n AS n_samples, n AS n_valid, r AS n_refused, e AS n_evasive,
               y - r - e AS n_blocked, y AS n_non_answer, n - y AS n_complied, 0 AS n_error, 0 AS n_truncated,
               n - y AS n_answers_lang_known, 0 AS n_language_mismatch
        FROM sim""")
    con.unregister("sim")
    execute_file(con, "prompt_weeks", {"weeks": [WEEK]})
    execute_file(con, "refusal_rates", {"weeks": [WEEK]})
    return con


class _Absent:
    def exists(self) -> bool:
        return False


_NO_FILE = _Absent()


def coverage_table(seed: int = 20261202, models: int = MODELS, metrics=("refusal",)) -> list[dict]:
    """One row per configuration and metric: coverage of the cell intervals of the true p."""
    configs = list(itertools.product(PS, GS, KS, ICCS))
    rng = np.random.default_rng(seed)
    arrays = simulate(rng, configs, models=models)
    out = []
    for metric in metrics:
        con = warehouse_with(arrays, metric)
        lo, hi = ("ci_low", "ci_high") if metric == "refusal" else ("non_answer_ci_low", "non_answer_ci_high")
        rows = con.execute(f"""
            SELECT (substr(model, 2)::INTEGER // {models}) AS config,
                   count(*) AS cells,
                   avg(CASE WHEN {lo} <= t.p AND t.p <= {hi} THEN 1.0 ELSE 0.0 END) AS coverage,
                   avg({hi} - {lo}) AS width
            FROM refusal_rates
            JOIN (SELECT unnest($ps) AS p, generate_subscripts($ps, 1) - 1 AS config) AS t
              ON t.config = substr(model, 2)::INTEGER // {models}
            GROUP BY ALL ORDER BY config""", {"ps": [c[0] for c in configs]}).fetchall()
        con.close()
        for config, cells, cov, width in rows:
            p, g, k, icc = configs[config]
            out.append({"metric": metric, "p": p, "prompts": g, "k": k, "icc": icc, "cells": cells,
                        "coverage": cov, "width": width})
    return out


def markdown(table: list[dict], metric: str = "refusal") -> str:
    rows = [r for r in table if r["metric"] == metric]
    head = "| p | prompts | " + " | ".join(f"k={k} ICC={i}" for k in KS for i in ICCS) + " |"
    lines = [head, "|" + "---|" * (2 + len(KS) * len(ICCS))]
    for p in PS:
        for g in GS:
            cells = {(r["k"], r["icc"]): r["coverage"] for r in rows if r["p"] == p and r["prompts"] == g}
            lines.append(f"| {p} | {g} | " + " | ".join(f"{cells[(k, i)]:.3f}" for k in KS for i in ICCS) + " |")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def table() -> list[dict]:
    return coverage_table()


def test_coverage_at_least_93_everywhere_and_near_nominal_inside(table) -> None:
    assert len(table) == len(PS) * len(GS) * len(KS) * len(ICCS)
    assert {r["cells"] for r in table} == {MODELS * CELLS_PER_MODEL}
    low = [r for r in table if r["coverage"] < 0.93]
    assert not low, low
    # where p is interior and there are enough prompts, near the nominal 95% (not bought
    # with needlessly wide intervals)
    inside = [r for r in table if r["p"] in (0.2, 0.5) and r["prompts"] >= 20]
    off = [r for r in inside if not 0.93 <= r["coverage"] <= 0.98]
    assert not off, off
    assert 0.945 <= np.mean([r["coverage"] for r in inside]) <= 0.97


def model_of_cells(counts: list[tuple[int, int, int]], prompts: int, reps: int) -> dict[str, np.ndarray]:
    """One model: cell c has `prompts` prompts of `reps` repetitions, and the refusals of
    cell c are spread over its prompts as given (counts[c] = (cell_id, prompt, refusals))."""
    y = {}
    for cell, prompt, r in counts:
        y[(cell, prompt)] = r
    cells = sorted({c for c, _, _ in counts})
    keys = [(c, g) for c in cells for g in range(prompts)]
    return {"model_id": np.zeros(len(keys), dtype=int), "cell_id": np.array([c for c, _ in keys]),
            "n": np.full(len(keys), reps), "y": np.array([y.get(k, 0) for k in keys])}


def test_interval_is_monotone_in_the_count_for_a_fixed_design() -> None:
    # issue 11: with 2 prompts × 10 reps, 0/20 gave [0, 0.66] and 1/20 [0.01, 0.24]. Now the
    # target cell (id 0) sits in a model with 30 other cells; its count goes 0, 1, ..., 20
    rng = np.random.default_rng(4)
    others = [(c, g, int(rng.binomial(10, rng.beta(0.3, 1.2)))) for c in range(1, 31) for g in range(2)]
    bounds = []
    for x in range(21):
        target = [(0, 0, min(x, 10)), (0, 1, max(0, x - 10))]
        con = warehouse_with(model_of_cells(target + others, prompts=2, reps=10))
        lo, hi, n_eff = con.execute("SELECT ci_low, ci_high, n_eff FROM refusal_rates WHERE topic = 'c0'").fetchone()
        con.close()
        bounds.append((lo, hi, n_eff))
    lows, highs, effs = zip(*bounds)
    assert len({round(e, 9) for e in effs}) == 1  # the design effect does not depend on the cell's own count
    assert all(b >= a for a, b in zip(lows, lows[1:])), lows
    assert all(b >= a for a, b in zip(highs, highs[1:])), highs
    assert lows[0] == 0.0 and highs[-1] == 1.0
    assert highs[0] <= highs[1] and lows[1] <= lows[2]
    # and an interval of x/20 always contains x/20
    assert all(lo <= x / 20 <= hi for x, (lo, hi, _) in enumerate(bounds))


def test_a_lone_cell_gets_the_prior_and_stays_monotone() -> None:
    # a model with a single cell has nothing to pool: the prior ICC, same n_eff for every count
    effs, highs = set(), []
    for x in range(0, 11):
        con = warehouse_with(model_of_cells([(0, 0, x)], prompts=2, reps=10))
        hi, n_eff, icc = con.execute("SELECT ci_high, n_eff, icc FROM refusal_rates").fetchone()
        con.close()
        effs.add(round(n_eff, 12))
        highs.append(hi)
        assert icc == pytest.approx(0.5)
    assert len(effs) == 1 and all(b >= a for a, b in zip(highs, highs[1:]))


def test_difference_of_two_zero_cells_spans_both_cell_intervals() -> None:
    # issue 11: two 0% cells gave a difference interval [-24 pp, +14 pp], narrower than either
    # cell's. Newcombe on the new cell intervals: at least [-upper_b, upper_a]
    from pipeline.warehouse import build_global

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    install_macros(con)
    con.execute(statements("prompt_stats")[0])
    rows = []
    for lang in ("en", "zh"):
        for g in range(2 if lang == "en" else 5):
            rows.append({"run_id": "r", "study": "s", "week": WEEK, "model": "m", "deployment": "d",
                         "prompt_id": f"{lang}{g}", "topic": "t", "topic_group": "g", "language": lang,
                         "n_samples": 10, "n_valid": 10, "n_refused": 0, "n_evasive": 0, "n_blocked": 0,
                         "n_non_answer": 0, "n_complied": 10, "n_error": 0, "n_truncated": 0,
                         "n_answers_lang_known": 10, "n_language_mismatch": 0})
    con.register("rows", pa.Table.from_pylist(rows))
    con.execute("INSERT INTO prompt_stats BY NAME SELECT * FROM rows")
    build_global(con)
    cells = {r[0]: r[1:] for r in con.execute(
        "SELECT language, ci_low, ci_high, non_answer_ci_high FROM refusal_rates").fetchall()}
    for metric in ("refusal", "non_answer"):
        (lo, hi) = con.execute("SELECT diff_ci_low, diff_ci_high FROM compare_languages WHERE metric = ?",
                               [metric]).fetchone()
        assert lo <= -cells["zh"][1] + 1e-12 and hi >= cells["en"][1] - 1e-12, (metric, lo, hi, cells)
        assert lo == pytest.approx(-cells["zh"][1]) and hi == pytest.approx(cells["en"][1])
    assert cells["en"][1] > cells["zh"][1] > 0  # 2 prompts are less evidence than 5


def test_non_answer_intervals_use_the_same_construction() -> None:
    # the same counts as refusals or as non-answers split into refused / evasive / blocked
    rng = np.random.default_rng(9)
    configs = [(0.2, 5, 5, 0.2), (0.05, 20, 10, 0.6)]
    arrays = simulate(rng, configs, models=2, cells_per_model=10)
    as_refusal = warehouse_with(arrays, "refusal")
    as_non_answer = warehouse_with(arrays, "non_answer")
    q = "SELECT topic, {} FROM refusal_rates ORDER BY topic"
    a = as_refusal.execute(q.format("refusal_rate, ci_low, ci_high, n_eff")).fetchall()
    b = as_non_answer.execute(q.format("non_answer_rate, non_answer_ci_low, non_answer_ci_high, non_answer_n_eff")).fetchall()
    assert len(a) == 40
    for x, y in zip(a, b):
        assert x[0] == y[0] and x[1:] == pytest.approx(y[1:], rel=1e-9)
    (share,) = as_non_answer.execute(
        "SELECT sum(n_refused + n_evasive + n_blocked) = sum(n_non_answer) FROM refusal_rates").fetchone()
    assert share


def write_markdown(path: str = "/tmp/readme_intervals.md") -> str:
    tab = coverage_table()
    cov = [r["coverage"] for r in tab]
    inside = [r["coverage"] for r in tab if r["p"] in (0.2, 0.5) and r["prompts"] >= 20]
    text = "\n".join([
        "### Cell intervals: how they are built and how often they cover",
        "",
        "Repetitions of one prompt are correlated, so a cell's interval is built on an effective sample",
        "size n_eff = n / deff, with the design effect deff = 1 + (k̄ - 1) ICC (k̄ = Σ m_g² / Σ m_g, the",
        "repetitions per prompt). The intra-prompt correlation is a one-way ANOVA estimate pooled over",
        "the model's other informative cells of the same study and week (leave-one-out), shrunk toward",
        "0.5 with the weight of 10 degrees of freedom and clamped to [0, 1]; so n_eff depends on the design",
        "and the model, never on the cell's own count, and the interval is monotone in the count",
        "(0/20 is never wider than 1/20). The interval is Agresti-Coull on n_eff with Student's t on",
        "n_eff - 1 degrees of freedom in place of z (a small-sample correction for few prompts). Non-answer",
        "and evasive rates use the same construction with their own pooled ICC; comparisons of languages",
        "apply Newcombe's method to these cell intervals, so the difference of two 0% cells spans at least",
        "[-upper_b, upper_a]. The table: coverage of the true rate by 95% intervals, simulated through the",
        "warehouse's own SQL (`python -m tests.test_interval_coverage`; beta-binomial prompt effects,",
        f"{MODELS * CELLS_PER_MODEL} cells per configuration in models of {CELLS_PER_MODEL} cells):",
        "",
        markdown(tab),
        "",
        f"Coverage: min {min(cov):.3f}, max {max(cov):.3f}; for p in {{0.2, 0.5}} with 20 or more prompts "
        f"{min(inside):.3f}-{max(inside):.3f}. At p = 0 every interval covers (its lower end is 0); at small p "
        "and few prompts the intervals are conservative, as any interval that holds 95% there must be.",
        "",
    ])
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    t0 = time.time()
    print(write_markdown())
    print(f"({time.time() - t0:.1f} s)")
