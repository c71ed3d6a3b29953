"""Stage 7: the weekly report (HTML and Markdown) from the warehouse, read-only.

Non-answers lead: a non-answer is a response labelled refused, evasive or blocked (a
provider's block), and most of what censoring models do is evade, not refuse. In reading
order: the headline (the week's non-answer, refusal, evasive and blocked rates, and the
cells that do not answer most, with error bars, raw and misclassification-corrected side by
side), a topic × language heat map per study and deployment whose cells show the non-answer
rate and its refused / evasive / blocked parts in figures and as a stacked bar, the cells
blocked by a provider and those with more than 5% of answers cut by max_tokens, week-over-week,
language, deployment and model comparisons for both metrics (those that survived the
false-discovery control), the classifier's accuracy per language, language mismatch and flips,
validation and error rates, the non-answers of the notable cells, and what was measured and how.

Rankings need evidence: a cell with fewer prompts than the warehouse's minimum
(`well_measured` false, `min_prompts()` in sql/macros.sql) is listed apart, never ranked
above a measured one.

Every number is aggregated in SQL (the report's queries are `sql/report/*.sql`) and every
list is bounded (LIMIT), so a report of a large warehouse stays small and fast. The
comparison tables may be absent from an older warehouse: their sections then say "not
available" instead of failing.

Model output, and every name that comes from a study or a recorded file, is untrusted: the
HTML template autoescapes everything (and the page's Content-Security-Policy forbids scripts
and remote loads); the Markdown template makes every value inert text (`pipeline.mdsafe`: no
HTML, link, image, code span or table cell boundary), by default, as autoescape does for HTML.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.errors import UserError
from pipeline.lake import TMP_PREFIX, write_json_atomic
from pipeline.paths import DataDir

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
WEEK_FORMAT = "YYYY-Www"
COMPARISONS = ("compare_weeks", "compare_languages", "compare_deployments", "compare_models")
METRICS = ("non_answer", "refusal")  # the non-answer (refused + evasive + blocked) leads
METRIC_NAMES = {"non_answer": "non-answer", "refusal": "refusal"}
TRUNCATION_WARN = 0.05  # a cell with more than this share of answers cut by max_tokens is flagged
FDR = 0.05  # Benjamini–Hochberg level used by the comparison tables (q_value < FDR)

MAX_CELLS = 5000  # heat-map cells shown; beyond this the report says how many were left out
MAX_COMPARE_ROWS = 40  # significant rows shown per comparison table
MAX_NEAR_MISSES = 8  # and the not significant ones nearest to it (lowest q)
MAX_LARGEST = 5  # when nothing is significant: the largest differences, for reference
MAX_TABLE_ROWS = 20  # rows of the mismatch, flip and error tables
TOP_CELLS = 12  # the highest rates per metric (and apart: of cells with too few prompts to rank)
MAX_ACCURACY_ROWS = 60  # classifier version × language rows
MAX_NOTABLE = 8  # cells whose example responses are shown
EXAMPLE_CHARS = 600  # a response is cut here (the SQL reads no more than this)
PROMPT_CHARS = 300
MATRIX_MAX_COLUMNS = 12  # up to this many topic × language columns: one row per model


def _rows(con: Any, sql: str, params: list[Any] | dict[str, Any]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _sql(name: str) -> str:
    """The text of `sql/report/<name>.sql` (the report's own queries, read-only)."""
    from pipeline.paths import resource_dir

    return (resource_dir("sql") / "report" / f"{name}.sql").read_text(encoding="utf-8")


def _tables(con: Any) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _columns(con: Any, table: str) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}


