"""Settings from the environment (``ATR_*``), with embedded defaults that need no servers.

All state (landing files, the DuckDB history, exports, rejects) lives under ``ATR_HOME``
(default ``./.atr_home``), never inside the package.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from atr_pipeline.private import private_dir, protect_home


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    home: Path
    mappings_dir: Path
    inbox_dir: Path
    id_key: bytes = field(repr=False)  # key of the keyed hash behind every resource id

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def history_path(self) -> Path:
        return Path(_env("ATR_HISTORY_DB") or self.home / "history.duckdb")

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


def load_settings(
    home: str | Path | None = None,
    *,
    inbox: str | Path | None = None,
    mappings_dir: str | Path | None = None,
) -> Settings:
    """Explicit arguments win over ATR_* variables, which win over the embedded defaults."""
    home_path = Path(home or _env("ATR_HOME", ".atr_home")).resolve()
    home_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    protect_home(home_path)  # umask 077, warn on an open ATR_HOME, PHI paths owner-only
    return Settings(
        home=home_path,
        mappings_dir=Path(mappings_dir or _env("ATR_MAPPINGS_DIR", "mappings")).resolve(),
        inbox_dir=Path(inbox or _env("ATR_INBOX", str(home_path / "inbox"))).resolve(),
        id_key=_load_or_create_key(home_path),
    )
