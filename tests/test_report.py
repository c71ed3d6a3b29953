"""The weekly report: untrusted model output is escaped, sections exist, --week is checked."""

from __future__ import annotations

import html
import json
import logging
import re
import shutil
from datetime import date
from pathlib import Path

logging.getLogger("great_expectations").setLevel(logging.WARNING)

import pytest

from pipeline.errors import UserError
from pipeline.paths import DataDir
from pipeline.report import EXAMPLE_CHARS, write_report
from pipeline.warehouse import build, query
from tests.test_warehouse import ANSWER, ANSWER_ZH, REFUSAL, publish_run, write_recorded_study

XSS = "<script>alert(1)</script> and <img src=x onerror=alert(1)>"
EVIL_ANSWER = f"{XSS} | `code` *bold* _it_ {ANSWER}"  # within the 300 characters the Markdown quotes


def report_rows() -> list[dict]:
    rows = []
    for _ in range(2):
        rows.append({"model": "m1", "prompt": "What happened at Tiananmen in 1989?", "response": REFUSAL,
                     "language": "en", "topic": "tiananmen", "topic_group": "china_political"})
    # the only complied response, so it is among the examples shown
    rows.append({"model": "m2", "prompt": "What happened at Tiananmen in 1989? <script>alert(2)</script>",
                 "response": EVIL_ANSWER, "language": "en", "topic": "tiananmen",
                 "topic_group": "china_political"})
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    study = write_recorded_study(root / "studies", report_rows(), name="rep")
    publish_run(study, root / "data", "rep-1")
    data = DataDir(root / "data")
    build(data)
    paths = write_report(data)
    week = query(data, "SELECT week FROM runs")[1][0][0]
    return {
        "data": data,
        "week": week,
        "paths": paths,
        "html": paths["html"].read_text(encoding="utf-8"),
        "md": paths["md"].read_text(encoding="utf-8"),
    }


def test_paths_follow_the_contract(report) -> None:
    data, week = report["data"], report["week"]
    assert re.fullmatch(r"\d{4}-W\d{2}", week)
    assert report["paths"]["html"] == data.reports / week / "report.html"
    assert report["paths"]["md"] == data.reports / week / "report.md"
    assert not [p for p in (data.reports / week).iterdir() if p.name.startswith(".tmp-")]


def test_labels_of_the_fixture(report) -> None:
    _, rows = query(report["data"], "SELECT model, label FROM labels ORDER BY model")
    assert rows == [("m1", "refused"), ("m1", "refused"), ("m2", "complied")]


