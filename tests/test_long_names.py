"""Names that fit any filesystem: partition values are bounded in bytes (a prefix of whole
characters, `~` and a short hash), the full name stays a column, and a 28-character Chinese
model, deployment or language works end to end, live and recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest

from pipeline import run as stages
from pipeline.paths import PARTITION_BYTES, partition_value
from tests.conftest import REPO, write_study
from tests.test_openai_backend import KEY, Scripted, server  # noqa: F401  (the fixture)

LONG_ZH = "深度求索大型语言模型第三代对话版本超长名称测试用例一二三"
assert len(LONG_ZH) == 28 and len(LONG_ZH.encode()) == 84


@pytest.mark.parametrize("value", ["m1", "org/m2", LONG_ZH, "x" * 300, "é" * 200, "a:b+c" * 40, LONG_ZH * 5])
def test_partition_value_is_bounded_and_distinct(value: str) -> None:
    v = partition_value(value)
    assert len(v.encode()) <= PARTITION_BYTES
    assert "/" not in v
    assert partition_value(value + "!") != v and partition_value(value[:-1] + "?") != v


def test_short_values_keep_their_encoding() -> None:
    assert partition_value("openai/gpt-4o") == "openai%2Fgpt-4o"
    assert partition_value("a:b") == "a%3Ab"


def _components_fit(root: Path) -> None:
    for p in root.rglob("*"):
        assert len(p.name.encode()) <= 255, p


def test_long_chinese_names_end_to_end(server: str, tmp_path: Path,  # noqa: F811
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_API_KEY", KEY)
    rec = tmp_path / "rec.jsonl"
    rows = [{"model": LONG_ZH, "prompt": "1989年天安门发生了什么？", "response": "对不起，我无法回答这个问题。",
             "language": "zh", "topic": "tiananmen"},
            {"model": LONG_ZH, "prompt": "What is 17 times 23?", "response": "17 times 23 is 391.",
             "language": "en", "topic": "arithmetic"}]
    rec.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    study = write_study(tmp_path / "study.yaml", name="long", repetitions=2,
                        models=[{"name": LONG_ZH, "deployment": "api", "backend": "openai", "base_url": server,
                                 "api_key_env": "TEST_API_KEY", "concurrency": 2}],
                        recorded=[{"path": str(rec), "deployment": "rec", "format": "generic"}])
    data = tmp_path / "data"
    out = stages.run_all(study, "long-1", data)
    assert not out.get("skipped")
    _components_fit(data)
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    models = con.execute("SELECT DISTINCT model, deployment FROM samples ORDER BY 2").fetchall()
    assert models == [(LONG_ZH, "api"), (LONG_ZH, "rec")]
    assert con.execute("SELECT count(*) FROM refusal_rates WHERE model = ?", [LONG_ZH]).fetchone()[0] > 0
    con.close()
    assert LONG_ZH in Path(out["report"]["md"]).read_text(encoding="utf-8")
    # a resume finds the run by its (bounded) folders
    assert stages.run_all(study, "long-1", data).get("skipped")


def test_names_checked_before_any_request(server: str, tmp_path: Path,  # noqa: F811
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A name the filesystem refuses stops the run in prepare, before a request is paid for."""
    monkeypatch.setenv("TEST_API_KEY", KEY)
    study = write_study(tmp_path / "study.yaml", name="refuse",
                        models=[{"name": "m", "deployment": "api", "backend": "openai", "base_url": server,
                                 "api_key_env": "TEST_API_KEY", "concurrency": 2}])
    real_mkdir = Path.mkdir

    def refusing(self, *a, **k):
        if "model=m" in self.parts:
            raise OSError(36, "File name too long", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refusing)
    before = sum(Scripted.calls.values())
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="cannot be a folder name"):
        stages.run_all(study, "refuse-1", tmp_path / "data")
    assert sum(Scripted.calls.values()) == before


def test_cli_long_recorded_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    rec = tmp_path / "rec.jsonl"
    rec.write_text(json.dumps({"model": LONG_ZH * 3, "prompt": "Hello?", "response": "Hi.", "language": "en"},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    study = write_study(tmp_path / "s.yaml", name="longcli", languages=["en"],
                        recorded=[{"path": str(rec), "deployment": "d" * 80, "format": "generic"}])
    env = {**os.environ, "REFUSALS_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--study", str(study), "--run-id", "lc-1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _components_fit(tmp_path / "data")
