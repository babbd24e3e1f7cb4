"""``atr conform EXPORT_DIR``: check a bulk export directory against ATR 2.1.0.

In: an export directory (manifest.json + NDJSON). Out: a table per rule (severity, count, example
``Type/id`` keys, element paths) or the report as JSON with ``--json-out``. Exit code 0 when no
error-severity rule fired, 1 when one did, 2 when the directory is not an export.
"""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from atr_pipeline.cli_common import console_for, escape
from atr_pipeline.conform import plan
from atr_pipeline.conform.checker import STRUCTURAL_MODES
from atr_pipeline.conform.export import check_export, listed_lines
from atr_pipeline.conform.report import ConformReport
from atr_pipeline.errors import EXIT_USAGE, AtrError

# A choice type from the checker's own list, so a wrong value is answered with the valid ones
# (built at run time from that list, which mypy cannot follow: hence the ignore).
Structural = enum.Enum("Structural", {mode: mode for mode in STRUCTURAL_MODES}, type=str)  # type: ignore[misc]


def render_table(report: ConformReport, console: Console, seconds: float | None = None) -> None:
    verdict = "[green]PASS[/green]" if report.ok else "[red]FAIL[/red]"
    types = ", ".join(f"{t} {n}" for t, n in report.by_type.items()) or "none"
    console.print(f"ATR conformance: {verdict}")
    console.print(f"resources {report.resources_checked} ({types})")
    console.print(f"R4 structure checked {report.structurally_checked}")
    console.print(f"errors {report.error_count}, warnings {report.warning_count}")
    if seconds is not None:
        console.print(f"checked in {seconds:.1f} s ({rate(report, seconds):,} resources/s)")
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


def rate(report: ConformReport, seconds: float) -> int:
    return round(report.resources_checked / seconds) if seconds > 0 else 0


def conform(
    export_dir: Annotated[Path, typer.Argument(help="Bulk export directory (manifest.json + NDJSON files)")],
    full: Annotated[bool, typer.Option("--full", help="R4 structure check of every resource (slow: ~5-10k resources/s)")] = False,
    structural: Annotated[
        Structural | None,
        typer.Option(help="R4 structure check with the R4B models: all, sample or none [default: as atr run does]"),
    ] = None,
    sample_size: Annotated[
        int | None, typer.Option(min=0, help="Resources checked structurally with --structural sample [default: ATR_CONFORM_SAMPLE_SIZE, 2000]")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json-out", help="Print the report as JSON")] = False,
) -> None:
    """Check an ATR bulk export: profile rules, references, NPIs, R4 structure. Exit 1 on errors.

    By default the checks of `atr run`'s own conformance stage: every rule on every resource, the
    R4 structure on every resource up to ATR_CONFORM_FULL_MAX (50,000) resources and on a seeded
    sample of ATR_CONFORM_SAMPLE_SIZE (2,000) above. --full checks the structure of every
    resource. Only reads the export: works on a read-only folder.
    """
    console = console_for()
    err = console_for(stderr=True)
    if full and structural is not None and Structural(structural).value != "all":
        err.print("[red]error:[/red] --full checks the structure of every resource; it cannot be combined with --structural "
                  f"{Structural(structural).value}", highlight=False)
        raise typer.Exit(code=EXIT_USAGE)
    t0 = time.perf_counter()
    try:
        if full:
            mode, size = "all", 0
        elif structural is not None:
            mode, size = Structural(structural).value, plan.sample_size()
        else:
            mode, size = plan.structural_plan(listed_lines(export_dir))
        report = check_export(export_dir, structural=mode, sample_size=size if sample_size is None else sample_size)
    except AtrError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=EXIT_USAGE) from None
    seconds = time.perf_counter() - t0
    if json_out:
        payload = {**report.to_dict(), "seconds": round(seconds, 3), "resources_per_second": rate(report, seconds)}
        typer.echo(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
    else:
        render_table(report, console, seconds)
    raise typer.Exit(code=0 if report.ok else 1)


app = typer.Typer(add_completion=False)
app.command()(conform)

if __name__ == "__main__":
    app()
