"""One writer at a time on a history DuckDB file: an ``fcntl.flock`` on ``<db>.lock``.

DuckDB lets one process write a database file, and while it does, other processes cannot even
open it read-only. Writers take the lock exclusively, readers take it shared, so a reader waits
for a writer instead of failing, and two writers queue instead of one crashing. History is one
file per source (``history/<source>.duckdb``, see stores.py), so this lock, like ``source_lock``,
is per source: writers of different sources never wait for each other.
Refused: a lock not obtained within ``timeout`` seconds raises ``HistoryLocked``.

``source_lock`` is the second lock: one per source under ``ATR_HOME/locks/``, held from the
diff of a month to its publish (and while later months are rebuilt on top of it), so months of
one source are built and published one at a time while other sources run in parallel. It is
re-entrant within a thread, so a function that takes it may call another that takes it too.
"""

from __future__ import annotations

import fcntl
import os
import threading
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
def file_lock(lock_path: Path, *, exclusive: bool, timeout: float, what: str | None = None) -> Iterator[None]:
    """Hold ``flock`` on ``lock_path`` (exclusive or shared) for the ``with`` block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, lock_path, exclusive=exclusive, timeout=timeout, what=what)
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


def _acquire(fd: int, lock_path: Path, *, exclusive: bool, timeout: float, what: str | None = None) -> None:
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
                    what or f"history store {lock_path.name}: {kind} lock not obtained within {timeout:g} s; "
                    "another atr process is writing this source's history"
                ) from None
            time.sleep(_POLL_SECONDS)


# A month build of a large source takes minutes; the wait is bounded only to surface a stuck run.
SOURCE_LOCK_TIMEOUT_ENV = "ATR_SOURCE_LOCK_TIMEOUT"
_DEFAULT_SOURCE_LOCK_TIMEOUT = 6 * 3600.0
LOCKS_DIR = "locks"

# (lock file, thread) -> depth: flock conflicts between two descriptors of one process, so a
# nested take of the same lock in the same thread must not open a second descriptor.
_held: dict[tuple[str, int], int] = {}
_held_guard = threading.Lock()


def source_lock_path(home: Path, source_id: str) -> Path:
    return Path(home) / LOCKS_DIR / f"source-{source_id}.lock"


@contextmanager
def source_lock(home: Path, source_id: str, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the per-source lock (exclusive, re-entrant in this thread) for the ``with`` block."""
    path = source_lock_path(home, source_id)
    key = (str(path), threading.get_ident())
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    if timeout is None:
        timeout = float(os.environ.get(SOURCE_LOCK_TIMEOUT_ENV) or _DEFAULT_SOURCE_LOCK_TIMEOUT)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    what = f"source {source_id}: another atr run has held its lock for over {timeout:g} s ({path})"
    with file_lock(path, exclusive=True, timeout=timeout, what=what):
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]


@contextmanager
def delivery_lock(home: Path, sha256: str, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock of one delivery (by sha256): a second run of the same file waits here."""
    if timeout is None:
        timeout = float(os.environ.get(SOURCE_LOCK_TIMEOUT_ENV) or _DEFAULT_SOURCE_LOCK_TIMEOUT)
    path = Path(home) / LOCKS_DIR / f"file-{sha256[:16]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    what = f"another atr run has held delivery {sha256[:12]} for over {timeout:g} s ({path})"
    with file_lock(path, exclusive=True, timeout=timeout, what=what):
        yield
