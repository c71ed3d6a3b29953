"""Where things live: the repository, the data folder and its lake, warehouse and reports.

The data folder is `./data` by default or `$REFUSALS_DATA_DIR` (CONTRACT.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent


def resource_dir(name: str) -> Path:
    """A folder of the project's own files (`sql`, `expectations`, `catalog`): the repository's
    in a checkout or an editable install, else where a wheel install put it
    (`<prefix>/share/refusals/<name>`)."""
    here = REPO_ROOT / name
    if here.is_dir():
        return here
    import sysconfig

    return Path(sysconfig.get_path("data")) / "share" / "refusals" / name


def shared_data_dir() -> Path:
    """The public labelled data (`../shared/data` beside the repository, or $REFUSALS_SHARED_DATA)."""
    return Path(os.environ.get("REFUSALS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def resolve(path: str | os.PathLike[str], base: Path) -> Path:
    """A path as given, or relative to `base` when it is not absolute.

    `~` and `$VARS` are expanded, so a study can say `$REFUSALS_SHARED_DATA/x.parquet`.
    """
    text = str(path)
    if "$REFUSALS_SHARED_DATA" in text or "${REFUSALS_SHARED_DATA}" in text:
        shared = str(shared_data_dir())
        text = text.replace("${REFUSALS_SHARED_DATA}", shared).replace("$REFUSALS_SHARED_DATA", shared)
    p = Path(os.path.expandvars(os.path.expanduser(text)))
    return p if p.is_absolute() else (base / p)


PARTITION_BYTES = 180  # an encoded partition value, at most (a file name is at most 255 bytes)


def partition_value(value: str) -> str:
    """A hive partition directory value: URI-encoded, as pyarrow and Spark write them, and
    bounded in bytes so that it fits any filesystem.

    Model names contain `/` (e.g. `openai/gpt-4o`), which must not become a directory. A
    value whose encoding is longer than PARTITION_BYTES (a 28-character Chinese model name
    is 252 bytes) becomes its longest prefix of whole characters that fits, `~` and 16 hex
    digits of its SHA-256: distinct names stay distinct. The full name is always a column
    of the files (nothing parses directory names back), so nothing is lost.
    """
    text = str(value)
    full = quote(text, safe="")
    if len(full) <= PARTITION_BYTES:
        return full
    import hashlib

    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    room = PARTITION_BYTES - 1 - len(digest)
    out = ""
    for ch in text:
        q = quote(ch, safe="")
        if len(out) + len(q) > room:
            break
        out += q
    return f"{out}~{digest}"


@dataclass(frozen=True)
class DataDir:
    """The layout under one data folder."""

    root: Path

    @classmethod
    def from_env(cls, override: str | os.PathLike[str] | None = None) -> "DataDir":
        root = override or os.environ.get("REFUSALS_DATA_DIR") or "data"
        return cls(Path(root).resolve())

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def validation(self) -> Path:
        """One HTML summary per validated run: `validation/<run_id>/index.html`."""
        return self.root / "validation"

    @property
    def records(self) -> Path:
        """One JSON run record per run after publish (`records/<run_id>.json`): its steps."""
        return self.root / "records"

    @property
    def runs(self) -> Path:
        """One JSON record per run (the `runs` table of the warehouse reads these)."""
        return self.lake / "runs"

    def staging_run(self, run_id: str) -> Path:
        return self.staging / run_id

    def dataset(self, name: str) -> Path:
        return self.lake / name
