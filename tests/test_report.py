"""The weekly report: untrusted model output is escaped, sections exist, --week is checked."""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

logging.getLogger("great_expectations").setLevel(logging.WARNING)

import pytest

from pipeline.errors import UserError
from pipeline.paths import DataDir
from pipeline.report import write_report
from pipeline.warehouse import build, query
from tests.test_warehouse import ANSWER, REFUSAL, publish_run, write_recorded_study

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
    for section in ("method", "headline", "rates", "examples"):
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


def test_markdown_has_sections_and_numbers(report) -> None:
    md = report["md"]
    for heading in ("## What was measured", "## Headline", "## Refusal rate by topic and language",
                    "## Example responses"):
        assert heading in md
    assert f"week {report['week']}" in md
    cells = [line for line in md.splitlines() if line.startswith("| rec |")]
    assert any("| m1 |" in line and "100%" in line for line in cells)
    assert any("| m2 |" in line and "| 0% [" in line for line in cells)


def test_html_is_well_formed_text(report) -> None:
    # every '<' in the page opens a tag from the template's small vocabulary
    tags = {m.lower() for m in re.findall(r"<\s*/?\s*([a-zA-Z0-9!]+)", report["html"])}
    allowed = {"!doctype", "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "section",
               "table", "tr", "th", "td", "em", "small", "span", "div", "i", "blockquote", "strong", "code"}
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
