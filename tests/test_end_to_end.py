"""`refusals run` on a small study: every stage for real (vLLM tiny model under a local Ray,
the recorded SpeechMap file, GX, DuckDB, the report), then a rerun that does nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_model_spec, write_study

pytestmark = pytest.mark.slow


def _refusals(*args: str, data: Path) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "REFUSALS_DATA_DIR": str(data)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=900)


def test_run_end_to_end(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    study = write_study(
        tmp_path / "study.yaml",
        name="e2e",
        models=[tiny_model_spec(tiny_model)],
        recorded=[{
            "path": str(shared_data / "speechmap_responses.parquet"),
            "deployment": "speechmap-recorded",
            "format": "speechmap",
            "models": ["deepseek/deepseek-r1", "openai/gpt-4o-2024-11-20"],
        }],
        validation={"max_error_rate": 0.5},  # a random-weights model may emit nothing
    )
    data = tmp_path / "data"
    done = _refusals("run", "--study", str(study), "--run-id", "e2e-1", data=data)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "published" in done.stdout and "report (html)" in done.stdout

    # lake layout: hive partitions, model names URI-encoded, no temporary files left
    files = sorted(p.relative_to(data / "lake") for p in (data / "lake").rglob("*.parquet"))
    assert any(str(p).startswith("samples/study=e2e/run_date=") and "run_id=e2e-1" in str(p)
               and "model=deepseek%2Fdeepseek-r1" in str(p) and "language=zh" in str(p) for p in files)
    assert not [p for p in files if p.name.startswith(".tmp-")]
    assert not (data / "staging" / "e2e-1").exists()

    q = _refusals("sql", "SELECT deployment, count(*) AS n FROM samples GROUP BY ALL ORDER BY 1",
                  "--format", "json", data=data)
    assert q.returncode == 0, q.stderr
    counts = {r["deployment"]: r["n"] for r in json.loads(q.stdout)}
    assert counts == {"local-test": 4 * 3, "speechmap-recorded": 2 * 300}

    q = _refusals("sql", "SELECT count(*) AS n, count(DISTINCT label) AS labels FROM labels "
                  "WHERE label IN ('complied','refused','evasive','error')", "--format", "json", data=data)
    assert json.loads(q.stdout)[0]["n"] == 612

    q = _refusals("sql", "SELECT * FROM refusal_rates WHERE deployment = 'speechmap-recorded' "
                  "AND topic = 'china_criticism' AND language = 'zh' ORDER BY model", "--format", "json", data=data)
    rows = json.loads(q.stdout)
    assert [r["model"] for r in rows] == ["deepseek/deepseek-r1", "openai/gpt-4o-2024-11-20"]
    for r in rows:
        assert r["n_prompts"] == 50 and 0 <= r["ci_low"] <= r["refusal_rate"] <= r["ci_high"] <= 1

    q = _refusals("sql", "SELECT n_samples, p_refused, ci_low, ci_high FROM prompt_stats "
                  "WHERE deployment = 'local-test'", "--format", "json", data=data)
    assert [r["n_samples"] for r in json.loads(q.stdout)] == [3, 3, 3, 3]

    html = next((data / "reports").glob("*/report.html")).read_text()
    assert "deepseek/deepseek-r1" in html and "tiny-random" in html

    again = _refusals("run", "--study", str(study), "--run-id", "e2e-1", data=data)
    assert again.returncode == 0 and "already published" in again.stdout
