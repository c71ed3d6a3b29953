"""A wheel (non-editable) install carries what the code reads from the repository's top
folders: the SQL, the Great Expectations suites, the catalog and the templates."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_holds_sql_suites_catalog_and_templates(tmp_path: Path) -> None:
    import shutil

    # build from a copy of the tracked files (a build in the checkout would leave build/ behind),
    # in an isolated build environment as `make` installs the project (pip fetches setuptools)
    src = tmp_path / "src"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True)
    for name in files.stdout.splitlines():
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "--wheel-dir", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("refusals-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "refusals-0.1.0.data/data/share/refusals"
    for folder, pattern in (("sql", "*.sql"), ("sql/report", "*.sql"), ("expectations", "*.json"), ("catalog", "*.yaml")):
        for f in (REPO / folder).glob(pattern):
            assert f"{data}/{folder}/{f.name}" in names, f"{folder}/{f.name} missing from the wheel"
    for f in (REPO / "pipeline" / "templates").glob("*.j2"):
        assert f"pipeline/templates/{f.name}" in names


def test_resource_dir_falls_back_to_the_installed_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sysconfig

    import pipeline.paths as paths

    assert paths.resource_dir("sql") == REPO / "sql"  # a checkout reads its own files
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "site-packages")  # an installed package
    assert paths.resource_dir("sql") == Path(sysconfig.get_path("data")) / "share" / "refusals" / "sql"
