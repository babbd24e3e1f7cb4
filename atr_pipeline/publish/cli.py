"""``atr load``: the command-line face of the loader (wired into ``atr`` by atr_pipeline/cli.py).

In:  an export folder and a FHIR base URL, plus the settings of ``ServerConfig``.
Out: progress (bars on a terminal; otherwise a plain line at the start and one per
     ``--progress-interval``), a summary (counts per type and outcome, each type's state, retries,
     stop reason and the command that resumes), ``load_report.json`` in the export folder.
     ``--verify`` loads nothing: it compares the export with the server, type by type.
Exit codes (one place: ``EXIT_CODES`` below, also in docs/LOADING.md):
     0 every resource is on the server; 1 some were refused or the load stopped (re-run to resume;
     with --verify: the server differs from the export); 2 unusable arguments or export (a file
     changed since export included); 3 the server cannot be reached; 4 not a FHIR R4 server (or
     credentials refused at the first request); 5 the server lost data a load had put there.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from atr_pipeline.errors import AtrError
from atr_pipeline.publish.auth import auth_from_env
from atr_pipeline.publish.export import read_manifest
from atr_pipeline.publish.integrity import check_files
from atr_pipeline.publish.loader import REPORT_NAME, LoadProgress, exit_code, load_export
from atr_pipeline.publish.preflight import NotAFhirServer, ServerUnreachable, preflight
from atr_pipeline.publish.report import LoadReport
from atr_pipeline.publish.server import RetryPolicy, ServerConfig
from atr_pipeline.publish.verify import ServerReader, compare_export

EXIT_CODES = {
    0: "every resource is on the server",
    1: "some resources were refused or the load stopped; re-run to resume (--verify: the server differs)",
    2: "unusable arguments or export",
    3: "the FHIR server cannot be reached",
    4: "not a FHIR R4 server at that URL, or it refused the credentials",
    5: "the server lost data a load had put there; re-run to send it again",
}


def load(
    export_dir: Annotated[Path, typer.Argument(help="Bulk export folder (with manifest.json)", exists=True, file_okay=False)],
    server: Annotated[str, typer.Option("--server", help="FHIR base URL, e.g. https://fhir.example.org/fhir/R4")],
    kind: Annotated[str, typer.Option(help="Server preset: generic or medplum (explicit options win)")] = "generic",
    bundle_size: Annotated[int | None, typer.Option(help="Entries per Bundle (preset: 50) (Medplum: at most 50 in a transaction)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Bundles in flight at once (preset: 2)")] = None,
    mode: Annotated[str | None, typer.Option(help="batch (entry by entry, failed entries retried) or transaction (all or nothing) (preset: batch)")] = None,
    auth: Annotated[str, typer.Option(help="none, bearer (ATR_FHIR_TOKEN) or smart (ATR_SMART_*); auto picks from the environment")] = "auto",
    max_group_members: Annotated[int | None, typer.Option(help="Members per Group request; larger Groups are grown by JSON Patch")] = None,
    max_request_bytes: Annotated[int | None, typer.Option(help="Cut Bundles and Group chunks below this many bytes")] = None,
    max_attempts: Annotated[int, typer.Option(help="Attempts per request before its entries are reported failed")] = 6,
    max_retry_seconds: Annotated[float, typer.Option(help="Total backoff budget of the load; when spent the load stops")] = 900.0,
    max_unreachable_seconds: Annotated[float, typer.Option(help="Stop when the server has not answered at all for this long")] = 60.0,
    timeout: Annotated[float, typer.Option(help="Read/write timeout per request, seconds")] = 120.0,
    resume: Annotated[bool, typer.Option(
        "--resume/--restart", help="Skip what an earlier run loaded, once the server is seen to hold it (default), or start over")] = True,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Send a type even when a type it references failed")] = False,
    skip_unchanged: Annotated[bool, typer.Option(
        "--skip-unchanged/--always-put", help="Read first and PUT only what differs (no new versions of unchanged resources)")] = True,
    verify: Annotated[bool, typer.Option("--verify", help="Load nothing: compare the export with the server, per type")] = False,
    progress_interval: Annotated[float, typer.Option(help="Seconds between progress lines when not on a terminal (and report flushes)")] = 10.0,
) -> None:
    """Load a bulk export into a FHIR server by PUT, in dependency order; resumable and verified."""
    console = Console(stderr=True, soft_wrap=True)  # a message is one line, however narrow the output
    try:
        auth_kind = _auth_kind(auth)
        config = ServerConfig.for_kind(
            server,
            kind,
            auth=auth_kind,
            bundle_size=bundle_size,
            concurrency=concurrency,
            mode=mode,
            max_group_members_per_request=max_group_members,
            max_request_bytes=max_request_bytes,
            retry=RetryPolicy(max_attempts=max_attempts, max_total_retry_seconds=max_retry_seconds, max_unreachable_seconds=max_unreachable_seconds),
            timeouts={"read": timeout, "write": timeout},
            skip_unchanged=skip_unchanged,
        )
    except (ValidationError, AtrError) as exc:
        console.print(f"[red]atr load: invalid settings[/red]: {escape(_short(exc))}")
        raise typer.Exit(2) from None
    if verify:
        raise typer.Exit(_verify(export_dir, config, console))
    command = _resume_command()
    try:
        if console.is_terminal:
            report = _load_with_bars(export_dir, config, console, resume, keep_going, command)
        else:
            report = _load_with_lines(export_dir, config, console, resume, keep_going, command, progress_interval)
    except (ServerUnreachable, NotAFhirServer) as exc:
        console.print(f"[red]atr load[/red]: {escape(str(exc))}")
        raise typer.Exit(exc.exit_code) from None
    except AtrError as exc:
        console.print(f"[red]atr load[/red]: {escape(str(exc))}")
        raise typer.Exit(2) from None
    print_report(report, console, export_dir / REPORT_NAME)
    raise typer.Exit(exit_code(report))


def _resume_command() -> str:
    """The command line this load was started with, minus --restart: what resumes it."""
    args = [a for a in sys.argv[1:] if a not in ("--restart", "--resume")]
    return shlex.join(["atr", *args]) if args and args[0] == "load" else ""


def _load_with_bars(export_dir: Path, config: ServerConfig, console: Console, resume: bool, keep_going: bool, command: str) -> LoadReport:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[state]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def on_progress(event: LoadProgress) -> None:
            if not event.resource_type:
                return
            if event.resource_type not in tasks:
                tasks[event.resource_type] = bar.add_task(event.resource_type, total=event.total, state="")
            bar.update(tasks[event.resource_type], completed=event.confirmed, state=_state(event))

        return load_export(export_dir, config, progress=on_progress, resume=resume, keep_going=keep_going, resume_command=command, progress_interval=1.0)


def _load_with_lines(export_dir: Path, config: ServerConfig, console: Console, resume: bool, keep_going: bool, command: str, interval: float) -> LoadReport:
    def on_progress(event: LoadProgress) -> None:
        # Not a terminal (cron, CI, Dagster): only the periodic ticks, one plain line each.
        if event.tick:
            console.print(
                f"atr load: {event.loaded_total}/{event.grand_total} on the server; {event.resource_type} "
                f"{event.confirmed}/{event.total}; {_state(event) or 'no failures'}",
                soft_wrap=True,
                highlight=False,
                markup=False,  # the last error quotes the server's words
            )

    console.print(f"atr load: {export_dir} -> {config.base_url} ({config.mode}, bundles of {config.bundle_size})", soft_wrap=True, highlight=False,
                  markup=False)
    return load_export(export_dir, config, progress=on_progress, resume=resume, keep_going=keep_going, resume_command=command, progress_interval=interval)


def _state(event: LoadProgress) -> str:
    parts = []
    if event.failed:
        parts.append(f"failed {event.failed}")
    if event.retrying:
        parts.append(f"retrying {event.retrying}")
    if event.last_error and (event.failed or event.retrying):
        parts.append(f"last error: {event.last_error}")
    return ", ".join(parts)


def _verify(export_dir: Path, config: ServerConfig, console: Console) -> int:
    """``--verify``: every id of the export looked up on the server; the difference per type."""
    try:
        manifest = read_manifest(export_dir)
        check_files(export_dir, manifest)
        auth = auth_from_env(config.auth) if config.auth != "none" else None
        preflight(config, auth)
        reader = ServerReader(config, auth)
        try:
            diffs = compare_export(reader, export_dir, manifest)
        finally:
            reader.close()
    except (ServerUnreachable, NotAFhirServer) as exc:
        console.print(f"[red]atr load --verify[/red]: {escape(str(exc))}")
        return exc.exit_code
    except AtrError as exc:
        console.print(f"[red]atr load --verify[/red]: {escape(str(exc))}")
        return 2
    table = Table(title=escape(f"{export_dir} compared with {config.base_url}"))
    for column in ("type", "in export", "on server", "missing", "Groups differing"):
        table.add_column(column, justify="left" if column == "type" else "right")
    for d in diffs:
        table.add_row(d.resource_type, str(d.in_export), str(d.present), str(d.missing), str(len(d.groups_differing)))
    console.print(table)
    for d in diffs:
        if d.missing:
            console.print(f"  {d.resource_type}: {d.missing} missing, e.g. {', '.join(d.missing_ids)}", soft_wrap=True, markup=False)
        for text in d.groups_differing[:10]:
            console.print(f"  {text}", soft_wrap=True, markup=False)
    differing = [d.resource_type for d in diffs if not d.ok]
    console.print(f"verify: {'differs in ' + ', '.join(differing) if differing else 'the server holds every resource of the export'}")
    return 1 if differing else 0


def _auth_kind(auth: str) -> str:
    if auth == "auto":
        return "smart" if os.environ.get("ATR_SMART_TOKEN_URL") else "bearer" if os.environ.get("ATR_FHIR_TOKEN") else "none"
    if auth not in ("none", "bearer", "smart"):
        raise AtrError(f"--auth must be auto, none, bearer or smart, not {auth!r}")
    return auth


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
    return str(exc)


def print_report(report: LoadReport, console: Console, path: Path) -> None:
    table = Table(title=escape(f"Load into {report.server_url} ({report.mode}, bundles of {report.bundle_size})"))
    for column in ("type", "state", "total", "created", "updated", "unchanged", "failed", "skipped"):
        table.add_column(column, justify="left" if column in ("type", "state") else "right")
    for resource_type, c in report.counts.items():
        table.add_row(resource_type, c.state, *(str(v) for v in (c.total, c.created, c.updated, c.unchanged, c.failed, c.skipped)))
    console.print(table)
    for resource_type, c in report.counts.items():
        if c.note:
            console.print(f"  {resource_type}: {c.state}: {c.note}", soft_wrap=True, highlight=False, markup=False)
    console.print(
        f"status: {report.status}; requests {report.requests}, retries {report.retries} {report.retries_by_reason or ''}; {report.elapsed_seconds:.1f} s",
        soft_wrap=True,
        highlight=False,
    )
    if report.resumed:
        console.print("resumed from the checkpoint of an earlier run")
    for note in (report.checkpoint_note, report.verify_note):
        if note:
            console.print(note, soft_wrap=True, highlight=False, markup=False)
    if report.stop_reason:
        console.print(f"[red]stopped[/red]: {escape(report.stop_reason)}", soft_wrap=True, highlight=False)
    for failed in report.failed[:10]:
        codes = ", ".join(f"{i.code}@{'|'.join(i.expression)}" for i in failed.issues) or "-"
        console.print(f"  failed {failed.resource_type}/{failed.id}: {failed.reason} ({codes})", soft_wrap=True, highlight=False, markup=False)
    if len(report.failed) > 10:
        console.print(f"  ... {len(report.failed) - 10 + report.failed_truncated} more in {path}", markup=False)
    if report.status != "complete" and report.resume_command and not report.stop_reason:
        console.print(f"resume with: {report.resume_command}", soft_wrap=True, highlight=False, markup=False)
    console.print(f"report: {path}", soft_wrap=True, highlight=False, markup=False)
