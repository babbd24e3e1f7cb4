"""CLI commands of the history stage, as plain typer-annotated functions wired into ``atr``.

``trends``: print the per-contract, per-month trend table (or write it as markdown / Vega-Lite).
``finalize``: set a contract's latest monthly list to status ``final``.
Both read the store at ``load_settings(home).history_path``; nothing printed holds PHI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import orjson
import typer
from rich.console import Console
from rich.table import Table

from atr_pipeline.config import load_settings
from atr_pipeline.errors import AtrError
from atr_pipeline.history.store import HistoryStore
from atr_pipeline.history.trends import TABLE_COLUMNS, trend_markdown, trend_vega_lite

_console = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def _store(home: Path | None) -> HistoryStore:
    return HistoryStore(load_settings(home).history_path)


def trends(
    source: Annotated[str, typer.Option("--source", "-s", help="Source (mapping) id")],
    contract: Annotated[Optional[str], typer.Option("--contract", "-c", help="Only this contract")] = None,
    home: Annotated[Optional[Path], typer.Option("--home", help="ATR_HOME (default: $ATR_HOME or ./.atr_home)")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Also write the table as markdown here")] = None,
    vega_lite: Annotated[Optional[Path], typer.Option("--vega-lite", help="Also write a Vega-Lite v5 chart spec here")] = None,
) -> None:
    """Members, new, changed, nochange, dropped and provider switches per contract per month."""
    try:
        frame = _store(home).trends(source, contract)
    except AtrError as exc:
        _err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if frame.is_empty():
        _console.print(f"no months recorded for source {source}" + (f" contract {contract}" if contract else ""))
        return
    table = Table(title=f"Attribution trends: {source}")
    table.add_column("contract")
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="left" if column.endswith("month") else "right")
    for row in frame.iter_rows(named=True):
        cells = [
            (f"{row[c]:%Y-%m}" if row[c] is not None else "-") if c.endswith("month") else f"{row[c]:,}"
            for c in TABLE_COLUMNS
        ]
        table.add_row(row["contract_id"], *cells)
    _console.print(table)
    if markdown:
        markdown.write_text(trend_markdown(frame), encoding="utf-8")
    if vega_lite:
        vega_lite.write_bytes(orjson.dumps(trend_vega_lite(frame), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def finalize(
    source: Annotated[str, typer.Option("--source", "-s", help="Source (mapping) id")],
    contract: Annotated[str, typer.Option("--contract", "-c", help="Contract whose latest list is final")],
    home: Annotated[Optional[Path], typer.Option("--home", help="ATR_HOME (default: $ATR_HOME or ./.atr_home)")] = None,
) -> None:
    """Mark the contract's latest monthly attribution list final (the next publish bumps its Group)."""
    store = _store(home)
    try:
        store.set_list_status(source, contract, "final")
        months = store.months(source)
    except AtrError as exc:
        _err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _console.print(f"source {source} contract {contract}: list for {months[-1]:%Y-%m} is now final")
