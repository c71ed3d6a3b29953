"""report.md and validation.md are as safe as the HTML: hostile names and output stay text.

Every untrusted field (model, deployment, topic, topic group, language, prompt, response,
run id, study, classifier, code version, validation details) carries Markdown and HTML that
would fetch a remote image, link to `javascript:`, inject HTML or break a table. Values the
study checks refuse (a deployment or language outside its pattern) are put into a built
warehouse directly, as an older or hand-edited warehouse could hold them. The Markdown is
rendered with markdown-it-py (raw HTML allowed and linkify on, the most permissive settings)
and, when Debian's `chromium` is installed, opened in headless Chromium with the network
watched: no remote fetch, no image, no `javascript:` link, no table with a cell too many.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

logging.getLogger("great_expectations").setLevel(logging.WARNING)

import pytest

from pipeline.mdsafe import code, inline, word
from pipeline.paths import DataDir
from pipeline.report import write_report
from pipeline.validate import SuiteOutcome, ValidationOutcome
from pipeline.warehouse import build, query
from tests.test_warehouse import ANSWER, REFUSAL, publish_run

HOST = "127.0.0.1:9"  # nothing listens there; a request to it is what the browser test looks for
HOSTILE = (f"![x](http://{HOST}/img.png) [m](javascript:alert(1)) <img src=http://{HOST}/raw.png> "
           f"a|b\nnext line | `code` *bold* _it_ ~~s~~ $x$ <b>bold</b> <http://{HOST}/auto> www.example.com "
           f"[ref]: http://{HOST}/ref &lt;i&gt; \\[esc](x) \u2028| u2028 \u202eevil")
# the fields the recorded-file checks let through carry a payload from the file (a model name is
# a lake partition, so a short one: names that long are issue 14's item 5)
RECORDED_MODEL = "evil ![x](http://127.0.0.1:9/m.png)|[m](javascript:x)`"
TOPIC = "topic " + HOSTILE
# the others get it appended in the warehouse (consistently, so joins still hold)
SUFFIX = " " + HOSTILE
MODEL = RECORDED_MODEL + SUFFIX
MUTATED = ("model", "deployment", "deployment_a", "deployment_b", "language", "language_a", "language_b", "study",
           "classifier", "code_version", "response_language", "rule", "run_id", "topic_group")


def hostile_rows() -> list[dict]:
    rows = []
    for i in range(3):
        for model in ("m1", RECORDED_MODEL):
            for lang in ("en", "zh"):
                refuse = model == "m1" or (lang == "zh" and i < 2)
                rows.append({"model": model, "prompt": f"What happened at Tiananmen in 1989? ({i}) {HOSTILE}",
                             "language": lang, "topic": TOPIC, "topic_group": "grp " + HOSTILE,
                             "response": REFUSAL if refuse else f"{ANSWER} {HOSTILE}"})
    return rows


def poison(data: DataDir) -> None:
    """Append HOSTILE to every name column of every table the report reads."""
    import duckdb

    con = duckdb.connect(str(data.warehouse))
    try:
        cols = con.execute("""SELECT c.table_name, c.column_name FROM information_schema.columns AS c
                              JOIN information_schema.tables AS t USING (table_name)
                              WHERE t.table_type = 'BASE TABLE' AND c.data_type = 'VARCHAR'""").fetchall()
        for table, column in cols:
            if column in MUTATED:
                con.execute(f'UPDATE "{table}" SET "{column}" = "{column}" || ? WHERE "{column}" IS NOT NULL',
                            [SUFFIX])
    finally:
        con.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile-md")
    src = root / "evil.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in hostile_rows()), encoding="utf-8")
    study = root / "evil.yaml"
    study.write_text(json.dumps({
        "name": "evil", "catalog": str(Path(__file__).resolve().parent.parent / "catalog"),
        "languages": ["en", "zh"], "recorded": [{"path": str(src), "deployment": "rec", "format": "generic"}],
    }), encoding="utf-8")
    publish_run(study, root / "data", "evil-1")
    data = DataDir(root / "data")
    build(data)
    poison(data)
    paths = write_report(data)
    return {"data": data, "paths": paths, "md": paths["md"].read_text(encoding="utf-8"),
            "html": paths["html"].read_text(encoding="utf-8")}


def render(md: str) -> tuple[str, list]:
    from markdown_it import MarkdownIt

    parser = MarkdownIt("gfm-like", {"html": True, "linkify": True}).enable("table")
    parser.validateLink = lambda url: True  # a renderer that trusts every URL: the escaping must hold alone
    return parser.render(md), parser.parse(md)


def cells_of(line: str) -> int:
    """Cells of a GFM table row: pipes not escaped by an odd run of backslashes, minus the outer two."""
    pipes = [m for m in re.finditer(r"(\\*)\|", line) if len(m.group(1)) % 2 == 0]
    return len(pipes) - 1


def tables(md: str) -> list[list[str]]:
    out, current = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def assert_inert(md: str) -> None:
    page, tokens = render(md)
    lower = page.lower()
    assert "<img" not in lower
    assert "javascript:" not in " ".join(re.findall(r'href="([^"]*)"', lower))
    assert not re.findall(r'(?:src|href)="https?:', lower), re.findall(r'(?:src|href)="[^"]*"', lower)
    # no HTML from the data: every tag is one markdown-it makes itself
    tags = {t.lower() for t in re.findall(r"<\s*/?\s*([a-zA-Z0-9]+)", page)}
    assert tags <= {"h1", "h2", "h3", "p", "ul", "li", "strong", "em", "code", "table", "thead", "tbody", "tr",
                    "th", "td", "hr"}, tags
    kinds = {t.type for tok in tokens for t in (tok.children or [])} | {t.type for t in tokens}
    assert not kinds & {"image", "link_open", "html_inline", "html_block"}, kinds
    for table in tables(md):
        header = cells_of(table[0])
        assert re.fullmatch(r"\|(?:\s*-{3,}:?\s*\|)+", table[1]), table[1]
        for line in table[1:]:
            assert cells_of(line) == header, (header, line)


def test_report_markdown_is_inert(hostile) -> None:
    md = hostile["md"]
    assert "evil" in md and "ws.example" not in md  # the fixture is in the report
    assert_inert(md)
    assert "\u202e" not in md


def test_hostile_names_are_shown_as_written(hostile) -> None:
    """Escaped, not dropped: the rendered text holds the model's and the topic's names, on one line."""
    text = _rendered_text(hostile["md"])
    for name in (MODEL, TOPIC):
        shown = " ".join(name.split()).replace("\u202e", "")
        assert (shown if len(shown) <= 300 else shown[:300] + "…") in text


def _rendered_text(md: str) -> str:
    import html as html_mod

    page, _ = render(md)
    return html_mod.unescape(re.sub(r"<[^>]+>", "", page))


def test_every_untrusted_field_is_escaped(hostile) -> None:
    text = _rendered_text(hostile["md"])
    payload = " ".join(HOSTILE.split()).replace("\u202e", "")[:200]
    # the model, topic and (poisoned) deployment, language, run id and study all come back as text
    assert text.count(payload) >= 6
    assert f"http://{HOST}/img.png" in text  # shown, never fetched


def test_validation_markdown_is_inert() -> None:
    outcome = ValidationOutcome("run " + HOSTILE, False, [
        SuiteOutcome("samples " + HOSTILE, False, [{
            "expectation": "expect_column_values_to_be_in_set",
            "column": "language " + HOSTILE,
            "detail": "2 unexpected value(s), e.g. ['" + HOSTILE + "']",
            "rows": [{"model": MODEL, "language": "x`` " + HOSTILE, "error": "boom " + HOSTILE}],
        }], 3),
        SuiteOutcome("error_rates", True, [], 1),
    ])
    md = outcome.summary_markdown()
    assert_inert(md)
    page, _ = render(md)
    assert md.count("\n## ") == 2 and md.startswith("# Validation of run ")
    assert "error_rates: passed" in md  # plain identifiers stay as written
    assert "expect_column_values_to_be_in_set" in md
    assert _rendered_text(md).count("[m](javascript:alert(1))") >= 5  # each value shown as text


@pytest.mark.parametrize("value", [HOSTILE, "`", "``a``", " `x` ", "a\\", "|", "\n", "", None, 0.05, "v0.1.2"])
def test_escapes_render_back_to_the_text(value) -> None:
    """Whatever the value, a renderer shows it back as written (on one line, overrides dropped)."""
    import html as html_mod

    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark")
    for fn in (inline, code, word):
        out = fn(value)
        if value is None or not str(value).strip():
            assert out == ("–" if value is None or fn is code else "")
            continue
        expected = " ".join(str(value).split()).replace("\u202e", "")
        shown = html_mod.unescape(re.sub(r"<[^>]+>", "", parser.renderInline(out)))
        assert shown.strip() == expected.strip(), (fn.__name__, value, out, shown)


def test_numbers_and_words_stay_readable() -> None:
    assert inline("0.05") == "0.05" and inline("90% [80%, 95%]") == "90% [80%, 95%]".replace("[", "\\[").replace("]", "\\]")
    assert word("error_rates") == "error_rates" and word("_x_") == "\\_x\\_"
    assert inline("I'm sorry, but I can't help with that.") == "I'm sorry, but I can't help with that."


# --------------------------------------------------------------------------- in a browser

def test_markdown_in_chromium_fetches_nothing(hostile, tmp_path) -> None:
    from tests.test_report_browser import CHROMIUM, Browser

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    outcome = ValidationOutcome("run " + HOSTILE, False, [SuiteOutcome("s", False, [{
        "expectation": "e", "column": HOSTILE, "detail": HOSTILE, "rows": [{"m": HOSTILE}]}], 1)])
    pages = []
    for name, md in (("report", hostile["md"]), ("validation", outcome.summary_markdown())):
        body, _ = render(md)
        # no CSP: the page is as a Markdown viewer that allows HTML would show it
        path = tmp_path / f"{name}.html"
        path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{name}</title></head>"
                        f"<body>{body}</body></html>", encoding="utf-8")
        pages.append(path)
    b = Browser(CHROMIUM)
    try:
        b.send("Network.enable")
        for path in pages:
            b.open(path.as_uri())
            time.sleep(0.5)  # a lazy image or prefetch would have started by now
            b.eval("1")  # drain the events that arrived meanwhile
            requests = [e["params"]["request"]["url"] for e in b.events
                        if e.get("method") == "Network.requestWillBeSent"]
            assert [u for u in requests if not u.startswith(("file:", "data:"))] == [], requests
            assert b.eval("document.images.length") == 0
            assert b.eval("document.querySelectorAll('a').length") == 0
            assert b.eval("document.querySelectorAll('script, iframe, object, embed, b').length") == 0
            assert b.eval("window.__pwned === undefined")
            widths = b.eval("""Array.from(document.querySelectorAll('table')).map(t =>
                Array.from(t.rows).map(r => r.cells.length))""")
            for rows in widths:
                assert len(set(rows)) == 1, rows
    finally:
        b.close()
