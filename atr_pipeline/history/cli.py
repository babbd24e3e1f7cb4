"""CLI commands of the history stage, as plain typer-annotated functions wired into ``atr``.

``trends``: print the per-contract, per-month trend table (or write it as markdown / Vega-Lite).
``finalize``: set a contract's latest monthly list to status ``final``.
``trends`` only reads: it works on a read-only ATR_HOME (or one owned by another user that
this one may read) and creates nothing there; ``finalize`` writes. Nothing printed holds PHI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from atr_pipeline.cli_common import SOURCE_HELP, console_for, escape, source_id_option
from atr_pipeline.config import existing_home, load_settings
from atr_pipeline.errors import EXIT_USAGE, AtrError
from atr_pipeline.history.store import HistoryStore
from atr_pipeline.history.stores import history_store, read_only_history_store, recorded_sources
from atr_pipeline.history.trends import TABLE_COLUMNS, trend_markdown, trend_vega_lite

_console = console_for()
_err = console_for(stderr=True)


def _store(home: Path | None, source: str) -> HistoryStore:
    return history_store(load_settings(home), source, create=False)


def trends(
    source: Annotated[str, typer.Option("--source", "--mapping", "-s", help=SOURCE_HELP, callback=source_id_option)],
    contract: Annotated[str | None, typer.Option("--contract", "-c", help="Only this contract")] = None,
    home: Annotated[Path | None, typer.Option("--home", help="ATR_HOME (default: $ATR_HOME or ./.atr_home)")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the table as markdown here")] = None,
    vega_lite: Annotated[Path | None, typer.Option("--vega-lite", help="Also write a Vega-Lite v5 chart spec here")] = None,
) -> None:
    """Members, new, changed, nochange, dropped and provider switches per contract per month (read-only)."""
    # Read-only: an existing ATR_HOME, nothing created or written in it.
    found = existing_home(home)
    store = read_only_history_store(found, source)
    try:
        frame = store.trends(source, contract) if store else None
        recorded = recorded_sources(found)
        if store and contract and source in recorded and (frame is None or frame.is_empty()):
            contracts = sorted(set(store.trends(source)["contract_id"].to_list()))
            known = f"; contracts of {source}: {', '.join(contracts)}"
        elif recorded:
            known = f"; sources with history: {', '.join(recorded)}"
        else:
            known = "; nothing is recorded yet (run `atr run` first)"
    except AtrError as exc:
        _err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None
    if frame is None or frame.is_empty():
        what = f"source {source}" + (f" contract {contract}" if contract else "")
        _console.print(escape(f"no months recorded for {what}{known}"))
        return
    table = Table(title=escape(f"Attribution trends: {source}"))
    # Contract ids are copied into searches and other commands: shown whole, never cut to "VBC25-…".
    table.add_column("contract", no_wrap=True, min_width=max(len(c) for c in frame["contract_id"]))
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="left" if column.endswith("month") else "right")
    for row in frame.iter_rows(named=True):
        cells = [
            (f"{row[c]:%Y-%m}" if row[c] is not None else "-") if c.endswith("month") else f"{row[c]:,}"
            for c in TABLE_COLUMNS
        ]
        table.add_row(escape(row["contract_id"]), *cells)
    _console.print(table)
    if markdown:
        markdown.write_text(trend_markdown(frame), encoding="utf-8")
    if vega_lite:
        vega_lite.write_bytes(orjson.dumps(trend_vega_lite(frame), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def finalize(
    source: Annotated[str, typer.Option("--source", "--mapping", "-s", help=SOURCE_HELP, callback=source_id_option)],
    contract: Annotated[str, typer.Option("--contract", "-c", help="Contract whose latest list is final")],
    home: Annotated[Path | None, typer.Option("--home", help="ATR_HOME (default: $ATR_HOME or ./.atr_home)")] = None,
) -> None:
    """Mark the contract's latest monthly attribution list final (the next publish bumps its Group)."""
    try:
        store = _store(home, source)
        store.set_list_status(source, contract, "final")
        months = store.months(source)
    except AtrError as exc:
        _err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None
    _console.print(escape(f"source {source} contract {contract}: list for {months[-1]:%Y-%m} is now final"))
