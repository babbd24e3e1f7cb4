"""The streaming reader gives the same answer whatever its slice size (issue 8).

``read_file`` cuts the file into line-aligned byte slices (``chunk_bytes``) so a large file's
bytes, text and lines never coexist. These tests read the same files with slices of one byte
(every line its own slice), a few lines, and the default, and require identical rows, rejects,
control totals and refusals (rule, line number and reason).
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from atr_pipeline.errors import FileRefused
from atr_pipeline.layouts.files import match_mapping
from atr_pipeline.layouts.read import CHUNK_BYTES, ReadResult, read_file
from atr_pipeline.layouts.spec import load_mappings, parse_mapping
from atr_pipeline.validate.rules import validate_rows

REPO = Path(__file__).resolve().parents[1]
MAPPINGS = load_mappings(REPO / "mappings")
ACME = MAPPINGS["acme_commercial"]
FIXTURES = REPO / "fixtures"
SLICES = (1, 97, 4096, CHUNK_BYTES)


def _same(a: ReadResult, b: ReadResult) -> None:
    assert a.rows.equals(b.rows)
    assert a.rows.schema == b.rows.schema
    assert a.structural_rejects.equals(b.structural_rejects)
    assert (a.records_read, a.reporting_month, a.control, a.source_columns) == (b.records_read, b.reporting_month, b.control, b.source_columns)


def _refusal(path: Path, spec, chunk_bytes: int) -> tuple[str, int | None, str]:
    with pytest.raises(FileRefused) as info:
        read_file(path, spec, chunk_bytes=chunk_bytes)
    return info.value.rule, info.value.line_number, str(info.value)


@pytest.mark.parametrize("folder", ["acme_commercial", "statewide_medicaid", "bad/bad_values", "bad/ragged", "bad/structure", "bad/bom_lf"])
def test_fixture_reads_do_not_depend_on_slice_size(folder: str) -> None:
    files = sorted(p for p in (FIXTURES / folder).iterdir() if p.is_file())
    assert files
    for path in files:
        spec = match_mapping(path.name, MAPPINGS)
        whole = read_file(path, spec, chunk_bytes=1 << 30)
        for size in SLICES:
            _same(whole, read_file(path, spec, chunk_bytes=size))


@pytest.mark.parametrize("folder", ["binary", "encoding", "empty", "hash_total", "header_only", "missing_columns", "month", "trailer_count", "truncated"])
def test_fixture_refusals_do_not_depend_on_slice_size(folder: str) -> None:
    for path in sorted(p for p in (FIXTURES / "bad" / folder).iterdir() if p.is_file()):
        spec = match_mapping(path.name, MAPPINGS)
        whole = _refusal(path, spec, 1 << 30)
        assert whole[0] == folder if folder not in ("header_only", "truncated") else whole[0] in ("no_detail_records", "missing_trailer")
        for size in SLICES:
            assert _refusal(path, spec, size) == whole


def _dirty_acme(tmp_path: Path) -> Path:
    """The 2026-09 Acme fixture with line-level damage spread over the file."""
    lines = (FIXTURES / "acme_commercial" / "ACME_ATTRIB_202609.csv").read_bytes().splitlines()
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        cells = line.split(b",")
        if i == 2:
            line += b",extra"  # field_count
        elif i == 4:
            cells[14] = b'"broken'  # quote
            line = b",".join(cells)
        elif i == 6:
            cells[13] = b'"Doe, Jr"'  # a quoted delimiter is one field
            cells[14] = b'"Ann ""Q"""'
            line = b",".join(cells)
        elif i == 8:
            line += b"\r"  # CRLF on one line only
        out.append(line)
        if i == 10:
            out += [b"", b"   "]  # blank lines: not records, still numbered
    path = tmp_path / "ACME_ATTRIB_202609.csv"
    path.write_bytes(b"\n".join(out).replace(b"\n", b"\r", 1) + b"\n\n")  # one lone CR too
    return path


