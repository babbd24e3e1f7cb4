"""The manifest's sha256 of every export file is the sha256 of the bytes on disk, plain or gzip,
one part or many, whole frames or part-by-part encodings (the digest is now computed as the
bytes are written, not by reading the file back)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from atr_pipeline.publish.export import MANIFEST_NAME, write_bulk_export
from atr_pipeline.publish.synthetic import synthetic_errors, synthetic_resources


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("max_lines", [4, 100_000])
def test_manifest_digests_are_the_files_bytes(tmp_path: Path, gz: bool, max_lines: int) -> None:
    out = tmp_path / "export"
    write_bulk_export(
        out, synthetic_resources(40, groups=3), errors=synthetic_errors(5), transaction_time=datetime(2026, 11, 1, tzinfo=UTC),
        request="Group/x/$davinci-data-export", gzip=gz, max_lines_per_file=max_lines,
    )
    digests = orjson.loads((out / MANIFEST_NAME).read_bytes())["extension"]["sha256"]
    files = sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME)
    assert sorted(digests) == files and len(files) > (10 if max_lines == 4 else 5)
    assert all(name.endswith(".gz") == gz for name in files)
    for name in files:
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digests[name], name
