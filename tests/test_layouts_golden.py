"""Golden canonical rows for every good fixture file: the reader's output, compared exactly.

Regenerate after an intended change with ``ATR_REGEN_GOLDEN=1 pytest tests/test_layouts_golden.py``
and review the diff of tests/golden/canonical/.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import polars as pl
import pytest

from atr_pipeline.canonical import CANONICAL_SCHEMA, ISSUES_COLUMN
from atr_pipeline.layouts.files import match_mapping, sha256_file
from atr_pipeline.layouts.read import read_file
from atr_pipeline.layouts.spec import load_mappings

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "canonical"
MAPPINGS = load_mappings(REPO / "mappings")
GOOD = sorted(p for src in ("acme_commercial", "statewide_medicaid") for p in (REPO / "fixtures" / src).iterdir())


def golden_csv(rows: pl.DataFrame) -> str:
    """Canonical rows as CSV text; the issues list as compact JSON so it diffs line by line."""
    issues = [orjson.dumps(v).decode() for v in rows.get_column(ISSUES_COLUMN).to_list()]
    return rows.drop(ISSUES_COLUMN).with_columns(pl.Series(ISSUES_COLUMN, issues)).write_csv()


def test_there_are_three_months_per_source() -> None:
    assert [p.name for p in GOOD] == [
        "ACME_ATTRIB_202608.csv", "ACME_ATTRIB_202609.csv", "ACME_ATTRIB_202610.csv",
        "SWMCD_ME_202608.txt", "SWMCD_ME_202609.txt", "SWMCD_ME_202610.txt",
    ]


@pytest.mark.parametrize("path", GOOD + [REPO / "fixtures" / "bad" / "bad_values" / "ACME_ATTRIB_202608.csv"], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_canonical_rows_match_golden(path: Path) -> None:
    spec = match_mapping(path.name, MAPPINGS)
    assert spec is not None
    result = read_file(path, spec)
    text = golden_csv(result.rows)
    golden = GOLDEN / path.parent.name / (path.stem + ".csv")
    if os.environ.get("ATR_REGEN_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    assert list(result.rows.columns) == [*CANONICAL_SCHEMA.names(), ISSUES_COLUMN]
    assert result.rows.get_column("file_sha256").unique().to_list() == [sha256_file(path)]


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_fixtures_have_no_rejects_or_issues(path: Path) -> None:
    spec = match_mapping(path.name, MAPPINGS)
    result = read_file(path, spec)  # type: ignore[arg-type]
    assert result.structural_rejects.height == 0
    assert result.rows.get_column(ISSUES_COLUMN).list.len().sum() == 0
    assert result.records_read == result.rows.height


def test_fixture_line_numbers_count_header_and_crlf_lines() -> None:
    path = REPO / "fixtures" / "acme_commercial" / "ACME_ATTRIB_202608.csv"
    result = read_file(path, MAPPINGS["acme_commercial"])
    physical = path.read_bytes().split(b"\r\n")
    assert result.rows.get_column("line_number").to_list() == list(range(2, len(physical)))  # line 1 = column names
    # the member on each row really is on that physical line
    for row in result.rows.select("line_number", "member_id").iter_rows():
        assert row[1].encode() in physical[row[0] - 1]


def test_fixed_width_line_numbers_skip_header_record() -> None:
    path = REPO / "fixtures" / "statewide_medicaid" / "SWMCD_ME_202608.txt"
    result = read_file(path, MAPPINGS["statewide_medicaid"])
    n = len(path.read_bytes().splitlines())
    assert result.rows.get_column("line_number").to_list() == list(range(2, n))  # 1 = HD, n = TR
    assert result.control.expected_records == result.control.actual_records == n - 2
    assert result.reporting_month.isoformat() == "2026-08-01"
    assert result.source_columns[:3] == ["3-14", "15-26", "27-27"]
