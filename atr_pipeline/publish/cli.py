"""``atr load``: the command-line face of the loader (wired into ``atr`` by atr_pipeline/cli.py).

In:  an export folder and a FHIR base URL, plus the settings of ``ServerConfig``.
Out: a one-screen summary (counts per type and outcome, retries, stop reason), ``load_report.json``
     in the export folder, exit code 0 when every resource was accepted, 1 when some failed or the
     load stopped, 2 when the arguments or the export are unusable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from atr_pipeline.errors import AtrError
from atr_pipeline.publish.loader import REPORT_NAME, LoadProgress, load_export
from atr_pipeline.publish.report import LoadReport
from atr_pipeline.publish.server import RetryPolicy, ServerConfig


def load(
    export_dir: Annotated[Path, typer.Argument(help="Bulk export folder (with manifest.json)", exists=True, file_okay=False)],
    server: Annotated[str, typer.Option("--server", help="FHIR base URL, e.g. https://fhir.example.org/fhir/R4")],
    bundle_size: Annotated[int, typer.Option(help="Entries per Bundle (Medplum: at most 50 in a transaction)")] = 50,
    concurrency: Annotated[int, typer.Option(help="Bundles in flight at once")] = 2,
    mode: Annotated[str, typer.Option(help="batch (entry by entry, failed entries retried) or transaction (all or nothing)")] = "batch",
    kind: Annotated[str, typer.Option(help="Server preset: generic, medplum or hapi (explicit options win)")] = "generic",
    auth: Annotated[str, typer.Option(help="none, bearer (ATR_FHIR_TOKEN) or smart (ATR_SMART_*); auto picks from the environment")] = "auto",
    max_group_members: Annotated[int | None, typer.Option(help="Members per Group request; larger Groups are grown by JSON Patch")] = None,
    max_request_bytes: Annotated[int | None, typer.Option(help="Cut Bundles and Group chunks below this many bytes")] = None,
    max_attempts: Annotated[int, typer.Option(help="Attempts per request before its entries are reported failed")] = 6,
    max_retry_seconds: Annotated[float, typer.Option(help="Total backoff budget of the load; when spent the load stops")] = 900.0,
    timeout: Annotated[float, typer.Option(help="Read/write timeout per request, seconds")] = 120.0,
    resume: Annotated[bool, typer.Option("--resume/--restart", help="Skip chunks an earlier run loaded (default) or start over")] = True,
) -> None:
    """Load a bulk export into a FHIR server by PUT, in dependency order; resumable."""
    console = Console(stderr=True)
    try:
        auth_kind = _auth_kind(auth)
        config = ServerConfig.for_kind(
            server,
            kind,  # type: ignore[arg-type]
            auth=auth_kind,
            bundle_size=bundle_size,
            concurrency=concurrency,
            mode=mode,
            max_group_members_per_request=max_group_members,
            max_request_bytes=max_request_bytes,
            retry=RetryPolicy(max_attempts=max_attempts, max_total_retry_seconds=max_retry_seconds),
            timeouts={"read": timeout, "write": timeout},
        )
    except (ValidationError, KeyError, AtrError) as exc:
        console.print(f"[red]atr load: invalid settings[/red]: {_short(exc)}")
        raise typer.Exit(2) from None
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
            tasks: dict[str, int] = {}

            def on_progress(event: LoadProgress) -> None:
                if event.resource_type not in tasks:
                    tasks[event.resource_type] = bar.add_task(event.resource_type, total=event.total)
                bar.update(tasks[event.resource_type], completed=event.done)

            report = load_export(export_dir, config, progress=on_progress, resume=resume)
    except AtrError as exc:
        console.print(f"[red]atr load[/red]: {exc}")
        raise typer.Exit(2) from None
    print_report(report, console, export_dir / REPORT_NAME)
    raise typer.Exit(0 if report.ok else 1)


def _auth_kind(auth: str) -> str:
    if auth == "auto":
        import os

        return "smart" if os.environ.get("ATR_SMART_TOKEN_URL") else "bearer" if os.environ.get("ATR_FHIR_TOKEN") else "none"
    if auth not in ("none", "bearer", "smart"):
        raise AtrError(f"--auth must be auto, none, bearer or smart, not {auth!r}")
    return auth


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
    return str(exc)


def print_report(report: LoadReport, console: Console, path: Path) -> None:
    table = Table(title=f"Load into {report.server_url} ({report.mode}, bundles of {report.bundle_size})")
    for column in ("type", "total", "created", "updated", "unchanged", "failed", "skipped"):
        table.add_column(column, justify="left" if column == "type" else "right")
    for resource_type, c in report.counts.items():
        table.add_row(resource_type, *(str(v) for v in (c.total, c.created, c.updated, c.unchanged, c.failed, c.skipped)))
    console.print(table)
    console.print(f"status: {report.status}; requests {report.requests}, retries {report.retries} {report.retries_by_reason or ''}; {report.elapsed_seconds:.1f} s")
    if report.resumed:
        console.print("resumed from the checkpoint of an earlier run")
    if report.checkpoint_note:
        console.print(report.checkpoint_note)
    if report.stop_reason:
        console.print(f"[red]stopped[/red]: {report.stop_reason}")
    for failed in report.failed[:10]:
        codes = ", ".join(f"{i.code}@{'|'.join(i.expression)}" for i in failed.issues) or "-"
        console.print(f"  failed {failed.resource_type}/{failed.id}: {failed.reason} ({codes})")
    if len(report.failed) > 10:
        console.print(f"  ... {len(report.failed) - 10 + report.failed_truncated} more in {path}")
    console.print(f"report: {path}")
