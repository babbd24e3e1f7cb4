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
from polars.testing import assert_frame_equal

from atr_pipeline.errors import AtrError
from atr_pipeline.fhir.build import ENCODERS, iter_encoded, iter_prepared, prepare
from atr_pipeline.fhir.group import build_groups, encode_groups
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
    assert {t for t, built in encoded if not isinstance(built, pl.DataFrame)} == set(ENCODERS)
    by_parts = stage_resources(tmp_path / "parts" / "2026-09", iter(encoded), max_lines_per_file=part)
    whole = stage_resources(tmp_path / "whole" / "2026-09", iter_prepared(rows, ctx), max_lines_per_file=part)
    assert by_parts.heights == whole.heights and by_parts.heights["Patient"] == 5825
    assert by_parts.digests == whole.digests
    assert _files(by_parts.folder) == _files(whole.folder)
    if part == 700:
        assert len(by_parts.files["Coverage"]) == 9


@pytest.mark.parametrize("entries", [1, 900, 5000, 10**9])  # a Group per piece .. all Groups in one piece
def test_groups_made_a_few_at_a_time_equal_the_whole(entries: int) -> None:
    ctx = context()
    members = synthetic_members(6000)
    # more contracts than the generator makes, of uneven sizes, so pieces hold several Groups
    members = members.with_columns(contract_id=pl.format("C{}", pl.int_range(pl.len()) % 7 * (pl.int_range(pl.len()) % 3)))
    rows = prepare(members, ctx)
    whole = build_groups(rows, ctx)
    encoded = encode_groups(rows, ctx, entries_per_chunk=entries)
    assert whole.height == encoded.height > 5
    pieces = list(encoded.parts(3))
    assert all(p.height <= 3 for p in pieces) and len(pieces) >= (2 if entries < 10**9 else 1)
    assert pl.concat(pieces).equals(whole)


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


class _Pieces:
    """Seven resources in pieces of 3, 1 and 3 rows: pieces that straddle the files' boundaries."""

    height = 7

    def parts(self, rows: int) -> Iterator[pl.DataFrame]:
        ids = [f"id{i}" for i in range(7)]
        for start, size in ((0, 3), (3, 1), (4, 3)):
            part = ids[start : start + size]
            yield pl.DataFrame({"id": part, "json": [f'{{"resourceType":"Patient","id":"{i}"}}' for i in part]})


def test_pieces_are_cut_into_files_as_a_whole_frame_is(tmp_path: Path) -> None:
    frame = pl.concat(list(_Pieces().parts(2)))
    pieces = stage_resources(tmp_path / "a" / "m", iter([("Patient", _Pieces())]), max_lines_per_file=2)
    whole = stage_resources(tmp_path / "b" / "m", iter([("Patient", frame)]), max_lines_per_file=2)
    assert [f.count for f in pieces.files["Patient"]] == [2, 2, 2, 1]
    assert pieces.files == whole.files and pieces.digests == whole.digests
    assert _files(pieces.folder) == _files(whole.folder)


def test_prepare_consuming_the_member_list_gives_the_same_rows() -> None:
    ctx = context()
    members = synthetic_members(3000).sample(fraction=1.0, shuffle=True, seed=3)
    # untrimmed and empty strings, so the cleaning has work to do column by column
    members = members.with_columns(pl.col("family_name").str.pad_start(12), pl.col("middle_name").str.slice(0, 0))
    expected = prepare(members, ctx)
    taken = members.clone()
    assert_frame_equal(prepare(taken, ctx, consume=True), expected)
    assert taken.width == 0 and members.width > 0  # the caller's frame was emptied, column by column
