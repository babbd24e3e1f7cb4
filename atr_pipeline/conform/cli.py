"""``atr conform EXPORT_DIR``: check a bulk export directory against ATR 2.1.0.

In: an export directory (manifest.json + NDJSON). Out: a table per rule (severity, count, example
``Type/id`` keys, element paths) or the report as JSON with ``--json-out``. Exit code 0 when no
error-severity rule fired, 1 when one did, 2 when the directory is not an export.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from atr_pipeline.cli_common import console_for, escape
from atr_pipeline.conform.checker import STRUCTURAL_MODES
from atr_pipeline.conform.export import check_export
from atr_pipeline.conform.report import ConformReport
from atr_pipeline.errors import EXIT_USAGE, AtrError

# A choice type from the checker's own list, so a wrong value is answered with the valid ones
# (built at run time from that list, which mypy cannot follow: hence the ignore).
Structural = enum.Enum("Structural", {mode: mode for mode in STRUCTURAL_MODES}, type=str)  # type: ignore[misc]
_ALL = Structural("all")


def render_table(report: ConformReport, console: Console) -> None:
    verdict = "[green]PASS[/green]" if report.ok else "[red]FAIL[/red]"
    types = ", ".join(f"{t} {n}" for t, n in report.by_type.items()) or "none"
    console.print(f"ATR conformance: {verdict}")
    console.print(f"resources {report.resources_checked} ({types})")
    console.print(f"R4 structure checked {report.structurally_checked}")
    console.print(f"errors {report.error_count}, warnings {report.warning_count}")
    if not report.results:
        return
    table = Table(show_lines=False)
    # Rule ids and Type/id keys are copied into searches: never wrap them mid-word.
    table.add_column("rule", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("examples", no_wrap=True)
    table.add_column("paths", overflow="fold")
    for r in report.results:
        sev = f"[red]{r.severity}[/red]" if r.severity == "error" else f"[yellow]{r.severity}[/yellow]"
        table.add_row(escape(r.rule), sev, str(r.count), escape("\n".join(r.examples)), escape("\n".join(r.paths)))
    console.print(table)


def conform(
    export_dir: Annotated[Path, typer.Argument(help="Bulk export directory (manifest.json + NDJSON files)")],
    structural: Annotated[Structural, typer.Option(help="R4 structure check with the R4B models")] = _ALL,
    sample_size: Annotated[int, typer.Option(help="Resources checked structurally with --structural sample")] = 1000,
    json_out: Annotated[bool, typer.Option("--json-out", help="Print the report as JSON")] = False,
) -> None:
    """Check an ATR bulk export: profile rules, references, NPIs, R4 structure. Exit 1 on errors.

    Only reads the export: works on a read-only folder.
    """
    console = console_for()
    try:
        report = check_export(export_dir, structural=Structural(structural).value, sample_size=sample_size)
    except AtrError as exc:
        console_for(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=EXIT_USAGE) from None
    if json_out:
        typer.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        render_table(report, console)
    raise typer.Exit(code=0 if report.ok else 1)


app = typer.Typer(add_completion=False)
app.command()(conform)

if __name__ == "__main__":
    app()
