"""Runs as things a user can see and remove, and recorded imports that happen once.

`list_runs`: every run the data folder knows, from the lake's run records (published), the
staging and quarantine folders, and the trash of an unfinished delete.

`delete_run` removes one published run from the lake and the warehouse:

1. under the run's lock and the warehouse lock, its lake partitions (`run_id=<id>` folders of
   every dataset) are renamed into `data/trash/<id>/`, the run record first: from that
   rename on the run is no longer published (nothing reloads it);
2. its rows leave the warehouse and the per-week marts of its weeks (and the week after each)
   are rebuilt, in one transaction;
3. the trash folder is removed.

A crash leaves the run either published (before step 1's first rename) or not published with
a trash folder that `list_runs` shows as `deleting`; a rerun of the delete finishes it.

Recorded imports: the sha256 of a recorded file's bytes is recorded with each import (the
`imports` dataset of the lake, one row per deployment of a run). Importing a file whose hash
an earlier published run already imported into the same deployment is skipped with a log
line, unless the source says `force_reimport: true` or $REFUSALS_FORCE_REIMPORT is set (the
`--force-reimport` flag of `refusals run` and `refusals stage`): the same answers counted
twice would double every mart's counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa

from pipeline.errors import UserError
from pipeline.lake import TMP_PREFIX, hive_path, parquet_files, read_folder, write_parquet_atomic
from pipeline.paths import DataDir, partition_value

log = logging.getLogger(__name__)

IMPORTS = "imports"  # lake dataset: one row per recorded import of a published run
FORCE_ENV = "REFUSALS_FORCE_REIMPORT"


# --------------------------------------------------------------------------- imports


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def force_reimport_env() -> bool:
    return os.environ.get(FORCE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def data_of_staging(staging_run: Path) -> DataDir:
    """The data folder of a staged run (`<data>/staging/<run_id>`)."""
    return DataDir(staging_run.parent.parent)


def published_imports(data: DataDir) -> list[dict[str, Any]]:
    """The recorded imports of published runs (a run whose record is in the lake)."""
    table = read_folder(data.dataset(IMPORTS))
    if table is None:
        return []
    published = set(_published_run_ids(data))
    return [r for r in table.to_pylist() if r["run_id"] in published]


def earlier_import(data: DataDir, deployment: str, sha256: str, run_id: str) -> dict[str, Any] | None:
    """A published run other than `run_id` that imported this file into this deployment."""
    for r in sorted(published_imports(data), key=lambda r: str(r.get("imported_at"))):
        if r["deployment"] == deployment and r["sha256"] == sha256 and r["run_id"] != run_id:
            return r
    return None


def check_import(staging_run: Path, run_id: str, study: str, source: Any, path: Path) -> tuple[str, bool]:
    """(sha256 of the file, whether to import it): False when a published run already imported
    the same bytes into the same deployment and the import is not forced (logged)."""
    digest = file_sha256(path)
    forced = bool(getattr(source, "force_reimport", False)) or force_reimport_env()
    before = earlier_import(data_of_staging(staging_run), source.deployment, digest, run_id)
    marker = staging_run / IMPORTS / f"{source.deployment}.skipped.json"
    marker.unlink(missing_ok=True)
    if before is None:
        return digest, True
    if forced:
        log.warning("recorded %s: %s (sha256 %s) was already imported by run %s; importing it again "
                    "(forced): its answers count twice in weeks with both runs", source.deployment, path,
                    digest[:12], before["run_id"])
        return digest, True
    log.warning("recorded %s: %s (sha256 %s) was already imported into deployment %s by run %s (study %s); "
                "skipped, so its answers are not counted twice (force_reimport: true in the study, or "
                "--force-reimport, imports it again)", source.deployment, path, digest[:12], source.deployment,
                before["run_id"], before["study"])
    from pipeline.lake import write_json_atomic

    write_json_atomic({"deployment": source.deployment, "path": str(path), "sha256": digest,
                       "imported_by": before["run_id"]}, marker)
    return digest, False


def imported_before(staging_run: Path) -> list[str]:
    """The deployments of a staged run whose recorded file was skipped as imported before."""
    folder = staging_run / IMPORTS
    return sorted(p.name.removesuffix(".skipped.json") for p in folder.glob("*.skipped.json")) if folder.is_dir() else []


def stage_import(staging_run: Path, run_id: str, study: str, source: Any, path: Path, digest: str,
                 n_rows: int, models: list[str]) -> None:
    """Record one import in the staged run (published with it by `publish_imports`)."""
    row = {
        "run_id": run_id, "study": study, "deployment": source.deployment, "format": source.format,
        "path": str(path), "sha256": digest, "n_rows": n_rows, "models": json.dumps(sorted(models)),
        "forced": bool(getattr(source, "force_reimport", False)) or force_reimport_env(),
        "imported_at": datetime.now(timezone.utc),
    }
    write_parquet_atomic(pa.Table.from_pylist([row]), staging_run / IMPORTS / f"{source.deployment}.parquet")


def drop_staged_import(staging_run: Path, deployment: str) -> None:
    (staging_run / IMPORTS / f"{deployment}.parquet").unlink(missing_ok=True)


def nothing_staged(staging_run: Path) -> bool:
    """True when sampling staged no samples and no prompts (every recorded file skipped, no live model)."""
    return not parquet_files(staging_run / "samples") and not parquet_files(staging_run / "prompts")


def publish_imports(data: DataDir, staging_run: Path, study: str, run_id: str) -> int:
    """Copy the staged import records into the lake (before the run record is written)."""
    target = hive_path(data.dataset(IMPORTS), study=study, run_id=run_id) / "imports.parquet"
    table = read_folder(staging_run / IMPORTS)
    if table is None:
        target.unlink(missing_ok=True)  # a rerun of the run id that imported nothing
        return 0
    write_parquet_atomic(table, target)
    return table.num_rows


# --------------------------------------------------------------------------- listing


def _published_run_ids(data: DataDir) -> list[str]:
    out = set()
    for p in parquet_files(data.runs):
        for part in p.parts:
            if part.startswith("run_id="):
                out.add(unquote(part.removeprefix("run_id=")))
    return sorted(out)


def _warehouse_runs(data: DataDir) -> set[str] | None:
    if not data.warehouse.exists():
        return None
    import duckdb

    try:
        con = duckdb.connect(str(data.warehouse), read_only=True)
    except duckdb.Error:
        return None  # being written: unknown
    try:
        return {r[0] for r in con.execute("SELECT DISTINCT run_id FROM runs").fetchall()}
    except duckdb.Error:
        return set()
    finally:
        con.close()


def trash_root(data: DataDir) -> Path:
    return data.root / "trash"


def list_runs(data: DataDir) -> list[dict[str, Any]]:
    """Every run of the data folder: run id, study, study hash, status, published time, samples.

    status: `published` (in the lake and loaded), `published, not loaded` (in the lake, not yet
    in the warehouse), `staged` (in progress), `quarantined` (failed validation), `deleting`
    (a delete that did not finish: rerun it)."""
    runs: dict[str, dict[str, Any]] = {}
    loaded = _warehouse_runs(data)
    table = read_folder(data.runs)
    for r in (table.to_pylist() if table is not None else []):
        status = "published" if loaded is None or r["run_id"] in loaded else "published, not loaded"
        runs[r["run_id"]] = {"run_id": r["run_id"], "study": r["study"], "study_hash": r["study_hash"],
                             "week": r.get("week"), "status": status, "published_at": r.get("published_at"),
                             "n_samples": r.get("n_samples")}
    for status, folder in (("staged", data.staging), ("quarantined", data.quarantine)):
        if not folder.is_dir():
            continue
        for d in sorted(folder.iterdir()):
            record = d / "run.json"
            if d.name in runs or not record.is_file():
                continue
            try:
                rec = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                rec = {}
            runs[d.name] = {"run_id": rec.get("run_id", d.name), "study": rec.get("study"),
                            "study_hash": rec.get("study_hash"), "week": rec.get("week"), "status": status,
                            "published_at": None, "n_samples": None}
    if trash_root(data).is_dir():
        for d in sorted(trash_root(data).iterdir()):
            manifest = _read_manifest(d)
            rid = manifest.get("run_id") or unquote(d.name)
            if rid not in runs or runs[rid]["status"].startswith("published"):
                runs[rid] = {**runs.get(rid, {}), "run_id": rid, "study": manifest.get("study"),
                             "study_hash": manifest.get("study_hash"), "week": manifest.get("week"),
                             "status": "deleting", "published_at": manifest.get("published_at"),
                             "n_samples": manifest.get("n_samples")}
    return sorted(runs.values(), key=lambda r: (str(r["published_at"] or "~"), r["run_id"]))


# --------------------------------------------------------------------------- delete


def _read_manifest(trash: Path) -> dict[str, Any]:
    try:
        return json.loads((trash / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_partitions(data: DataDir, run_id: str) -> list[Path]:
    """Every `run_id=<id>` folder of the lake, the run record's first."""
    part = f"run_id={partition_value(run_id)}"
    if not data.lake.is_dir():
        return []
    found = []
    for dataset in sorted(p for p in data.lake.iterdir() if p.is_dir()):
        found += sorted(p for p in dataset.rglob(part) if p.is_dir()
                        and not any(x.startswith(TMP_PREFIX) for x in p.relative_to(data.lake).parts))
    runs_first = sorted(found, key=lambda p: (p.relative_to(data.lake).parts[0] != data.runs.name, str(p)))
    return runs_first


