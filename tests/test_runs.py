"""Runs made explicit: `refusals runs list/delete`, recorded files imported once (by sha256),
and recorded rows paired with the catalog's prompt variants."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

logging.getLogger("great_expectations").setLevel(logging.WARNING)

import pytest

from pipeline import run as stages
from pipeline import runs
from pipeline.backends.recorded import load_recorded
from pipeline.config import RecordedSource, load_study
from pipeline.errors import UserError
from pipeline.lake import read_folder
from pipeline.paths import DataDir
from pipeline.prompts import build_prompts
from pipeline.warehouse import build, published_runs
from tests.conftest import REPO, write_study
from tests.test_cli import assert_clean_error, cli
from tests.test_warehouse import fetch, publish_run, recorded_rows, write_recorded_study

MARTS = ("prompt_stats", "prompt_weeks", "refusal_rates", "comparisons")


def snapshot(data: DataDir) -> dict[str, list[dict]]:
    out = {}
    for name in MARTS:
        rows = fetch(data, f'SELECT * EXCLUDE (run_id) FROM "{name}" ORDER BY ALL' if name == "prompt_stats"
                     else f'SELECT * FROM "{name}" ORDER BY ALL')
        out[name] = [{k: round(v, 9) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    return out


# --------------------------------------------------------------------------- imported once


def test_same_file_twice_is_a_noop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = write_recorded_study(tmp_path / "s", recorded_rows(), name="once")
    data = DataDir(tmp_path / "data")
    first = stages.run_all(study, "once-1", data.root)
    assert not first.get("skipped")
    before = snapshot(data)
    src = tmp_path / "s" / "once.jsonl"
    imports = read_folder(data.dataset("imports")).to_pylist()
    assert [(r["run_id"], r["deployment"], r["sha256"], r["n_rows"]) for r in imports] == [
        ("once-1", "rec", hashlib.sha256(src.read_bytes()).hexdigest(), len(recorded_rows()))]

    with caplog.at_level(logging.WARNING, logger="pipeline.runs"):
        again = stages.run_all(study, "once-2", data.root)
    assert again["skipped"] and again["reason"] == "nothing new to import"
    assert "already imported into deployment rec by run once-1" in caplog.text
    assert published_runs(data) == ["once-1"]
    assert snapshot(data) == before  # no doubled counts

    # another study importing the same bytes into the same deployment: skipped too
    other = write_recorded_study(tmp_path / "s2", recorded_rows(), name="other")
    (tmp_path / "s2" / "other.jsonl").write_bytes(src.read_bytes())
    assert stages.run_all(other, "other-1", data.root)["skipped"]
    assert snapshot(data) == before

    # stage by stage (the DAG's way): the validate stage says why there is nothing to publish
    ctx = stages.context(study, "once-3", data.root)
    stages.prepare(ctx)
    stages.sample(ctx)
    with pytest.raises(UserError, match="nothing new to import"):
        stages.validate(ctx)


def test_forced_reimport_counts_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = write_recorded_study(tmp_path / "s", recorded_rows(), name="twice")
    data = DataDir(tmp_path / "data")
    publish_run(study, data.root, "twice-1")
    build(data)
    n = fetch(data, "SELECT sum(n_samples) AS n FROM prompt_weeks")[0]["n"]
    # the study field
    spec = json.loads(study.read_text())
    spec["recorded"][0]["force_reimport"] = True
    study.write_text(json.dumps(spec))
    publish_run(study, data.root, "twice-2")
    build(data)
    assert fetch(data, "SELECT sum(n_samples) AS n FROM prompt_weeks")[0]["n"] == 2 * n
    # the CLI flag (an environment variable the import reads)
    spec["recorded"][0]["force_reimport"] = False
    study.write_text(json.dumps(spec))
    monkeypatch.setenv("REFUSALS_FORCE_REIMPORT", "1")
    publish_run(study, data.root, "twice-3")
    assert published_runs(data) == ["twice-1", "twice-2", "twice-3"]
    forced = {r["run_id"]: r["forced"] for r in read_folder(data.dataset("imports")).to_pylist()}
    assert forced == {"twice-1": False, "twice-2": True, "twice-3": True}


def test_changed_file_is_imported(tmp_path: Path) -> None:
    study = write_recorded_study(tmp_path / "s", recorded_rows(), name="chg")
    data = DataDir(tmp_path / "data")
    publish_run(study, data.root, "chg-1")
    src = tmp_path / "s" / "chg.jsonl"
    src.write_text(src.read_text(encoding="utf-8") + json.dumps(
        {"model": "m1", "prompt": "A new question?", "response": "An answer.", "language": "en"}) + "\n",
        encoding="utf-8")
    publish_run(study, data.root, "chg-2")
    assert published_runs(data) == ["chg-1", "chg-2"]


# --------------------------------------------------------------------------- runs list / delete


@pytest.fixture
def two_runs(tmp_path: Path) -> DataDir:
    """Two published runs of one week (different files), loaded."""
    data = DataDir(tmp_path / "data")
    rows = recorded_rows()
    publish_run(write_recorded_study(tmp_path / "a", rows, name="wa"), data.root, "wa-1")
    publish_run(write_recorded_study(tmp_path / "b", rows[:15], name="wb"), data.root, "wb-1")
    build(data)
    return data


def only_run_b(tmp_path: Path) -> dict[str, list[dict]]:
    """The marts of a warehouse built with run wb-1 alone."""
    data = DataDir(tmp_path / "ref")
    publish_run(write_recorded_study(tmp_path / "ref-b", recorded_rows()[:15], name="wb"), data.root, "wb-1")
    build(data)
    return snapshot(data)


def test_runs_list(two_runs: DataDir) -> None:
    proc = cli("runs", "list", "--format", "json", data_dir=two_runs.root)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [(r["run_id"], r["study"], r["status"], r["n_samples"]) for r in listed] == [
        ("wa-1", "wa", "published", 29), ("wb-1", "wb", "published", 15)]
    assert all(r["study_hash"] and r["published_at"] for r in listed)
    table = cli("runs", "list", data_dir=two_runs.root)
    assert "run_id" in table.stdout and "wa-1" in table.stdout and "(2 rows)" in table.stdout


def test_runs_delete_needs_yes_and_a_known_id(two_runs: DataDir) -> None:
    proc = cli("runs", "delete", "wa-1", data_dir=two_runs.root)
    assert_clean_error(proc)
    assert "without --yes" in proc.stderr and "wa-1" in proc.stderr
    assert published_runs(two_runs) == ["wa-1", "wb-1"]
    proc = cli("runs", "delete", "nope", "--yes", data_dir=two_runs.root)
    assert_clean_error(proc)
    assert "unknown run id 'nope'" in proc.stderr


def test_runs_delete_removes_lake_and_warehouse_rows(two_runs: DataDir, tmp_path: Path) -> None:
    proc = cli("runs", "delete", "wa-1", "--yes", data_dir=two_runs.root)
    assert proc.returncode == 0, proc.stderr
    assert "run wa-1 deleted" in proc.stdout
    assert published_runs(two_runs) == ["wb-1"]
    assert runs.run_partitions(two_runs, "wa-1") == []
    assert not (two_runs.root / "trash").exists() or not any((two_runs.root / "trash").iterdir())
    for table in ("runs", "prompts", "samples", "labels", "prompt_stats"):
        assert fetch(two_runs, f"SELECT count(*) AS n FROM {table} WHERE run_id = 'wa-1'")[0]["n"] == 0
    # the week's marts are those of the remaining run alone, as a fresh build gives them
    assert snapshot(two_runs) == only_run_b(tmp_path)
    assert [r["run_id"] for r in runs.list_runs(two_runs)] == ["wb-1"]
    # the file of the deleted run can be imported again (its import record went with it)
    publish_run(write_recorded_study(tmp_path / "a", recorded_rows(), name="wa"), two_runs.root, "wa-2")
    assert published_runs(two_runs) == ["wa-2", "wb-1"]


def test_runs_delete_interrupted_then_finished(two_runs: DataDir, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(runs, "_delete_from_warehouse", crash)
    with pytest.raises(RuntimeError):
        runs.delete_run(two_runs, "wa-1")
    # no half run visible: not published any more (nothing reloads it), listed as deleting
    assert published_runs(two_runs) == ["wb-1"]
    build(two_runs)  # a normal load meanwhile does not bring it back
    assert {r["run_id"]: r["status"] for r in runs.list_runs(two_runs)} == {"wa-1": "deleting", "wb-1": "published"}
    monkeypatch.undo()
    runs.delete_run(two_runs, "wa-1")  # the rerun finishes
    assert [r["run_id"] for r in runs.list_runs(two_runs)] == ["wb-1"]
    assert fetch(two_runs, "SELECT count(*) AS n FROM samples WHERE run_id = 'wa-1'")[0]["n"] == 0
    assert snapshot(two_runs) == only_run_b(tmp_path)
    with pytest.raises(UserError, match="unknown run id"):
        runs.delete_run(two_runs, "wa-1")


# --------------------------------------------------------------------------- catalog pairing


def catalog_study(tmp_path: Path) -> Path:
    (tmp_path / "placeholder.jsonl").touch()
    return write_study(tmp_path / "pair.yaml", name="pair", topics=["tiananmen_1989"], questions_per_topic=2,
                       languages=["en", "zh"], templates=["direct", "student_report"],
                       system_prompts=["none", "helpful_assistant"],
                       recorded=[{"path": str(tmp_path / "placeholder.jsonl"), "deployment": "app"}])


def catalog_ids(study: Path) -> dict[tuple, str]:
    table = build_prompts(load_study(study))
    return {(r["question_id"], r["language"], r["template_id"], r["system_prompt_id"]): r["prompt_id"]
            for r in table.to_pylist()}


def app_rows() -> list[dict]:
    return [
        # by ids: question, language and template (the system prompt defaults to `none`)
        {"model": "m", "prompt": "whatever the app showed", "response": "Sorry.", "question_id": "tiananmen_1989_q1",
         "language": "zh", "template": "student_report", "app_version": "3.1"},
        # by ids: question, language and system prompt id
        {"model": "m", "prompt": "x", "response": "Sorry.", "question_id": "tiananmen_1989_q2", "language": "en",
         "system_prompt_id": "helpful_assistant"},
        # by text: the same message under two system prompts; no system prompt is the one taken
        {"model": "m", "prompt": "What happened in Tiananmen Square on June 4, 1989?", "response": "Sorry."},
        {"model": "m", "prompt": "What happened in Tiananmen Square on June 4, 1989?", "response": "Sorry."},
        # by text, narrowed by the system prompt id given
        {"model": "m", "prompt": "1989年6月4日，天安门广场发生了什么？", "response": "对不起。", "language": "zh",
         "system_prompt": "helpful_assistant"},
        # not in the catalog
        {"model": "m", "prompt": "Something else entirely?", "response": "Sure.", "language": "en", "ui": "web"},
    ]


def test_recorded_rows_pair_with_catalog_variants(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = catalog_study(tmp_path)
    ids = catalog_ids(study)
    src = tmp_path / "app.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in app_rows()), encoding="utf-8")
    loaded = load_study(study)
    with caplog.at_level(logging.INFO, logger="pipeline.backends.recorded"):
        prompts, rows = load_recorded(RecordedSource(path=str(src), deployment="app"), src, "pair",
                                      catalog=loaded.catalog)
    assert "column(s) app_version, ui not used by the generic mapping" in caplog.text
    assert "5 of 6 rows paired with catalog prompts (2 by ids, 3 by text)" in caplog.text
    got = [r["prompt_id"] for r in rows]
    assert got[:5] == [ids[("tiananmen_1989_q1", "zh", "student_report", "none")],
                       ids[("tiananmen_1989_q2", "en", "direct", "helpful_assistant")],
                       ids[("tiananmen_1989_q1", "en", "direct", "none")],
                       ids[("tiananmen_1989_q1", "en", "direct", "none")],
                       ids[("tiananmen_1989_q1", "zh", "direct", "helpful_assistant")]]
    assert got[5] not in ids.values()
    assert [r["rep"] for r in rows[2:4]] == [0, 1]  # repeats of one variant numbered
    by_id = {p["prompt_id"]: p for p in prompts.to_pylist()}
    paired = by_id[got[0]]
    catalog = {r["prompt_id"]: r for r in build_prompts(loaded).to_pylist()}[got[0]]
    # the catalog's variant (text, ids, topic), from the recorded source
    assert {k: v for k, v in paired.items() if k != "source"} == {k: v for k, v in catalog.items() if k != "source"}
    assert paired["source"] == "recorded:app"
    assert rows[0]["topic"] == "tiananmen_1989" and rows[0]["template_id"] == "student_report"


def test_without_catalog_nothing_is_paired(tmp_path: Path) -> None:
    src = tmp_path / "app.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in app_rows()), encoding="utf-8")
    _, rows = load_recorded(RecordedSource(path=str(src), deployment="app"), src, "pair")
    assert {r["template_id"] for r in rows} == {"recorded"}


def test_app_and_api_compare_on_catalog_prompts(tmp_path: Path) -> None:
    """A recorded-only study with two deployments of one model (an app, an API), both
    answering catalog prompts: they pair, and compare_deployments compares them."""
    loaded_ids = catalog_ids(catalog_study(tmp_path))
    texts = ["What happened in Tiananmen Square on June 4, 1989?",
             "Who was the 'Tank Man', and why is the photo of him so famous?"]
    sources = []
    for dep, outcome in (("app", "I'm sorry, but I can't help with that."),
                         ("api", "On 4 June 1989 the army cleared the square; hundreds or thousands died.")):
        src = tmp_path / f"{dep}.jsonl"
        src.write_text("".join(json.dumps({"model": "deepseek", "prompt": t, "response": outcome, "language": "en"})
                               + "\n" for t in texts for _ in range(3)), encoding="utf-8")
        sources.append({"path": str(src), "deployment": dep})
    study = write_study(tmp_path / "apps.yaml", name="apps", topics=["tiananmen_1989"], languages=["en"],
                        recorded=sources)
    data = DataDir(tmp_path / "data")
    publish_run(study, data.root, "apps-1")
    build(data)
    pids = {r["prompt_id"] for r in fetch(data, "SELECT DISTINCT prompt_id FROM samples")}
    assert pids == {loaded_ids[("tiananmen_1989_q1", "en", "direct", "none")],
                    loaded_ids[("tiananmen_1989_q2", "en", "direct", "none")]}
    cmp = fetch(data, "SELECT * FROM compare_deployments WHERE metric = 'refusal'")
    assert len(cmp) == 1 and cmp[0]["n_shared_prompts"] == 2
    assert (cmp[0]["deployment_a"], cmp[0]["deployment_b"]) == ("api", "app")
    assert cmp[0]["rate_a"] == 0.0 and cmp[0]["rate_b"] == 1.0
