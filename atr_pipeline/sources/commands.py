"""CLI commands for the SFTP inbox (plain typer-annotated functions; ``atr`` wires them).

``sftp_check``: connect with the ATR_SFTP_* settings, verify the pinned host key, the login and
every remote folder the settings name (inbox, archive, outbox), and report the inbox.
``sftp_pull``: list the inbox a few times, land every matched file that has been quiet long
enough (observations are kept between pulls in ``landing/sftp_pull_state.json``, so a pull
every few minutes from cron judges stability like the sensor does), then archive or delete
it; ``--run`` then takes every landed, unprocessed file through every stage, with the same
functions as ``atr run``; a provider's request file (a ``requests.files`` name) is landed the
same way and answered after the payer's files, its response uploaded to
``ATR_SFTP_OUTBOX/<provider>/``. Each file gets its own outcome line; one bad file never stops the
others. Output holds file names (control characters escaped), counts and hashes only.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from atr_pipeline.config import Settings, load_settings
from atr_pipeline.errors import AtrError, FileRefused
from atr_pipeline.layouts.spec import MappingSpec, load_mappings
from atr_pipeline.sources.landing import Ledger, match_mapping, sweep_partials
from atr_pipeline.sources.polling import (
    DEFAULT_QUIET_SECONDS,
    DEFAULT_STABLE_POLLS,
    SensorCursor,
    is_quiet,
    observe,
    printable,
    waiting_reason,
)
from atr_pipeline.sources.sftp import (
    CONNECTION_ERRORS,
    ENV_OUTBOX,
    ENV_QUIET_SECONDS,
    ENV_STABLE_POLLS,
    RemoteFileMissing,
    SftpError,
    SftpSource,
    config_from_env,
)

STATE_NAME = "sftp_pull_state.json"


def sftp_check() -> None:
    """Check the SFTP connection: host key, login, algorithms, remote folders, and the inbox listing."""
    try:
        cfg = config_from_env()
        with SftpSource(cfg) as src:
            src.check_folders(outbox=os.environ.get(ENV_OUTBOX) or None)
            listing = src.scan_inbox()
            cipher, mac = src.negotiated()
    except AtrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for entry in listing.skipped:
        typer.echo(f"skipped {entry.name}: {entry.reason}")
    folders = ", ".join(f for f in ("inbox", "archive" if cfg.after_landing == "archive" else "",
                                    "outbox" if os.environ.get(ENV_OUTBOX) else "") if f)
    typer.echo(f"ok: {cfg.where}, host key matches {cfg.known_hosts}, cipher {cipher}, mac {mac}, {folders} exist, "
               f"{len(listing.files)} file(s) in {cfg.inbox!r}")


def _load_state(path: Path) -> SensorCursor:
    try:
        return SensorCursor.from_json(path.read_text())
    except FileNotFoundError:
        return SensorCursor()


def _save_state(path: Path, cursor: SensorCursor) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(cursor.to_json())
    os.replace(tmp, path)  # overlapping pulls: last writer wins, never a torn file


def sftp_pull(
    settle_seconds: Annotated[float, typer.Option(help="Seconds between this pull's listings")] = 5.0,
    polls: Annotated[int, typer.Option(min=1, help="Listings in this pull (observations also carry over between pulls)")] = 2,
    run: Annotated[bool, typer.Option("--run", help="Then process every landed, unprocessed file (the stages of `atr run`)")] = False,
    out: Annotated[Path | None, typer.Option(help="With --run: also copy each bulk export under this folder")] = None,
    home: Annotated[Path | None, typer.Option(help="ATR_HOME (state folder)")] = None,
) -> None:
    """Land every matched file that stayed unchanged for ATR_SFTP_QUIET_SECONDS over ATR_SFTP_STABLE_POLLS
    listings (or has its done marker), then archive/delete it per ATR_SFTP_AFTER_LANDING.

    Exit 0 when no file had a problem, 1 when any file was skipped with an error, refused or
    not processed (the others are still landed), or the connection failed.
    """
    from atr_pipeline.requests.files import is_request_file, landing_spec

    settings = load_settings(home)
    problems = 0
    counts = {"landed": 0, "duplicate": 0, "unchanged": 0, "waiting": 0, "unmatched": 0}
    try:
        mappings = load_mappings(settings.mappings_dir)
        cfg = config_from_env()
        stable_polls = int(os.environ.get(ENV_STABLE_POLLS) or DEFAULT_STABLE_POLLS)
        quiet = float(os.environ.get(ENV_QUIET_SECONDS) or DEFAULT_QUIET_SECONDS)
        ledger = Ledger.for_landing(settings.landing_dir)
        swept = sweep_partials(settings.landing_dir)
        if swept:
            typer.echo(f"removed {swept} partial download(s) left by a stopped pull")
        state_path = settings.landing_dir / STATE_NAME
        cursor = _load_state(state_path)
        with SftpSource(cfg) as src:
            src.check_folders(outbox=os.environ.get(ENV_OUTBOX) or None)
            observations = cursor.observations
            for i in range(polls):
                if i:
                    time.sleep(settle_seconds)
                listing = src.scan_inbox()
                now = datetime.now(UTC)
                observations = observe(listing.files, observations, now=now)
            _save_state(state_path, SensorCursor(observations, cursor.requested, cursor.reported))
            for entry in listing.skipped:
                typer.echo(f"skipped {entry.name}: {entry.reason}")
                problems += 1
            files = list(listing.files)
            for index, f in enumerate(files):
                shown = printable(f.name)
                spec = match_mapping(f.name, mappings)
                request = is_request_file(f.name, mappings) if spec is None else None
                if request is not None:
                    spec = landing_spec(*request)  # a provider's request file: landed the same way
                if spec is None:
                    counts["unmatched"] += 1
                    typer.echo(f"unmatched {shown}: matches no mapping's file pattern (or several); left where it is")
                    continue
                if cfg.done_suffix:
                    if f.name + cfg.done_suffix not in listing.markers:
                        counts["waiting"] += 1
                        typer.echo(f"waiting {shown}: no done marker {printable(f.name + cfg.done_suffix)} yet")
                        continue
                elif not is_quiet(observations[f.name], now=now, stable_polls=stable_polls, quiet_seconds=quiet):
                    counts["waiting"] += 1
                    typer.echo(f"waiting {shown}: " + waiting_reason(observations[f.name], now=now,
                                                                     stable_polls=stable_polls, quiet_seconds=quiet))
                    continue
                try:
                    problems += _pull_one(src, f, spec, settings, ledger, counts, request_file=request is not None)
                except CONNECTION_ERRORS as exc:
                    typer.echo(f"error {shown}: {exc}", err=True)
                    rest = len(files) - index - 1
                    if rest:
                        typer.echo(f"stopped: {rest} later file(s) not tried (connection lost)", err=True)
                    problems += 1
                    break
    except AtrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{counts['landed']} landed, {counts['duplicate']} duplicate(s), {counts['unchanged']} already landed, "
               f"{counts['waiting']} still settling, {counts['unmatched']} unmatched, {problems} problem(s)")
    if run:
        problems += _process_landed(settings, mappings, out)
    raise typer.Exit(1 if problems else 0)


def _pull_one(src: SftpSource, f, spec: MappingSpec, settings: Settings, ledger: Ledger, counts: dict[str, int], *,
              request_file: bool = False) -> int:
    """Land one ready file and archive/delete it; its outcome line. Returns 1 on a problem.

    ``request_file``: a provider's request file (``spec`` is then ``requests.files.landing_spec``)."""
    shown = printable(f.name)
    sha = ledger.remote_sha(spec.source_id, f.name, f.size, f.mtime)
    if sha is not None:
        counts["unchanged"] += 1  # landed before with this name, size and mtime: not downloaded again
        if src.config.after_landing == "leave":
            return 0
    else:
        try:
            outcome, sha = src.fetch_with_sha(f.name, spec=spec, landing_dir=settings.landing_dir, ledger=ledger,
                                              expected=f, after=False)
        except FileRefused as exc:
            typer.echo(f"refused {shown}: {exc.reason} ({exc.rule})")
            return 1
        except CONNECTION_ERRORS:
            raise
        except RemoteFileMissing:
            # Listed, then gone: another pull took it (or the payer withdrew it); nothing to do.
            typer.echo(f"gone {shown}: no longer in the inbox (taken by another pull or withdrawn); nothing landed")
            return 0
        except SftpError as exc:
            typer.echo(f"skipped {shown}: {exc}")
            return 1
        except OSError as exc:  # local: disk full, permissions of ATR_HOME
            typer.echo(f"skipped {shown}: cannot write to landing ({exc.strerror})")
            return 1
        if outcome.status == "landed" and outcome.file is not None:
            counts["landed"] += 1
            typer.echo(f"landed {shown} -> {printable(outcome.file.path.name)}")
        elif request_file:
            # A provider re-sending a request file it has no response for: answered again (from
            # history, so nothing is recorded twice) by the next --run, under the name it landed with.
            counts["duplicate"] += 1
            ledger.mark(sha, "landed")
            typer.echo(f"duplicate {shown} (same bytes as {printable(outcome.duplicate_of or '')}); "
                       "its requests are answered again")
        else:
            counts["duplicate"] += 1
            typer.echo(f"duplicate {shown} (same bytes as {printable(outcome.duplicate_of or '')})")
    try:
        after = src.after_landing(f.name, sha, landed_as=f)
    except CONNECTION_ERRORS:
        raise
    except SftpError as exc:
        typer.echo(f"not {src.config.after_landing}d {shown}: {exc} (its bytes are landed; it stays in the inbox)")
        return 1
    if after.action == "archived":
        typer.echo(f"archived {shown} -> {printable(after.remote_path or '')}")
    elif after.action == "deleted":
        typer.echo(f"deleted {shown} from the inbox")
    elif after.action == "gone":
        typer.echo(f"{shown} was already moved from the inbox by another pull")
    return 0


