"""The `atr` command: every stage without Dagster.

Exit codes (``atr_pipeline.errors``): 0 all files succeeded, 1 any file refused (the others
still processed), 2 usage errors (bad arguments, invalid mapping), 3 environment errors
(ATR_HOME or another folder missing, read-only, not ours, or its disk full).
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer
from typer.models import CommandInfo, TyperInfo

from atr_pipeline.cli_common import SOURCE_HELP, console_for, escape, mapping_path, month_option
from atr_pipeline.errors import EXIT_ENVIRONMENT, EXIT_REFUSED, EXIT_USAGE

app = typer.Typer(
    name="atr",
    help="Payer member-attribution files -> Da Vinci ATR 2.1.0 FHIR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Boxes and colours on a terminal; plain click text (no panels cut at 80 columns) in a pipe or log.
    rich_markup_mode="rich" if sys.stdout.isatty() and sys.stderr.isatty() else None,
    epilog="Exit codes: 0 ok, 1 a file, export or load refused, 2 usage error, 3 environment error "
    "(ATR_HOME missing, read-only, not writable, disk full). Start with: atr demo",
)
console = console_for()
err = console_for(stderr=True)

USAGE = EXIT_USAGE
REFUSED = EXIT_REFUSED
_month = month_option


def _examples(*lines: str) -> str:
    r"""A command's help epilog: runnable examples, kept line by line (\b stops click re-flowing them)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def _package_version() -> str:
    try:
        return version("atr_pipeline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"atr {_package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Payer member-attribution files -> Da Vinci ATR 2.1.0 FHIR."""


def _load_mapping_or_exit(path: Path):
    from atr_pipeline.layouts.spec import MappingError, load_mapping

    try:
        return load_mapping(path)
    except MappingError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(USAGE) from None


def _describe(model, *, skip: tuple[str, ...] = ()) -> str:
    """Every setting of a mapping section that is set, as ``key value`` pairs (nothing dropped)."""
    data = model.model_dump(exclude_none=True)
    # Strings quoted as written in the YAML (repr would double every backslash of a regex).
    return ", ".join(
        f"{key} '{value}'" if isinstance(value, str) else f"{key} {value!r}" for key, value in data.items() if key not in skip
    )


def _position(pos) -> str:
    if pos.is_fixed:
        return f"positions {pos.start}-{pos.start + pos.length - 1}"
    if pos.column is not None:
        return f"column {pos.column!r}"
    return "default only"


def _field_line(name: str, f) -> str:
    where = f"constant {f.constant!r}" if f.constant is not None else _position(f)
    # Everything else the mapping says about the field, in full: date format, the code map
    # itself, default, transforms and any option added to FieldSpec later.
    skip = ("column", "start", "length", "constant") + (() if f.map is not None else ("unmapped",))
    rest = _describe(f, skip=skip)
    return f"{name:<24} {where}" + (f"; {rest}" if rest else "")


@app.command("check-mapping", epilog=_examples(
    "atr check-mapping mappings/acme_commercial.yaml",
    "atr check-mapping --source statewide_medicaid",
))
def check_mapping(
    mapping_file: Annotated[Path | None, typer.Argument(help="mapping file (mappings/<source>.yaml)", show_default=False)] = None,
    source: Annotated[Path | None, typer.Option("--source", "--mapping", help=SOURCE_HELP, callback=mapping_path)] = None,
) -> None:
    """Validate a mapping and print everything it understood."""
    chosen = mapping_file or source
    if chosen is None:
        raise typer.BadParameter("give a mapping file, or --source ID", param_hint="MAPPING_FILE")
    spec = _load_mapping_or_exit(chosen)
    out = console
    out.print(f"[bold]{escape(spec.source_id)}[/bold]: {escape(spec.description or '')}".rstrip())
    out.print(f"  file:     {escape(_describe(spec.file))}")
    fmt = spec.format
    if fmt.kind == "delimited":
        layout = f"delimited, delimiter {fmt.delimiter!r}, quote {fmt.quote!r}, header row {fmt.header_row}"
    else:
        layout = f"fixed width, record length {fmt.record_length}, pad short lines {fmt.pad_short_lines}"
    out.print(f"  format:   {escape(layout)}")
    if spec.records:
        type_field = spec.records.type_field
        out.print(f"  records:  type field {escape(_position(type_field))}")
        for kind in ("header", "detail", "trailer"):
            record = getattr(spec.records, kind)
            if record is None:
                continue
            fields = ", ".join(f"{name} {_position(pos)}" for name, pos in record.fields.items())
            out.print(f"    {kind:<8} code {escape(repr(record.code))}" + (f"; fields {escape(fields)}" if fields else ""))
    if spec.control.record_count:
        out.print(f"  control:  record count from {escape(spec.control.record_count)}")
    if spec.control.hash_total:
        ht = spec.control.hash_total
        out.print(f"  control:  hash total of {escape(ht.of)} against {escape(ht.expected)} ({ht.scale} implied decimals)")
    out.print(f"  identifier systems: {escape(_describe(spec.identifier_systems))}")
    if spec.intended_recipient:
        out.print(f"  intended recipient: {escape(_describe(spec.intended_recipient))}")
    out.print(f"  fields ({len(spec.fields)}):")
    for name, f in spec.fields.items():
        out.print(f"    {escape(_field_line(name, f))}")
    out.print(f"  reject threshold: {spec.reject_threshold:.1%}")
    out.print(f"  provider requests: {spec.requests.adjudication}")
    for layout in spec.requests.files:
        out.print(f"    request file {escape(layout.file.pattern)} from {escape(layout.provider)} "
                  f"(contracts {escape(', '.join(layout.contracts))})")
    first = f"{spec.first_month:%Y-%m}" if spec.first_month else "not set (ATR_PARTITIONS_START; lateness counts from the first file)"
    out.print(f"  first month: {first}")
    out.print("[green]mapping is valid[/green]")


@app.command("run", epilog=_examples(
    "atr run --source acme_commercial --inbox fixtures/acme_commercial --month 2026-09",
    "atr run --mapping mappings/acme_commercial.yaml --out ./exports --reprocess",
))
def run(
    mapping: Annotated[Path, typer.Option("--mapping", "--source", help=SOURCE_HELP, callback=mapping_path)],
    inbox: Annotated[Path | None, typer.Option(help="folder with delivered files (default: $ATR_INBOX or ATR_HOME/inbox)")] = None,
    month: Annotated[str | None, typer.Option(help="only files for this reporting month, YYYY-MM")] = None,
    out: Annotated[Path | None, typer.Option(help="also put each bulk export under this folder (hard links on the same file system, else a copy)")] = None,
    home: Annotated[Path | None, typer.Option(help="state folder (default: $ATR_HOME or ./.atr_home)")] = None,
    reprocess: Annotated[bool, typer.Option(help="process files already processed again (same output)")] = False,
) -> None:
    """Every new file of one source in the inbox, through every stage, to a bulk export."""
    from atr_pipeline.config import load_settings
    from atr_pipeline.errors import FileRefused, environment_problem
    from atr_pipeline.home import ensure_home
    from atr_pipeline.layouts.spec import MappingError, load_mappings
    from atr_pipeline.pipeline import land_path, process_landed
    from atr_pipeline.requests.files import is_request_file, month_of
    from atr_pipeline.sources.landing import Ledger, scan_inbox

    spec = _load_mapping_or_exit(mapping)
    wanted = _month(month)
    settings = load_settings(home)
    inbox_dir = (inbox or settings.inbox_dir).resolve()
    if not inbox_dir.is_dir():
        err.print(f"[red]error:[/red] inbox {escape(str(inbox_dir))} is not a folder")
        raise typer.Exit(USAGE)
    others = {}
    if mapping.resolve().parent.is_dir():
        try:
            others = load_mappings(mapping.resolve().parent)
        except MappingError:  # other mappings' problems are not this run's business (check-mapping reports them)
            others = {}
    others[spec.source_id] = spec
    matched, unmatched = scan_inbox(inbox_dir, others)
    request_files = [p for p in unmatched if is_request_file(p.name, others)]
    for path in unmatched:
        if path not in request_files:
            err.print(f"[yellow]skipped[/yellow] {escape(path.name)}: matches no mapping's file pattern; left where it is")
    # a provider's request file of this source: answered after the payer's files (it is about their lists)
    request_files = [p for p in request_files if spec.requests.file_for(p.name)]
    files = [p for p, s in matched if s.source_id == spec.source_id]
    if wanted:
        files = [p for p in files if spec.month_from_name(p.name) in (wanted, None)]
        request_files = [p for p in request_files if month_of(spec.requests.file_for(p.name), p.name) == wanted]
    if not files and not request_files:
        console.print(escape(f"no files for source {spec.source_id} in {inbox_dir}" + (f" for {month}" if month else "")))
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
                console.print(f"[red]refused[/red]  {escape(path.name)}: {escape(f'{exc.reason} (rule {exc.rule}{where})')}")
                continue
            entry = ledger.get(landed.sha256)
            if entry is not None and entry.status != "landed" and not reprocess:
                tally["skipped"] += 1
                console.print(f"[dim]skipped[/dim]  {escape(path.name)}: already {entry.status} (use --reprocess to run it again)")
                continue
            if wanted and landed.month != wanted:
                tally["skipped"] += 1
                console.print(f"[dim]skipped[/dim]  {escape(path.name)}: reports {landed.month:%Y-%m}, not {escape(str(month))}")
                continue
            outcome = process_landed(landed, spec, settings, out_dir=out, progress=lambda m: err.print(f"[dim]  ... {escape(m)}[/dim]"),
                                     reprocess=reprocess)
        except Exception as exc:  # noqa: BLE001 - a bug or an unreadable file must not stop the rest
            if environment_problem(exc, settings.home) is not None:
                raise  # ATR_HOME itself is unusable (read-only, disk full): main() says so, exit 3
            # The type only: an exception's text may quote file content (PHI). The file stays
            # "landed" (or in the inbox), so the next run tries it again.
            tally["failed"] += 1
            console.print(f"[red]failed[/red]   {escape(path.name)}: internal error ({type(exc).__name__}); the other files were still processed")
            continue
        _print_outcome(outcome)
        tally[outcome.status if outcome.status in ("refused", "skipped") else "processed"] += 1
    for path in request_files:
        tally[_answer_request_file(path, spec, settings)] += 1
    console.print(f"{len(files) + len(request_files)} file(s): "
                  + ", ".join(f"{n} {k}" for k, n in tally.items() if n or k in ("processed", "refused")))
    raise typer.Exit(REFUSED if tally["refused"] or tally["failed"] else 0)


def _answer_request_file(path: Path, spec, settings) -> str:
    """Answer one provider request file; prints counts and where the response is (no member data)."""
    from atr_pipeline.errors import environment_problem
    from atr_pipeline.requests.files import answer_file

    layout = spec.requests.file_for(path.name)
    try:
        answered = answer_file(path, spec, layout, settings, progress=lambda m: err.print(f"[dim]  ... {escape(m)}[/dim]"))
    except Exception as exc:  # noqa: BLE001 - as for the payer's files: the type only, the rest still run
        if environment_problem(exc, settings.home) is not None:
            raise
        console.print(f"[red]failed[/red]   {escape(path.name)}: internal error ({type(exc).__name__}); send it again to retry")
        return "failed"
    if answered.refused:
        console.print(f"[red]refused[/red]  {escape(path.name)}: request file from {escape(layout.provider)}: "
                      f"{escape(answered.refused)}")
    else:
        counts = answered.outcomes
        console.print(f"[green]ok[/green]       {escape(path.name)}: {len(answered.answers)} request(s) from "
                      f"{escape(layout.provider)}: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("accepted", "queued", "rejected")))
    console.print(f"         response: {escape(str(answered.response))}")
    return "refused" if answered.refused else "processed"


def _print_outcome(o) -> None:
    """One file's outcome: counts, rules, change types, and where its outputs are (no values)."""
    if o.status == "skipped":  # another run processed it while this one waited for it
        console.print(f"[dim]skipped[/dim]  {escape(o.file_name)}: {escape(o.message)}")
        return
    if o.status == "refused":
        console.print(f"[red]refused[/red]  {escape(o.file_name)}: {escape(o.message)}")
        if o.records_read:
            console.print(f"         {o.records_read:,} rows read, {o.rows_rejected:,} rejected")
        if o.rejects_by_rule:
            console.print("         rejects: " + ", ".join(f"{r} {n}" for r, n in o.rejects_by_rule.items()))
        if o.rejects_csv and o.rows_rejected:
            console.print(f"         rejects CSV: {escape(str(o.rejects_csv))}")
        return
    console.print(
        f"[green]ok[/green]       {escape(o.file_name)} ({o.month:%Y-%m}): {o.records_read:,} rows read, "
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
    console.print(f"         export: {escape(str(o.export_dir))}")
    if o.rows_rejected:
        console.print(f"         rejects CSV: {escape(str(o.rejects_csv))}")


@app.command("fixtures", epilog=_examples(
    "atr fixtures --source acme_commercial --members 20 --month 2026-09 --out ./incoming",
    "atr fixtures --mapping mappings/statewide_medicaid.yaml --members 1000 --month 2026-10 --out ./incoming --seed 7",
))
def fixtures(
    mapping: Annotated[Path, typer.Option("--mapping", "--source", help=SOURCE_HELP, callback=mapping_path)],
    members: Annotated[int, typer.Option(min=1, help="members in the file (dependents included)")],
    month: Annotated[str, typer.Option(help="reporting month, YYYY-MM")],
    out: Annotated[Path, typer.Option(help="folder the file is written to (created if missing)")],
    seed: Annotated[int, typer.Option(help="same seed, consecutive months: one population with realistic changes")] = 0,
) -> None:
    """Write a realistic synthetic file in a mapping's layout."""
    from atr_pipeline.synthetic import write_synthetic

    spec = _load_mapping_or_exit(mapping)
    m = _month(month)
    assert m is not None  # typer requires --month
    out.mkdir(parents=True, exist_ok=True)
    err.print(f"[dim]writing {members:,} members for {escape(month)}...[/dim]")
    path = write_synthetic(spec, members=members, month=m, out_dir=out, seed=seed)
    console.print(f"wrote {escape(str(path))} ({path.stat().st_size:,} bytes)")


@app.command("demo", epilog=_examples("atr demo", "atr demo --home /tmp/atr-demo"))
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
        err.print(
            f"[red]error:[/red] no fixture files under {escape(str(fixtures_dir))} match a mapping in {escape(str(mappings_dir))}"
        )
        raise typer.Exit(USAGE)
    results = run_partitions(partitions, progress=lambda m: err.print(f"[dim]{escape(m)}[/dim]"))
    table = Table(title="atr demo: attribution_job per partition")
    for col in ("source", "month", "read", "ok", "rej", "new/chg/same/drop", "FHIR", "checks"):
        table.add_column(col, no_wrap=True)  # ids and counts are read whole, never cut
    failed = 0
    notes = []
    for r in results:
        v = r.metadata.get("validated_rows", {})
        h = r.metadata.get("attribution_snapshot", {})
        f = r.metadata.get("fhir_resources", {})
        ct = {k: h[k] for k in ("new", "changed", "nochange", "dropped") if k in h}  # one int entry per change type
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
            escape(r.source_id), r.month,
            str(v.get("rows_read", "-")), str(v.get("rows_accepted", "-")), str(v.get("rows_rejected", "-")),
            "/".join(str(ct.get(k, 0)) for k in ("new", "changed", "nochange", "dropped")) if ct else "-",
            str(f.get("dagster/row_count") or "-"),
            checks,
        )
    console.print(table)
    for note in notes:
        console.print(f"[red]{escape(note)}[/red]")
    console.print(f"exports:  {escape(str(home / 'exports'))}")
    console.print(f"rejects:  {escape(str(home / 'rejects'))}")
    console.print(f"history:  {escape(str(home / 'history'))}")
    # One line even on a narrow terminal: it is meant to be copied and pasted whole.
    dagster_cmd = (
        f"DAGSTER_HOME={home / 'dagster'} ATR_HOME={home} ATR_INBOX={home / 'inbox'} .venv/bin/dagster dev -w workspace.yaml"
    )
    console.print("Dagster UI on the same data:")
    console.print(escape(dagster_cmd), soft_wrap=True)
    raise typer.Exit(REFUSED if failed else 0)


@app.command("publish", epilog=_examples("atr publish --source acme_commercial --month 2026-09"))
def publish(
    mapping: Annotated[Path, typer.Option("--mapping", "--source", help=SOURCE_HELP, callback=mapping_path)],
    month: Annotated[str, typer.Option(help="YYYY-MM")],
    home: Annotated[Path | None, typer.Option(help="state folder (default: $ATR_HOME or ./.atr_home)")] = None,
) -> None:
    """Rebuild a month's export from history (after `atr finalize`, or a mapping's systems change)."""
    from atr_pipeline.config import load_settings
    from atr_pipeline.pipeline import publish_month

    spec = _load_mapping_or_exit(mapping)
    m = _month(month)
    assert m is not None  # typer requires --month
    settings = load_settings(home)
    published = publish_month(spec, m, settings, progress=lambda msg: err.print(f"[dim]  ... {escape(msg)}[/dim]"))
    if published.export_dir is None:
        console.print(
            f"[red]refused[/red]  {escape(spec.source_id)} {escape(month)}: "
            f"conformance errors {published.conformance_errors}; nothing exported"
        )
        raise typer.Exit(REFUSED)
    console.print("resources: " + ", ".join(f"{t} {n:,}" for t, n in published.resources_by_type.items()))
    console.print(f"export: {escape(str(published.export_dir))}")


# Examples of the commands whose code lives with its stage (their modules own options and output).
_STAGE_EXAMPLES = {
    "conform": (
        "atr conform .atr_home/demo/exports/acme_commercial/2026-09",
        "atr conform EXPORT_DIR --json-out > conform.json",
        "atr conform EXPORT_DIR --full",
    ),
    "load": (
        "atr load .atr_home/demo/exports/acme_commercial/2026-09 --server http://127.0.0.1:8103/fhir/R4 --kind medplum",
    ),
    "trends": (
        "atr trends --source acme_commercial --home .atr_home/demo",
        "atr trends --source acme_commercial --contract VBC25-PCP-001 --markdown trends.md",
    ),
    "finalize": ("atr finalize --source acme_commercial --contract VBC25-PCP-001",),
    "sftp-check": ("ATR_SFTP_HOST=sftp.example.org ATR_SFTP_USER=atr ATR_SFTP_KEY_FILE=~/.ssh/atr atr sftp-check",),
    "sftp-pull": ("atr sftp-pull --settle-seconds 10",),
}


_API_EXAMPLES = {
    "serve": ("atr serve --home .atr_home --port 8080",),
    "pull": (
        "atr pull --base http://127.0.0.1:8080/fhir --client-id CLIENT_ID --key private_key.pem "
        "--identifier 'SYSTEM|VBC25-0001' --out ./pulled",
    ),
    "clients": ("atr clients list", "atr clients add --help"),
}


def _register_stage_commands() -> None:
    """Commands whose code lives with its stage (each module owns its options and output)."""
    from atr_pipeline.api.cli import register as register_api
    from atr_pipeline.conform.cli import conform
    from atr_pipeline.history.cli import finalize, trends
    from atr_pipeline.publish.cli import load
    from atr_pipeline.requests.cli import requests_app
    from atr_pipeline.sources.commands import sftp_check, sftp_pull

    register_api(app)  # serve, pull, clients
    app.add_typer(requests_app, name="requests", epilog=_examples(
        "atr requests list --source acme_commercial --status queued",
        "atr requests accept REQUEST_ID",
        "atr requests reject REQUEST_ID --reason 'member not eligible under this contract'",
    ))
    for name, command in (
        ("conform", conform),
        ("load", load),
        ("trends", trends),
        ("finalize", finalize),
        ("sftp-check", sftp_check),
        ("sftp-pull", sftp_pull),
    ):
        app.command(name, epilog=_examples(*_STAGE_EXAMPLES[name]))(command)
    # The API module registers its own commands: their examples are added here, beside the others'.
    infos: list[CommandInfo | TyperInfo] = [*app.registered_commands, *app.registered_groups]
    for info in infos:
        if info.name in _API_EXAMPLES and not info.epilog:
            info.epilog = _examples(*_API_EXAMPLES[info.name])


_register_stage_commands()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from atr_pipeline.config import last_home
    from atr_pipeline.errors import AtrError, environment_problem

    try:
        app()
    # The boundary of the program: whatever escapes a command is either the user's to act on
    # (one line, its own exit code) or a bug, which is re-raised with its traceback.
    except Exception as exc:
        problem = environment_problem(exc, last_home())
        if problem is not None:
            err.print(f"[red]error:[/red] {escape(str(problem))}")
            sys.exit(EXIT_ENVIRONMENT)
        if isinstance(exc, AtrError):
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            sys.exit(REFUSED)
        raise


if __name__ == "__main__":
    main()
