"""Trend views of ``HistoryStore.trends``: a Vega-Lite v5 chart spec and a markdown table.

In: a trends frame (``store.TREND_SCHEMA``: per source, contract and month the counts of
entries, members, new, changed, nochange, dropped, provider switches).
Out: a JSON-ready dict (Vega-Lite v5, data inline) and a markdown string.
Both hold only contract ids, months and counts: no PHI can reach them.
"""

from __future__ import annotations

from typing import Any

import polars as pl

VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
# Series drawn on the chart: the list size and the month's movement in and out.
CHART_MEASURES = ("members", "new", "dropped")
TABLE_COLUMNS = ("month", "previous_month", "entries", "members", "new", "changed", "nochange", "dropped", "provider_switches")


def _iso(value: Any) -> str:
    return value.isoformat() if value is not None else ""


def trend_vega_lite(trends_df: pl.DataFrame) -> dict[str, Any]:
    """A Vega-Lite v5 spec: one panel per contract, members / new / dropped per month."""
    ordered = trends_df.sort(["contract_id", "month"])
    values = [
        {"contract_id": row["contract_id"], "month": _iso(row["month"]), "measure": measure, "count": int(row[measure])}
        for row in ordered.select("contract_id", "month", *CHART_MEASURES).iter_rows(named=True)
        for measure in CHART_MEASURES
    ]
    return {
        "$schema": VEGA_LITE_SCHEMA,
        "description": "ATR attribution trend: members, new and dropped entries per month and contract",
        "data": {"values": values},
        "facet": {"row": {"field": "contract_id", "type": "nominal", "title": "contract"}},
        "resolve": {"scale": {"y": "independent"}},
        "spec": {
            "width": 480,
            "height": 160,
            "mark": {"type": "line", "point": True},
            "encoding": {
                "x": {"field": "month", "type": "temporal", "timeUnit": "yearmonth", "title": "month"},
                "y": {"field": "count", "type": "quantitative", "title": "count"},
                "color": {"field": "measure", "type": "nominal", "sort": list(CHART_MEASURES), "title": ""},
                "tooltip": [
                    {"field": "contract_id", "type": "nominal"},
                    {"field": "month", "type": "temporal", "timeUnit": "yearmonth"},
                    {"field": "measure", "type": "nominal"},
                    {"field": "count", "type": "quantitative"},
                ],
            },
        },
    }


def trend_markdown(trends_df: pl.DataFrame) -> str:
    """One markdown table per contract, a row per month (months as YYYY-MM)."""
    if trends_df.is_empty():
        return "_No months recorded._\n"
    sections: list[str] = []
    ordered = trends_df.sort(["contract_id", "month"])
    for (contract_id,), part in ordered.group_by("contract_id", maintain_order=True):
        lines = [f"### Contract `{contract_id}`", "", "| " + " | ".join(TABLE_COLUMNS) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(TABLE_COLUMNS) - 1)) + "|")
        for row in part.iter_rows(named=True):
            cells = [
                f"{row[c]:%Y-%m}" if c in ("month", "previous_month") and row[c] is not None
                else ("-" if row[c] is None else str(row[c]))
                for c in TABLE_COLUMNS
            ]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def trend_bars(trends_df: pl.DataFrame, width: int = 40) -> str:
    """A text bar chart per contract (members per month, with + new / - dropped) in a markdown
    code block: it renders in any markdown viewer, the Dagster UI included, where a Vega-Lite
    spec is stored but not drawn."""
    if trends_df.is_empty():
        return "_no months recorded_"
    top = max(int(trends_df.get_column("members").max() or 0), 1)  # type: ignore[arg-type]
    out: list[str] = []
    for contract in trends_df.get_column("contract_id").unique().sort().to_list():
        out.append(f"Contract {contract}: members per month (+new / -dropped)")
        out.append("```")
        part = trends_df.filter(pl.col("contract_id") == contract).sort("month")
        for row in part.iter_rows(named=True):
            bar = "█" * max(1, round(width * row["members"] / top)) if row["members"] else ""
            out.append(f"{_iso(row['month'])[:7]} {bar:<{width}} {row['members']:>7,}  +{row['new']:,} -{row['dropped']:,}")
        out.append("```")
    return "\n".join(out)
