"""Running the installed `atr` console script as a user would, for the tests/test_cli_*.py files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The console script of the interpreter running the tests (the project's .venv): the real entry
# point, its main() and exit codes included; `python -m` only when it is not installed there.
_SCRIPT = Path(sys.executable).parent / "atr"
ATR = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "atr_pipeline.cli"]


def atr(
    *args: str,
    home: Path | None = None,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``atr ARGS`` with stdout and stderr captured (so neither is a terminal)."""
    full_env = {**os.environ, "ATR_ID_KEY": "test-key", **(env or {})}
    for name in ("ATR_INBOX", "ATR_HOME", "COLUMNS", "ATR_MAPPINGS_DIR"):
        full_env.pop(name, None)
    if home is not None:
        full_env["ATR_HOME"] = str(home)
    full_env.update(env or {})
    return subprocess.run([*(prefix or []), *ATR, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def home_with_acme_history(home: Path) -> Path:
    """``home`` after `atr run` of the three bundled acme months (every stage, exports included)."""
    res = atr("run", "--source", "acme_commercial", "--inbox", "fixtures/acme_commercial", home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    return home


def can_unshare_mounts() -> bool:
    """A private mount namespace (to mount a read-only bind or a tiny tmpfs) is allowed here."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0
