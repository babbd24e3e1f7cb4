"""PHI and secrets at rest are owner-only, whatever the umask, and another local user reads none of it.

A production-like layout: ATR_HOME created beforehand with mode 0755, DAGSTER_HOME beside it
(not inside), both in a folder every user can enter. The Dagster attribution_job runs in a
subprocess under umask 000 for a good month, a month refused over the reject threshold (so the
rejects CSV is written) and a month of the other source, with no ATR_ID_KEY (so the id key is
generated into ATR_HOME/secrets). Then:

- every file and folder under ATR_HOME (but ATR_HOME itself, which is only warned about) and
  under DAGSTER_HOME (run and event storage, compute logs, stored asset values) has no group or
  other permission bits;
- user ``nobody`` (setpriv, we run as root) tries to read every one of those files and to list
  every folder: any success fails the test. A world-readable file planted beside them is read
  by the same command (negative control: the probe can see a leak);
- the run warned that ATR_HOME is group/world-readable.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to act as user nobody"),
]

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
NOBODY = 65534

RUN = """
import dagster as dg
from atr_pipeline.definitions import defs

job = defs.resolve_job_def("attribution_job")
instance = dg.DagsterInstance.get()
for month, source in [("2026-08-01", "acme_commercial"), ("2026-09-01", "acme_commercial"), ("2026-08-01", "statewide_medicaid")]:
    res = job.execute_in_process(partition_key=dg.MultiPartitionKey({"month": month, "source": source}),
                                 instance=instance, raise_on_error=False,
                                 run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
    print(month, source, "success" if res.success else "failure")
"""


@dataclass
class Layout:
    base: Path
    home: Path
    dagster_home: Path
    output: str


def _as_nobody(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sh", "-c", script, "sh", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/", check=False)


def readable_by_nobody(files: list[Path]) -> list[str]:
    out = _as_nobody('for f in "$@"; do cat -- "$f" >/dev/null 2>&1 && echo "$f"; done', *map(str, files))
    return out.stdout.split()


def listable_by_nobody(folders: list[Path]) -> list[str]:
    out = _as_nobody('for d in "$@"; do ls -- "$d" >/dev/null 2>&1 && echo "$d"; done', *map(str, folders))
    return out.stdout.split()


@pytest.fixture(scope="module")
def layout() -> Iterator[Layout]:
    # Not under pytest's tmp_path: that is 0700, so nobody could read nothing there anyway.
    base = Path(tempfile.mkdtemp(prefix="atr-perms-", dir="/tmp"))
    try:
        base.chmod(0o755)
        home, dagster_home, inbox = base / "home", base / "dagster_home", base / "inbox"
        for d in (home, dagster_home, inbox):
            d.mkdir(mode=0o755)
            d.chmod(0o755)
        for f in (FIXTURES / "acme_commercial" / "ACME_ATTRIB_202608.csv", FIXTURES / "statewide_medicaid" / "SWMCD_ME_202608.txt"):
            shutil.copy2(f, inbox / f.name)
        shutil.copy2(FIXTURES / "bad" / "bad_values" / "ACME_ATTRIB_202608.csv", inbox / "ACME_ATTRIB_202609.csv")
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATR_", "DAGSTER_"))}
        env.update({"ATR_HOME": str(home), "ATR_INBOX": str(inbox), "ATR_MAPPINGS_DIR": str(ROOT / "mappings"),
                    "DAGSTER_HOME": str(dagster_home), "PYTHONWARNINGS": "default"})
        run = subprocess.run([sys.executable, "-c", RUN], env=env, cwd=ROOT, capture_output=True, text=True, check=False,
                             timeout=240, preexec_fn=lambda: os.umask(0))
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.split("\n")[:3] == ["2026-08-01 acme_commercial success", "2026-09-01 acme_commercial failure",
                                              "2026-08-01 statewide_medicaid success"], run.stdout + run.stderr[-2000:]
        yield Layout(base, home, dagster_home, run.stdout + run.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _tree(root: Path, *, include_root: bool) -> list[Path]:
    paths = sorted(root.rglob("*"))
    return [root, *paths] if include_root else paths


def test_the_run_wrote_what_needs_protecting(layout: Layout) -> None:
    home = layout.home
    assert (home / "history" / "acme_commercial.duckdb").is_file()
    assert (home / "secrets" / "id_key").is_file()
    assert len([p for p in (home / "landing").rglob("*") if p.suffix in (".csv", ".txt")]) == 3  # the delivered files
    assert list((home / "rejects").rglob("ACME_ATTRIB_202609.rejects.csv"))
    assert list((home / "exports").rglob("Patient.ndjson"))
    storage = layout.dagster_home / "storage"
    assert list(storage.rglob("compute_logs")) or list(storage.rglob("*.err")) or list(storage.rglob("*.out"))
    assert (storage / "canonical_rows").is_dir()  # the stored asset values
    assert list(layout.dagster_home.rglob("*.db"))  # run and event storage


def test_no_staged_rows_are_left_behind(layout: Layout) -> None:
    """Exported and refused deliveries both leave no staged copy of their rows."""
    assert [p for p in (layout.home / "staging").rglob("*") if p.is_file()] == []


def test_every_phi_path_is_owner_only_under_umask_000(layout: Layout) -> None:
    paths = _tree(layout.home, include_root=False) + _tree(layout.dagster_home, include_root=True)
    assert len(paths) > 40
    open_paths = {str(p): oct(stat.S_IMODE(p.lstat().st_mode)) for p in paths if stat.S_IMODE(p.lstat().st_mode) & 0o077}
    assert open_paths == {}
    # ATR_HOME itself is left as the admin made it (and warned about)
    assert stat.S_IMODE(layout.home.stat().st_mode) == 0o755


def test_nobody_reads_nothing(layout: Layout) -> None:
    files = [p for p in _tree(layout.home, include_root=False) + _tree(layout.dagster_home, include_root=True) if p.is_file()]
    folders = [p for p in _tree(layout.home, include_root=False) + _tree(layout.dagster_home, include_root=True) if p.is_dir()]
    assert len(files) > 20 and len(folders) > 10
    # negative control: the same probe does read a world-readable file and list an open folder
    planted = layout.base / "planted.txt"
    planted.write_text("not PHI")
    planted.chmod(0o644)
    assert readable_by_nobody([planted]) == [str(planted)]
    assert listable_by_nobody([layout.home]) == [str(layout.home)]  # the 0755 ATR_HOME: its names only
    assert readable_by_nobody(files) == []
    assert listable_by_nobody(folders) == []


def test_an_open_atr_home_is_warned_about(layout: Layout) -> None:
    assert f"ATR_HOME {layout.home} has mode 0755" in layout.output
    assert f"chmod 700 {layout.home}" in layout.output
