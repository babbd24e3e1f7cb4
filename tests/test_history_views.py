"""Trend chart (Vega-Lite), markdown table and the `trends` / `finalize` CLI functions."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import typer
from test_history_cases import M1, M2, M3, MONTHS, SOURCE, lineage_for
from typer.testing import CliRunner

from atr_pipeline.canonical import PHI_FIELDS
from atr_pipeline.config import load_settings
from atr_pipeline.history import cli
from atr_pipeline.history.stores import history_store
from atr_pipeline.history.trends import trend_markdown, trend_vega_lite


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("ATR_HISTORY_DIR", raising=False)
    monkeypatch.delenv("ATR_LIST_STATUS", raising=False)
    home = tmp_path / "home"
    store = history_store(load_settings(home), SOURCE)
    for month in (M1, M2, M3):
        df = MONTHS[month]()
        store.record_snapshot(df, source_id=SOURCE, month=month, lineage=lineage_for(df))
    return home


def phi_values() -> set[str]:
    values: set[str] = set()
    for build in MONTHS.values():
        df = build()
        for name in PHI_FIELDS:
            values |= {str(v) for v in df[name].drop_nulls().unique().to_list()}
    return values


def app() -> typer.Typer:
    a = typer.Typer()
    a.command("trends")(cli.trends)
    a.command("finalize")(cli.finalize)
    return a


def test_vega_lite_spec(home: Path) -> None:
    spec = trend_vega_lite(history_store(load_settings(home), SOURCE).trends(SOURCE))
    assert spec["$schema"] == "https://vega.github.io/schema/vega-lite/v5.json"
    values = spec["data"]["values"]
    assert len(values) == 2 * 3 * 3  # contracts x months x (members, new, dropped)
    assert values[:3] == [
        {"contract_id": "C1", "month": "2026-01-01", "measure": "members", "count": 6},
        {"contract_id": "C1", "month": "2026-01-01", "measure": "new", "count": 7},
        {"contract_id": "C1", "month": "2026-01-01", "measure": "dropped", "count": 0},
    ]
    assert {"contract_id": "C2", "month": "2026-03-01", "measure": "dropped", "count": 2} in values
    assert set(values[0]) == {"contract_id", "month", "measure", "count"}
    text = orjson.dumps(spec).decode()
    assert [v for v in phi_values() if v in text] == []


def test_markdown_table(home: Path) -> None:
    md = trend_markdown(history_store(load_settings(home), SOURCE).trends(SOURCE))
    lines = md.splitlines()
    assert lines[0] == "### Contract `C1`"
    assert lines[2] == "| month | previous_month | entries | members | new | changed | nochange | dropped | provider_switches |"
    assert lines[4] == "| 2026-01 | - | 7 | 6 | 7 | 0 | 0 | 0 | 0 |"
    assert lines[5] == "| 2026-02 | 2026-01 | 6 | 6 | 2 | 2 | 2 | 3 | 2 |"
    assert "| 2026-03 | 2026-02 | 1 | 1 | 1 | 0 | 0 | 2 | 0 |" in lines
    assert [v for v in phi_values() if v in md] == []


def test_cli_trends_prints_counts(home: Path, tmp_path: Path) -> None:
    out_md, out_vl = tmp_path / "t.md", tmp_path / "t.vl.json"
    result = CliRunner().invoke(
        app(), ["trends", "--source", SOURCE, "--home", str(home), "--markdown", str(out_md), "--vega-lite", str(out_vl)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    c1_feb = next(line for line in result.output.splitlines() if "C1" in line and "2026-02 " in line.replace("│", " ") and line.count("2026-") == 2)
    assert [cell.strip() for cell in c1_feb.split("│") if cell.strip()] == ["C1", "2026-02", "2026-01", "6", "6", "2", "2", "2", "3", "2"]
    assert out_md.read_text().startswith("### Contract `C1`")
    assert orjson.loads(out_vl.read_bytes())["data"]["values"][0]["count"] == 6
    assert [v for v in phi_values() if v in result.output] == []


def test_cli_finalize(home: Path) -> None:
    result = CliRunner().invoke(app(), ["finalize", "--source", SOURCE, "--contract", "C2", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "contract C2: list for 2026-03 is now final" in result.output
    store = history_store(load_settings(home), SOURCE)
    assert (store.list_status(SOURCE, "C2", M3), store.list_status(SOURCE, "C1", M3)) == ("final", "draft")
    bad = CliRunner().invoke(app(), ["finalize", "--source", SOURCE, "--contract", "NOPE", "--home", str(home)])
    assert bad.exit_code == 2
    assert "contract 'NOPE' has no rows in source 'acme_csv' month 2026-03" in bad.output
