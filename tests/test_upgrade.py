"""A home written by the previous release keeps working after the upgrade.

The previous release is built from its git commit (``git archive`` into a temporary folder, run
with that folder first on PYTHONPATH); it makes a home with two months. This release then runs
the next month in that home: the home is backed up and upgraded (ledger paths made relative,
history schema up to date), and the new month's export and the trends equal a fresh run of this release.
A home of the last single-history-file release (format 2) has its history split into one file
per source (format 3), every row kept, and both sources continue as a fresh run would.
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


# The last release with one history file for every source (home format 2).
SINGLE_FILE_RELEASE = "7dd33c59f12667d97dc85226db2a2c350d26e9f6"
SWMCD = "statewide_medicaid"


def _release(tmp_path_factory, commit: str) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is needed to build the previous release from its commit")
    found = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True, timeout=120)
    if found.returncode != 0:
        pytest.skip(f"commit {commit[:7]} is not in this checkout's history: {found.stderr.decode()[:200]}")
    folder = tmp_path_factory.mktemp(f"release_{commit[:7]}")
    with tarfile.open(fileobj=io.BytesIO(found.stdout)) as tar:
        tar.extractall(folder, members=[m for m in tar.getmembers() if m.name.startswith(("atr_pipeline/", "mappings/"))])
    return folder


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory) -> Path:
    return _release(tmp_path_factory, PREVIOUS_RELEASE)


@pytest.fixture(scope="module")
def single_file_release(tmp_path_factory) -> Path:
    return _release(tmp_path_factory, SINGLE_FILE_RELEASE)


def _old_run(code: Path, home: Path, month: str, source: str = ACME) -> None:
    args = [sys.executable, "-m", "atr_pipeline.cli", "run", "--mapping", str(code / "mappings" / f"{source}.yaml"),
            "--inbox", str(ROOT / "fixtures" / source), "--month", month]
    res = atr(args, home, pythonpath=str(code), cwd=code)
    assert res.returncode == 0, res.stdout + res.stderr


_KEPT_TABLES = ("snapshots", "deliveries", "group_versions", "list_status", "published_builds")


def _rows(db: Path, source: str) -> dict[str, list[tuple]]:
    """Every kept row of ``source`` per table, and its snapshot rows in stored order (rowid)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {t: sorted(con.execute(f"SELECT * FROM {t} WHERE source_id = ?", [source]).fetchall(), key=repr)
               for t in _KEPT_TABLES}
        out["snapshot_rows"] = con.execute("SELECT * FROM snapshot_rows WHERE source_id = ? ORDER BY rowid", [source]).fetchall()
        return out
    finally:
        con.close()


def test_a_single_history_file_is_split_per_source_and_continues(tmp_path: Path, single_file_release: Path) -> None:
    home = tmp_path / "home"
    for source in (ACME, SWMCD):
        for month in ("2026-08", "2026-09"):
            _old_run(single_file_release, home, month, source)
    assert (home / "home_format").read_text().strip() == "2"
    legacy = home / "history.duckdb"
    before = {source: _rows(legacy, source) for source in (ACME, SWMCD)}
    assert all(before[s]["snapshot_rows"] for s in before)

    # Not upgraded yet, the home is still read (trends only read: nothing is created or split).
    res = atr([sys.executable, "-m", "atr_pipeline.cli", "trends", "--source", SWMCD], home)
    assert res.returncode == 0 and "2026-09" in res.stdout, res.stdout + res.stderr
    assert legacy.exists() and not (home / "history").exists()

    res = atr(run_args(ACME, "2026-10"), home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (home / "home_format").read_text().strip() == "3"
    assert not legacy.exists()
    assert sorted(p.name for p in (home / "history").glob("*.duckdb")) == [f"{ACME}.duckdb", f"{SWMCD}.duckdb"]
    backup = next((home / "backups").iterdir())
    assert backup.name.endswith("format-2") and _rows(backup / "history.duckdb", SWMCD) == before[SWMCD]
    # Each file holds its own source only, every row as it was (the stored order included).
    assert _rows(home / "history" / f"{SWMCD}.duckdb", SWMCD) == before[SWMCD]
    assert _rows(home / "history" / f"{SWMCD}.duckdb", ACME) == {k: [] for k in before[ACME]}
    after = _rows(home / "history" / f"{ACME}.duckdb", ACME)
    assert after["snapshot_rows"][: len(before[ACME]["snapshot_rows"])] == before[ACME]["snapshot_rows"]
    assert sorted(r[1].isoformat()[:7] for r in after["snapshots"]) == ["2026-08", "2026-09", "2026-10"]

    res = atr(run_args(SWMCD, "2026-10"), home)
    assert res.returncode == 0, res.stdout + res.stderr
    for source in (ACME, SWMCD):
        fresh = in_order_reference(tmp_path / f"fresh_{source}", source, ["2026-08", "2026-09", "2026-10"])
        assert differences(home, fresh, source, months=["2026-10"]) == []
        assert trend_rows(home, source) == trend_rows(fresh, source)


def test_a_home_of_the_previous_release_is_upgraded_and_continues(tmp_path: Path, previous_release: Path) -> None:
    home = tmp_path / "home"
    for month in ("2026-08", "2026-09"):
        _old_run(previous_release, home, month)
    assert not (home / "home_format").exists()
    with sqlite3.connect(home / "landing" / "ledger.sqlite") as con:
        assert all(Path(p).is_absolute() for (p,) in con.execute("SELECT path FROM landed"))

    res = atr(run_args(ACME, "2026-10"), home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (home / "home_format").read_text().strip() == "3"
    backups = list((home / "backups").iterdir())
    assert len(backups) == 1 and backups[0].name.endswith("format-1")
    assert (backups[0] / "landing" / "ledger.sqlite").is_file() and (backups[0] / "history.duckdb").is_file()
    with sqlite3.connect(backups[0] / "landing" / "ledger.sqlite") as con:  # the backup is the old ledger
        assert con.execute("SELECT count(*) FROM landed").fetchone() == (2,)
    with sqlite3.connect(home / "landing" / "ledger.sqlite") as con:
        assert sorted(p for (p,) in con.execute("SELECT path FROM landed"))[0].startswith("landing/acme_commercial/2026-08/")
    assert not (home / "history.duckdb").exists()  # split into one file per source (format 3)
    con = duckdb.connect(str(home / "history" / f"{ACME}.duckdb"), read_only=True)
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
    con = duckdb.connect(str(home / "history" / f"{ACME}.duckdb"))
    con.execute("UPDATE store_meta SET value = '7' WHERE key = 'schema_version'")
    con.close()
    res = atr([sys.executable, "-m", "atr_pipeline.cli", "trends", "--source", ACME], home)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert f"schema version 7, newer than this atr knows ({SCHEMA_VERSION})" in res.stdout + res.stderr
