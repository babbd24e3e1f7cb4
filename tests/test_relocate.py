"""A moved, copied or restored ATR_HOME works: everything in it names its own files relative to
it. The home here is moved after a run was killed with its file landed but not processed; the
old place is gone, so reading anything from there would fail."""

from __future__ import annotations

import shutil
import signal
import sqlite3
from pathlib import Path

from overlap_tools import atr, differences, in_order_reference, run_args, trend_rows

ACME = "acme_commercial"


def test_home_moved_after_a_kill_with_the_file_landed(tmp_path: Path) -> None:
    reference = in_order_reference(tmp_path / "ref", ACME, ["2026-08", "2026-09"])
    old = tmp_path / "old_home"
    assert atr(run_args(ACME, "2026-08"), old).returncode == 0
    killed = atr(run_args(ACME, "2026-09"), old, env={"ATR_CRASH_AT": "recorded"})
    assert killed.returncode == -signal.SIGKILL
    with sqlite3.connect(old / "landing" / "ledger.sqlite") as con:
        stored = dict(con.execute("SELECT original_name, path FROM landed").fetchall())
        assert con.execute("SELECT status FROM landed WHERE original_name LIKE '%202609%'").fetchone() == ("landed",)
    assert all(not Path(p).is_absolute() and p.startswith("landing/") for p in stored.values()), stored
    new = tmp_path / "elsewhere" / "home"
    new.parent.mkdir()
    shutil.move(old, new)
    res = atr(run_args(ACME, "2026-09"), new)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok       ACME_ATTRIB_202609.csv" in res.stdout
    assert not old.exists()
    assert differences(new, reference, ACME) == []
    assert trend_rows(new, ACME) == trend_rows(reference, ACME)


def test_a_copied_home_reads_its_own_landed_file(tmp_path: Path) -> None:
    """A copy beside the original: the copy must read its landed file, not the original's."""
    original = tmp_path / "home"
    killed = atr(run_args(ACME, "2026-09"), original, env={"ATR_CRASH_AT": "recorded"})
    assert killed.returncode == -signal.SIGKILL
    copy = tmp_path / "restored"
    shutil.copytree(original, copy)
    # Spoil the original's landed file: a copy that read it would fail or publish other rows.
    for landed in (original / "landing" / ACME).rglob("*.csv"):
        landed.write_text("garbage\n")
    res = atr(run_args(ACME, "2026-09"), copy)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "40 rows read, 40 accepted" in res.stdout
