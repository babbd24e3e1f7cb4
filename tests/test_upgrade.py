"""A home written by the previous release keeps working after the upgrade.

The previous release is built from its git commit (``git archive`` into a temporary folder, run
with that folder first on PYTHONPATH); it makes a home with two months. This release then runs
the next month in that home: the home is backed up and upgraded (ledger paths made relative,
history schema up to date), and the new month's export and the trends equal a fresh run of this release.
A home or history store of a newer format than this code knows is refused with a clear message.
"""

from __future__ import annotations

import io
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import pytest
from overlap_tools import ROOT, atr, differences, in_order_reference, run_args, trend_rows

from atr_pipeline.history.store import SCHEMA_VERSION

# The release before home format 2 (main when this work started).
PREVIOUS_RELEASE = "bf5ae19c61553e38ebb725c49defa982697639c9"
ACME = "acme_commercial"


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is needed to build the previous release from its commit")
    found = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS_RELEASE],
                           capture_output=True, timeout=120)
    if found.returncode != 0:
        pytest.skip(f"commit {PREVIOUS_RELEASE[:7]} is not in this checkout's history: {found.stderr.decode()[:200]}")
    folder = tmp_path_factory.mktemp("previous_release")
    with tarfile.open(fileobj=io.BytesIO(found.stdout)) as tar:
        tar.extractall(folder, members=[m for m in tar.getmembers() if m.name.startswith(("atr_pipeline/", "mappings/"))])
    return folder


def _old_run(code: Path, home: Path, month: str) -> None:
    args = [sys.executable, "-m", "atr_pipeline.cli", "run", "--mapping", str(code / "mappings" / f"{ACME}.yaml"),
            "--inbox", str(ROOT / "fixtures" / ACME), "--month", month]
    res = atr(args, home, pythonpath=str(code), cwd=code)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_home_of_the_previous_release_is_upgraded_and_continues(tmp_path: Path, previous_release: Path) -> None:
    home = tmp_path / "home"
    for month in ("2026-08", "2026-09"):
        _old_run(previous_release, home, month)
    assert not (home / "home_format").exists()
    with sqlite3.connect(home / "landing" / "ledger.sqlite") as con:
        assert all(Path(p).is_absolute() for (p,) in con.execute("SELECT path FROM landed"))

    res = atr(run_args(ACME, "2026-10"), home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (home / "home_format").read_text().strip() == "2"
    backups = list((home / "backups").iterdir())
    assert len(backups) == 1 and backups[0].name.endswith("format-1")
    assert (backups[0] / "landing" / "ledger.sqlite").is_file() and (backups[0] / "history.duckdb").is_file()
    with sqlite3.connect(backups[0] / "landing" / "ledger.sqlite") as con:  # the backup is the old ledger
        assert con.execute("SELECT count(*) FROM landed").fetchone() == (2,)
    with sqlite3.connect(home / "landing" / "ledger.sqlite") as con:
        assert sorted(p for (p,) in con.execute("SELECT path FROM landed"))[0].startswith("landing/acme_commercial/2026-08/")
    con = duckdb.connect(str(home / "history.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone() == (SCHEMA_VERSION,)
        # The old release's exports are adopted (a late month would rebuild them), 10 recorded anew.
        assert [m.isoformat()[:7] for (m,) in con.execute(
            "SELECT month FROM published_builds WHERE source_id = ? ORDER BY month", [ACME]).fetchall()] == ["2026-08", "2026-09", "2026-10"]
    finally:
        con.close()

    fresh = in_order_reference(tmp_path / "fresh", ACME, ["2026-08", "2026-09", "2026-10"])
    assert differences(home, fresh, ACME, months=["2026-10"]) == []
    assert trend_rows(home, ACME) == trend_rows(fresh, ACME)
    # The upgraded home, moved, still works (its paths are relative now).
    moved = tmp_path / "moved"
    shutil.move(home, moved)
    again = atr(run_args(ACME, "2026-10", None, "--reprocess"), moved)
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_newer_home_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert atr(run_args(ACME, "2026-08"), home).returncode == 0
    (home / "home_format").write_text("99\n")
    res = atr(run_args(ACME, "2026-09"), home)
    assert res.returncode == 1
    assert "has format 99, written by a newer release of atr" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_newer_history_schema_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert atr(run_args(ACME, "2026-08"), home).returncode == 0
    con = duckdb.connect(str(home / "history.duckdb"))
    con.execute("UPDATE store_meta SET value = '7' WHERE key = 'schema_version'")
    con.close()
    res = atr([sys.executable, "-m", "atr_pipeline.cli", "trends", "--source", ACME], home)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert f"schema version 7, newer than this atr knows ({SCHEMA_VERSION})" in res.stdout + res.stderr