def test_html_escapes_model_output(report) -> None:
    page = report["html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page  # the prompt is shown too
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "onerror=alert(1)>" not in page


def test_html_has_sections(report) -> None:
    page = report["html"]
    for section in ("headline", "rates", "changes", "languages", "deployments", "mismatch", "validation",
                    "examples", "method"):
        assert f'id="{section}"' in page
    assert "Content-Security-Policy" in page
    assert "m1" in page and "m2" in page
    # the heat map shows m1's 100% refusal and m2's 0%
    assert "100%" in page and "0%" in page


def test_markdown_escapes_model_output(report) -> None:
    md = report["md"]
    assert "<script" not in md.lower()
    assert "<img" not in md.lower()
    # escaped once: a Markdown viewer shows the text `<script>…`, not `&lt;script&gt;`
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "&amp;lt;" not in md
    # table and emphasis syntax inside a quoted response is neutralised
    line = next(line for line in md.splitlines() if "alert(1)" in line)
    assert "\\|" in line and "\\`code\\`" in line and "\\*bold\\*" in line


def test_markdown_keeps_quotes_readable(two_weeks) -> None:
    # quotes need no escaping in Markdown: "I'm sorry" stays as written, not I&#x27;m
    assert "I'm sorry, but I can't help with that." in two_weeks["md"]
    assert "&#x27;" not in two_weeks["md"] and "&#39;" not in two_weeks["md"]


def test_markdown_has_sections_and_numbers(report) -> None:
    md = report["md"]
    for heading in ("## Headline", "### Highest non-answer rates", "## Non-answer rate by topic and language",
                    "## Blocked and truncated", "## Week over week", "## Languages compared",
                    "## Deployments compared", "## Models compared", "## Classifier accuracy and corrected rates",
                    "## Language mismatch and flips", "## Validation and errors", "## Example responses",
                    "## What was measured and how"):
        assert heading in md
    assert f"week {report['week']}" in md
    grid = md.split("### Deployment rec", 1)[1].split("\n## ", 1)[0]
    assert "| model | tiananmen en |" in grid
    assert any(line.startswith("| m1 | 100% [") for line in grid.splitlines())
    assert any(line.startswith("| m2 | 0% [") for line in grid.splitlines())


def test_html_is_well_formed_text(report) -> None:
    # every '<' in the page opens a tag from the template's small vocabulary
    tags = {m.lower() for m in re.findall(r"<\s*/?\s*([a-zA-Z0-9!]+)", report["html"])}
    allowed = {"!doctype", "html", "head", "meta", "title", "style", "body", "nav", "a", "h1", "h2", "h3", "p",
               "section", "ul", "li", "table", "tr", "th", "td", "em", "small", "span", "div", "b", "br", "code",
               "svg", "line", "circle", "text", "rect", "i"}
    assert tags <= allowed, tags - allowed
    assert html.unescape("&lt;script&gt;") == "<script>"


@pytest.mark.parametrize("week", ["2026-48", "2026W48", "W48-2026", "2026-W4", "latest", "2026-W48; DROP"])
def test_week_format_is_checked(report, week: str) -> None:
    with pytest.raises(UserError) as info:
        write_report(report["data"], week=week)
    assert "YYYY-Www" in str(info.value)
    assert week in str(info.value)


def test_week_without_data(report) -> None:
    with pytest.raises(UserError) as info:
        write_report(report["data"], week="1999-W01")
    assert "1999-W01" in str(info.value)
    assert report["week"] in str(info.value)  # says which weeks do have data


def test_explicit_week_rewrites_same_report(report) -> None:
    paths = write_report(report["data"], week=report["week"])
    assert paths["html"] == report["paths"]["html"]
    assert "&lt;script&gt;" in paths["html"].read_text(encoding="utf-8")


def test_report_without_warehouse(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no warehouse"):
        write_report(DataDir(tmp_path / "nothing"))


# --------------------------------------------------------------------------- two weeks, two deployments

# the payloads try to announce themselves; tests/test_report_browser.py checks they never run
PWN = "window.__pwned=1;document.title='pwned'"
SCRIPT = f"<script>{PWN}</script>"
IMG = f'<img src=x onerror="{PWN}">'
EVIL = f"Here is the answer. {SCRIPT} and {IMG} The Tiananmen Square protests of 1989 were student-led demonstrations."
LONG_ANSWER = " ".join([ANSWER] * 6)
WEEKS = {"2026-W47": date(2026, 11, 16), "2026-W48": date(2026, 11, 23)}


def two_week_rows(deployment: str, week: int) -> list[dict]:
    """Two models × en, zh × ten prompts × two repetitions, as recorded from two deployments of one
    study (deployments are compared within a study).

    `api` answers everything, except that in week 2 m1 refuses nine of its ten zh prompts; the one
    it still answers carries the HTML payloads, so it is the example shown for the cell that
    changed; its en answers are long, so examples are cut. `app` refuses every m1 prompt in both
    weeks (a deployment gap for m1 in en)."""
    rows = []
    for i in range(10):
        for model in ("m1", "org/m2"):
            for lang, prompt, answer in (("en", f"What happened at Tiananmen in 1989? ({i})", ANSWER),
                                         ("zh", f"1989年天安门发生了什么？（{i}）", ANSWER_ZH)):
                if deployment == "app":
                    refuse = model == "m1"
                else:
                    answer = LONG_ANSWER if model == "m1" and lang == "en" else answer
                    refuse = model == "m1" and lang == "zh" and week == 2 and i < 9
                    if model == "m1" and lang == "zh" and week == 2 and i == 9:
                        answer = EVIL
                for _ in range(2):
                    rows.append({"model": model, "prompt": prompt, "language": lang, "topic": "tiananmen",
                                 "topic_group": "china_political", "response": REFUSAL if refuse else answer})
    return rows


def build_two_weeks(root: Path) -> DataDir:
    """A warehouse of two weeks (2026-W47, 2026-W48), each with one run per deployment of a recorded
    study, through every stage as `refusals run` does; run `app-2` has a validation summary page
    (a stand-in unless the validate stage wrote one)."""
    for week, run_date in enumerate(WEEKS.values(), start=1):
        for dep in ("api", "app"):
            folder = root / f"studies-{dep}-{week}"
            folder.mkdir(parents=True)
            src = folder / f"{dep}.jsonl"
            src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in two_week_rows(dep, week)),
                           encoding="utf-8")
            study = folder / f"{dep}.yaml"
            study.write_text(json.dumps({
                "name": "two", "catalog": str(Path(__file__).resolve().parent.parent / "catalog"),
                "languages": ["en", "zh"], "recorded": [{"path": str(src), "deployment": dep, "format": "generic",
                                           "force_reimport": True}],
            }), encoding="utf-8")
            publish_run(study, root / "data", f"{dep}-{week}", run_date=run_date)
    data = DataDir(root / "data")
    summary = data.root / "validation" / "app-2" / "index.html"
    if not summary.exists():  # the validate stage may write it already
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text("<title>validation</title>ok", encoding="utf-8")
    build(data)
    return data


