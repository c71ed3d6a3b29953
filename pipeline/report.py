"""Stage 7: the weekly report (HTML and Markdown) from the warehouse, read-only.

What it shows, in reading order: the headline (the week's story in a few sentences and the
cells that refuse most, with error bars), a topic × language heat map per model and
deployment, week-over-week changes that survived the false-discovery control, language and
deployment comparisons, language mismatch and flips, validation and error rates, example
responses from the notable cells, and what was measured and how.

Every number is aggregated in SQL and every list is bounded (LIMIT), so a report of a large
warehouse stays small and fast. The comparison tables (`compare_weeks`, `compare_languages`,
`compare_deployments`) may be absent from an older warehouse: their sections then say
"not available" instead of failing.

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
COMPARISONS = ("compare_weeks", "compare_languages", "compare_deployments")
FDR = 0.05  # Benjamini–Hochberg level used by the comparison tables (q_value < FDR)

MAX_CELLS = 5000  # heat-map cells shown; beyond this the report says how many were left out
MAX_COMPARE_ROWS = 40  # significant rows shown per comparison table
MAX_NEAR_MISSES = 8  # and the not significant ones nearest to it (lowest q)
MAX_LARGEST = 5  # when nothing is significant: the largest differences, for reference
MAX_TABLE_ROWS = 20  # rows of the mismatch, flip and error tables
TOP_CELLS = 12  # the highest refusal rates, drawn with error bars in the headline
MAX_NOTABLE = 8  # cells whose example responses are shown
EXAMPLE_CHARS = 600  # a response is cut here (the SQL reads no more than this)
PROMPT_CHARS = 300
MATRIX_MAX_COLUMNS = 12  # up to this many topic × language columns: one row per model


def _rows(con: Any, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _tables(con: Any) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _comparison(con: Any, table: str, week: str, order_keys: str) -> dict[str, Any]:
    """Counts and rows of one comparison table: the significant ones, then the nearest misses."""
    total, significant = con.execute(
        f'SELECT count(*), count(*) FILTER (WHERE significant) FROM "{table}" WHERE week = ?', [week]
    ).fetchone()
    rows = _rows(
        con,
        f"""SELECT * FROM (
                (SELECT * FROM "{table}" WHERE week = ? AND significant
                 ORDER BY q_value, abs(diff) DESC, {order_keys} LIMIT {MAX_COMPARE_ROWS})
                UNION ALL BY NAME
                (SELECT * FROM "{table}" WHERE week = ? AND NOT coalesce(significant, false)
                 ORDER BY q_value NULLS LAST, abs(diff) DESC NULLS LAST, {order_keys} LIMIT {MAX_NEAR_MISSES})
            )
            ORDER BY coalesce(significant, false) DESC, q_value NULLS LAST, abs(diff) DESC NULLS LAST, {order_keys}""",
        [week, week],
    )
    largest = _rows(
        con,
        f"""SELECT * FROM "{table}" WHERE week = ? AND NOT coalesce(significant, false) AND diff <> 0
            ORDER BY abs(diff) DESC, q_value NULLS LAST, {order_keys}
            LIMIT {MAX_LARGEST}""",
        [week],
    )
    for r in rows + largest:
        # prompts behind the test: shared by both sides (weeks, deployments) or each side's own
        r["n_compared"] = r.get("n_shared_prompts", r.get("n_prompts"))
    return {"available": True, "total": total, "significant": significant, "rows": rows, "largest": largest}


def gather(data: DataDir, week: str | None) -> dict[str, Any]:
    """Everything the report shows, from the warehouse (read-only)."""
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
        runs = _rows(con, "SELECT * FROM runs WHERE week = ? ORDER BY started_at", [week])
        n_cells = con.execute("SELECT count(*) FROM refusal_rates WHERE week = ?", [week]).fetchone()[0]
        cells = _rows(
            con,
            f"""SELECT model, deployment, topic, topic_group, language, n_prompts, n_samples,
                       refusal_rate, ci_low, ci_high, evasive_rate, error_rate,
                       language_mismatch_rate, flip_rate, between_prompt_share
                FROM refusal_rates WHERE week = ?
                ORDER BY deployment, model, topic_group, topic, language
                LIMIT {MAX_CELLS}""",
            [week],
        )
        # per model and deployment: pooled rates, and k = repetitions per prompt as sampled
        overall = _rows(
            con,
            """SELECT p.deployment, p.model, count(DISTINCT p.prompt_id) AS n_prompts,
                      sum(p.n_samples) AS n_samples, min(p.n_samples) AS k_min, max(p.n_samples) AS k_max,
                      sum(p.n_refused) / nullif(sum(p.n_valid), 0) AS refusal_rate,
                      sum(p.n_evasive) / nullif(sum(p.n_valid), 0) AS evasive_rate,
                      sum(p.n_error) / sum(p.n_samples) AS error_rate,
                      sum(p.n_language_mismatch) / nullif(sum(p.n_answers_lang_known), 0)
                          AS language_mismatch_rate
               FROM prompt_stats AS p WHERE p.week = ?
               GROUP BY ALL ORDER BY p.deployment, refusal_rate DESC NULLS LAST, p.model""",
            [week],
        )
        totals = con.execute(
            """SELECT sum(n_samples), sum(n_error), sum(n_refused) / nullif(sum(n_valid), 0),
                      sum(n_evasive) / nullif(sum(n_valid), 0), count(DISTINCT prompt_id)
               FROM prompt_stats WHERE week = ?""",
            [week],
        ).fetchone()
        top_cells = _rows(
            con,
            f"""SELECT model, deployment, topic, language, refusal_rate, ci_low, ci_high, n_prompts, n_samples
                FROM refusal_rates WHERE week = ? AND refusal_rate > 0
                ORDER BY refusal_rate DESC, ci_low DESC, model, deployment, topic, language
                LIMIT {TOP_CELLS}""",
            [week],
        )
        mismatch = _rows(
            con,
            f"""SELECT model, deployment, topic, language, language_mismatch_rate, refusal_rate, n_prompts,
                       n_samples
                FROM refusal_rates WHERE week = ? AND language_mismatch_rate > 0
                ORDER BY language_mismatch_rate DESC, model, deployment, topic, language
                LIMIT {MAX_TABLE_ROWS}""",
            [week],
        )
        flips = _rows(
            con,
            f"""SELECT model, deployment, topic, language, flip_rate, between_prompt_share, refusal_rate,
                       n_prompts, n_samples
                FROM refusal_rates WHERE week = ? AND flip_rate > 0
                ORDER BY flip_rate DESC, model, deployment, topic, language
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
        n_flips = con.execute("SELECT count(*) FROM refusal_rates WHERE week = ? AND flip_rate > 0", [week]).fetchone()[0]
        compare: dict[str, dict[str, Any]] = {}
        for name, keys in (
            ("compare_weeks", "model, deployment, topic, language"),
            ("compare_languages", "model, deployment, topic, language_a, language_b"),
            ("compare_deployments", "model, topic, language, deployment_a, deployment_b"),
        ):
            compare[name] = _comparison(con, name, week, keys) if name in tables else {"available": False}
        notable = _notable_cells(compare, top_cells, mismatch, cells)
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
        "cells": cells,
        "n_cells": n_cells,
        "overall": overall,
        "totals": {"n_samples": totals[0] or 0, "n_errors": totals[1] or 0, "refusal_rate": totals[2],
                   "evasive_rate": totals[3], "n_prompts": totals[4] or 0},
        "top_cells": top_cells,
        "mismatch": mismatch,
        "n_mismatch": n_mismatch,
        "flips": flips,
        "n_flips": n_flips,
        "errors": errors,
        "n_error_groups": n_error_groups,
        "compare": compare,
        "notable": notable,
        "examples": examples,
        "classifiers": sorted({r["classifier"] for r in runs}),
        "models": sorted({(c["deployment"], c["model"]) for c in cells}),
        "deployments": sorted({o["deployment"] for o in overall}),
        "one_deployment": len({o["deployment"] for o in overall}) == 1,
        "fdr": FDR,
        "limits": {"cells": MAX_CELLS, "compare": MAX_COMPARE_ROWS, "near": MAX_NEAR_MISSES, "table": MAX_TABLE_ROWS,
                   "example_chars": EXAMPLE_CHARS, "prompt_chars": PROMPT_CHARS},
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    context["story"] = _story(context)
    return context