def _run_record(data: DataDir, run_id: str) -> dict[str, Any] | None:
    part = f"run_id={partition_value(run_id)}"
    files = [p for p in parquet_files(data.runs) if part in p.parts]
    if not files:
        return None
    import pyarrow.parquet as pq

    return pq.read_table(files[0]).to_pylist()[0]


def describe_run(data: DataDir, run_id: str) -> dict[str, Any]:
    """What a delete of `run_id` would remove; UserError when nothing is known of it."""
    record = _run_record(data, run_id)
    trash = trash_root(data) / partition_value(run_id)
    manifest = _read_manifest(trash) if trash.exists() else {}
    in_wh = run_id in (_warehouse_runs(data) or set())
    if record is None and not trash.exists() and not in_wh:
        staged = (data.staging / run_id / "run.json").is_file() or (data.quarantine / run_id).is_dir()
        hint = " (it is staged or quarantined, not published: nothing to delete)" if staged else ""
        raise UserError(f"unknown run id {run_id!r}{hint}; `refusals runs list` shows the runs")
    src = record or manifest
    return {"run_id": run_id, "study": src.get("study"), "study_hash": src.get("study_hash"),
            "week": src.get("week"), "n_samples": src.get("n_samples"),
            "published_at": src.get("published_at"), "partitions": run_partitions(data, run_id),
            "in_warehouse": in_wh, "resuming": trash.exists()}


