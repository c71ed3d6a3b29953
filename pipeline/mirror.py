"""A copy of published runs in object storage (S3, GCS, Azure, or any `pyarrow.fs` URI).

The lake itself is a folder (`REFUSALS_DATA_DIR`): staging, atomic renames and the warehouse
need a filesystem. This module mirrors what a run published into the lake to a bucket, with
the same hive layout, so that other readers (DuckDB, Spark, pandas) query it there:

    mirror_run(DataDir.from_env(), "demo-2026-W10", "s3://bucket/refusals/lake")

Object stores make each single-object write atomic but not a folder; so the run record
(`runs/...`) is removed first and copied last: a reader that starts from `runs` sees a run
either whole or not at all. A rerun of the same run id replaces its earlier copy.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.lake import parquet_files
from pipeline.paths import DataDir, partition_value

log = logging.getLogger(__name__)

DATASETS = ("prompts", "samples", "labels")  # copied before the run record


def _run_files(data: DataDir, dataset: str, run_id: str) -> list[Path]:
    part = f"run_id={partition_value(run_id)}"
    return [p for p in parquet_files(data.dataset(dataset)) if part in p.parts]


def _run_dirs(files: list[Path], run_id: str) -> set[Path]:
    """The `run_id=...` folders that hold these files (one per dataset and run date)."""
    part = f"run_id={partition_value(run_id)}"
    out = set()
    for f in files:
        parts = f.parts
        out.add(Path(*parts[: parts.index(part) + 1]))
    return out


def mirror_run(data: DataDir, run_id: str, uri: str, filesystem=None) -> int:
    """Copy one published run's files to `uri` (same relative layout); return how many.

    `filesystem` overrides the one `pyarrow.fs.FileSystem.from_uri` picks (credentials and
    region come from the usual environment: AWS_*, GOOGLE_APPLICATION_CREDENTIALS, ...)."""
    import pyarrow.fs as pafs

    if filesystem is None:
        filesystem, root = pafs.FileSystem.from_uri(uri)
    else:
        root = uri
    root = root.rstrip("/")
    record = _run_files(data, "runs", run_id)
    if not record:
        raise FileNotFoundError(f"run {run_id} is not published in {data.lake}")
    files = {name: _run_files(data, name, run_id) for name in DATASETS}

    def remote(p: Path) -> str:
        return f"{root}/{p.relative_to(data.lake).as_posix()}"

    # Withdraw the run (record first), then copy it (record last). An earlier copy may sit
    # under another run date (a forced rerun on another day): look at every date's folder.
    for name in ("runs", *DATASETS):
        for d in _run_dirs(record if name == "runs" else files[name], run_id):
            if d.parent.name.startswith("run_date="):
                for date_dir in _subdirs(filesystem, remote(d.parent.parent)):
                    _delete_dir(filesystem, f"{date_dir}/{d.name}")
            else:
                _delete_dir(filesystem, remote(d))
    n = 0
    for f in [*(f for name in DATASETS for f in files[name]), *record]:
        target = remote(f)
        filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(f), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)
        n += 1
    log.info("mirrored run %s: %d files to %s", run_id, n, uri)
    return n


def _subdirs(filesystem, path: str) -> list[str]:
    import pyarrow.fs as pafs

    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    return [i.path for i in infos if i.type == pafs.FileType.Directory]


def _delete_dir(filesystem, path: str) -> None:
    import pyarrow.fs as pafs

    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        filesystem.delete_dir(path)
