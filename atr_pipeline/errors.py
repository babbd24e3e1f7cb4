"""Errors a user can act on. Messages name file, line and field, never a PHI value."""

from __future__ import annotations

import errno
import os
import re


class AtrError(Exception):
    """Base class for errors the CLI prints without a traceback."""


class FileRefused(AtrError):
    """A whole file is refused: nothing from it goes further.

    ``rule`` is a short machine name (``encoding``, ``trailer_count``, ``reject_threshold``...),
    ``reason`` a plain sentence without PHI, ``line_number`` the first offending line if any.
    """

    def __init__(self, file_name: str, rule: str, reason: str, line_number: int | None = None):
        self.file_name = file_name
        self.rule = rule
        self.reason = reason
        self.line_number = line_number
        where = f"{file_name}, line {line_number}" if line_number else file_name
        super().__init__(f"{where}: refused ({rule}): {reason}")

    def __reduce__(self):
        # Exceptions pickle their message args by default; Dagster stores a refusal inside an
        # asset value, so it must round-trip with its fields.
        return (FileRefused, (self.file_name, self.rule, self.reason, self.line_number))


# Exit codes of `atr` (README "Exit codes"): one place, every command uses these.
EXIT_OK = 0
EXIT_REFUSED = 1  # a file (or an export, a load) was refused; the others were still processed
EXIT_USAGE = 2  # bad arguments, invalid mapping, not an export folder
EXIT_ENVIRONMENT = 3  # ATR_HOME or another folder is missing, read-only, not ours, or its disk is full

# errno -> (what is wrong, what to do). Only conditions the user fixes outside the program.
# {target}: "ATR_HOME (--home)" for a path inside the state folder, else "the command".
_ENVIRONMENT_ERRNOS: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", "give this user read and write access to it, or point {target} at a folder it owns"),
    errno.EPERM: ("operation not permitted", "give this user read and write access to it, or point {target} at a folder it owns"),
    errno.EROFS: ("read-only file system", "point {target} at a writable folder"),
    errno.ENOSPC: ("no space left on the disk", "free space on that disk (or point {target} at another), then run again"),
    errno.EDQUOT: ("disk quota exceeded", "free space within the quota (or point {target} elsewhere), then run again"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "point {target} at a folder"),
}


def _problem(code: int, path: str | os.PathLike[str] | None, home: str | os.PathLike[str] | None) -> EnvironmentProblem:
    problem, hint = _ENVIRONMENT_ERRNOS[code]
    where = os.fspath(path) if path is not None else os.fspath(home) if home is not None else "ATR_HOME"
    inside = home is None or where == os.fspath(home) or where.startswith(os.fspath(home).rstrip(os.sep) + os.sep)
    return EnvironmentProblem(where, problem, hint.format(target="ATR_HOME (--home)" if inside else "the command"))


class EnvironmentProblem(AtrError):
    """A folder the command needs cannot be used (missing, read-only, not ours, disk full).

    Not the input's fault and not a bug: the CLI prints this one line and exits with
    ``EXIT_ENVIRONMENT``. ``path`` names the file or folder, ``hint`` what to do.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, hint: str):
        self.path = os.fspath(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{self.path}: {problem}; {hint}")

    def __reduce__(self):
        return (EnvironmentProblem, (self.path, self.problem, self.hint))


def environment_problem(exc: BaseException, home: str | os.PathLike[str] | None = None) -> EnvironmentProblem | None:
    """The ``EnvironmentProblem`` an error stands for, or None when it is something else.

    Understands ``OSError`` by errno and the messages of sqlite3 and DuckDB, which do not carry
    an errno. ``home`` is ATR_HOME: named when the error has no path (sqlite names none), and
    the hint points at ATR_HOME only for paths inside it.
    """
    # A full disk often surfaces as a follow-on error (DuckDB's rollback after the failed
    # commit): the cause is somewhere in the chain of errors being handled.
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _environment_problem_of(current, home)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None


def _environment_problem_of(exc: BaseException, home: str | os.PathLike[str] | None) -> EnvironmentProblem | None:
    if isinstance(exc, EnvironmentProblem):
        return exc
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        return _problem(exc.errno, exc.filename, home)
    text = str(exc)
    lowered = text.lower()
    for needle, code in (
        ("readonly database", errno.EROFS),
        ("read-only file system", errno.EROFS),
        ("permission denied", errno.EACCES),
        ("unable to open database file", errno.EACCES),  # sqlite: a folder it may not write or enter
        ("database or disk is full", errno.ENOSPC),
        ("no space left on device", errno.ENOSPC),
        ("disk quota exceeded", errno.EDQUOT),
    ):
        if needle in lowered and _is_storage_error(exc):
            quoted = re.search(r'"(/[^"]+)"', text)  # DuckDB quotes the file it failed on
            return _problem(code, quoted.group(1) if quoted else None, home)
    return None


def _is_storage_error(exc: BaseException) -> bool:
    """sqlite3 and DuckDB errors (and polars', which wrap OS errors in their message)."""
    module = type(exc).__module__ or ""
    return isinstance(exc, OSError) or module.split(".")[0] in ("sqlite3", "_duckdb", "duckdb", "polars")
