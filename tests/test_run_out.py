"""`atr run --out DIR`: the month's export appears under DIR without being written twice.

On the export's file system each file under DIR is a hard link to the published export file
(one copy of the month on disk); on another file system (/dev/shm, a tmpfs) it is a copy. Either
way the files are owner-only, equal the published export byte for byte, and a later month that
rebuilds an earlier one refreshes that month's files under DIR too.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from pathlib import Path

import pytest
from atr_cli import atr

ACME = "acme_commercial"
INBOX = Path(__file__).resolve().parents[1] / "fixtures" / ACME


def _inbox(tmp_path: Path, *months: str) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    for month in months:
        name = f"ACME_ATTRIB_{month.replace('-', '')}.csv"
        shutil.copyfile(INBOX / name, inbox / name)
    return inbox


def _run(tmp_path: Path, out: Path, *months: str) -> None:
    res = atr("run", "--source", ACME, "--inbox", str(_inbox(tmp_path, *months)), "--out", str(out), home=tmp_path / "home")
    assert res.returncode == 0, res.stdout + res.stderr


def _files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def test_out_on_the_same_file_system_links_the_published_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(tmp_path, out, "2026-08")
    export = tmp_path / "home" / "exports" / ACME / "2026-08"
    published, linked = _files(export), _files(out / ACME / "2026-08")
    assert sorted(linked) == sorted(published) and "manifest.json" in linked
    for name, path in linked.items():
        assert os.path.samefile(path, published[name]), name  # one file on disk, two names
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    # 2026-10 arrives before 2026-09: the run of 09 rebuilds 10 (month order), and the 10 under
    # --out follows: new files, still linked to the newly published ones, never the stale ones.
    _run(tmp_path, out, "2026-10")
    before = (out / ACME / "2026-10" / "manifest.json").read_bytes()
    _run(tmp_path, out, "2026-09")
    after = _files(out / ACME / "2026-10")
    assert after["manifest.json"].read_bytes() != before
    for name, path in _files(tmp_path / "home" / "exports" / ACME / "2026-10").items():
        assert os.path.samefile(after[name], path), name


def test_out_on_another_file_system_is_a_copy(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system other than the test's temporary folder")
    out = shm / f"atr-test-out-{uuid.uuid4().hex[:8]}"
    try:
        _run(tmp_path, out, "2026-08")
        published, copied = _files(tmp_path / "home" / "exports" / ACME / "2026-08"), _files(out / ACME / "2026-08")
        assert sorted(copied) == sorted(published)
        for name, path in copied.items():
            assert not os.path.samefile(path, published[name]), name
            assert path.read_bytes() == published[name].read_bytes(), name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    finally:
        shutil.rmtree(out, ignore_errors=True)
