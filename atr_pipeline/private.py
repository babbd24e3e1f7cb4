"""Owner-only files and folders for everything that holds PHI or secrets, whatever the umask.

Why a process umask and not only explicit modes: DuckDB (the history file and its WAL), SQLite
(the landing ledger and its WAL), polars (rejects CSV, staged rows) and Dagster (run storage,
event logs, compute logs, step outputs) create files themselves, with ``0666 & ~umask``. Under
umask 000 those are world-readable. ``restrict_umask`` adds 077 to the process umask once, so
every later creation is owner-only; ``secure_tree`` fixes what an earlier run left behind.

ATR_HOME itself is not changed (an admin may share the parent folder on purpose); a group- or
world-readable ATR_HOME is warned about, and each PHI path inside it is made owner-only.
"""

from __future__ import annotations

import logging
import os
import stat
import uuid
from pathlib import Path

log = logging.getLogger("atr_pipeline")

DIR_MODE = 0o700
FILE_MODE = 0o600
OPEN_BITS = 0o077  # group and other: never on a PHI path

# What holds PHI or secrets under ATR_HOME. history/ holds one DuckDB file per source;
# history.duckdb* is a pre-format-3 home's single file, its WAL and DuckDB's temp files.
PHI_ENTRIES = ("landing", "rejects", "exports", "staging", "secrets", "inbox", "history")
PHI_GLOBS = ("history.duckdb*", "*.duckdb", "*.duckdb.wal", "*.lock")

_secured: set[tuple[str, str]] = set()


def restrict_umask() -> int:
    """Make every file this process creates from now on owner-only; returns the new umask."""
    old = os.umask(0o077)
    new = old | OPEN_BITS
    os.umask(new)
    return new


def private_dir(path: Path) -> Path:
    """``mkdir -p`` with mode 0700 on the folder itself, whatever the umask (mkdir's mode is filtered by it)."""
    restrict_umask()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _chmod_if_mine(path, DIR_MODE)
    return path


def private_open(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """``os.open`` that leaves the file 0600 even when it existed before with wider bits."""
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def write_private(path: Path, data: bytes) -> None:
    """``data`` to ``path``, 0600 in a 0700 folder, whole or not at all: a temporary sibling, fsync,
    one rename, then the folder's entry made durable (a reader never sees half a file)."""
    from atr_pipeline.fsync import fsync_dir

    path = Path(path)
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = private_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def private_file(path: Path) -> Path:
    """chmod an existing file to 0600 (e.g. one a library created); missing files are ignored."""
    _chmod_if_mine(Path(path), FILE_MODE)
    return Path(path)


def secure_tree(root: Path) -> int:
    """Folders 0700, files 0600 under ``root`` (root included); returns how many modes changed.

    Only paths this user owns are touched; symlinks are not followed.
    """
    root = Path(root)
    changed = 0
    if not root.exists() or root.is_symlink():
        return 0
    changed += _chmod_if_mine(root, DIR_MODE if root.is_dir() else FILE_MODE)
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                p = Path(dirpath, name)
                if not p.is_symlink():
                    changed += _chmod_if_mine(p, DIR_MODE)
            for name in filenames:
                p = Path(dirpath, name)
                if not p.is_symlink():
                    changed += _chmod_if_mine(p, FILE_MODE)
    return changed


def protect_home(home: Path) -> None:
    """Once per process and folder: umask 077, warn when ATR_HOME is open, PHI paths owner-only."""
    restrict_umask()
    home = Path(home)
    if ("home", str(home)) in _secured:
        return
    _secured.add(("home", str(home)))
    warn_if_open(home)
    for name in PHI_ENTRIES:
        secure_tree(home / name)
    for pattern in PHI_GLOBS:
        for p in home.glob(pattern):
            secure_tree(p)


def protect_dagster_home(dagster_home: str | Path | None = None) -> Path | None:
    """DAGSTER_HOME (run storage, event logs, compute logs, step outputs) owner-only, wherever it is.

    The webserver and daemon processes create some of these files before this project's code is
    loaded, so the folder itself is made 0700 (nothing under it is reachable by others) and what
    is already there is made owner-only; files this process creates later follow the umask.
    """
    restrict_umask()
    raw = dagster_home or os.environ.get("DAGSTER_HOME")
    if not raw:
        return None
    path = Path(raw)
    if not path.is_dir():
        return None
    secure_tree(path)
    return path


def is_open(path: Path) -> bool:
    return bool(stat.S_IMODE(Path(path).stat().st_mode) & OPEN_BITS)


def warn_if_open(home: Path) -> bool:
    """Log a warning (a path and a mode, no PHI) when ATR_HOME is group/world accessible."""
    try:
        mode = stat.S_IMODE(Path(home).stat().st_mode)
    except FileNotFoundError:
        return False
    if not mode & OPEN_BITS:
        return False
    message = (
        f"ATR_HOME {home} has mode {mode:04o}: other users can list it. The PHI inside is kept "
        f"owner-only (0700/0600), but make ATR_HOME itself 0700: chmod 700 {home}"
    )
    log.warning(message)
    return True


def _chmod_if_mine(path: Path, mode: int) -> int:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) == mode:
        return 0
    os.chmod(path, mode)
    return 1
