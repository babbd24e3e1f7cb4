"""Settings from the environment (``ATR_*``), with embedded defaults that need no servers.

All state (landing files, the DuckDB history, exports, rejects) lives under ``ATR_HOME``
(default ``./.atr_home``), never inside the package. History is one DuckDB file per source
(``ATR_HOME/history/<source>.duckdb``, or under ``ATR_HISTORY_DIR``), so partitions of different
sources never wait for one writer.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from atr_pipeline.errors import EnvironmentProblem, environment_problem
from atr_pipeline.private import private_dir, protect_home


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_or(name: str, default: str) -> str:
    return _env(name) or default


@dataclass(frozen=True)
class Settings:
    home: Path
    mappings_dir: Path
    inbox_dir: Path
    id_key: bytes = field(repr=False)  # key of the keyed hash behind every resource id
    outbox: Path | None = None  # ATR_OUTBOX; None: ATR_HOME/outbox

    @property
    def outbox_dir(self) -> Path:
        """Where answers to providers go, one folder per provider (request-file responses)."""
        return self.outbox or self.home / "outbox"

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def history_dir(self) -> Path:
        return history_dir_for(self.home)

    def history_path(self, source_id: str) -> Path:
        """The DuckDB file holding ``source_id``'s history (``history.stores.history_store`` opens it)."""
        return self.history_dir / f"{source_id}.duckdb"

    @property
    def legacy_history_path(self) -> Path:
        """Where releases before home format 3 kept every source's history in one file (upgraded away)."""
        return legacy_history_path_for(self.home)

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    @property
    def rejects_dir(self) -> Path:
        return self.home / "rejects"


def _load_or_create_key(home: Path) -> bytes:
    """ATR_ID_KEY if set; otherwise a random key kept in ATR_HOME/secrets/id_key (0600).

    Ids must stay stable across runs, so the generated key is persisted, never regenerated.
    """
    env_key = _env("ATR_ID_KEY")
    if env_key:
        return env_key.encode("utf-8")
    key_file = home / "secrets" / "id_key"
    if key_file.exists():
        return key_file.read_bytes().strip()
    private_dir(key_file.parent)  # 0700 whatever the umask
    key = secrets.token_hex(32).encode("ascii")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


_last_home: Path | None = None


def resolve_home(home: str | Path | None = None) -> Path:
    """ATR_HOME as an absolute path (explicit argument, else $ATR_HOME, else ./.atr_home); creates nothing."""
    global _last_home
    _last_home = Path(home or _env_or("ATR_HOME", ".atr_home")).resolve()
    return _last_home


def last_home() -> Path:
    """The ATR_HOME this process resolved last (``--home`` included), for naming it in an error.

    sqlite reports a full disk or a read-only file without a path; the CLI names this one instead.
    """
    return _last_home if _last_home is not None else resolve_home()


HISTORY_DIR = "history"


def history_dir_for(home: Path) -> Path:
    """The folder of per-source history files: $ATR_HISTORY_DIR, else ATR_HOME/history."""
    return Path(_env("ATR_HISTORY_DIR") or Path(home) / HISTORY_DIR).resolve()


def legacy_history_path_for(home: Path) -> Path:
    """The single history file of homes before format 3: $ATR_HISTORY_DB, else ATR_HOME/history.duckdb.

    Read only to upgrade it into per-source files (home.py); nothing writes it any more.
    """
    return Path(_env("ATR_HISTORY_DB") or Path(home) / "history.duckdb")


def existing_home(home: str | Path | None = None) -> Path:
    """ATR_HOME for commands that only read it: must exist, is never created or written.

    Refused: ``EnvironmentProblem`` when the folder is missing.
    """
    path = resolve_home(home)
    if not path.is_dir():
        raise EnvironmentProblem(
            path, "ATR_HOME does not exist", "run `atr run` (or `atr demo`) first, or point ATR_HOME (--home) at your state folder"
        )
    return path


def load_settings(
    home: str | Path | None = None,
    *,
    inbox: str | Path | None = None,
    mappings_dir: str | Path | None = None,
) -> Settings:
    """Explicit arguments win over ATR_* variables, which win over the embedded defaults.

    Creates ATR_HOME (and the id key) when missing, and checks that it can be written, so a
    read-only or foreign ATR_HOME is reported here (``EnvironmentProblem``) before any stage runs.
    """
    home_path = resolve_home(home)
    try:
        home_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_writable(home_path)
        protect_home(home_path)  # umask 077, warn on an open ATR_HOME, PHI paths owner-only
        id_key = _load_or_create_key(home_path)
    except OSError as exc:
        problem = environment_problem(exc, home_path)
        if problem is None:
            raise
        raise problem from None
    return Settings(
        home=home_path,
        mappings_dir=mappings_dir_for(mappings_dir),
        inbox_dir=Path(inbox or _env_or("ATR_INBOX", str(home_path / "inbox"))).resolve(),
        id_key=id_key,
        outbox=Path(out).resolve() if (out := _env("ATR_OUTBOX")) else None,
    )


def mappings_dir_for(mappings_dir: str | Path | None = None) -> Path:
    """The mapping folder: explicit argument, else $ATR_MAPPINGS_DIR, else ./mappings."""
    return Path(mappings_dir or _env_or("ATR_MAPPINGS_DIR", "mappings")).resolve()


def _check_writable(folder: Path) -> None:
    """Raise the OSError a write into ``folder`` would meet (EROFS, EACCES), leaving no file.

    A real create, not ``os.access``: access() answers for the real uid, and ignores ACLs and
    network file systems; the stages will create files, so that is what is tried.
    """
    probe = folder / f".atr_write_probe.{os.getpid()}"  # per process: concurrent runs share a home
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from None
