"""A truncated or corrupt staged Parquet chunk is detected at resume, moved aside to
`<staging>/corrupt/` with a log line, and its keys are sampled again (and only those)."""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pytest

from pipeline import run as stages
from tests.conftest import write_study
from tests.test_openai_backend import KEY, Scripted, server  # noqa: F401  (the fixture)


def _study(tmp_path: Path, base_url: str) -> Path:
    return write_study(tmp_path / "study.yaml", name="corrupt", models=[
        {"name": "m", "deployment": "api", "backend": "openai", "base_url": base_url,
         "api_key_env": "TEST_API_KEY", "concurrency": 1, "engine": {"batch_size": 2}}])


def _chunks(ctx) -> list[Path]:
    return sorted((ctx.staging / "samples").rglob("chunk-*.parquet"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_chunk_is_set_aside_and_resampled(damage: str, server: str, tmp_path: Path,  # noqa: F811
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TEST_API_KEY", KEY)
    data = tmp_path / "data"
    ctx = stages.context(_study(tmp_path, server), "c-1", data)
    stages.prepare(ctx)
    stages.sample(ctx)
    chunks = _chunks(ctx)
    assert len(chunks) >= 3
    victim = chunks[1]
    import pyarrow.parquet as pq

    lost = pq.read_metadata(victim).num_rows
    raw = victim.read_bytes()
    victim.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\0" * len(raw), "empty": b""}[damage])
    calls = sum(Scripted.calls.values())

    caplog.set_level(logging.WARNING)
    stages.sample(ctx)  # the resume
    moved = list((ctx.staging / "corrupt").rglob("*.parquet"))
    assert len(moved) == 1 and moved[0].name.endswith(victim.name)
    assert "moved aside" in caplog.text and victim.name in caplog.text
    assert sum(Scripted.calls.values()) - calls == lost  # only the lost keys are asked again

    stages.label(ctx)
    stages.validate(ctx)
    stages.publish(ctx)
    stages.warehouse(ctx)
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    n, keys = con.execute("SELECT count(*), count(DISTINCT (prompt_id, rep)) FROM samples").fetchone()
    con.close()
    assert n == keys == 12


def test_corrupt_labels_file_is_labelled_again(server: str, tmp_path: Path,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_API_KEY", KEY)
    ctx = stages.context(_study(tmp_path, server), "c-2", tmp_path / "data")
    stages.prepare(ctx)
    stages.sample(ctx)
    stages.label(ctx)
    labels = sorted((ctx.staging / "labels").rglob("*.parquet"))
    labels[0].write_bytes(labels[0].read_bytes()[:40])
    assert stages.label(ctx) > 0
    assert list((ctx.staging / "corrupt").rglob("*.parquet"))
    stages.validate(ctx)  # every label is back