def _process_landed(settings: Settings, mappings: dict[str, MappingSpec], out: Path | None) -> int:
    """Every landed, not yet processed file of a known mapping through every stage, oldest first
    (the same ``pipeline.process_landed`` as ``atr run``). Returns how many were refused."""
    from atr_pipeline.pipeline import landed_from_entry, process_landed

    refused = 0
    entries = [e for e in Ledger.for_landing(settings.landing_dir).entries("landed") if e.source_id in mappings]
    if not entries:
        typer.echo("nothing landed to process")
    # Providers' request files after the payer's files (they are about the payer's lists).
    requests = [e for e in entries if _request_layout(e, mappings[e.source_id]) is not None]
    for entry in [e for e in entries if e not in requests]:
        spec = mappings[entry.source_id]
        outcome = process_landed(landed_from_entry(entry), spec, settings, out_dir=out)
        name = printable(outcome.file_name)
        if outcome.status == "refused":
            refused += 1
            typer.echo(f"refused {name}: {outcome.message}")
            continue
        typer.echo(f"processed {name} ({outcome.month:%Y-%m}): {outcome.records_read:,} rows read, "
                   f"{outcome.rows_accepted:,} accepted, {outcome.rows_rejected:,} rejected; export {outcome.export_dir}")
    for entry in requests:
        refused += _answer_landed_request(entry, mappings[entry.source_id], settings)
    return refused


