"""`atr requests list|accept|reject`: the payer's side of providers' requests (registered from cli.py).

``list`` prints one line per request (id, received, source, contract, month, operation, Group,
client, status, reason): no member data. ``accept`` applies a queued request and publishes its
month again; ``reject`` records the reason the provider will see.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from atr_pipeline.cli_common import console_for, escape
from atr_pipeline.config import load_settings
from atr_pipeline.errors import EXIT_REFUSED, EXIT_USAGE
from atr_pipeline.history.store import REQUEST_STATUSES
from atr_pipeline.requests import adjudicate
from atr_pipeline.requests.model import RequestRefused

requests_app = typer.Typer(help="Providers' member-add / member-remove / confirm requests: list, accept, reject.",
                           no_args_is_help=True, add_completion=False)
_console = console_for()
_err = console_for(stderr=True)
Home = Annotated[Path | None, typer.Option("--home", help="ATR_HOME (default: $ATR_HOME or ./.atr_home)")]


@requests_app.command("list")
def list_command(
    source: Annotated[str | None, typer.Option("--source", "-s", help="Only this source")] = None,
    status: Annotated[str | None, typer.Option(help=f"Only requests in this status ({', '.join(REQUEST_STATUSES)})")] = None,
    home: Home = None,
) -> None:
    """Every request with its operation, Group, outcome and id (in review and auto modes alike)."""
    if status is not None and status not in REQUEST_STATUSES:
        _err.print(f"[red]error:[/red] --status must be one of {', '.join(REQUEST_STATUSES)}")
        raise typer.Exit(EXIT_USAGE)
    found = adjudicate.list_requests(load_settings(home), source, status)
    if not found:
        typer.echo("no requests" + (f" for source {source}" if source else ""))
        return
    # One line per request, never wrapped (ids are copied into `accept` / `reject`); tab-separated.
    typer.echo("\t".join(("id", "received", "source", "contract", "month", "operation", "group", "client", "channel",
                          "status", "reason")))
    for r in found:
        typer.echo("\t".join((r.request_id, f"{r.received_at:%Y-%m-%dT%H:%M:%SZ}", r.source_id, r.contract_id,
                              f"{r.month:%Y-%m}", r.operation, r.group_id, r.client_id, r.channel,
                              r.status + (f" ({r.decided_by})" if r.decided_by else ""), r.reason or "")))


@requests_app.command("accept")
def accept_command(request_id: Annotated[str, typer.Argument(help="the request id (atr requests list)")], home: Home = None) -> None:
    """Accept a queued request: the list changes and its month is published again (a new Group version)."""
    try:
        done = adjudicate.accept(load_settings(home), request_id,
                                 progress=lambda msg: _err.print(f"[dim]  ... {escape(msg)}[/dim]"))
    except RequestRefused as refused:
        _err.print(f"[red]refused:[/red] {escape(refused.reason)}")
        raise typer.Exit(EXIT_USAGE if refused.status in (404, 409) else EXIT_REFUSED) from None
    _console.print(f"request {done.request_id} accepted: {escape(done.source_id)} {escape(done.contract_id)} "
                   f"{done.month:%Y-%m} published again")


@requests_app.command("reject")
def reject_command(
    request_id: Annotated[str, typer.Argument(help="the request id (atr requests list)")],
    reason: Annotated[str, typer.Option("--reason", help="why, in words the provider can act on (no PHI)")],
    home: Home = None,
) -> None:
    """Reject a queued request with a reason."""
    try:
        done = adjudicate.reject(load_settings(home), request_id, reason)
    except RequestRefused as refused:
        _err.print(f"[red]refused:[/red] {escape(refused.reason)}")
        raise typer.Exit(EXIT_USAGE) from None
    _console.print(f"request {done.request_id} rejected")
