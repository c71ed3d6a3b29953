"""Stage 7: the weekly report (HTML and Markdown) from the warehouse, read-only.

Model output is untrusted: the HTML template autoescapes everything, and the Markdown
escapes HTML and table syntax in quoted responses.
"""

from __future__ import annotations

import html
import json
import logging
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.lake import TMP_PREFIX, write_json_atomic
from pipeline.paths import DataDir

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
WEEK_FORMAT = "YYYY-Www"


def _rows(con: Any, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def gather(data: DataDir, week: str | None) -> dict[str, Any]:
    """Everything the report shows, from the warehouse."""
    from pipeline.warehouse import connect

    con = connect(data, read_only=True)
    try:
        weeks = [r[0] for r in con.execute("SELECT DISTINCT week FROM runs ORDER BY week").fetchall()]
        if not weeks:
            raise UserError(f"{data.warehouse}: no published runs yet")
        if week is None:
            week = weeks[-1]
        elif week not in weeks:
            raise UserError(f"--week {week}: no published runs that week (weeks with data: {', '.join(weeks)})")
        runs = _rows(con, "SELECT * FROM runs WHERE week = ? ORDER BY started_at", [week])
        cells = _rows(
            con,
            """SELECT model, deployment, topic, topic_group, language, n_prompts, n_samples,
                      refusal_rate, ci_low, ci_high, evasive_rate, error_rate,
                      language_mismatch_rate, flip_rate
               FROM refusal_rates WHERE week = ?
               ORDER BY deployment, model, topic_group, topic, language""",
            [week],
        )
        overall = _rows(
            con,
            """SELECT p.deployment, p.model, count(DISTINCT p.prompt_id) AS n_prompts,
                      sum(p.n_samples) AS n_samples,
                      sum(p.n_refused) / nullif(sum(p.n_valid), 0) AS refusal_rate,
                      sum(p.n_evasive) / nullif(sum(p.n_valid), 0) AS evasive_rate,
                      sum(p.n_error) / sum(p.n_samples) AS error_rate
               FROM prompt_stats AS p WHERE p.week = ?
               GROUP BY ALL ORDER BY p.deployment, refusal_rate DESC NULLS LAST""",
            [week],
        )
        examples = _rows(
            con,
            """WITH ranked AS (
                   SELECT s.model, s.deployment, s.topic, s.language, l.label, l.rule,
                          l.response_language, s.response_text, p.prompt_text,
                          row_number() OVER (PARTITION BY s.deployment, l.label
                                             ORDER BY hash(s.run_id, s.prompt_id, s.rep, s.model)) AS k
                   FROM samples AS s
                   JOIN labels AS l USING (run_id, model, deployment, prompt_id, rep)
                   JOIN prompts AS p USING (run_id, prompt_id)
                   JOIN runs AS r USING (run_id)
                   WHERE r.week = ? AND l.label IN ('refused', 'evasive', 'complied')
               )
               SELECT * EXCLUDE (k) FROM ranked WHERE k <= 2
               ORDER BY deployment, label, model""",
            [week],
        )
    finally:
        con.close()
    for r in runs:
        r["models"] = json.loads(r["models"] or "[]")
        r["deployments"] = json.loads(r["deployments"] or "[]")
    classifiers = sorted({r["classifier"] for r in runs})
    return {
        "week": week,
        "weeks": weeks,
        "runs": runs,
        "cells": cells,
        "overall": overall,
        "examples": examples,
        "classifiers": classifiers,
        "models": sorted({(c["deployment"], c["model"]) for c in cells}),
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _heat(x: float | None) -> str:
    """A background colour for a refusal rate: white (0) to red (1)."""
    if x is None:
        return "#f4f4f4"
    g = int(255 - 170 * x)
    return f"rgb(255,{g},{g})"


def _md_escape(text: str | None, limit: int = 300) -> str:
    if text is None:
        return "(no response)"
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "…"
    return html.escape(text).replace("|", "\\|").replace("`", "\\`").replace("*", "\\*").replace("_", "\\_")


def render(context: dict[str, Any]) -> tuple[str, str]:
    """(html, markdown) of a report."""
    import jinja2
    import markupsafe

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # `md` escapes on its own; Markup stops autoescape (on for every .j2) from escaping it twice
    env.filters.update(pct=_pct, heat=_heat, md=lambda t, limit=300: markupsafe.Markup(_md_escape(t, limit)),
                       short=lambda t, n=400: (t or "")[:n] + ("…" if t and len(t) > n else ""))
    # heatmap tables: one per (deployment, model), rows = topics, columns = languages
    grids = []
    for dep, model in context["models"]:
        cells = [c for c in context["cells"] if c["deployment"] == dep and c["model"] == model]
        langs = sorted({c["language"] for c in cells})
        topics = []
        for c in cells:
            if (c["topic_group"], c["topic"]) not in topics:
                topics.append((c["topic_group"], c["topic"]))
        lookup = {(c["topic"], c["language"]): c for c in cells}
        grids.append({"deployment": dep, "model": model, "languages": langs, "topics": topics, "lookup": lookup})
    context = {**context, "grids": grids}
    page = env.get_template("report.html.j2").render(**context)
    md = env.get_template("report.md.j2").render(**context)
    return page, md


def write_report(data: DataDir, week: str | None = None) -> dict[str, Path]:
    """Write `reports/<week>/report.html` and `report.md`; return their paths."""
    if week is not None:
        import re

        if not re.fullmatch(r"\d{4}-W\d{2}", week):
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
