"""Environment errors through the real `atr` entry point: a read-only, unwritable, missing or full
ATR_HOME gives one line naming the path and what to do, exit code 3; report-only commands
(`trends`, `conform`) work on a read-only ATR_HOME and create nothing there.

The tests run as root, which ignores file permissions, so "read-only" is made two ways that
hold for root too: a read-only bind mount in a private mount namespace (EROFS), and root
without its capabilities (setpriv) on a folder with every write bit removed (EACCES). A tiny
tmpfs in a private mount namespace is the full disk.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from atr_cli import atr, can_unshare_mounts, home_with_acme_history

from atr_pipeline.errors import EXIT_ENVIRONMENT

needs_mounts = pytest.mark.skipif(not can_unshare_mounts(), reason="no private mount namespace here (unshare -m)")
needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")

# root without CAP_DAC_OVERRIDE and friends: file modes apply to it like to any user.
NO_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


def _ro_bind(folder: Path) -> list[str]:
    return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]


def _tmpfs(folder: Path, size: str) -> list[str]:
    return ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"', str(folder)]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == EXIT_ENVIRONMENT, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def recorded_home(tmp_path_factory) -> Path:
    """An ATR_HOME with the three acme months run through every stage."""
    return home_with_acme_history(tmp_path_factory.mktemp("env") / "home")


def _copy(home: Path, target: Path) -> Path:
    shutil.copytree(home, target, symlinks=True)
    return target


def _check_report_commands(home: Path, prefix: list[str]) -> None:
    trends = atr("trends", "--source", "acme_commercial", "--home", str(home), prefix=prefix)
    assert trends.returncode == 0, trends.stdout + trends.stderr
    assert "VBC25-0001" in trends.stdout and "2026-10" in trends.stdout
    conform = atr("conform", str(home / "exports" / "acme_commercial" / "2026-09"), prefix=prefix)
    assert conform.returncode == 0, conform.stdout + conform.stderr
    assert "ATR conformance: PASS" in conform.stdout


@needs_mounts
def test_read_only_mount(recorded_home, tmp_path):
    home = _copy(recorded_home, tmp_path / "home")
    before = _digest(home)
    _check_report_commands(home, _ro_bind(home))
    res = atr("run", "--source", "acme_commercial", "--inbox", "fixtures/acme_commercial", "--home", str(home), "--reprocess",
              prefix=_ro_bind(home))
    _one_line_error(res, str(home), "read-only file system", "ATR_HOME")
    assert _digest(home) == before


@needs_setpriv
def test_unwritable_home_for_a_user_without_privileges(recorded_home, tmp_path):
    home = _copy(recorded_home, tmp_path / "home")
    for path in [home, *home.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        before = _digest(home)
        _check_report_commands(home, NO_CAPS)
        res = atr("run", "--source", "acme_commercial", "--inbox", "fixtures/acme_commercial", "--home", str(home),
                  "--reprocess", prefix=NO_CAPS)
        _one_line_error(res, str(home), "permission denied", "write access")
        assert _digest(home) == before  # nothing created, not even a lock file
    finally:
        for path in [home, *home.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


@needs_mounts
def test_read_only_output_folder_outside_home(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    res = atr("fixtures", "--source", "acme_commercial", "--members", "5", "--month", "2026-09", "--out", str(out),
              home=tmp_path / "home", prefix=_ro_bind(out))
    line = _one_line_error(res, str(out), "read-only file system", "point the command at a writable folder")
    assert "ATR_HOME" not in line


def test_missing_home_for_a_report_command_is_not_created(tmp_path):
    missing = tmp_path / "nowhere"
    res = atr("trends", "--source", "acme_commercial", "--home", str(missing))
    _one_line_error(res, str(missing), "does not exist", "atr run")
    assert not missing.exists()


def test_home_under_a_file_is_an_environment_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = atr("run", "--source", "acme_commercial", "--inbox", "fixtures/acme_commercial", "--home", str(blocker / "home"))
    _one_line_error(res, str(blocker), "not a folder")


@needs_mounts
@pytest.mark.parametrize("size", ["64k", "300k", "2m"])
def test_full_disk(tmp_path, size):
    """Whichever write meets the full disk (id key, DuckDB WAL, NDJSON), the answer is one line."""
    mount = tmp_path / "disk"
    mount.mkdir()
    home = mount / "home"
    res = atr("run", "--source", "acme_commercial", "--inbox", "fixtures/acme_commercial", "--home", str(home),
              prefix=_tmpfs(mount, size))
    line = _one_line_error(res, "no space left on the disk", "free space")
    assert str(home) in line


def test_exit_codes_are_documented():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "3 on environment errors" in readme
