"""Hand-built canonical snapshots for three consecutive months, with the expected change types.

Other tests/test_history*.py modules import the builders below. Every member id, name and
address is synthetic.

Contract C1 (provider NPIs A, B), contract C2 (provider NPI C); one payer, one plan.
    M1/A  unchanged all along (only lineage, risk_score and change_reason move: not "changed")
    M2/A  address changes in month 2 (demographic change)
    M3/A  product type changes in month 2 (plan change)
    M4    switches provider A -> B in month 2 (A dropped, B new)
    M5    attributed to A and B; B dropped in month 2
    M6/A  absent in month 2 (dropped), back in month 3 (new again)
    M7/C  dropped in month 3 with a null attribution end (-> 2026-02-28)
    M8/C  dropped in month 2 with attribution end 2026-12-31 (-> 2026-01-31)
    M9/A  new in month 2, attribution end set in month 3 (changed)
    M10/C new in month 3
    M11/C dropped in month 3 with attribution end 2026-01-15 (earlier: kept)
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl

from atr_pipeline.canonical import CANONICAL_SCHEMA, MEMBER_ENTRY_KEY, conform_columns
from atr_pipeline.history.store import SnapshotLineage

SOURCE = "acme_csv"
M1, M2, M3 = date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)
NPI = {"A": "1234567893", "B": "1245319599", "C": "1386719258"}
CONTRACT_OF = {"A": "C1", "B": "C1", "C": "C2"}


def entry(member: str, provider: str, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "payer_id": "PAYER1",
        "payer_name": "Acme Health",
        "contract_id": CONTRACT_OF[provider],
        "contract_name": f"Contract {CONTRACT_OF[provider]}",
        "contract_start": date(2026, 1, 1),
        "contract_end": date(2026, 12, 31),
        "plan_id": "PLAN1",
        "plan_name": "Acme Advantage",
        "product_type": "mediadv",
        "coverage_start": date(2025, 1, 1),
        "member_id": member,
        "subscriber_id": member,
        "relationship": "self",
        "family_name": f"Family{member}",
        "given_name": f"Given{member}",
        "gender": "female",
        "birth_date": date(1950, 1, 1),
        "address_line1": f"{member} Main St",
        "city": "Springfield",
        "state": "IL",
        "postal_code": "62701",
        "provider_npi": NPI[provider],
        "provider_tin": "123456789",
        "attribution_start": date(2026, 1, 1),
        "attribution_end": None,
        "risk_score": 1.0,
    }
    row.update(overrides)
    return row


def frame(month: date, entries: list[dict[str, object]], *, file_name: str | None = None) -> pl.DataFrame:
    name = file_name or f"acme_{month:%Y%m}.csv"
    rows = [
        {**e, "source_id": SOURCE, "file_name": name, "file_sha256": "0" * 64, "line_number": i + 2, "reporting_month": month}
        for i, e in enumerate(entries)
    ]
    return conform_columns(pl.DataFrame(rows, schema_overrides={k: v for k, v in CANONICAL_SCHEMA.items() if k in rows[0]}), keep_issues=False)


def month1() -> pl.DataFrame:
    return frame(M1, [
        entry("M1", "A"),
        entry("M2", "A"),
        entry("M3", "A"),
        entry("M4", "A"),
        entry("M5", "A"),
        entry("M5", "B"),
        entry("M6", "A"),
        entry("M7", "C"),
        entry("M8", "C", attribution_end=date(2026, 12, 31)),
        entry("M11", "C", attribution_end=date(2026, 1, 15)),
    ])


def month2(*, corrected: bool = False) -> pl.DataFrame:
    entries = [
        # row order differs from month 1 on purpose: order must not matter
        entry("M9", "A", attribution_start=date(2026, 2, 1)),
        entry("M1", "A", risk_score=1.7, change_reason="annual refresh"),
        entry("M2", "A", address_line1="M2 Main St" if corrected else "99 Elm St"),
        entry("M3", "A", product_type="medicaid"),
        entry("M4", "B"),
        entry("M5", "A"),
        entry("M7", "C"),
        entry("M11", "C", attribution_end=date(2026, 1, 15)),
    ]
    if corrected:
        entries.append(entry("M6", "A"))
    return frame(M2, entries, file_name="acme_202602_v2.csv" if corrected else None)


def month3() -> pl.DataFrame:
    return frame(M3, [
        entry("M1", "A", risk_score=0.4),
        entry("M2", "A", address_line1="99 Elm St"),
        entry("M3", "A", product_type="medicaid"),
        entry("M4", "B"),
        entry("M5", "A"),
        entry("M6", "A"),
        entry("M9", "A", attribution_start=date(2026, 2, 1), attribution_end=date(2026, 6, 30)),
        entry("M10", "C"),
    ])


MONTHS = {M1: month1, M2: month2, M3: month3}

# (member, provider letter) -> change type, per month
EXPECTED: dict[date, dict[tuple[str, str], str]] = {
    M1: {
        ("M1", "A"): "new", ("M2", "A"): "new", ("M3", "A"): "new", ("M4", "A"): "new", ("M5", "A"): "new",
        ("M5", "B"): "new", ("M6", "A"): "new", ("M7", "C"): "new", ("M8", "C"): "new", ("M11", "C"): "new",
    },
    M2: {
        ("M1", "A"): "nochange", ("M2", "A"): "changed", ("M3", "A"): "changed", ("M4", "A"): "dropped",
        ("M4", "B"): "new", ("M5", "A"): "nochange", ("M5", "B"): "dropped", ("M6", "A"): "dropped",
        ("M7", "C"): "nochange", ("M8", "C"): "dropped", ("M9", "A"): "new", ("M11", "C"): "nochange",
    },
    M3: {
        ("M1", "A"): "nochange", ("M2", "A"): "nochange", ("M3", "A"): "nochange", ("M4", "B"): "nochange",
        ("M5", "A"): "nochange", ("M6", "A"): "new", ("M7", "C"): "dropped", ("M9", "A"): "changed",
        ("M10", "C"): "new", ("M11", "C"): "dropped",
    },
}

LETTER = {v: k for k, v in NPI.items()}


def change_types(listed: pl.DataFrame) -> dict[tuple[str, str], str]:
    return {(m, LETTER[p]): c for m, p, c in listed.select("member_id", "provider_npi", "change_type").iter_rows()}


def lineage_for(df: pl.DataFrame, sha: str | None = None) -> SnapshotLineage:
    name = df["file_name"][0]
    return SnapshotLineage(
        file_name=name,
        file_sha256=sha or name.encode().hex().ljust(64, "0")[:64],
        received_at=datetime(2026, 4, 1, 12, 0, tzinfo=UTC),
        rows=df.height,
    )


def test_cases_are_canonical_with_unique_keys() -> None:
    for month, build in MONTHS.items():
        df = build()
        assert df.schema == CANONICAL_SCHEMA
        assert df.select(pl.struct(list(MEMBER_ENTRY_KEY)).is_duplicated().sum()).item() == 0
        present = {k for k, v in EXPECTED[month].items() if v != "dropped"}
        assert {(m, LETTER[p]) for m, p in df.select("member_id", "provider_npi").iter_rows()} == present