def _comparison(con: Any, table: str, week: str, order_keys: str, metric: str | None) -> dict[str, Any]:
    """Counts and rows of one comparison table for one metric: the significant ones, then the
    nearest misses (`metric` None: a view from before the metric column, refusal only)."""
    where = "week = ?" + (" AND metric = ?" if metric else "")
    params = [week, metric] if metric else [week]
    total, significant = con.execute(
        f'SELECT count(*), count(*) FILTER (WHERE significant) FROM "{table}" WHERE {where}', params
    ).fetchone()
    rows = _rows(
        con,
        f"""SELECT * FROM (
                (SELECT * FROM "{table}" WHERE {where} AND significant
                 ORDER BY q_value, abs(diff) DESC, {order_keys} LIMIT {MAX_COMPARE_ROWS})
                UNION ALL BY NAME
                (SELECT * FROM "{table}" WHERE {where} AND NOT coalesce(significant, false)
                 ORDER BY q_value NULLS LAST, abs(diff) DESC NULLS LAST, {order_keys} LIMIT {MAX_NEAR_MISSES})
            )
            ORDER BY coalesce(significant, false) DESC, q_value NULLS LAST, abs(diff) DESC NULLS LAST, {order_keys}""",
        params + params,
    )
    largest = _rows(
        con,
        f"""SELECT * FROM "{table}" WHERE {where} AND NOT coalesce(significant, false) AND diff <> 0
            ORDER BY abs(diff) DESC, q_value NULLS LAST, {order_keys}
            LIMIT {MAX_LARGEST}""",
        params,
    )
    for r in rows + largest:
        # prompts behind the test: shared by both sides (weeks, deployments, models) or each side's own
        r["n_compared"] = r.get("n_shared_prompts", r.get("n_prompts"))
        r.setdefault("study", None)
    return {"available": True, "metric": metric or "refusal", "total": total, "significant": significant,
            "rows": rows, "largest": largest}


# the comparison views, their sort keys, and what each compares
COMPARE_KEYS = {
    "compare_weeks": "model, deployment, topic, language",
    "compare_languages": "model, deployment, topic, language_a, language_b",
    "compare_deployments": "model, topic, language, deployment_a, deployment_b",
    "compare_models": "model_a, model_b, deployment, topic, language",
}


