"""Clear errors for hostile inputs, through the CLI: the file is named, no traceback, and
nothing is staged. Deep nesting, oversized study and recorded files, system paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_study
from tests.test_cli import assert_clean_error, cli


def _rec(tmp_path: Path) -> Path:
    rec = tmp_path / "rec.jsonl"
    rec.write_text(json.dumps({"model": "m", "prompt": "Hello?", "response": "Hi.", "language": "en"}) + "\n",
                   encoding="utf-8")
    return rec


@pytest.mark.parametrize("body", [
    "name: t\nlanguages: " + "[" * 50000 + "]" * 50000 + "\n",
    "name: t\nlanguages: " + "{a: " * 20000 + "1" + "}" * 20000 + "\n",
    "name: t\ndescription: " + "- " * 3000 + "x\n",
], ids=["lists", "mappings", "block"])
def test_deeply_nested_yaml(tmp_path: Path, body: str) -> None:
    study = tmp_path / "deep.yaml"
    study.write_text(body, encoding="utf-8")
    proc = cli("run", "--study", str(study), data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert str(study) in proc.stderr
    assert not (tmp_path / "data" / "staging").exists()


def test_study_size_limit(tmp_path: Path) -> None:
    study = write_study(tmp_path / "big.yaml", description="x" * (2 << 20), recorded=[{
        "path": str(_rec(tmp_path)), "deployment": "rec"}])
    proc = cli("run", "--study", str(study), data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert str(study) in proc.stderr and "REFUSALS_MAX_YAML_BYTES" in proc.stderr and "limit" in proc.stderr


def test_non_utf8_study_names_file_and_line(tmp_path: Path) -> None:
    study = tmp_path / "latin1.yaml"
    study.write_bytes("name: t\ndescription: caf\xe9\n".encode("latin-1"))
    proc = cli("run", "--study", str(study), data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert str(study) in proc.stderr and "line 2" in proc.stderr and "UTF-8" in proc.stderr


@pytest.mark.parametrize("target", ["/etc/passwd", "/dev/zero", "/proc/self/environ", "DIR", "NOSUFFIX"])
def test_recorded_system_paths_rejected_before_staging(tmp_path: Path, target: str) -> None:
    if target == "DIR":
        target = str(tmp_path)
    elif target == "NOSUFFIX":
        (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
        target = str(tmp_path / "passwd")
    study = write_study(tmp_path / "s.yaml", recorded=[{"path": target, "deployment": "rec"}])
    proc = cli("run", "--study", str(study), data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert str(study) in proc.stderr and "recorded.0.path" in proc.stderr
    assert not (tmp_path / "data" / "staging").exists()


def test_recorded_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFUSALS_MAX_RECORDED_BYTES", "64")
    rec = tmp_path / "rec.jsonl"
    rec.write_text("".join(json.dumps({"model": "m", "prompt": f"Q{i}?", "response": "A.", "language": "en"}) + "\n"
                           for i in range(20)), encoding="utf-8")
    study = write_study(tmp_path / "s.yaml", recorded=[{"path": str(rec), "deployment": "rec"}])
    proc = cli("run", "--study", str(study), data_dir=tmp_path / "data")
    assert_clean_error(proc)
    assert str(rec) in proc.stderr and "REFUSALS_MAX_RECORDED_BYTES" in proc.stderr
    assert not (tmp_path / "data" / "staging").exists()


def test_recorded_file_that_grew_after_loading_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.backends.recorded import _read_any
    from pipeline.errors import UserError

    rec = _rec(tmp_path)
    monkeypatch.setenv("REFUSALS_MAX_RECORDED_BYTES", "10")
    with pytest.raises(UserError, match="limit"):
        _read_any(rec)
