"""Bad data through the real stages: a staged run is damaged between label and validate (a
duplicate chunk, an unknown label, a missing column, a truncated file, an empty run). Each
is caught with a message naming what is wrong, the run stays in quarantine with its
summary, nothing reaches the lake and the warehouse is not touched."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

logging.getLogger("great_expectations").setLevel(logging.WARNING)

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import run as stages
from pipeline.errors import ValidationFailed
from pipeline.paths import DataDir
from pipeline.warehouse import build
from tests.test_warehouse import fetch, publish_run, recorded_rows, write_recorded_study


def first(folder: Path) -> Path:
    return sorted(folder.rglob("*.parquet"))[0]


def duplicate_chunk(staging: Path) -> str:
    for kind in ("samples", "labels"):
        f = first(staging / kind)
        shutil.copyfile(f, f.with_name("copy-" + f.name))
    return "expect_column_pair_values_to_be_equal"


def unknown_label(staging: Path) -> str:
    f = first(staging / "labels")
    t = pq.read_table(f)
    labels = t.column("label").to_pylist()
    labels[0] = "half-refused"
    pq.write_table(t.set_column(t.column_names.index("label"), "label", pa.array(labels)), f)
    return "half-refused"


def missing_column(staging: Path) -> str:
    f = first(staging / "samples")
    pq.write_table(pq.read_table(f).drop_columns(["prompt_id"]), f)
    return "prompt_id"


def truncated_file(staging: Path) -> str:
    f = first(staging / "samples")
    f.write_bytes(f.read_bytes()[:100])
    return str(f)


def empty_run(staging: Path) -> str:
    for kind in ("samples", "labels"):
        for f in (staging / kind).rglob("*.parquet"):
            pq.write_table(pq.read_table(f).slice(0, 0), f)
    return "expect_table_row_count_to_be_between"


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, DataDir, dict]:
    root = tmp_path_factory.mktemp("bad")
    study = write_recorded_study(root / "s", recorded_rows(), name="bad", force_reimport=True)  # runs share one file
    publish_run(study, root / "data", "good-run")
    data = DataDir(root / "data")
    return study, data, build(data)


@pytest.mark.parametrize("damage", [duplicate_chunk, unknown_label, missing_column, truncated_file, empty_run],
                         ids=lambda f: f.__name__)
def test_damaged_run_is_quarantined_and_nothing_is_published(published, damage) -> None:
    study, data, counts = published
    run_id = f"bad-{damage.__name__}"
    ctx = stages.context(study, run_id, data.root)
    stages.prepare(ctx)
    stages.sample(ctx)
    stages.label(ctx)
    needle = damage(ctx.staging)
    with pytest.raises(ValidationFailed) as info:
        stages.validate(ctx)
    assert needle in str(info.value) or needle in Path(info.value.summary_path).read_text()
    # the run waits in quarantine with a readable summary, and an HTML one beside the others
    quarantined = data.quarantine / run_id
    assert (quarantined / "validation.md").exists() and not ctx.staging.exists()
    assert needle in (data.validation / run_id / "index.html").read_text() or damage is empty_run
    # publish refuses, the lake holds nothing of it, the warehouse is as it was
    with pytest.raises(Exception):
        stages.publish(ctx)
    assert not [p for p in data.lake.rglob("*") if f"run_id={run_id}" in str(p)]
    assert build(data) == counts
    assert fetch(data, "SELECT DISTINCT run_id FROM samples") == [{"run_id": "good-run"}]


def test_publish_counts_and_copies_each_row_once(tmp_path: Path) -> None:
    """Publishing reports the rows it wrote, and they are the staged rows, once each (the
    labels carry `language` beside `response_language`: a split by one must not see the other)."""
    study = write_recorded_study(tmp_path / "s", recorded_rows(), name="once")
    ctx = stages.context(study, "once-1", tmp_path / "data")
    stages.prepare(ctx)
    stages.sample(ctx)
    stages.label(ctx)
    stages.validate(ctx)
    counts = stages.publish(ctx)
    assert counts["samples"] == counts["labels"] == len(recorded_rows())
    lake = DataDir(tmp_path / "data").lake
    for name in ("samples", "labels"):
        files = sorted((lake / name).rglob("*.parquet"))
        assert sum(pq.read_metadata(f).num_rows for f in files) == len(recorded_rows())
        assert len({f.parent for f in files}) == len(files)  # one file per language folder
