"""The repo fixtures (3 months per source) read, recorded and diffed: the change types that
fixtures/README.md documents, and nochange for every entry it does not mention."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from atr_pipeline.canonical import CANONICAL_SCHEMA
from atr_pipeline.history.store import HistoryStore, SnapshotLineage
from atr_pipeline.layouts.read import read_file
from atr_pipeline.layouts.spec import load_mapping

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "fixtures" / "README.md"
ROW = re.compile(r"^\| (\d{4}-\d{2}) \| ([a-z ]+) \| `(\w+)` \| (.*) \|$")


def documented(source: str) -> dict[date, list[tuple[str, str, str]]]:
    """month -> [(change, member_id, detail)] from the source's README table."""
    section = README.read_text(encoding="utf-8").split(f"## {source}\n", 1)[1].split("\n## ", 1)[0]
    out: dict[date, list[tuple[str, str, str]]] = defaultdict(list)
    for line in section.splitlines():
        if m := ROW.match(line):
            year, month = m.group(1).split("-")
            out[date(int(year), int(month), 1)].append((m.group(2), m.group(3), m.group(4)))
    return out


def expected_types(change: str, detail: str) -> set[str]:
    """The change types of all the member's entries (a member may have several)."""
    if change in ("provider switch", "plan change"):
        return {"dropped", "new"}  # the old entry drops, the new key is new
    if change == "dropped" and "first stays" in detail:
        return {"dropped", "nochange"}
    return {change}


@pytest.mark.parametrize("source", ["acme_commercial", "statewide_medicaid"])
def test_fixture_change_types_match_readme(source: str, tmp_path: Path) -> None:
    spec = load_mapping(ROOT / "mappings" / f"{source}.yaml")
    files = sorted((ROOT / "fixtures" / source).iterdir())
    assert len(files) == 3
    store = HistoryStore(tmp_path / "history.duckdb")
    months = []
    for path in files:
        result = read_file(path, spec)
        rows = result.rows
        assert rows["_issues"].list.len().sum() == 0
        month = result.reporting_month
        months.append(month)
        store.record_snapshot(
            rows.select(CANONICAL_SCHEMA.names()),
            source_id=spec.source_id,
            month=month,
            lineage=SnapshotLineage(path.name, rows["file_sha256"][0], datetime(2026, 11, 1, tzinfo=UTC), rows.height),
        )
    assert months == [date(2026, 8, 1), date(2026, 9, 1), date(2026, 10, 1)]
    docs = documented(source)
    first = store.member_list(spec.source_id, months[0])
    assert set(first["change_type"]) == {"new"}
    for month in months[1:]:
        listed = store.member_list(spec.source_id, month)
        got: dict[str, list[str]] = defaultdict(list)
        for member, change in listed.select("member_id", "change_type").iter_rows():
            got[member].append(change)
        want = {member: expected_types(change, detail) for change, member, detail in docs[month]}
        assert {m: set(got[m]) for m in want} == want
        others = {c for m, changes in got.items() if m not in want for c in changes}
        assert others == {"nochange"}
    switches = store.trends(spec.source_id).group_by("month").agg(pl.col("provider_switches").sum()).sort("month")
    # 2026-09: the practitioner switch; 2026-10: the member who lost one of two practitioners
    assert switches.rows() == [(months[0], 0), (months[1], 1), (months[2], 1)]
