"""The API's own folder, ``ATR_HOME/api/``: owner-only folders and files (written with
``atr_pipeline.private.write_private``, whole or not at all).

The client registry, the token signing key and export jobs hold what lets someone read PHI, so
every folder is 0700 and every file 0600 whatever the umask, and a file appears whole or not at all.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

API_DIR = "api"


def api_home(home: Path) -> Path:
    return owner_dir(Path(home) / API_DIR)


def owner_dir(path: Path) -> Path:
    """``path`` (and missing parents inside it) created 0700; an existing folder is tightened to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def signing_key(home: Path) -> bytes:
    """The HMAC key of the server's own access tokens: made once, kept 0600, survives restarts."""
    path = api_home(home) / "token_key"
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_hex(32).encode("ascii"))
    return path.read_bytes()
