"""Durability of folder entries, shared by landing (sources/landing.py) and the bulk export
(publish/export.py): after a file is created or renamed into a folder, the folder itself must be
flushed, or a crash can lose the new name although the file's bytes were synced."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (new and renamed names) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
