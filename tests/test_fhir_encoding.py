"""Patient and Coverage made part by part (fhir.json.Encoding, build.iter_encoded) write the same
export files as the whole-frame build, and the staging refuses parts whose ids do not rise.

Synthetic members only (benchmarks/bench_fhir.py's generator).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from atr_pipeline.errors import AtrError
from atr_pipeline.fhir.build import ENCODERS, iter_encoded, iter_prepared, prepare
from atr_pipeline.fhir.json import Encoding
from atr_pipeline.publish.export import stage_resources

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_fhir import context, synthetic_members  # noqa: E402


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".ndjson"}


@pytest.mark.parametrize("part", [700, 5825, 100_000])  # many parts, exactly one full part, one small part
def test_parts_write_the_files_the_whole_frames_write(tmp_path: Path, part: int) -> None:
    ctx = context()
    rows = prepare(synthetic_members(6000).sample(fraction=1.0, shuffle=True, seed=5), ctx)
    encoded = list(iter_encoded(rows, ctx))
    assert {t for t, built in encoded if isinstance(built, Encoding)} == set(ENCODERS)
    by_parts = stage_resources(tmp_path / "parts" / "2026-09", iter(encoded), max_lines_per_file=part)
    whole = stage_resources(tmp_path / "whole" / "2026-09", iter_prepared(rows, ctx), max_lines_per_file=part)
    assert by_parts.heights == whole.heights and by_parts.heights["Patient"] == 5825
    assert by_parts.digests == whole.digests
    assert _files(by_parts.folder) == _files(whole.folder)
    if part == 700:
        assert len(by_parts.files["Coverage"]) == 9


class _Parts:
    """A ResourceParts whose second part repeats the first part's last id."""

    height = 4

    def parts(self, rows: int) -> Iterator[pl.DataFrame]:
        yield pl.DataFrame({"id": ["a", "b"], "json": ['{"id":"a"}', '{"id":"b"}']})
        yield pl.DataFrame({"id": ["b", "c"], "json": ['{"id":"b"}', '{"id":"c"}']})


def test_ids_repeated_across_parts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AtrError, match="out of order or repeated across export parts"):
        stage_resources(tmp_path / "m", iter([("Patient", _Parts())]), max_lines_per_file=2)
    assert list(tmp_path.iterdir()) == []  # the half-made staging folder is removed