def test_damaged_lines_keep_their_numbers_and_reasons_across_slices(tmp_path: Path) -> None:
    path = _dirty_acme(tmp_path)
    whole = read_file(path, ACME, chunk_bytes=1 << 30)
    rejects = whole.structural_rejects.select("line_number", "rule").rows()
    # Header on line 1; data line i is physical line i + 2.
    assert rejects == [(4, "field_count"), (6, "quote")]
    assert whole.rows.filter(pl.col("line_number") == 8)["family_name"].item() == "Doe, Jr"
    assert whole.rows.filter(pl.col("line_number") == 8)["given_name"].item() == 'Ann "Q"'
    assert whole.records_read == whole.rows.height + 2
    for size in SLICES:
        _same(whole, read_file(path, ACME, chunk_bytes=size))


def test_nul_after_a_bad_byte_is_refused_as_binary_whatever_the_slices(tmp_path: Path) -> None:
    text = (FIXTURES / "acme_commercial" / "ACME_ATTRIB_202609.csv").read_bytes()
    cut1, cut2 = text.index(b"\n", 500) + 1, text.index(b"\n", 3000) + 1
    path = tmp_path / "ACME_ATTRIB_202609.csv"
    path.write_bytes(text[:cut1] + b"\xff" + text[cut1:cut2] + b"\x00" + text[cut2:])
    expected_line = text[:cut2].count(b"\n") + 1
    for size in SLICES:
        rule, line, _ = _refusal(path, ACME, size)
        assert (rule, line) == ("binary", expected_line)
    path.write_bytes(text[:cut1] + b"\xff" + text[cut1:])
    for size in SLICES:
        assert _refusal(path, ACME, size)[:2] == ("encoding", text[:cut1].count(b"\n") + 1)


def test_headerless_width_is_the_whole_files_usual_width(tmp_path: Path) -> None:
    spec = parse_mapping(
        {
            "source_id": "plain",
            "file": {"pattern": r"PLAIN_(?P<yyyymm>\d{6})\.csv"},
            "format": {"kind": "delimited", "delimiter": "|", "header_row": False},
            "fields": {"member_id": {"column": 1}, "payer_id": {"constant": "P1"}, "contract_id": {"column": 2}},
            "identifier_systems": {"member_id": "urn:x:m", "payer_id": "urn:x:p", "contract_id": "urn:x:c"},
        }
    )
    # Three-field lines first, then more four-field lines: the width is 4 for the whole file.
    rows = [f"M{i}|C1|x" for i in range(5)] + [f"M{i}|C1|x|y" for i in range(5, 12)]
    path = tmp_path / "PLAIN_202609.csv"
    path.write_text("\n".join(rows) + "\n")
    for size in SLICES:
        result = read_file(path, spec, chunk_bytes=size)
        assert result.rows["member_id"].to_list() == [f"M{i}" for i in range(5, 12)]
        assert result.structural_rejects["reason"].unique().to_list() == ["expected 4 fields, found 3"]
        assert result.source_columns == ["1", "2", "3", "4"]


def test_sha256_and_month_are_set_on_every_slice_of_rows(tmp_path: Path) -> None:
    src = FIXTURES / "statewide_medicaid" / "SWMCD_ME_202609.txt"
    spec = match_mapping(src.name, MAPPINGS)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    result = read_file(src, spec, chunk_bytes=97)  # month comes from the header record
    assert result.rows["file_sha256"].unique().to_list() == [digest]
    assert result.rows["reporting_month"].unique().to_list() == [date(2026, 9, 1)]


def test_a_clean_file_is_accepted_unchanged() -> None:
    # validate_rows skips the all-true filter for a clean file; the rows must be the same.
    path = FIXTURES / "acme_commercial" / "ACME_ATTRIB_202609.csv"
    read = read_file(path, ACME, chunk_bytes=4096)
    clean = read.rows.filter(pl.col("_issues").list.len() == 0).drop("_issues")
    result = validate_rows(clean, ACME, today=date(2026, 10, 1))
    assert (clean.height, result.rows_rejected, result.rows_accepted) == (40, 0, 40)
    assert result.accepted.equals(clean)
