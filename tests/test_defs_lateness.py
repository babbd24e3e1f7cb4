"""When is a source's monthly file late (defs/lateness.py), with explicit dates."""

from __future__ import annotations

from datetime import date

import pytest

from atr_pipeline.defs.lateness import due_date, expected_day, lateness

AUG, SEP, OCT, NOV = date(2026, 8, 1), date(2026, 9, 1), date(2026, 10, 1), date(2026, 11, 1)


def test_due_on_the_expected_day_of_the_next_month() -> None:
    assert due_date(AUG, 5) == date(2026, 9, 5)
    assert due_date(date(2026, 12, 1), 10) == date(2027, 1, 10)


def test_on_time_until_the_due_day_passes() -> None:
    delivered = {AUG, SEP}
    assert not lateness("acme", 5, delivered, date(2026, 10, 4)).late  # Sep due Oct 5
    on_day = lateness("acme", 5, delivered, date(2026, 11, 5))  # Oct due Nov 5: due today, missing
    assert on_day.late and on_day.latest_due == OCT and on_day.days_late == 0
    later = lateness("acme", 5, delivered, date(2026, 11, 20))
    assert (later.late, later.latest_due, later.days_late, later.missing) == (True, OCT, 15, [OCT])


def test_a_gap_is_listed_even_when_the_latest_month_arrived() -> None:
    result = lateness("acme", 5, {AUG, OCT}, date(2026, 11, 6))
    assert not result.late and result.missing == [SEP]


def test_months_before_the_first_delivery_are_never_late() -> None:
    result = lateness("acme", 5, {OCT}, date(2026, 11, 6))
    assert result.first_month == OCT and result.missing == [] and not result.late
    assert not lateness("new_payer", 5, set(), date(2026, 11, 6)).late


def test_a_declared_first_month_counts_from_there_even_before_any_delivery() -> None:
    """first_month in the mapping: a new payer whose first file never came is late; earlier months never are."""
    never = lateness("new_payer", 5, set(), date(2026, 11, 6), first_month=SEP)
    assert (never.late, never.first_month, never.latest_due, never.missing, never.days_late) == (True, SEP, OCT, [SEP, OCT], 1)
    assert not lateness("new_payer", 5, set(), date(2026, 10, 4), first_month=SEP).late  # Sep not due before Oct 5
    # a delivery before first_month (run by hand) neither starts the count early nor fills a later month
    early = lateness("acme", 5, {AUG, SEP}, date(2026, 11, 6), first_month=SEP)
    assert (early.first_month, early.missing, early.late) == (SEP, [OCT], True)


def test_expected_day_per_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATR_EXPECTED_DAY", raising=False)
    monkeypatch.delenv("ATR_SCHEDULE_DAY", raising=False)
    assert expected_day("acme_commercial") == 5
    monkeypatch.setenv("ATR_EXPECTED_DAY", "10")
    monkeypatch.setenv("ATR_EXPECTED_DAY_ACME_COMMERCIAL", "20")
    assert (expected_day("acme_commercial"), expected_day("statewide_medicaid")) == (20, 10)
    monkeypatch.setenv("ATR_EXPECTED_DAY_ACME_COMMERCIAL", "31")
    with pytest.raises(ValueError, match="1..28"):
        expected_day("acme_commercial")
