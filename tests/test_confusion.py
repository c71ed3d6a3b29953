"""The classifier's error in the numbers (issue 11): classifier_confusion loaded from an
`eval-classifier --json` document, matched to the cells by classifier version and language,
and the Rogan-Gladen corrected rates whose intervals carry the confusion's uncertainty,
checked by simulation through the warehouse's own SQL."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pipeline.warehouse import execute_file, install_macros, load_confusion, statements

LABELS = ("complied", "refused", "evasive", "blocked")
# rows gold, columns predicted (complied, refused, evasive, blocked)
TRUE_CONFUSION = np.array([
    [0.90, 0.03, 0.07, 0.00],
    [0.04, 0.90, 0.06, 0.00],
    [0.15, 0.10, 0.75, 0.00],
    [0.00, 0.02, 0.00, 0.98],
])
NON_ANSWER_MIX = (0.5, 0.4, 0.1)  # refused, evasive, blocked among the non-answers
WEEK = "2026-W05"


def eval_document(version: str, confusions: dict[str, np.ndarray], dataset: str = "test") -> dict:
    """An `eval-classifier --json` document (EvalResult.to_dict()) with a classifier_version."""
    langs = {}
    for lang, m in confusions.items():
        conf = {g: {p: int(m[i, j]) for j, p in enumerate(LABELS)} for i, g in enumerate(LABELS)}
        conf["error"] = {p: 0 for p in (*LABELS, "error")}
        for g in LABELS:
            conf[g]["error"] = 1  # errors are outside every rate: ignored
        n = int(m.sum())
        langs[lang] = {"n": n, "accuracy": float(np.trace(m) / n), "per_label": {}, "confusion": conf,
                       "binary_agreement": None, "unsure": 0, "judge": None}
    return {"dataset": dataset, "split": "test", "classifier": "rules+semantic", "languages": langs,
            "classifier_version": version}


def write_doc(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def labelled_set(rng: np.random.Generator, n: int) -> np.ndarray:
    """Counts gold × predicted of a labelled set of n answers drawn with TRUE_CONFUSION."""
    gold = rng.multinomial(n, [0.5, 0.25, 0.2, 0.05])
    return np.array([rng.multinomial(g, TRUE_CONFUSION[i]) for i, g in enumerate(gold)])


def observed_prompts(rng: np.random.Generator, p_na: np.ndarray, reps: int) -> dict[str, np.ndarray]:
    """Observed label counts per prompt: true non-answer probability p_na per prompt, split
    by NON_ANSWER_MIX, then each true label misread as TRUE_CONFUSION says."""
    na = rng.binomial(reps, p_na)
    ref = rng.binomial(na, NON_ANSWER_MIX[0])
    eva = rng.binomial(na - ref, NON_ANSWER_MIX[1] / (1 - NON_ANSWER_MIX[0]))
    blk = na - ref - eva
    true = np.stack([reps - na, ref, eva, blk], axis=-1)
    obs = np.zeros_like(true)
    for i in range(4):
        obs += rng.multinomial(true[..., i], TRUE_CONFUSION[i])
    return {"n_complied": obs[..., 0], "n_refused": obs[..., 1], "n_evasive": obs[..., 2], "n_blocked": obs[..., 3]}


def warehouse(rows: list[dict] | pa.Table, confusion: Path | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    install_macros(con)
    con.execute(statements("prompt_stats")[0])
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    con.register("rows", table)
    con.execute("INSERT INTO prompt_stats BY NAME SELECT * FROM rows")
    con.unregister("rows")
    if confusion is not None:
        load_confusion(con, confusion)
    return con


def cell_rows(language: str, refused: int, complied: int, version: str | None, prompts: int = 4,
              model: str = "m") -> list[dict]:
    return [{"run_id": "r", "study": "s", "week": WEEK, "model": model, "deployment": "d",
             "prompt_id": f"{model}-{language}-{g}", "topic": "t", "topic_group": "g", "language": language,
             "n_samples": refused + complied, "n_valid": refused + complied, "n_refused": refused,
             "n_evasive": 0, "n_blocked": 0, "n_non_answer": refused, "n_complied": complied, "n_error": 0,
             "n_truncated": 0, "n_answers_lang_known": complied, "n_language_mismatch": 0,
             "classifier_version": version} for g in range(prompts)]


def test_confusion_rows_from_an_eval_classifier_document(tmp_path: Path) -> None:
    m = np.array([[80, 5, 5, 0], [4, 40, 6, 0], [3, 3, 14, 0], [0, 0, 0, 10]])
    path = write_doc(tmp_path / "confusion.json", eval_document("v1", {"en": m, "all": m * 2}))
    con = duckdb.connect()
    assert load_confusion(con, path) == 2 * (4 * 5 + 5)
    rows = con.execute("""SELECT language, gold, predicted, n FROM classifier_confusion
                          WHERE gold = 'refused' AND predicted = 'evasive' ORDER BY language""").fetchall()
    assert rows == [("all", "refused", "evasive", 12), ("en", "refused", "evasive", 6)]
    assert con.execute("SELECT DISTINCT classifier_version, dataset FROM classifier_confusion").fetchall() == [
        ("v1", "test")]
    # loading the same version again replaces its rows
    load_confusion(con, path)
    assert con.execute("SELECT count(*) FROM classifier_confusion").fetchone()[0] == 50
    with pytest.raises(ValueError, match="classifier_version"):
        doc = eval_document("v1", {"en": m})
        del doc["classifier_version"]
        load_confusion(con, write_doc(tmp_path / "bad.json", doc))


def test_without_a_confusion_file_corrected_rates_are_null(tmp_path: Path) -> None:
    con = warehouse(cell_rows("en", 3, 7, "v1"), tmp_path / "absent.json")
    assert con.execute("SELECT count(*) FROM classifier_confusion").fetchone()[0] == 0
    (row,) = rates(con).values()
    assert (row["corrected_refusal_rate"], row["corrected_refusal_ci_low"], row["corrected_non_answer_rate"],
            row["corrected_non_answer_ci_high"], row["confusion_version"]) == (None, None, None, None, None)
    assert row["refusal_rate"] == pytest.approx(0.3)


def rates(con) -> dict[tuple[str, str], dict]:
    execute_file(con, "prompt_weeks", {"weeks": [WEEK]})
    execute_file(con, "refusal_rates", {"weeks": [WEEK]})
    cur = con.execute("SELECT * FROM refusal_rates")
    cols = [d[0] for d in cur.description]
    return {(r["model"], r["language"]): r for r in (dict(zip(cols, x)) for x in cur.fetchall())}


def test_matched_by_version_and_language_with_fallbacks(tmp_path: Path) -> None:
    perfect = np.diag([100, 100, 100, 100])
    noisy = np.array([[90, 10, 0, 0], [20, 80, 0, 0], [0, 0, 100, 0], [0, 0, 0, 100]])
    rows = (cell_rows("en", 3, 7, "v1", model="a") + cell_rows("fi", 3, 7, "v1", model="b")
            + cell_rows("en", 3, 7, "v-unknown", model="c") + cell_rows("en", 3, 7, None, model="d"))
    con = warehouse(rows, write_doc(tmp_path / "v1.json", eval_document("v1", {"en": perfect, "all": noisy})))
    load_confusion(con, write_doc(tmp_path / "v2.json", eval_document("v2", {"en": noisy, "all": perfect})))
    got = rates(con)
    a, b, c, d = got[("a", "en")], got[("b", "fi")], got[("c", "en")], got[("d", "en")]
    # v1, en: a perfect classifier changes nothing
    assert (a["confusion_version"], a["confusion_language"]) == ("v1", "en")
    assert a["corrected_refusal_rate"] == pytest.approx(a["refusal_rate"])
    # v1, no fi row: the 'all' row: refused vs not, se = 80/100, sp = 290/300 (the evasive and
    # blocked rows count as correctly not refused)
    expected = (0.3 + 29 / 30 - 1) / (0.8 + 29 / 30 - 1)
    assert (b["confusion_version"], b["confusion_language"]) == ("v1", "all")
    assert b["corrected_refusal_rate"] == pytest.approx(expected)
    # unknown or missing version: the newest loaded (v2), its en row
    for cell in (c, d):
        assert (cell["confusion_version"], cell["confusion_language"]) == ("v2", "en")
        assert cell["corrected_refusal_rate"] == pytest.approx(expected)
    for cell in (a, b, c, d):
        assert cell["corrected_refusal_ci_low"] <= cell["corrected_refusal_rate"] <= cell["corrected_refusal_ci_high"]
        # the confusion's own uncertainty widens the interval (even a perfect 100 labels)
        assert cell["corrected_refusal_ci_high"] - cell["corrected_refusal_ci_low"] > cell["ci_high"] - cell["ci_low"]


def test_corrected_rates_are_clamped(tmp_path: Path) -> None:
    noisy = np.array([[90, 10, 0, 0], [20, 80, 0, 0], [0, 0, 100, 0], [0, 0, 0, 100]])
    con = warehouse(cell_rows("en", 0, 10, "v1") + cell_rows("zh", 10, 0, "v1"),
                    write_doc(tmp_path / "c.json", eval_document("v1", {"all": noisy})))
    got = rates(con)
    zero, one = got[("m", "en")], got[("m", "zh")]
    assert zero["corrected_refusal_rate"] == 0.0 and zero["corrected_refusal_ci_low"] == 0.0
    assert zero["corrected_refusal_ci_high"] > 0
    assert one["corrected_refusal_rate"] == 1.0 and one["corrected_refusal_ci_high"] == 1.0
    assert one["corrected_refusal_ci_low"] < 1


def simulate_corrected(rng: np.random.Generator, replicates: int, prompts: int, reps: int, p_na: float,
                       icc: float, labelled: int, tmp_path: Path) -> dict[tuple[str, str], dict]:
    """`replicates` cells, each in its own language with its own labelled set (so each
    replicate draws the confusion's uncertainty anew), in models of 20 cells."""
    conc = (1 - icc) / icc
    confusions = {}
    cols: dict[str, list] = {k: [] for k in ("model", "language", "prompt_id", "n", "n_complied", "n_refused",
                                             "n_evasive", "n_blocked")}
    for i in range(replicates):
        lang = f"l{i:04d}"
        confusions[lang] = labelled_set(rng, labelled)
        p = rng.beta(p_na * conc, (1 - p_na) * conc, size=prompts)
        obs = observed_prompts(rng, p, reps)
        cols["model"] += [f"m{i // 20}"] * prompts
        cols["language"] += [lang] * prompts
        cols["prompt_id"] += [f"{lang}-{g}" for g in range(prompts)]
        cols["n"] += [reps] * prompts
        for k in ("n_complied", "n_refused", "n_evasive", "n_blocked"):
            cols[k] += obs[k].tolist()
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    install_macros(con)
    con.execute(statements("prompt_stats")[0])
    con.register("sim", pa.table(cols))
    con.execute(f"""INSERT INTO prompt_stats BY NAME
        SELECT 'r' AS run_id, 's' AS study, '{WEEK}' AS week, model, 'd' AS deployment, prompt_id, 't' AS topic,
               'g' AS topic_group, language, n AS n_samples, n AS n_valid, n_refused, n_evasive, n_blocked,
               n_refused + n_evasive + n_blocked AS n_non_answer, n_complied, 0 AS n_error, 0 AS n_truncated,
               0 AS n_answers_lang_known, 0 AS n_language_mismatch, 'v-sim' AS classifier_version
        FROM sim""")
    load_confusion(con, write_doc(tmp_path / "sim.json", eval_document("v-sim", confusions)))
    return rates(con)


@pytest.mark.parametrize("prompts, reps, p_na", [(20, 5, 0.3), (50, 10, 0.3), (50, 10, 0.1)])
def test_corrected_interval_covers_the_true_rate(tmp_path: Path, prompts: int, reps: int, p_na: float) -> None:
    # a realistic labelled set (400 answers per language, as in the project's multilingual
    # set), cells with between-prompt variance (ICC 0.2); in large cells the confusion's own
    # uncertainty is most of the interval
    rng = np.random.default_rng(20261202 + prompts + reps)
    cells = simulate_corrected(rng, 400, prompts, reps, p_na, 0.2, 400, tmp_path)
    assert len(cells) == 400
    true_refusal = p_na * NON_ANSWER_MIX[0]
    cover_na = np.mean([c["corrected_non_answer_ci_low"] <= p_na <= c["corrected_non_answer_ci_high"]
                        for c in cells.values()])
    cover_r = np.mean([c["corrected_refusal_ci_low"] <= true_refusal <= c["corrected_refusal_ci_high"]
                       for c in cells.values()])
    raw_na = np.mean([c["non_answer_ci_low"] <= p_na <= c["non_answer_ci_high"] for c in cells.values()])
    bias_raw = np.mean([c["non_answer_rate"] for c in cells.values()]) - p_na
    bias_corrected = np.mean([c["corrected_non_answer_rate"] for c in cells.values()]) - p_na
    assert 0.92 <= cover_na <= 0.995, cover_na
    assert 0.92 <= cover_r <= 0.995, cover_r
    assert abs(bias_corrected) < abs(bias_raw) / 3, (bias_raw, bias_corrected)
    assert raw_na < cover_na - 0.05, (raw_na, cover_na)  # misclassification makes the raw interval miss
    # not bought with absurd width
    width = np.mean([c["corrected_non_answer_ci_high"] - c["corrected_non_answer_ci_low"] for c in cells.values()])
    assert width < 0.3, width
    print(prompts, reps, p_na, cover_na, cover_r, raw_na, width)
