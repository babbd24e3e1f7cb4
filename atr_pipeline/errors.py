"""Errors a user can act on. Messages name file, line and field, never a PHI value."""

from __future__ import annotations


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
