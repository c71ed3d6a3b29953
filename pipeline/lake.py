"""Atomic Parquet writes and the lake's layout.

A file is written under a temporary name in its final folder and renamed into place, so a
reader (or a resumed run) sees either the whole file or nothing. A folder is published the
same way: built beside its target, then renamed over it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.paths import partition_value

TMP_PREFIX = ".tmp-"


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write one Parquet file atomically (temp name in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(data: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def parquet_files(folder: Path) -> list[Path]:
    """Finished Parquet files under a folder (temporary files are ignored)."""
    if not folder.exists():
        return []
    return sorted(
        p for p in folder.rglob("*.parquet")
        if not any(part.startswith(TMP_PREFIX) for part in p.relative_to(folder).parts)
    )


def readable_parquet(path: Path, columns: list[str] | None = None) -> pa.Table | None:
    """The table of a Parquet file, or None when it is truncated or corrupt (or unreadable)."""
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError, KeyError):
        return None


def set_aside(path: Path, staging_run: Path, why: str = "corrupt") -> Path | None:
    """Move a damaged staged file to `<staging_run>/corrupt/<its path>` (logged), so that the
    stage that wrote it does it again. Returns where it went (None if another process moved it)."""
    import logging
    import time

    rel = path.relative_to(staging_run) if path.is_relative_to(staging_run) else Path(path.name)
    dst = staging_run / "corrupt" / rel.parent / f"{int(time.time())}-{rel.name}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(path, dst)
    except FileNotFoundError:
        return None
    logging.getLogger(__name__).warning("%s: %s staged file moved aside to %s; it will be written again",
                                        path, why, dst)
    return dst


def staging_root(folder: Path) -> Path:
    """The staging folder of a run, from a folder inside it (`<run>/samples/...`, `<run>/labels/...`)."""
    for parent in (folder, *folder.parents):
        if parent.name in ("samples", "labels", "prompts"):
            return parent.parent
    return folder


def read_folder(folder: Path, columns: list[str] | None = None) -> pa.Table | None:
    """All finished Parquet files under a folder as one table (None when there are none).

    Key columns live inside the files, so directory names are never parsed back.
    """
    files = parquet_files(folder)
    if not files:
        return None
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables, promote_options="default")


def copy_parquet(files: list[Path], path: Path, language: str | None = None,
                 batch_rows: int = 65536) -> int:
    """Stream the rows of `files` (only those of `language`, when given) into one Parquet
    file, written atomically. DuckDB scans, pyarrow writes batch by batch: memory is bounded
    by the batch, not by the files' size. Returns the number of rows written."""
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
    con = duckdb.connect()
    n = 0
    try:
        con.execute("SET memory_limit = '1GB'")
        con.execute("SET TimeZone = 'UTC'")
        sql = "SELECT * FROM read_parquet($files, union_by_name = true, hive_partitioning = false)"
        params: dict[str, Any] = {"files": [str(f) for f in files]}
        if language is not None:
            sql += " WHERE language = $language"
            params["language"] = language
        reader = con.sql(sql, params=params).to_arrow_reader(batch_rows)
        with pq.ParquetWriter(tmp, reader.schema, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch)
                n += batch.num_rows
        os.replace(tmp, path)
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
    return n


def distinct_values(files: list[Path], column: str) -> list[Any]:
    """The distinct values of one column over Parquet files (streamed by DuckDB)."""
    import re

    import duckdb

    # an identifier cannot be a bound parameter (and COLUMNS('x') is a regex that would also
    # match `response_x`): accept a plain name only, quoted
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", column):
        raise ValueError(f"not a column name: {column!r}")
    con = duckdb.connect()
    try:
        rows = con.execute(
            f'SELECT DISTINCT "{column}" FROM read_parquet($files, union_by_name = true, '
            "hive_partitioning = false) ORDER BY 1",
            {"files": [str(f) for f in files]},
        ).fetchall()
        return [r[0] for r in rows]
    finally:
        con.close()


def hive_path(root: Path, **parts: str) -> Path:
    """`root/k1=v1/k2=v2/...` with URI-encoded values."""
    path = root
    for key, value in parts.items():
        path = path / f"{key}={partition_value(value)}"
    return path


def replace_folder(src: Path, dst: Path) -> None:
    """Publish `src` as `dst`: a rerun replaces what was there, never appends to it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.exists():
        old = dst.parent / f"{TMP_PREFIX}old-{uuid.uuid4().hex}-{dst.name}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
