"""compute_changes as a pure function: field rules, and properties over generated snapshots."""

from __future__ import annotations

from datetime import date

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from test_history_cases import LETTER, M1, M2, entry, frame

from atr_pipeline.canonical import FIELDS, MEMBER_ENTRY_KEY, Group
from atr_pipeline.history.changes import CHANGE_FIELDS, compute_changes, provider_switches


def one(**overrides: object) -> pl.DataFrame:
    return frame(M2, [entry("M1", "A", **overrides)])


def test_change_fields_are_member_information_only() -> None:
    assert set(CHANGE_FIELDS) == {
        "plan_name", "product_type", "coverage_start", "coverage_end",
        "subscriber_id", "relationship", "mbi", "medicaid_id", "mrn", "ssn",
        "family_name", "given_name", "middle_name", "name_prefix", "name_suffix", "gender", "birth_date",
        "deceased_date", "address_line1", "address_line2", "city", "state", "postal_code", "phone",
        "attribution_start", "attribution_end",
    }
    groups = {f.name: f.group for f in FIELDS}
    assert not {f for f in CHANGE_FIELDS if groups[f] in (Group.LINEAGE, Group.PROVIDER, Group.PAYER, Group.CONTRACT)}
    assert not set(CHANGE_FIELDS) & set(MEMBER_ENTRY_KEY)


def test_each_counted_field_alone_makes_changed() -> None:
    previous = frame(M1, [entry("M1", "A")])
    samples = {pl.String: "X9", pl.Date: date(2001, 2, 3)}
    for name in CHANGE_FIELDS:
        dtype = dict(previous.schema)[name]
        current = one(**{name: samples[type(dtype)]})
        listed = compute_changes(current, previous, month=M2)
        assert listed["change_type"].to_list() == ["changed"], name


def test_uncounted_fields_never_make_changed() -> None:
    previous = frame(M1, [entry("M1", "A")])
    current = one(
        risk_score=9.9, change_reason="moved", payer_name="Renamed", contract_name="Other",
        provider_tin="999999999", provider_family_name="Doe", settlement_entity_id="ACO9",
    )
    assert compute_changes(current, previous, month=M2)["change_type"].to_list() == ["nochange"]


def test_null_to_value_is_a_change_and_null_to_null_is_not() -> None:
    previous = frame(M1, [entry("M1", "A", mbi=None)])
    assert compute_changes(one(mbi=None), previous, month=M2)["change_type"].to_list() == ["nochange"]
    assert compute_changes(one(mbi="1EG4TE5MK73"), previous, month=M2)["change_type"].to_list() == ["changed"]


def test_first_month_is_all_new_and_active() -> None:
    listed = compute_changes(frame(M1, [entry("M1", "A"), entry("M2", "B")]), None, month=M1)
    assert listed.select("change_type", "inactive").rows() == [("new", False), ("new", False)]
    assert listed["previous_month"].null_count() == 2


def test_previous_month_inferred_from_previous_rows() -> None:
    previous = frame(date(2025, 11, 1), [entry("M1", "A")])
    listed = compute_changes(frame(M2, [entry("M2", "A")]), previous, month=M2)
    dropped = listed.filter(pl.col("change_type") == "dropped").row(0, named=True)
    assert (dropped["previous_month"], dropped["attribution_end"]) == (date(2025, 11, 1), date(2025, 11, 30))


def test_provider_switch_counts_members_not_entries() -> None:
    previous = frame(M1, [entry("M1", "A"), entry("M2", "A"), entry("M2", "B"), entry("M3", "A")])
    current = frame(M2, [entry("M1", "B"), entry("M2", "A"), entry("M3", "A"), entry("M4", "A")])
    assert provider_switches(current, previous).rows() == [("C1", 2)]


members = st.sampled_from([f"M{i}" for i in range(8)])
providers = st.sampled_from(["A", "B", "C"])
addresses = st.sampled_from(["1 Main St", "2 Oak Ave"])
snapshot = st.dictionaries(st.tuples(members, providers), addresses, max_size=14)


def build(month: date, entries: dict[tuple[str, str], str]) -> pl.DataFrame:
    if not entries:
        return frame(month, [entry("M0", "A")]).head(0)
    return frame(month, [entry(m, p, address_line1=a) for (m, p), a in sorted(entries.items())])


@settings(max_examples=60, deadline=None)
@given(previous=snapshot, current=snapshot)
def test_change_types_partition_both_snapshots(previous: dict, current: dict) -> None:
    listed = compute_changes(build(M2, current), build(M1, previous), month=M2)
    types = {(m, p): c for m, p, c in listed.select("member_id", "provider_npi", "change_type").iter_rows()}
    got = {(m, LETTER[p]): c for (m, p), c in types.items()}
    expected = {}
    for key, address in current.items():
        expected[key] = "new" if key not in previous else ("changed" if previous[key] != address else "nochange")
    for key in previous.keys() - current.keys():
        expected[key] = "dropped"
    assert got == expected
    assert listed.height == len(expected)
    assert listed.filter(pl.col("inactive"))["change_type"].to_list() == ["dropped"] * len(previous.keys() - current.keys())


@settings(max_examples=30, deadline=None)
@given(entries=snapshot)
def test_same_snapshot_twice_is_all_nochange(entries: dict) -> None:
    df = build(M1, entries)
    listed = compute_changes(build(M2, entries), df, month=M2)
    assert listed["change_type"].to_list() == ["nochange"] * len(entries)


def test_order_is_file_lines_then_dropped_whatever_the_input_order() -> None:
    previous = frame(M1, [entry("M1", "A"), entry("M2", "A"), entry("M3", "A"), entry("M4", "A")])
    current = frame(M2, [entry("M9", "A"), entry("M3", "A"), entry("M1", "A")])
    listed = compute_changes(current, previous, month=M2)
    assert listed.select("member_id", "line_number", "change_type").rows() == [
        ("M9", 2, "new"), ("M3", 3, "nochange"), ("M1", 4, "nochange"),
        ("M2", 3, "dropped"), ("M4", 5, "dropped"),
    ]
    shuffled = compute_changes(current.sample(fraction=1.0, shuffle=True, seed=3), previous.reverse(), month=M2)
    assert shuffled.equals(listed)


def test_rows_without_unique_line_numbers_fall_back_to_key_order() -> None:
    current = frame(M1, [entry("M2", "A"), entry("M1", "B"), entry("M1", "A")]).with_columns(pl.lit(7).cast(pl.Int64).alias("line_number"))
    listed = compute_changes(current.reverse(), None, month=M1)
    assert listed.select("member_id", "provider_npi").rows() == [("M1", "1234567893"), ("M1", "1245319599"), ("M2", "1234567893")]