def delete_run(data: DataDir, run_id: str) -> dict[str, Any]:
    """Remove a published run from the lake and the warehouse (see the module docstring)."""
    from pipeline.locks import run_lock, warehouse_lock

    with run_lock(data, run_id), warehouse_lock(data):
        info = describe_run(data, run_id)
        trash = trash_root(data) / partition_value(run_id)
        trash.mkdir(parents=True, exist_ok=True)
        manifest = _read_manifest(trash)
        weeks = set(manifest.get("weeks", []))
        if info["week"]:
            weeks.add(info["week"])
        weeks |= _warehouse_weeks(data, run_id)
        if not manifest:
            manifest = {k: info[k] for k in ("run_id", "study", "study_hash", "week", "n_samples")}
            manifest["published_at"] = str(info["published_at"]) if info["published_at"] else None
        manifest["weeks"] = sorted(weeks)
        from pipeline.lake import write_json_atomic

        write_json_atomic(manifest, trash / "manifest.json")
        # 1. out of the lake: the run record first (the run stops being published there)
        moved = 0
        for folder in run_partitions(data, run_id):
            dest = trash / "lake" / folder.relative_to(data.lake)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(folder, dest)
            moved += 1
        # 2. out of the warehouse, with the marts of its weeks rebuilt, in one transaction
        rows = _delete_from_warehouse(data, run_id, sorted(weeks))
        # 3. gone; the run's validation summary with it
        shutil.rmtree(data.validation / run_id, ignore_errors=True)
        shutil.rmtree(trash)
        log.info("deleted run %s: %d lake partitions, %d warehouse rows; marts rebuilt for %s", run_id, moved,
                 rows, ", ".join(sorted(weeks)) or "no week")
        return {"run_id": run_id, "partitions": moved, "warehouse_rows": rows, "weeks": sorted(weeks)}


def _warehouse_weeks(data: DataDir, run_id: str) -> set[str]:
    if not data.warehouse.exists():
        return set()
    from pipeline.warehouse import connect

    con = connect(data, read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT DISTINCT week FROM runs WHERE run_id = ? AND week IS NOT NULL",
                                          [run_id]).fetchall()}
    except Exception:  # no runs table yet
        return set()
    finally:
        con.close()


def _delete_from_warehouse(data: DataDir, run_id: str, weeks: list[str]) -> int:
    """Delete one run's rows and rebuild the marts of `weeks`; the caller holds the warehouse lock."""
    if not data.warehouse.exists():
        return 0
    from pipeline.warehouse import MARTS, PER_RUN, build_global, connect, create_tables, install_macros, weeks_touched

    con = connect(data)
    try:
        install_macros(con)
        create_tables(con)
        con.execute("BEGIN TRANSACTION")
        try:
            n = 0
            for name in (*MARTS, *reversed(PER_RUN)):
                n += con.execute(f'DELETE FROM "{name}" WHERE run_id = ?', [run_id]).fetchone()[0]
            touched = weeks_touched(con, weeks) if weeks else []
            if touched:
                build_global(con, touched)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        con.execute("CHECKPOINT")
        return n
    finally:
        con.close()
