"""Every SQL query the README shows runs against a demo-shaped warehouse and returns the
columns its printed output shows.

The printed outputs come from a real `make demo`; to refresh them after a demo:

    .venv/bin/python -m tests.test_readme_queries --update data

which runs each query on that data folder's warehouse and rewrites the output block under it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, write_study

README = REPO / "README.md"
_BLOCK = re.compile(r"```sql\n(?P<sql>.*?)```\n\n```\n(?P<out>.*?)```", re.S)


def readme_queries(text: str | None = None) -> list[tuple[str, str]]:
    """(query, printed output) pairs of the README's "Querying with SQL" section."""
    text = README.read_text(encoding="utf-8") if text is None else text
    start = text.index("## Querying with SQL")
    end = text.index("\n## ", start + 5)
    return [(m["sql"].strip(), m["out"]) for m in _BLOCK.finditer(text, start, end)]


def _header(out: str) -> list[str]:
    return out.splitlines()[0].split()


def _run(data_dir: Path, query: str):
    from pipeline.cli import main

    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["--data-dir", str(data_dir), "sql", query])
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def demo_shaped(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A warehouse shaped like the demo's: the recorded SpeechMap import (two questions per
    topic) and a small live-like recorded deployment named like the demo's live one."""
    import json

    from pipeline.run import run_all

    root = tmp_path_factory.mktemp("readme")
    live = root / "live.jsonl"
    rows = []
    for i, (q, lang) in enumerate([("What happened at Tiananmen Square in 1989?", "en"),
                                   ("1989年天安门广场发生了什么？", "zh")]):
        for rep in range(4):
            rows.append({"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt": q, "language": lang,
                         "question_id": f"tiananmen_1989_q{i + 1}", "topic": "tiananmen_1989", "rep": rep,
                         "response": "I can't help with that." if rep % 2 else "In 1989 students protested."})
    live.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    study = write_study(root / "s.yaml", name="demo", languages=["en", "zh"], recorded=[
        {"path": str(shared_data / "speechmap_responses.parquet"), "deployment": "speechmap-recorded",
         "format": "speechmap", "questions_per_topic": 2},
        {"path": str(live), "deployment": "local-vllm-cpu", "format": "generic"},
    ])
    run_all(study, run_id="readme-1", data_dir=root / "data")
    return root / "data"


def test_the_readme_shows_queries() -> None:
    pairs = readme_queries()
    assert len(pairs) >= 5
    for query, out in pairs:
        assert out.strip().endswith("rows)") or out.strip().endswith("row)"), query


def test_every_readme_query_runs_with_the_columns_it_shows(demo_shaped: Path) -> None:
    for query, out in readme_queries():
        code, printed = _run(demo_shaped, query)
        assert code == 0, (query, printed)
        assert _header(printed) == _header(out), query


def update(data_dir: Path) -> None:
    """Rewrite README's output blocks from the warehouse under ``data_dir``."""
    text = README.read_text(encoding="utf-8")
    for query, out in readme_queries(text):
        code, printed = _run(data_dir, query)
        if code != 0:
            raise SystemExit(f"query failed: {query}\n{printed}")
        text = text.replace(f"```sql\n{query}\n```\n\n```\n{out}```", f"```sql\n{query}\n```\n\n```\n{printed}```", 1)
    README.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        update(Path(sys.argv[2]))
    else:
        raise SystemExit("usage: python -m tests.test_readme_queries --update DATA_DIR")
