"""One writer at a time on the history DuckDB file: an ``fcntl.flock`` on ``<db>.lock``.

DuckDB lets one process write a database file, and while it does, other processes cannot even
open it read-only. Writers take the lock exclusively, readers take it shared, so a reader waits
for a writer instead of failing, and two writers queue instead of one crashing.
Refused: a lock not obtained within ``timeout`` seconds raises ``HistoryLocked``.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from atr_pipeline.errors import AtrError

_POLL_SECONDS = 0.05


class HistoryLocked(AtrError):
    """Another process held the history store's lock for longer than the timeout."""


def lock_path_for(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lock")


@contextmanager
def file_lock(lock_path: Path, *, exclusive: bool, timeout: float) -> Iterator[None]:
    """Hold ``flock`` on ``lock_path`` (exclusive or shared) for the ``with`` block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, lock_path, exclusive=exclusive, timeout=timeout)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def read_only_lock(lock_path: Path, *, timeout: float) -> Iterator[None]:
    """A shared lock that creates nothing, for readers of a read-only ATR_HOME.

    flock works on a descriptor opened read-only. No lock file means no writer ever ran here
    (writers create it), so there is nothing to wait for.
    """
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        _acquire(fd, lock_path, exclusive=False, timeout=timeout)
        yield
    finally:
        os.close(fd)


def _acquire(fd: int, lock_path: Path, *, exclusive: bool, timeout: float) -> None:
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    deadline = time.monotonic() + timeout
    while True:
        try:
            # Polling with LOCK_NB (rather than a blocking flock) so the wait can time out.
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                kind = "write" if exclusive else "read"
                raise HistoryLocked(
                    f"history store {lock_path.name}: {kind} lock not obtained within {timeout:g} s; "
                    "another atr process is writing (Dagster: put writing steps in a pool of 1)"
                ) from None
            time.sleep(_POLL_SECONDS)