def _request_layout(entry, spec: MappingSpec):
    """The request layout a landed file is in, or None for a payer's file."""
    return spec.request_layout(entry.original_name)


def _answer_landed_request(entry, spec: MappingSpec, settings: Settings) -> int:
    """Answer one landed request file (``requests.files.answer_file``, as `atr run` does for the
    local inbox), write its response to ATR_OUTBOX/<provider>/ and upload it to
    ATR_SFTP_OUTBOX/<provider>/. Returns 1 when the file was refused whole or not answered."""
    from atr_pipeline.history.locking import delivery_lock
    from atr_pipeline.pipeline import return_response
    from atr_pipeline.requests.files import answer_file

    layout = _request_layout(entry, spec)
    name = printable(entry.original_name)
    ledger = Ledger.for_landing(settings.landing_dir)
    with delivery_lock(settings.home, entry.sha256):
        current = ledger.get(entry.sha256)
        if current is None or current.status != "landed":
            return 0  # an overlapping pull answered it meanwhile
        answered = answer_file(entry.path, spec, layout, settings, name=entry.original_name)
        try:
            remote = return_response(answered.response, layout.provider)
        except AtrError as exc:
            # Stays "landed": the next --run answers it again (the same answer) and retries the upload.
            typer.echo(f"answered {name}, response {answered.response}; not uploaded: {exc}", err=True)
            return 1
        ledger.mark(entry.sha256, "refused" if answered.refused else "processed",
                    "request_file" if answered.refused else None)
    where = f"{answered.response}" + (f", uploaded to {printable(remote)}" if remote else "")
    if answered.refused:
        typer.echo(f"refused {name}: request file from {layout.provider}: {answered.refused}; response {where}")
        return 1
    counts = answered.outcomes
    typer.echo(f"answered {name}: {len(answered.answers)} request(s) from {layout.provider}: "
               + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("accepted", "queued", "rejected")) + f"; response {where}")
    return 0
