"""Which mapping reads a file, and the file's sha256.

In: a base file name and the loaded mappings (``spec.load_mappings``), or a path.
Out: the one mapping whose ``file.pattern`` matches the whole name (or None), a hex digest.
Refused: a name two mappings match (``MappingConflict``): the mappings must be fixed, guessing
would read a payer's file with another payer's layout.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from atr_pipeline.errors import AtrError
from atr_pipeline.layouts.spec import MappingSpec

_CHUNK = 1 << 20


class MappingConflict(AtrError):
    """More than one mapping's file pattern matches a file name."""

    def __init__(self, file_name: str, source_ids: list[str]):
        self.file_name = file_name
        self.source_ids = source_ids
        super().__init__(f"{file_name}: matched by more than one mapping ({', '.join(source_ids)}); make the file patterns exclusive")


def match_mapping(file_name: str, mappings: dict[str, MappingSpec]) -> MappingSpec | None:
    """The mapping whose pattern matches the whole base name; None when none does."""
    hits = [spec for _, spec in sorted(mappings.items()) if spec.file.match(file_name)]
    if len(hits) > 1:
        raise MappingConflict(file_name, [s.source_id for s in hits])
    return hits[0] if hits else None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (landed files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