def _notable_cells(compare: dict[str, dict[str, Any]], top_cells: list[dict[str, Any]],
                   mismatch: list[dict[str, Any]], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells whose responses are worth reading, each with why: significant changes and
    language/deployment differences first, then the highest refusal and mismatch rates."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str, str]] = set()

    def add(model: str, deployment: str, topic: str, language: str, why: str) -> None:
        key = (model, deployment, topic, language)
        if key in seen or len(out) >= MAX_NOTABLE:
            return
        seen.add(key)
        out.append({"model": model, "deployment": deployment, "topic": topic, "language": language, "why": why})

    weeks = compare["compare_weeks"]
    if weeks.get("available"):
        for r in [r for r in weeks["rows"] if r["significant"]][:2]:
            add(r["model"], r["deployment"], r["topic"], r["language"],
                f"changed since {r['prev_week']} by {_pp(r['diff'])}")
    langs = compare["compare_languages"]
    if langs.get("available"):
        for r in [r for r in langs["rows"] if r["significant"]][:1]:
            for side, other in (("a", "b"), ("b", "a")):
                add(r["model"], r["deployment"], r["topic"], r[f"language_{side}"],
                    f"differs from {r[f'language_{other}']} ({_pct(r['rate_' + side])} vs {_pct(r['rate_' + other])})")
    deps = compare["compare_deployments"]
    if deps.get("available"):
        for r in [r for r in deps["rows"] if r["significant"]][:1]:
            for side, other in (("a", "b"), ("b", "a")):
                add(r["model"], r[f"deployment_{side}"], r["topic"], r["language"],
                    f"differs from {r[f'deployment_{other}']} ({_pct(r['rate_' + side])} vs {_pct(r['rate_' + other])})")
    for r in top_cells[:3]:
        add(r["model"], r["deployment"], r["topic"], r["language"], f"refusal rate {_pct(r['refusal_rate'])}")
    for r in mismatch[:1]:
        add(r["model"], r["deployment"], r["topic"], r["language"],
            f"answers in another language {_pct(r['language_mismatch_rate'])} of the time")
    # a small report (or a week without refusals) still shows what the models said
    for c in sorted(cells, key=lambda c: (-(c["n_samples"] or 0), c["model"], c["topic"], c["language"]))[:4]:
        if len(out) < 4:
            add(c["model"], c["deployment"], c["topic"], c["language"], "for reference")
    return out


def _examples(con: Any, week: str, notable: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One response per label (refused, evasive, complied) for each notable cell, cut short in SQL."""
    if not notable:
        return []
    cols = ("model", "deployment", "topic", "language")
    rows = _rows(
        con,
        f"""WITH wanted AS (
                SELECT unnest(?::VARCHAR[]) AS model, unnest(?::VARCHAR[]) AS deployment,
                       unnest(?::VARCHAR[]) AS topic, unnest(?::VARCHAR[]) AS language
            ),
            ranked AS (
                SELECT s.model, s.deployment, s.topic, s.language, l.label, l.rule, l.response_language,
                       l.language_match, left(s.response_text, {EXAMPLE_CHARS}) AS response_text,
                       length(s.response_text) AS response_chars,
                       left(p.prompt_text, {PROMPT_CHARS}) AS prompt_text, length(p.prompt_text) AS prompt_chars,
                       row_number() OVER (PARTITION BY s.model, s.deployment, s.topic, s.language, l.label
                                          ORDER BY hash(s.run_id, s.prompt_id, s.rep)) AS k
                FROM samples AS s
                JOIN wanted AS w USING (model, deployment, topic, language)
                JOIN labels AS l USING (run_id, model, deployment, prompt_id, rep)
                JOIN prompts AS p USING (run_id, prompt_id)
                JOIN runs AS r USING (run_id)
                WHERE r.week = ? AND l.label IN ('refused', 'evasive', 'complied')
            )
            SELECT * EXCLUDE (k) FROM ranked WHERE k = 1""",
        [[n[c] for n in notable] for c in cols] + [week],
    )
    order = {"refused": 0, "evasive": 1, "complied": 2}
    by_cell: dict[tuple, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: order[r["label"]]):
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
    """The week in a few plain sentences (the first screen of the report)."""
    t = ctx["totals"]
    models = {m for _, m in ctx["models"]}
    out = [
        f"{t['n_samples']:,} responses from {len(models)} model(s) in {len(ctx['deployments'])} deployment(s) "
        f"to {t['n_prompts']:,} prompt variants; {_pct(t['refusal_rate'])} refused and "
        f"{_pct(t['evasive_rate'])} evasive overall; {t['n_errors']:,} errors (failed requests, empty or "
        f"moderated output) are counted apart."
    ]
    if ctx["top_cells"]:
        c = ctx["top_cells"][0]
        out.append(f"Highest refusal rate: {c['model']} @ {c['deployment']} on {c['topic']} in {c['language']}, "
                   f"{_pct(c['refusal_rate'])} [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}].")
    else:
        out.append("No cell had any refusal this week.")
    cw = ctx["compare"]["compare_weeks"]
    if not ctx["previous_weeks"]:
        out.append("Week over week: this is the first week with data, so there is nothing to compare against.")
    elif not cw.get("available"):
        out.append("Week over week: not available (this warehouse has no compare_weeks table).")
    elif cw["total"] == 0:
        out.append("Week over week: no cell of this week was measured in an earlier week.")
    else:
        out.append(f"Week over week: {cw['significant']} of {cw['total']} cells changed significantly "
                   f"(Benjamini–Hochberg at {_pct(ctx['fdr'])}).")
        sig = [r for r in cw["rows"] if r["significant"]]
        if sig:
            r = sig[0]
            out[-1] += (f" Largest: {r['model']} @ {r['deployment']}, {r['topic']} in {r['language']}, "
                        f"{_pct(r['prev_rate'])} → {_pct(r['rate'])} (q {_q(r['q_value'])}).")
    for name, what, side in (("compare_languages", "Languages", "language"),
                             ("compare_deployments", "Deployments", "deployment")):
        c = ctx["compare"][name]
        if not c.get("available"):
            out.append(f"{what}: comparison not available (no {name} table in this warehouse).")
        elif c["total"] == 0:
            out.append(f"{what}: no pairs to compare this week.")
        else:
            line = f"{what}: {c['significant']} of {c['total']} pairs differ significantly."
            sig = [r for r in c["rows"] if r["significant"]]
            if sig:
                r = sig[0]
                where = (f"{r['model']} @ {r['deployment']}, {r['topic']}" if side == "language"
                         else f"{r['model']}, {r['topic']} in {r['language']}")
                line += (f" Largest: {where}: {r[side + '_a']} {_pct(r['rate_a'])} vs "
                         f"{r[side + '_b']} {_pct(r['rate_b'])} (q {_q(r['q_value'])}).")
            out.append(line)
    failed = [r["run_id"] for r in ctx["runs"] if r["validation"]["success"] is False]
    out.append(f"Validation: {len(ctx['runs']) - len(failed)} of {len(ctx['runs'])} run(s) passed"
               + (f"; failed: {', '.join(failed)}." if failed else "."))
    return out


def _heat(x: float | None) -> str:
    """A background colour for a refusal rate: white (0) through orange to dark red (1)."""
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


def _span(comparison: dict[str, Any]) -> float:
    """Half-width of the difference axis of a comparison table: its widest interval, in steps of 25 pp."""
    shown = comparison.get("rows", []) + comparison.get("largest", [])
    bounds = [abs(v) for r in shown for v in (r["diff_ci_low"], r["diff_ci_high"], r["diff"]) if v is not None]
    return min(1.0, max(0.25, math.ceil(max(bounds, default=0.0) * 4) / 4))


def _grids(context: dict[str, Any]) -> list[dict[str, Any]]:
    """Heat maps, one per deployment. Few topic × language columns: one row per model (models
    are compared down a column). Many: one small topic × language table per model."""
    out = []
    for dep in sorted({c["deployment"] for c in context["cells"]}):
        cells = [c for c in context["cells"] if c["deployment"] == dep]
        langs = sorted({c["language"] for c in cells})
        topics: list[tuple[str, str]] = []
        for c in sorted(cells, key=lambda c: (c["topic_group"] or "", c["topic"])):
            if (c["topic_group"], c["topic"]) not in topics:
                topics.append((c["topic_group"], c["topic"]))
        columns = [(t, lang) for _, t in topics for lang in langs
                   if any(c["topic"] == t and c["language"] == lang for c in cells)]
        rate = {o["model"]: o["refusal_rate"] or 0.0 for o in context["overall"] if o["deployment"] == dep}
        models = sorted({c["model"] for c in cells}, key=lambda m: (-rate.get(m, 0.0), m))
        lookup = {(c["model"], c["topic"], c["language"]): c for c in cells}
        spans = []
        for _, t in topics:
            n = sum(1 for col in columns if col[0] == t)
            if n:
                spans.append((t, n))
        out.append({"deployment": dep, "models": models, "languages": langs, "topics": topics,
                    "columns": columns, "spans": spans, "lookup": lookup,
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
    env.filters.update(pct=_pct, pp=_pp, q=_q, heat=_heat, x=_x,
                       md=lambda t, limit=300, none="–": markupsafe.Markup(inline(t, limit, none)),
                       short=lambda t, n=400: (t or "")[:n] + ("…" if t and len(t) > n else ""))
    return env


def render(context: dict[str, Any]) -> tuple[str, str]:
    """(html, markdown) of a report."""
    compare = {name: {**c, "span": _span(c)} for name, c in context["compare"].items()}
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
