"""CLI commands for the SFTP inbox (plain typer-annotated functions; ``atr`` wires them).

``sftp_check``: connect with the ATR_SFTP_* settings, verify the pinned host key and the login,
count the inbox. ``sftp_pull``: land every matched file whose size and mtime stay unchanged
over a settle interval (two listings, like the sensor's two polls), in one connection.
Output holds file names, counts and hashes only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from atr_pipeline.config import load_settings
from atr_pipeline.errors import AtrError
from atr_pipeline.layouts.spec import load_mappings
from atr_pipeline.sources.landing import Ledger, match_mapping
from atr_pipeline.sources.sftp import SftpSource, config_from_env


def sftp_check() -> None:
    """Check the SFTP connection: host key, login, and the inbox listing."""
    try:
        cfg = config_from_env()
        with SftpSource(cfg) as src:
            files = src.list_inbox()
    except AtrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"ok: {cfg.where}, host key matches {cfg.known_hosts}, {len(files)} file(s) in {cfg.inbox!r}")


def sftp_pull(
    settle_seconds: Annotated[float, typer.Option(help="Seconds between the two listings; files that change are left for later")] = 5.0,
    home: Annotated[Path | None, typer.Option(help="ATR_HOME (state folder)")] = None,
) -> None:
    """Land every stable, matched file from the SFTP inbox (archive/delete per ATR_SFTP_AFTER_LANDING)."""
    settings = load_settings(home)
    try:
        mappings = load_mappings(settings.mappings_dir)
        cfg = config_from_env()
        ledger = Ledger.for_landing(settings.landing_dir)
        landed = duplicates = waiting = unmatched = 0
        with SftpSource(cfg) as src:
            first = {f.name: f for f in src.list_inbox()}
            time.sleep(settle_seconds)
            for f in src.list_inbox():
                spec = match_mapping(f.name, mappings)
                if spec is None:
                    unmatched += 1
                    continue
                if first.get(f.name) != f:
                    waiting += 1
                    continue
                outcome = src.fetch(f.name, spec=spec, landing_dir=settings.landing_dir, ledger=ledger)
                if outcome.status == "landed":
                    landed += 1
                    typer.echo(f"landed {f.name} -> {outcome.file.path.name}")
                else:
                    duplicates += 1
                    typer.echo(f"duplicate {f.name} (same bytes as {outcome.duplicate_of})")
    except AtrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{landed} landed, {duplicates} duplicate(s), {waiting} still changing, {unmatched} unmatched")