def gather(data: DataDir, week: str | None) -> dict[str, Any]:
    """Everything the report shows, from the warehouse (read-only)."""
    import duckdb

    from pipeline.warehouse import connect

    con = connect(data, read_only=True)
    try:
        tables = _tables(con)
        weeks = [r[0] for r in con.execute("SELECT DISTINCT week FROM runs ORDER BY week").fetchall()]
        if not weeks:
            raise UserError(f"{data.warehouse}: no published runs yet")
        if week is None:
            week = weeks[-1]
        elif week not in weeks:
            raise UserError(f"--week {week}: no published runs that week (weeks with data: {', '.join(weeks)})")
        p = {"week": week}
        runs = _rows(con, "SELECT * FROM runs WHERE week = ? ORDER BY started_at", [week])
        n_cells = con.execute("SELECT count(*) FROM refusal_rates WHERE week = ?", [week]).fetchone()[0]
        cells = _rows(con, _sql("cells"), {**p, "limit": MAX_CELLS})
        overall = _rows(con, _sql("overall"), p)
        totals = _rows(con, _sql("totals"), p)[0]
        ranking = _rows(con, _sql("ranking"), {**p, "limit": TOP_CELLS})
        rankings = {m: {"ranked": [r for r in ranking if r["metric"] == m and r["ranked"]],
                        "few": [r for r in ranking if r["metric"] == m and not r["ranked"]]}
                    for m in METRICS}
        for m in METRICS:
            for group in ("ranked", "few"):
                rows = rankings[m][group]
                rankings[m]["n_" + group] = rows[0]["n_group"] if rows else 0
        flagged = _rows(con, _sql("flagged"), {**p, "truncated": TRUNCATION_WARN, "limit": MAX_TABLE_ROWS})
        truncated = [r for r in flagged if r["kind"] == "truncated"]
        blocked = [r for r in flagged if r["kind"] == "blocked"]
        accuracy = (_rows(con, _sql("classifier_accuracy"), {**p, "limit": MAX_ACCURACY_ROWS})
                    if "classifier_confusion" in tables else [])
        try:
            min_prompts = con.execute("SELECT min_prompts()").fetchone()[0]
        except Exception:  # a warehouse from before the macro
            min_prompts = None
        mismatch = _rows(
            con,
            f"""SELECT study, model, deployment, topic, language, language_mismatch_rate, non_answer_rate,
                       refusal_rate, n_prompts, n_samples
                FROM refusal_rates WHERE week = ? AND language_mismatch_rate > 0
                ORDER BY language_mismatch_rate DESC, study, model, deployment, topic, language
                LIMIT {MAX_TABLE_ROWS}""",
            [week],
        )
        flips = _rows(
            con,
            f"""SELECT study, model, deployment, topic, language, flip_rate, non_answer_flip_rate,
                       between_prompt_share, refusal_rate, non_answer_rate, n_prompts, n_samples
                FROM refusal_rates WHERE week = ? AND (flip_rate > 0 OR non_answer_flip_rate > 0)
                ORDER BY greatest(flip_rate, non_answer_flip_rate) DESC, study, model, deployment, topic, language
                LIMIT {MAX_TABLE_ROWS}""",
            [week],
        )
        errors = _rows(
            con,
            f"""SELECT run_id, deployment, model, sum(n_samples) AS n_samples, sum(n_error) AS n_errors,
                       sum(n_error) / sum(n_samples) AS error_rate
                FROM prompt_stats WHERE week = ?
                GROUP BY ALL HAVING sum(n_error) > 0
                ORDER BY error_rate DESC, n_errors DESC, run_id, deployment, model
                LIMIT {MAX_TABLE_ROWS}""",
            [week],
        )
        n_error_groups = con.execute(
            """SELECT count(*) FROM (SELECT run_id, deployment, model FROM prompt_stats WHERE week = ?
               GROUP BY ALL HAVING sum(n_error) > 0)""",
            [week],
        ).fetchone()[0]
        n_mismatch = con.execute(
            "SELECT count(*) FROM refusal_rates WHERE week = ? AND language_mismatch_rate > 0", [week]
        ).fetchone()[0]
        n_flips = con.execute("SELECT count(*) FROM refusal_rates WHERE week = ? AND (flip_rate > 0 "
                              "OR non_answer_flip_rate > 0)", [week]).fetchone()[0]
        compare: dict[str, dict[str, Any]] = {}
        for name, keys in COMPARE_KEYS.items():
            compare[name] = {m: {"available": False, "metric": m} for m in METRICS}
            if name not in tables:
                continue
            try:
                if "metric" in _columns(con, name):
                    compare[name] = {m: _comparison(con, name, week, keys, m) for m in METRICS}
                else:  # a view from before the non-answer metric: refusal only
                    compare[name]["refusal"] = _comparison(con, name, week, keys, None)
            except duckdb.Error as exc:  # a view whose table is gone (an older or damaged warehouse)
                log.warning("report: %s not available: %s", name, exc)
        notable = _notable_cells(compare, rankings, mismatch, cells)
        examples = _examples(con, week, notable)
    finally:
        con.close()

    for r in runs:
        r["models"] = json.loads(r["models"] or "[]")
        r["deployments"] = json.loads(r["deployments"] or "[]")
        r["validation"] = _validation(r.get("validation"))
        r["validation_link"] = _validation_link(data, week, r["run_id"])
    week_index = weeks.index(week)
    context = {
        "week": week,
        "weeks": weeks,
        "previous_weeks": weeks[:week_index],
        "runs": runs,
        "studies": sorted({r["study"] for r in runs if r.get("study") is not None}),
        "cells": cells,
        "n_cells": n_cells,
        "overall": overall,
        "totals": {**totals, "n_samples": totals["n_samples"] or 0, "n_errors": totals["n_errors"] or 0,
                   "n_prompts": totals["n_prompts"] or 0, "n_blocked": totals["n_blocked"] or 0},
        "rankings": rankings,
        "top_cells": rankings["non_answer"]["ranked"] + rankings["non_answer"]["few"],
        "min_prompts": min_prompts,
        "truncated": truncated,
        "n_truncated": truncated[0]["n_kind"] if truncated else 0,
        "blocked": blocked,
        "n_blocked_cells": blocked[0]["n_kind"] if blocked else 0,
        "truncation_warn": TRUNCATION_WARN,
        "accuracy": accuracy,
        "corrected": any(c.get("corrected_non_answer_rate") is not None for c in cells),
        "mismatch": mismatch,
        "n_mismatch": n_mismatch,
        "flips": flips,
        "n_flips": n_flips,
        "errors": errors,
        "n_error_groups": n_error_groups,
        "compare": compare,
        "notable": notable,
        "examples": examples,
        "classifiers": sorted({r["classifier"] for r in runs if r.get("classifier") is not None}),
        "models": sorted({(c["deployment"], c["model"]) for c in cells}),
        "deployments": sorted({o["deployment"] for o in overall}),
        "one_deployment": len({o["deployment"] for o in overall}) == 1,
        "one_study": len({c["study"] for c in cells}) <= 1,
        "fdr": FDR,
        "metrics": METRICS,
        "metric_names": METRIC_NAMES,
        "limits": {"cells": MAX_CELLS, "compare": MAX_COMPARE_ROWS, "near": MAX_NEAR_MISSES, "table": MAX_TABLE_ROWS,
                   "example_chars": EXAMPLE_CHARS, "prompt_chars": PROMPT_CHARS, "top": TOP_CELLS},
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    context["story"] = _story(context)
    return context


def _where(r: dict[str, Any]) -> str:
    """A cell in words: model @ deployment on topic in language."""
    return f"{r['model']} @ {r['deployment']} on {r['topic']} in {r['language']}"


def _notable_cells(compare: dict[str, dict[str, Any]], rankings: dict[str, dict[str, list[dict[str, Any]]]],
                   mismatch: list[dict[str, Any]], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells whose responses are worth reading, each with why: the highest non-answer rates
    first (their non-answers are the finding), then significant changes and language,
    deployment and model differences, then the highest refusal and mismatch rates."""
    out: list[dict[str, Any]] = []
    seen: set[tuple] = set()

    def add(study: str | None, model: str, deployment: str, topic: str, language: str, why: str) -> None:
        key = (study, model, deployment, topic, language)
        if key in seen or len(out) >= MAX_NOTABLE:
            return
        seen.add(key)
        out.append({"study": study, "model": model, "deployment": deployment, "topic": topic,
                    "language": language, "why": why})

    for r in rankings["non_answer"]["ranked"][:3]:
        add(r["study"], r["model"], r["deployment"], r["topic"], r["language"],
            f"non-answer rate {_pct(r['rate'])} (refused {_pct(r['refusal_rate'])}, evasive "
            f"{_pct(r['evasive_rate'])}, blocked {_pct(r['blocked_rate'])})")

    def significant(name: str) -> list[dict[str, Any]]:
        c = compare[name]["non_answer"] if compare[name]["non_answer"].get("available") else compare[name]["refusal"]
        return [r for r in c.get("rows", []) if r["significant"]] if c.get("available") else []

    for r in significant("compare_weeks")[:2]:
        add(r["study"], r["model"], r["deployment"], r["topic"], r["language"],
            f"changed since {r['prev_week']} by {_pp(r['diff'])}")
    for r in significant("compare_languages")[:1]:
        for side, other in (("a", "b"), ("b", "a")):
            add(r["study"], r["model"], r["deployment"], r["topic"], r[f"language_{side}"],
                f"differs from {r[f'language_{other}']} ({_pct(r['rate_' + side])} vs {_pct(r['rate_' + other])})")
    for r in significant("compare_deployments")[:1]:
        for side, other in (("a", "b"), ("b", "a")):
            add(r["study"], r["model"], r[f"deployment_{side}"], r["topic"], r["language"],
                f"differs from {r[f'deployment_{other}']} ({_pct(r['rate_' + side])} vs {_pct(r['rate_' + other])})")
    for r in significant("compare_models")[:1]:
        for side, other in (("a", "b"), ("b", "a")):
            add(r["study"], r[f"model_{side}"], r["deployment"], r["topic"], r["language"],
                f"differs from {r[f'model_{other}']} ({_pct(r['rate_' + side])} vs {_pct(r['rate_' + other])})")
    for r in rankings["non_answer"]["few"][:1]:
        add(r["study"], r["model"], r["deployment"], r["topic"], r["language"],
            f"non-answer rate {_pct(r['rate'])} on only {r['n_prompts']} prompt(s)")
    for r in rankings["refusal"]["ranked"][:2]:
        add(r["study"], r["model"], r["deployment"], r["topic"], r["language"], f"refusal rate {_pct(r['rate'])}")
    for r in mismatch[:1]:
        add(r["study"], r["model"], r["deployment"], r["topic"], r["language"],
            f"answers in another language {_pct(r['language_mismatch_rate'])} of the time")
    # a small report (or a week without non-answers) still shows what the models said
    for c in sorted(cells, key=lambda c: (-(c["n_samples"] or 0), c["model"], c["topic"], c["language"]))[:4]:
        if len(out) < 4:
            add(c["study"], c["model"], c["deployment"], c["topic"], c["language"], "for reference")
    return out


LABEL_ORDER = {"refused": 0, "evasive": 1, "blocked": 2, "complied": 3}


def _examples(con: Any, week: str, notable: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One response per label (the non-answers: refused, evasive, blocked; then one complied
    for contrast) for each notable cell, cut short in SQL."""
    if not notable:
        return []
    cols = ("study", "model", "deployment", "topic", "language")
    rows = _rows(con, _sql("examples"), {
        **{c: [n[c] for n in notable] for c in cols}, "week": week,
        "example_chars": EXAMPLE_CHARS, "prompt_chars": PROMPT_CHARS})
    by_cell: dict[tuple, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: LABEL_ORDER[r["label"]]):
        by_cell.setdefault(tuple(r[c] for c in cols), []).append(r)
    out = []
    for n in notable:
        found = by_cell.get(tuple(n[c] for c in cols), [])
        if found:
            out.append({**n, "responses": found})
    return out


def _validation(raw: str | None) -> dict[str, Any]:
    """The run's validation outcome (JSON written by the validate stage), tolerant of old shapes."""
    try:
        v = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        v = {}
    suites = v.get("suites") or []
    failures = [f"{s.get('suite')}: {f}" for s in suites for f in (s.get("failures") or [])]
    return {
        "known": bool(v),
        "success": v.get("success"),
        "suites": [{"suite": s.get("suite"), "success": s.get("success"), "evaluated": s.get("evaluated"),
                    "n_failures": len(s.get("failures") or [])} for s in suites],
        "failures": failures[:10],
    }


def _validation_link(data: DataDir, week: str, run_id: str) -> str | None:
    """Relative link from the report's folder to the run's validation summary, if written."""
    target = data.validation / run_id / "index.html"
    if not target.is_file():
        return None
    rel = os.path.relpath(target, data.reports / week)
    return "/".join(quote(part) for part in Path(rel).parts)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _pp(x: float | None) -> str:
    """A difference of two rates, in percentage points with its sign."""
    return "–" if x is None else f"{100 * x:+.0f} pp"


def _q(x: float | None) -> str:
    if x is None:
        return "–"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _story(ctx: dict[str, Any]) -> list[str]:
    """The week in a few plain sentences (the first screen of the report), non-answers first."""
    t = ctx["totals"]
    models = {m for _, m in ctx["models"]}
    out = [
        f"{t['n_samples']:,} responses from {len(models)} model(s) in {len(ctx['deployments'])} deployment(s) "
        f"to {t['n_prompts']:,} prompt variants: {_pct(t['non_answer_rate'])} were non-answers "
        f"({_pct(t['refusal_rate'])} refused, {_pct(t['evasive_rate'])} evasive, {_pct(t['blocked_rate'])} "
        f"blocked by the provider); {t['n_errors']:,} errors (failed requests, empty output) are counted apart."
    ]
    na = ctx["rankings"]["non_answer"]
    if na["ranked"]:
        c = na["ranked"][0]
        out.append(f"Highest non-answer rate: {_where(c)}, {_pct(c['rate'])} [{_pct(c['rate_low'])}, "
                   f"{_pct(c['rate_high'])}] ({_pct(c['refusal_rate'])} refused, {_pct(c['evasive_rate'])} evasive, "
                   f"{_pct(c['blocked_rate'])} blocked; {c['n_prompts']} prompts).")
    elif na["few"]:
        out.append(f"No cell with at least {ctx['min_prompts'] or 'the minimum of'} prompts had a non-answer; "
                   f"{na['n_few']} cell(s) with fewer prompts did (listed apart, not ranked).")
    else:
        out.append("No cell had any non-answer this week.")
    rf = ctx["rankings"]["refusal"]
    if rf["ranked"]:
        c = rf["ranked"][0]
        out.append(f"Highest refusal rate: {_where(c)}, {_pct(c['rate'])} [{_pct(c['rate_low'])}, "
                   f"{_pct(c['rate_high'])}].")
    few = na["n_few"]
    if few:
        out.append(f"{few} cell(s) with non-answers had fewer than {ctx['min_prompts'] or 'the minimum of'} "
                   f"prompts: too few to rank, listed apart.")
    if ctx["n_truncated"]:
        out.append(f"Warning: {ctx['n_truncated']} cell(s) had more than {_pct(ctx['truncation_warn'])} of their "
                   f"answers cut by max_tokens; their rates measure less than they seem.")
    if t["n_blocked"]:
        out.append(f"Blocked: {t['n_blocked']:,} request(s) in {ctx['n_blocked_cells']} cell(s) were blocked by "
                   f"the provider (content filter, moderation, HTTP 451).")
    cw = ctx["compare"]["compare_weeks"]
    cwn = cw["non_answer"] if cw["non_answer"].get("available") else cw["refusal"]
    if not ctx["previous_weeks"]:
        out.append("Week over week: this is the first week with data, so there is nothing to compare against.")
    elif not cwn.get("available"):
        out.append("Week over week: not available (this warehouse has no compare_weeks table).")
    elif cwn["total"] == 0:
        out.append("Week over week: no cell of this week was measured in an earlier week.")
    else:
        out.append(f"Week over week ({METRIC_NAMES[cwn['metric']]}): {cwn['significant']} of {cwn['total']} cells "
                   f"changed significantly (Benjamini–Hochberg at {_pct(ctx['fdr'])}).")
        sig = [r for r in cwn["rows"] if r["significant"]]
        if sig:
            r = sig[0]
            out[-1] += (f" Largest: {r['model']} @ {r['deployment']}, {r['topic']} in {r['language']}, "
                        f"{_pct(r['prev_rate'])} → {_pct(r['rate'])} (q {_q(r['q_value'])}).")
    for name, what in (("compare_languages", "Languages"), ("compare_deployments", "Deployments"),
                       ("compare_models", "Models")):
        both = ctx["compare"][name]
        c = both["non_answer"] if both["non_answer"].get("available") else both["refusal"]
        if not c.get("available"):
            out.append(f"{what}: comparison not available (no {name} table in this warehouse).")
        elif c["total"] == 0:
            out.append(f"{what}: no pairs to compare this week.")
        else:
            line = f"{what} ({METRIC_NAMES[c['metric']]}): {c['significant']} of {c['total']} pairs differ significantly."
            sig = [r for r in c["rows"] if r["significant"]]
            if sig:
                r = sig[0]
                if name == "compare_languages":
                    where, a, b = f"{r['model']} @ {r['deployment']}, {r['topic']}", r["language_a"], r["language_b"]
                elif name == "compare_deployments":
                    where, a, b = f"{r['model']}, {r['topic']} in {r['language']}", r["deployment_a"], r["deployment_b"]
                else:
                    where, a, b = f"{r['deployment']}, {r['topic']} in {r['language']}", r["model_a"], r["model_b"]
                line += f" Largest: {where}: {a} {_pct(r['rate_a'])} vs {b} {_pct(r['rate_b'])} (q {_q(r['q_value'])})."
            out.append(line)
    failed = [r["run_id"] for r in ctx["runs"] if r["validation"]["success"] is False]
    out.append(f"Validation: {len(ctx['runs']) - len(failed)} of {len(ctx['runs'])} run(s) passed"
               + (f"; failed: {', '.join(failed)}." if failed else "."))
    return out


def _heat(x: float | None) -> str:
    """A background colour for a rate: white (0) through orange to dark red (1)."""
    if x is None:
        return "#f4f4f4"
    x = min(1.0, max(0.0, x))
    # light enough at the top end for dark text to stay readable
    r, g, b = 255 - 40 * x, 250 - 170 * x, 245 - 185 * x
    return f"rgb({r:.0f},{g:.0f},{b:.0f})"


def _x(v: float | None, width: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """A value's x position on an axis from lo to hi drawn `width` wide (clamped)."""
    v = lo if v is None else min(hi, max(lo, v))
    return round((v - lo) / (hi - lo) * width, 1)


def _parts(c: dict[str, Any], width: float) -> list[dict[str, Any]]:
    """The stacked bar of a cell's non-answers: refused, evasive, blocked, left to right."""
    out, x = [], 0.0
    for kind in ("refused", "evasive", "blocked"):
        rate = c.get({"refused": "refusal_rate", "evasive": "evasive_rate", "blocked": "blocked_rate"}[kind]) or 0.0
        w = round(min(1.0, max(0.0, rate)) * width, 1)
        out.append({"kind": kind, "x": round(x, 1), "w": w, "rate": rate})
        x += w
    return out


def _span(comparison: dict[str, Any]) -> float:
    """Half-width of the difference axis of a comparison table: its widest interval, in steps of 25 pp."""
    shown = comparison.get("rows", []) + comparison.get("largest", [])
    bounds = [abs(v) for r in shown for v in (r["diff_ci_low"], r["diff_ci_high"], r["diff"]) if v is not None]
    return min(1.0, max(0.25, math.ceil(max(bounds, default=0.0) * 4) / 4))


def _grids(context: dict[str, Any]) -> list[dict[str, Any]]:
    """Heat maps, one per study and deployment. Few topic × language columns: one row per model
    (models are compared down a column). Many: one small topic × language table per model."""
    out = []
    for study, dep in sorted({(c["study"] or "", c["deployment"]) for c in context["cells"]}):
        cells = [c for c in context["cells"] if (c["study"] or "") == study and c["deployment"] == dep]
        langs = sorted({c["language"] for c in cells})
        topics: list[tuple[str, str]] = []
        for c in sorted(cells, key=lambda c: (c["topic_group"] or "", c["topic"])):
            if (c["topic_group"], c["topic"]) not in topics:
                topics.append((c["topic_group"], c["topic"]))
        columns = [(t, lang) for _, t in topics for lang in langs
                   if any(c["topic"] == t and c["language"] == lang for c in cells)]
        rate = {o["model"]: o["non_answer_rate"] or 0.0 for o in context["overall"]
                if o["deployment"] == dep and (o["study"] or "") == study}
        models = sorted({c["model"] for c in cells}, key=lambda m: (-rate.get(m, 0.0), m))
        lookup = {(c["model"], c["topic"], c["language"]): c for c in cells}
        spans = []
        for _, t in topics:
            n = sum(1 for col in columns if col[0] == t)
            if n:
                spans.append((t, n))
        out.append({"study": study or None, "deployment": dep, "models": models, "languages": langs,
                    "topics": topics, "columns": columns, "spans": spans, "lookup": lookup,
                    "matrix": len(columns) <= MATRIX_MAX_COLUMNS})
    return out


def _environment(markdown: bool) -> Any:
    """The Jinja environment of the HTML page (autoescaped HTML) or of the Markdown (every value
    made inert Markdown text by `finalize`, unless a filter has already done so)."""
    import jinja2
    import markupsafe

    from pipeline.mdsafe import inline

    options: dict[str, Any] = {}
    if markdown:
        options["autoescape"] = False
        options["finalize"] = lambda v: v if isinstance(v, markupsafe.Markup) else markupsafe.Markup(inline(v))
    else:
        options["autoescape"] = jinja2.select_autoescape(["html", "j2"], default=True)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, **options)
    # `md` escapes for Markdown on its own; Markup stops escaping from applying twice
    env.filters.update(pct=_pct, pp=_pp, q=_q, heat=_heat, x=_x, parts=_parts,
                       md=lambda t, limit=300, none="–": markupsafe.Markup(inline(t, limit, none)),
                       short=lambda t, n=400: (t or "")[:n] + ("…" if t and len(t) > n else ""))
    return env


def render(context: dict[str, Any]) -> tuple[str, str]:
    """(html, markdown) of a report."""
    compare = {name: {m: {**c, "span": _span(c)} for m, c in both.items()}
               for name, both in context["compare"].items()}
    context = {**context, "compare": compare, "grids": _grids(context)}
    page = _environment(markdown=False).get_template("report.html.j2").render(**context)
    md = _environment(markdown=True).get_template("report.md.j2").render(**context)
    return page, md


def write_report(data: DataDir, week: str | None = None) -> dict[str, Path]:
    """Write `reports/<week>/report.html` and `report.md`; return their paths."""
    if week is not None and not re.fullmatch(r"\d{4}-W\d{2}", week):
        raise UserError(f"--week {week!r}: expected {WEEK_FORMAT}, e.g. 2026-W48")
    context = gather(data, week)
    page, md = render(context)
    out = data.reports / context["week"]
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in (("report.html", page), ("report.md", md)):
        tmp = out / f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
        paths[name.split(".")[1]] = out / name
    write_json_atomic({"week": context["week"], "cells": context["cells"]}, out / "report.json")
    log.info("report written to %s", out)
    return paths