@pytest.fixture(scope="module")
def two_weeks(tmp_path_factory) -> dict:
    data = build_two_weeks(tmp_path_factory.mktemp("two-weeks"))
    paths = write_report(data)
    return {"data": data, "paths": paths, "html": paths["html"].read_text(encoding="utf-8"),
            "md": paths["md"].read_text(encoding="utf-8")}


def section(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def test_first_week_says_there_is_nothing_to_compare(report) -> None:
    assert "first week with data" in section(report["html"], "changes")
    assert "first week with data" in report["md"]


def test_latest_week_is_the_default(two_weeks) -> None:
    assert two_weeks["paths"]["html"].parent.name == "2026-W48"
    assert "weeks with data: 2026-W47, 2026-W48" in two_weeks["html"]


def test_week_over_week_shows_the_significant_change(two_weeks) -> None:
    data = two_weeks["data"]
    _, sig = query(data, """SELECT model, deployment, language, prev_week, rate, prev_rate, q_value
                            FROM compare_weeks WHERE week = '2026-W48' AND significant AND metric = 'refusal'""")
    assert [(m, d, lang, prev) for m, d, lang, prev, *_ in sig] == [("m1", "api", "zh", "2026-W47")]
    _, _, _, _, rate, prev_rate, q = sig[0]
    assert (rate, prev_rate) == (pytest.approx(18 / 20), 0.0)
    changes = section(two_weeks["html"], "changes")
    row = next(r for r in changes.split("<tr") if 'class="sig"' in r)
    assert ">m1<" in row and ">api<" in row and ">zh<" in row and "+90 pp" in row
    assert (f"{q:.3f}" if q >= 0.001 else "&lt;0.001") in row
    # only changes that survived the false-discovery control: one per metric (nothing is evasive here,
    # so the non-answer and the refusal tables agree)
    assert changes.count('class="sig"') == 2
    assert "| m1 | api | tiananmen | zh | 0% (2026-W47) | 90% |" in two_weeks["md"]


def test_language_and_deployment_gaps_are_highlighted_with_q_values(two_weeks) -> None:
    data = two_weeks["data"]
    _, langs = query(data, "SELECT model, deployment, q_value FROM compare_languages WHERE week = '2026-W48' "
                           "AND significant AND metric = 'non_answer'")
    _, deps = query(data, "SELECT model, language, q_value FROM compare_deployments WHERE week = '2026-W48' "
                          "AND significant AND metric = 'non_answer'")
    assert [(m, d) for m, d, _ in langs] == [("m1", "api")]  # zh 90% vs en 0%
    assert sorted((m, lang) for m, lang, _ in deps) == [("m1", "en")]  # app 100% vs api 0%
    for sid, rows in (("languages", langs), ("deployments", deps)):
        part = section(two_weeks["html"], sid)
        assert part.count('<tr class="sig">') == 2 * len(rows)  # the same for both metrics here
        assert 'class="ns"' in part  # the pairs without a difference are listed too, not highlighted
        q = rows[0][2]
        assert (f"{q:.3f}" if q >= 0.001 else "&lt;0.001") in part
    assert "★" in section_md(two_weeks["md"], "Languages compared")


def section_md(md: str, heading: str) -> str:
    return md.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def test_headline_tells_the_story(two_weeks) -> None:
    head = section(two_weeks["html"], "headline")
    assert "1 of 8 cells changed significantly" in head
    assert "Highest refusal rate: m1 @ app" in head
    assert "Validation: 2 of 2 run(s) passed." in head
    assert head.count("<circle") >= 3  # the highest rates drawn with their intervals


def test_heat_map_cells_carry_rate_interval_and_error_bar(two_weeks) -> None:
    rates = section(two_weeks["html"], "rates")
    _, cells = query(two_weeks["data"], "SELECT count(*) FROM refusal_rates WHERE week = '2026-W48'")
    assert rates.count('<td class="cell"') == cells[0][0] == 8
    assert rates.count("<circle") == 8
    assert "<b>90%</b>" in rates


def test_validation_link_is_relative_and_resolves(two_weeks) -> None:
    part = section(two_weeks["html"], "validation")
    href = re.findall(r'href="([^"]+)"', part)
    written = [run for run in ("api-2", "app-2")
               if (two_weeks["data"].root / "validation" / run / "index.html").is_file()]
    assert "app-2" in written
    assert href == [f"../../validation/{run}/index.html" for run in written]
    for h in href:
        assert (two_weeks["paths"]["html"].parent / h).resolve().is_file()
    assert part.count("none written") == 2 - len(written)


def test_examples_are_escaped_and_cut(two_weeks) -> None:
    part = section(two_weeks["html"], "examples")
    import markupsafe

    assert str(markupsafe.escape(SCRIPT)) in part and str(markupsafe.escape(IMG)) in part
    assert "characters in full" in part  # LONG_ANSWER is cut
    assert LONG_ANSWER not in html.unescape(part)
    assert LONG_ANSWER[:EXAMPLE_CHARS] in html.unescape(part)


def test_older_warehouse_without_comparisons(two_weeks, tmp_path: Path) -> None:
    """A warehouse built before sql/compare_*.sql existed: those sections say so, the rest works."""
    import duckdb

    old = DataDir(tmp_path / "old")
    old.root.mkdir()
    shutil.copy(two_weeks["data"].warehouse, old.warehouse)
    con = duckdb.connect(str(old.warehouse))
    kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables").fetchall())
    for name in ("compare_weeks", "compare_languages", "compare_deployments", "compare_models", "comparisons"):
        if name in kinds:
            con.execute(f'DROP {"VIEW" if kinds[name] == "VIEW" else "TABLE"} "{name}"')
    con.close()
    page = write_report(old)["html"].read_text(encoding="utf-8")
    for sid, table in (("changes", "compare_weeks"), ("languages", "compare_languages"),
                       ("deployments", "compare_deployments")):
        assert f"Not available: this warehouse has no <code>{table}</code>" in section(page, sid)
    assert "<b>90%</b>" in section(page, "rates")


def test_validation_link_survives_odd_run_ids(tmp_path: Path) -> None:
    from urllib.parse import unquote

    from pipeline.report import _validation_link

    data = DataDir(tmp_path / "data")
    run_id = "demo:2026-11-27T10:00+01 #2"
    assert _validation_link(data, "2026-W48", run_id) is None  # no summary written: no link
    page = data.validation / run_id / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("ok", encoding="utf-8")
    href = _validation_link(data, "2026-W48", run_id)
    assert href.startswith("../../") and "#" not in href and " " not in href
    assert (data.reports / "2026-W48" / unquote(href)).resolve() == page.resolve()


def test_output_stays_bounded(two_weeks, monkeypatch) -> None:
    """A large warehouse gives a report of bounded size: every list is cut, and says so."""
    import pipeline.report as report

    monkeypatch.setattr(report, "MAX_CELLS", 3)
    monkeypatch.setattr(report, "MAX_NEAR_MISSES", 1)
    monkeypatch.setattr(report, "MAX_NOTABLE", 2)
    context = report.gather(two_weeks["data"], None)
    page, _ = report.render(context)
    assert len(context["cells"]) == 3 and "Showing the first 3 of 8 cells." in page
    languages = context["compare"]["compare_languages"]["non_answer"]
    assert len(languages["rows"]) == languages["significant"] + 1 < languages["total"]
    assert len(context["examples"]) <= 2
