"""The `atr` command: every stage without Dagster.

Exit codes: 0 all files succeeded, 1 any file refused (the others still processed),
2 usage errors (bad arguments, invalid mapping).
"""

from __future__ import annotations

import logging
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="atr",
    help="Payer member-attribution files -> Da Vinci ATR 2.1.0 FHIR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

USAGE = 2
REFUSED = 1


def _month(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        year, month = value.split("-")
        return date(int(year), int(month), 1)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not YYYY-MM") from None


def _load_mapping_or_exit(path: Path):
    from atr_pipeline.layouts.spec import MappingError, load_mapping

    try:
        return load_mapping(path)
    except MappingError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(USAGE) from None


@app.command("check-mapping")
def check_mapping(mapping: Annotated[Path, typer.Argument(help="mappings/<source>.yaml")]) -> None:
    """Validate a mapping and print what it understood."""
    spec = _load_mapping_or_exit(mapping)
    fmt = spec.format
    console.print(f"[bold]{spec.source_id}[/bold]: {spec.description or ''}".rstrip())
    console.print(f"  files:    pattern {spec.file.pattern!r}, month from {spec.file.month_from}, encoding {spec.file.encoding}")
    if fmt.kind == "delimited":
        console.print(f"  format:   delimited, delimiter {fmt.delimiter!r}, quote {fmt.quote!r}, header row {fmt.header_row}")
    else:
        console.print(f"  format:   fixed width, record length {fmt.record_length}")
    if spec.records:
        kinds = [k for k in ("header", "detail", "trailer") if getattr(spec.records, k)]
        codes = ", ".join(f"{k}={getattr(spec.records, k).code!r}" for k in kinds)
        console.print(f"  records:  {codes}")
    if spec.control.record_count:
        console.print(f"  control:  record count from {spec.control.record_count}")
    if spec.control.hash_total:
        console.print(f"  control:  hash total of {spec.control.hash_total.of} against {spec.control.hash_total.expected}")
    console.print(f"  fields ({len(spec.fields)}):")
    for name, f in spec.fields.items():
        if f.constant is not None:
            where = f"constant {f.constant!r}"
        elif f.is_fixed:
            where = f"positions {f.start}-{f.start + f.length - 1}"
        elif f.column is not None:
            where = f"column {f.column!r}"
        else:
            where = "default only"
        extra = []
        if f.date:
            extra.append(f"date {f.date}")
        if f.map:
            extra.append(f"code map ({len(f.map)} codes, unmapped -> {f.unmapped})")
        if f.default is not None:
            extra.append(f"default {f.default!r}")
        if f.transforms and f.constant is None:
            extra.append("+".join(f.transforms))
        console.print(f"    {name:<24} {where}" + (f"  [{'; '.join(extra)}]" if extra else ""))
    console.print(f"  reject threshold: {spec.reject_threshold:.1%}")
    console.print("[green]mapping is valid[/green]")


@app.command("run")
def run(
    mapping: Annotated[Path, typer.Option("--mapping", help="mappings/<source>.yaml")],
    inbox: Annotated[Optional[Path], typer.Option(help="folder with delivered files (default: $ATR_INBOX or ATR_HOME/inbox)")] = None,
    month: Annotated[Optional[str], typer.Option(help="only files for this reporting month, YYYY-MM")] = None,
    out: Annotated[Optional[Path], typer.Option(help="also copy each bulk export under this folder")] = None,
    home: Annotated[Optional[Path], typer.Option(help="state folder (default: $ATR_HOME or ./.atr_home)")] = None,
    reprocess: Annotated[bool, typer.Option(help="process files already processed again (same output)")] = False,
) -> None:
    """Every new file of one source in the inbox, through every stage, to a bulk export."""
    from atr_pipeline.config import load_settings
    from atr_pipeline.layouts.spec import load_mappings
    from atr_pipeline.errors import FileRefused
    from atr_pipeline.home import ensure_home
    from atr_pipeline.pipeline import land_path, process_landed
    from atr_pipeline.sources.landing import Ledger, scan_inbox

    spec = _load_mapping_or_exit(mapping)
    wanted = _month(month)
    settings = load_settings(home)
    inbox_dir = (inbox or settings.inbox_dir).resolve()
    if not inbox_dir.is_dir():
        err.print(f"[red]error:[/red] inbox {inbox_dir} is not a folder")
        raise typer.Exit(USAGE)
    others = {}
    if mapping.resolve().parent.is_dir():
        try:
            others = load_mappings(mapping.resolve().parent)
        except Exception:  # other mappings' problems are not this run's business
            others = {}
    others[spec.source_id] = spec
    matched, unmatched = scan_inbox(inbox_dir, others)
    for path in unmatched:
        err.print(f"[yellow]skipped[/yellow] {path.name}: matches no mapping's file pattern; left where it is")
    files = [p for p, s in matched if s.source_id == spec.source_id]
    if wanted:
        files = [p for p in files if spec.month_from_name(p.name) in (wanted, None)]
    if not files:
        console.print(f"no files for source {spec.source_id} in {inbox_dir}" + (f" for {month}" if month else ""))
        raise typer.Exit(0)
    ensure_home(settings)  # a home of a newer release is refused, an older one upgraded, before any file
    ledger = Ledger.for_landing(settings.landing_dir)
    tally = {"processed": 0, "refused": 0, "skipped": 0, "failed": 0}
    for path in files:
        # One file's failure never stops the others: every file gets exactly one outcome line.
        try:
            try:
                landed = land_path(path, spec, settings)
            except FileRefused as exc:
                tally["refused"] += 1
                where = f", line {exc.line_number}" if exc.line_number else ""
                console.print(f"[red]refused[/red]  {path.name}: {exc.reason} (rule {exc.rule}{where})")
                continue
            entry = ledger.get(landed.sha256)
            if entry is not None and entry.status != "landed" and not reprocess:
                tally["skipped"] += 1
                console.print(f"[dim]skipped[/dim]  {path.name}: already {entry.status} (use --reprocess to run it again)")
                continue
            if wanted and landed.month != wanted:
                tally["skipped"] += 1
                console.print(f"[dim]skipped[/dim]  {path.name}: reports {landed.month:%Y-%m}, not {month}")
                continue
            outcome = process_landed(landed, spec, settings, out_dir=out, progress=lambda m: err.print(f"[dim]  ... {m}[/dim]"), reprocess=reprocess)
        except Exception as exc:  # noqa: BLE001 - a bug or an unreadable file must not stop the rest
            # The type only: an exception's text may quote file content (PHI). The file stays
            # "landed" (or in the inbox), so the next run tries it again.
            tally["failed"] += 1
            console.print(f"[red]failed[/red]   {path.name}: internal error ({type(exc).__name__}); the other files were still processed")
            continue
        _print_outcome(outcome)
        tally[outcome.status if outcome.status in ("refused", "skipped") else "processed"] += 1
    console.print(f"{len(files)} file(s): " + ", ".join(f"{n} {k}" for k, n in tally.items() if n or k in ("processed", "refused")))
    raise typer.Exit(REFUSED if tally["refused"] or tally["failed"] else 0)


def _print_outcome(o) -> None:
    """One file's outcome: counts, rules, change types, and where its outputs are (no values)."""
    if o.status == "skipped":  # another run processed it while this one waited for it
        console.print(f"[dim]skipped[/dim]  {o.file_name}: {o.message}")
        return
    if o.status == "refused":
        console.print(f"[red]refused[/red]  {o.file_name}: {o.message}")
        if o.records_read:
            console.print(f"         {o.records_read:,} rows read, {o.rows_rejected:,} rejected")
        if o.rejects_by_rule:
            console.print("         rejects: " + ", ".join(f"{r} {n}" for r, n in o.rejects_by_rule.items()))
        if o.rejects_csv and o.rows_rejected:
            console.print(f"         rejects CSV: {o.rejects_csv}")
        return
    console.print(
        f"[green]ok[/green]       {o.file_name} ({o.month:%Y-%m}): {o.records_read:,} rows read, "
        f"{o.rows_accepted:,} accepted, {o.rows_rejected:,} rejected"
    )
    if o.rejects_by_rule:
        console.print("         rejects: " + ", ".join(f"{r} {n}" for r, n in o.rejects_by_rule.items()))
    warnings = getattr(o, "warnings_by_rule", None)
    if warnings:
        console.print("         warnings: " + ", ".join(f"{r} {n}" for r, n in warnings.items()))
    changes = getattr(o, "change_types", None)
    if changes:
        console.print("         members: " + ", ".join(f"{k} {changes.get(k, 0):,}" for k in ("new", "changed", "nochange", "dropped")))
    console.print("         resources: " + ", ".join(f"{t} {n:,}" for t, n in o.resources_by_type.items()))
    console.print(f"         export: {o.export_dir}")
    if o.rows_rejected:
        console.print(f"         rejects CSV: {o.rejects_csv}")


@app.command("fixtures")
def fixtures(
    mapping: Annotated[Path, typer.Option("--mapping")],
    members: Annotated[int, typer.Option(min=1)],
    month: Annotated[str, typer.Option(help="YYYY-MM")],
    out: Annotated[Path, typer.Option()],
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a realistic synthetic file in a mapping's layout."""
    from atr_pipeline.synthetic import write_synthetic

    spec = _load_mapping_or_exit(mapping)
    m = _month(month)
    assert m is not None
    out.mkdir(parents=True, exist_ok=True)
    err.print(f"[dim]writing {members:,} members for {month}...[/dim]")
    path = write_synthetic(spec, members=members, month=m, out_dir=out, seed=seed)
    console.print(f"wrote {path} ({path.stat().st_size:,} bytes)")


@app.command("demo")
def demo(
    home: Annotated[Path, typer.Option(help="demo state folder (inbox, DuckDB, exports, DAGSTER_HOME)")] = Path(".atr_home/demo"),
    fixtures_dir: Annotated[Path, typer.Option("--fixtures", help="bundled fixture files, one folder per source")] = Path("fixtures"),
    mappings_dir: Annotated[Path, typer.Option("--mappings", help="mapping folder")] = Path("mappings"),
) -> None:
    """Run the Dagster attribution_job on every bundled fixture partition and print a summary."""
    from rich.table import Table

    from atr_pipeline.demo import prepare_home, run_partitions

    home = home.resolve()
    partitions = prepare_home(home, fixtures_dir, mappings_dir)
    if not partitions:
        err.print(f"[red]error:[/red] no fixture files under {fixtures_dir} match a mapping in {mappings_dir}")
        raise typer.Exit(USAGE)
    results = run_partitions(partitions, progress=lambda m: err.print(f"[dim]{m}[/dim]"))
    table = Table(title="atr demo: attribution_job per partition")
    for col in ("source", "month", "read", "ok", "rej", "new/chg/same/drop", "FHIR", "checks"):
        table.add_column(col, overflow="fold")
    failed = 0
    notes = []
    for r in results:
        v = r.metadata.get("validated_rows", {})
        h = r.metadata.get("attribution_snapshot", {})
        f = r.metadata.get("fhir_resources", {})
        ct = h.get("change_types") or {}
        passed = sum(1 for ok in r.checks.values() if ok)
        checks = f"{passed}/{len(r.checks)} passed"
        if not r.success:
            failed += 1
            checks += " FAILED"
            notes.append(f"{r.source_id} {r.month}: {r.failure}")
        for name, ok in sorted(r.checks.items()):
            if not ok:
                notes.append(f"{r.source_id} {r.month}: check {name} failed")
        table.add_row(
            r.source_id, r.month,
            str(v.get("rows_read", "-")), str(v.get("rows_accepted", "-")), str(v.get("rows_rejected", "-")),
            "/".join(str(ct.get(k, 0)) for k in ("new", "changed", "nochange", "dropped")) if ct else "-",
            str(sum((f.get("resources_by_type") or {}).values()) or "-"),
            checks,
        )
    console.print(table)
    for note in notes:
        console.print(f"[red]{note}[/red]")
    console.print(f"exports:  {home / 'exports'}")
    console.print(f"rejects:  {home / 'rejects'}")
    console.print(f"history:  {home / 'history.duckdb'}")
    console.print(f"Dagster UI on the same data:  DAGSTER_HOME={home / 'dagster'} ATR_HOME={home} ATR_INBOX={home / 'inbox'} .venv/bin/dagster dev -w workspace.yaml")
    raise typer.Exit(REFUSED if failed else 0)


@app.command("publish")
def publish(
    mapping: Annotated[Path, typer.Option("--mapping", help="mappings/<source>.yaml")],
    month: Annotated[str, typer.Option(help="YYYY-MM")],
    home: Annotated[Optional[Path], typer.Option(help="state folder (default: $ATR_HOME or ./.atr_home)")] = None,
) -> None:
    """Rebuild a month's export from history (after `atr finalize`, or a mapping's systems change)."""
    from atr_pipeline.config import load_settings
    from atr_pipeline.pipeline import publish_month

    spec = _load_mapping_or_exit(mapping)
    m = _month(month)
    assert m is not None
    settings = load_settings(home)
    published = publish_month(spec, m, settings, progress=lambda msg: err.print(f"[dim]  ... {msg}[/dim]"))
    if published.export_dir is None:
        console.print(f"[red]refused[/red]  {spec.source_id} {month}: conformance errors {published.conformance_errors}; nothing exported")
        raise typer.Exit(REFUSED)
    console.print("resources: " + ", ".join(f"{t} {n:,}" for t, n in published.resources_by_type.items()))
    console.print(f"export: {published.export_dir}")


def _register_stage_commands() -> None:
    """Commands whose code lives with its stage (each module owns its options and output)."""
    from atr_pipeline.conform.cli import conform
    from atr_pipeline.history.cli import finalize, trends
    from atr_pipeline.publish.cli import load
    from atr_pipeline.sources.commands import sftp_check, sftp_pull

    app.command("conform")(conform)
    app.command("load")(load)
    app.command("trends")(trends)
    app.command("finalize")(finalize)
    app.command("sftp-check")(sftp_check)
    app.command("sftp-pull")(sftp_pull)


_register_stage_commands()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except Exception as exc:  # an AtrError is the user's to act on: no traceback
        from atr_pipeline.errors import AtrError

        if isinstance(exc, AtrError):
            err.print(f"[red]error:[/red] {exc}")
            sys.exit(REFUSED)
        raise


if __name__ == "__main__":
    main()
