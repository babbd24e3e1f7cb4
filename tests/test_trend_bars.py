from datetime import date

import polars as pl

from atr_pipeline.history.trends import trend_bars


def test_bars_scale_to_the_largest_month_and_show_adds_and_drops():
    df = pl.DataFrame(
        {
            "contract_id": ["C1", "C1", "C2"],
            "month": [date(2026, 8, 1), date(2026, 9, 1), date(2026, 8, 1)],
            "members": [100, 50, 10],
            "new": [100, 3, 10],
            "dropped": [0, 53, 0],
        }
    )
    text = trend_bars(df, width=10)
    lines = text.splitlines()
    assert lines[0] == "Contract C1: members per month (+new / -dropped)"
    assert lines[2] == "2026-08 ██████████     100  +100 -0"
    assert lines[3] == "2026-09 █████           50  +3 -53"
    assert lines[5] == "Contract C2: members per month (+new / -dropped)"
    assert "2026-08 █               10  +10 -0" in text


def test_empty_trends_say_so():
    assert trend_bars(pl.DataFrame()) == "_no months recorded_"
