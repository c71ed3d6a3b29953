"""The weekly report as a person sees it: rendered by headless Chromium.

A real report (recorded responses → labels → validation → lake → warehouse → report, two weeks)
is opened in Debian's `chromium` through the Chrome DevTools Protocol, spoken over the
`websockets` client already in the lock (no browser download, no extra driver). The tests check
that the page loads without console errors, that its sections are there and visible, that the
story is on the first screen, and that model output carrying `<script>` and `onerror=` is shown
as text and never runs, even with the page's Content-Security-Policy taken away.

Chromium starts headless with no sandbox (we run as root in CI), no GPU, no QUIC, no background
networking, component updates or sync, in a fresh profile: the machine has no internet.
`.ci/run` installs the package; without it these tests skip and say why.

The README's picture of the report (docs/report.png) is made with the same browser, from a real
report: two weekly runs of a recorded-only SpeechMap study (the same responses, run dates
2026-11-20 and 2026-11-27, through `pipeline.run`'s stages; about 3 minutes on 2 cores):

    .venv/bin/python -m tests.test_report_browser --speechmap "$(mktemp -d)" docs/report.png 2300

Any report: `.venv/bin/python -m tests.test_report_browser REPORT.html OUT.png [HEIGHT]`.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from contextlib import ExitStack
from pathlib import Path
from typing import Any

logging.getLogger("great_expectations").setLevel(logging.WARNING)

import pytest

from tests.test_report import IMG, SCRIPT, build_two_weeks

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]


class Browser:
    """Headless Chromium driven over the DevTools Protocol: one page, its console and errors."""

    def __init__(self, binary: str, timeout: float = 30.0) -> None:
        from websockets.sync.client import connect

        self.timeout = timeout
        self.home = Path(tempfile.mkdtemp(prefix="refusals-chromium-"))
        self.profile = self.home / "profile"  # fresh every time: no state from an earlier run
        self.log = self.home / "chromium.log"  # a file, not a pipe nobody reads (a full pipe blocks)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                         stdout=subprocess.DEVNULL, stderr=log)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.log.read_text(errors="replace")[-2000:]
                self.close()
                raise RuntimeError(f"chromium did not start its DevTools endpoint within {timeout:.0f} s: {err}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as resp:
            pages = [t for t in json.load(resp) if t["type"] == "page"]
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout))
        self._id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call one DevTools method and return its result; events seen meanwhile are kept."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict[str, Any]) -> None:
        self.events.append(msg)
        if msg.get("method") == "Page.javascriptDialogOpening":  # an alert() would block the page
            self.ws.send(json.dumps({"id": 0, "method": "Page.handleJavaScriptDialog", "params": {"accept": True}}))

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self._event(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def open(self, url: str, width: int = 1280, height: int = 900) -> None:
        """Load a page at a desktop size and wait until it (and its layout) is complete."""
        self.events.clear()
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))", await_promise=True)

    def eval(self, expression: str, await_promise: bool = False) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, error log entries (CSP violations, failed loads), dialogs."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']}")
            elif m == "Page.javascriptDialogOpening":
                out.append(f"dialog: {p.get('message')}")
        return out

    def screenshot(self, path: Path, width: int = 1200, height: int | None = None) -> None:
        """PNG of the page at `width` CSS pixels; the whole page unless `height` is given."""
        full = self.eval("document.documentElement.scrollHeight")
        height = min(full, height) if height else full
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            if getattr(self, "_stack", None) is not None:
                self._stack.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            shutil.rmtree(self.home, ignore_errors=True)


# --------------------------------------------------------------------------- the tests

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`.ci/run` installs it: apt-get install chromium)"
)
pytestmark = [needs_chromium, pytest.mark.slow]

SECTIONS = {
    "headline": "Headline",
    "rates": "Non-answer rate by topic × language, per model",
    "flags": "Blocked and truncated",
    "changes": "Week over week",
    "languages": "Languages compared",
    "deployments": "Deployments compared",
    "models": "Models compared",
    "classifier": "Classifier accuracy and corrected rates",
    "mismatch": "Language mismatch and flips",
    "validation": "Validation and errors",
    "examples": "Example responses from notable cells",
    "method": "What was measured and how",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """A real report: two weeks of recorded runs in two deployments (see tests/test_report.py)."""
    from pipeline.report import write_report

    data = build_two_weeks(tmp_path_factory.mktemp("browser"))
    return {"data": data, "html": write_report(data)["html"]}


@pytest.fixture(scope="module")
def browser():
    b = Browser(CHROMIUM)
    yield b
    b.close()


@pytest.fixture
def page(browser, report) -> dict:
    browser.open(report["html"].as_uri())
    return {"problems": browser.problems()}


def test_loads_without_console_errors(browser, page) -> None:
    assert page["problems"] == []
    assert browser.eval("document.readyState") == "complete"
    assert browser.eval("document.title").startswith("Refusal statistics, week 2026-W48")


def test_sections_are_present_and_visible(browser, page) -> None:
    found = browser.eval("""Array.from(document.querySelectorAll('section[id]')).map(s => ({
        id: s.id, heading: s.querySelector('h2').innerText, height: s.getBoundingClientRect().height}))""")
    by_id = {s["id"]: s for s in found}
    for sid, heading in SECTIONS.items():
        assert sid in by_id, f"section #{sid} missing"
        assert by_id[sid]["heading"] == heading
        assert by_id[sid]["height"] > 20
    # the story is on the first screen: headline cards and sentences above the fold
    assert browser.eval("document.querySelector('#headline .story').getBoundingClientRect().bottom") < 900
    # nothing pushes the page sideways at a laptop's width (wide tables scroll in their own box)
    assert browser.eval("document.documentElement.scrollWidth <= window.innerWidth")


def test_heat_map_has_rates_and_error_bars(browser, page) -> None:
    cells = browser.eval("Array.from(document.querySelectorAll('#rates td.cell')).map(td => td.innerText)")
    assert len(cells) == 8  # two deployments × two models × en, zh
    assert any(c.startswith("90%") for c in cells)  # m1 in zh at api, week 2: 18 of 20 refused
    assert browser.eval("document.querySelectorAll('#rates td.cell svg.eb circle').length") == 8
    # the colour says the rate: a 100% cell is darker (less green) than a 0% one
    greens = browser.eval("""Array.from(document.querySelectorAll('#rates td.cell')).map(td =>
        [td.innerText.split('%')[0], getComputedStyle(td).backgroundColor])""")
    green = {rate: int(bg.split(",")[1]) for rate, bg in greens}
    assert green["100"] < green["90"] < green["0"]
    assert browser.eval("document.querySelectorAll('#headline table.forest svg.eb circle').length") >= 1


def test_week_over_week_is_shown(browser, page) -> None:
    text = browser.eval("document.getElementById('changes').innerText")
    if "Not available" in text:
        pytest.skip("this warehouse has no compare_weeks table yet (sql/compare_weeks.sql)")
    assert "2026-W47" in text  # the previous week
    sig = browser.eval("Array.from(document.querySelectorAll('#changes tr.sig')).map(r => r.innerText)")
    # one per metric (non-answer, then refusal: nothing is evasive here, so both agree)
    assert len(sig) == 2 and all("m1" in s and "zh" in s and "+90 pp" in s for s in sig), sig
    for sid in ("languages", "deployments"):
        assert browser.eval(f"document.querySelectorAll('#{sid} tr.sig').length") == 2


def test_validation_summary_link_resolves(browser, page) -> None:
    links = browser.eval("Array.from(document.querySelectorAll('#validation a')).map(a => a.href)")
    assert links and all(link.startswith("file://") for link in links)
    for link in links:
        assert Path(urllib.request.url2pathname(link.removeprefix("file://"))).is_file(), link


def test_untrusted_output_is_text_and_never_runs(browser, page) -> None:
    assert browser.eval("window.__pwned === undefined")
    assert browser.eval("document.title") != "pwned"
    assert browser.eval("document.querySelectorAll('script, img, [onerror]').length") == 0
    shown = browser.eval("document.getElementById('examples').innerText")
    assert SCRIPT in shown and IMG in shown  # the reader sees the literal markup


def test_escaping_holds_without_the_content_security_policy(browser, report, tmp_path) -> None:
    """The CSP is a second wall: take it away and the escaping alone must still hold."""
    page = report["html"].read_text(encoding="utf-8")
    bare = page.replace("Content-Security-Policy", "X-Removed-Policy")
    assert bare != page
    path = tmp_path / "report-without-csp.html"
    path.write_text(bare, encoding="utf-8")
    browser.open(path.as_uri())
    assert browser.problems() == []
    assert browser.eval("window.__pwned === undefined")
    assert browser.eval("document.title") != "pwned"
    assert SCRIPT in browser.eval("document.body.innerText")


def test_the_harness_would_see_a_payload_run(browser, tmp_path) -> None:
    """Without escaping, the same payload does run: the checks above can fail."""
    path = tmp_path / "unsafe.html"
    path.write_text(f"<!DOCTYPE html><title>t</title><p>{SCRIPT}</p>", encoding="utf-8")
    browser.open(path.as_uri())
    assert browser.eval("window.__pwned") == 1
    assert browser.eval("document.title") == "pwned"


def speechmap_report(root: Path) -> Path:
    """The README's report: two weekly runs (2026-11-20 and 2026-11-27) of a recorded-only study of
    the SpeechMap responses, through every stage, into `root`; returns the 2026-W48 report.
    Both weeks hold the same responses, so the report shows, truthfully, no significant change."""
    from pipeline import run as stages
    from pipeline.paths import REPO_ROOT, DataDir
    from pipeline.report import write_report
    from pipeline.warehouse import build
    from tests.test_warehouse import publish_run

    root.mkdir(parents=True, exist_ok=True)
    study = root / "speechmap.yaml"
    study.write_text(json.dumps({
        "name": "speechmap", "description": "recorded SpeechMap responses, no live model",
        "catalog": str(REPO_ROOT / "catalog"), "languages": ["en", "zh", "fi"],
        "recorded": [{"path": "$REFUSALS_SHARED_DATA/speechmap_responses.parquet",
                      "deployment": "speechmap-recorded", "format": "speechmap",
                      "force_reimport": True}],  # the same file in two weeks, on purpose
        "validation": {"max_error_rate": 0.05},
    }), encoding="utf-8")
    for run_id, run_date in (("speechmap-2026-W47", date(2026, 11, 20)), ("speechmap-2026-W48", date(2026, 11, 27))):
        if not stages.skip_published(stages.context(study, run_id, root / "data"), force=False):
            publish_run(study, root / "data", run_id, run_date=run_date)
    data = DataDir(root / "data")
    build(data)
    return write_report(data, week="2026-W48")["html"]


def main(argv: list[str]) -> int:
    """`python -m tests.test_report_browser REPORT.html OUT.png [HEIGHT]`: a screenshot of a report,
    1200 CSS pixels wide, the first HEIGHT pixels (default: the whole page), in 256 colours so that
    a README can carry it (a report is flat colours and text: nothing visible is lost).
    `--speechmap DIR` in place of REPORT.html builds the README's report in DIR first."""
    if len(argv) == 4 and argv[0] == "--speechmap":
        argv = [str(speechmap_report(Path(argv[1]))), *argv[2:]]
    if len(argv) not in (2, 3) or CHROMIUM is None:
        print(__doc__ if CHROMIUM else "chromium is not installed", file=sys.stderr)
        return 2
    browser = Browser(CHROMIUM)
    try:
        browser.open(Path(argv[0]).resolve().as_uri(), width=1200)
        if browser.problems():
            print("\n".join(browser.problems()), file=sys.stderr)
            return 1
        browser.screenshot(Path(argv[1]), width=1200, height=int(argv[2]) if len(argv) == 3 else None)
    finally:
        browser.close()
    from PIL import Image

    with Image.open(argv[1]) as shot:
        small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(argv[1], optimize=True)
    print(argv[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
