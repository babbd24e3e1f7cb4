"""Conformance of a bulk export directory: manifest.json plus one NDJSON file (or .ndjson.gz) per type.

In: the export directory. ``manifest.json`` follows the Bulk Data manifest: ``output`` is a list of
``{"type", "url", "count"}``; ``url`` may be absolute or relative, only its file name is used,
looked up in the directory. Out: a ``ConformReport`` over every resource in every listed file, plus
``export.*`` findings (missing file, count differing from the line count, resource of another type
than its file, unlisted NDJSON files, blank lines, a manifest listing nothing, no Group, Patient or
Coverage file), whose examples are file names or the missing type. Files listed under
the manifest's ``error`` (OperationOutcomes) are checked for presence and count only.
Refused (``AtrError``): a directory without a readable manifest.json.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TypedDict, Unpack
from urllib.parse import urlparse

import polars as pl

from atr_pipeline.conform.checker import Checker, frame_order
from atr_pipeline.conform.findings import Findings
from atr_pipeline.conform.report import ConformReport
from atr_pipeline.errors import AtrError
from atr_pipeline.publish.export import MANIFEST_NAME, manifest_json

MANIFEST = MANIFEST_NAME
# An ATR member-attribution export is a Group of Patients with their Coverage: without any one of
# them it is not an attribution list, however clean the rest is.
REQUIRED_TYPES = ("Group", "Patient", "Coverage")


def _file_name(url: str) -> str:
    return PurePosixPath(urlparse(url).path).name


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def manifest_entries(export_dir: Path) -> tuple[list[dict], list[dict]]:
    """The manifest's ``output`` and ``error`` entries (error files hold OperationOutcomes)."""
    path = export_dir / MANIFEST
    # Read by the exporter's own reader; judged here leniently, so a manifest from another
    # producer is reported on (findings) rather than refused for a field this exporter writes.
    manifest = manifest_json(export_dir)
    output = manifest.get("output") if isinstance(manifest, dict) else None
    if not isinstance(output, list) or not all(isinstance(o, dict) and isinstance(o.get("url"), str) for o in output):
        raise AtrError(f"{path}: manifest.json needs an 'output' list of {{type, url, count}} entries")
    errors = manifest.get("error")
    errors = [e for e in errors if isinstance(e, dict) and isinstance(e.get("url"), str)] if isinstance(errors, list) else []
    return output, errors


def listed_lines(export_dir: Path) -> int:
    """Lines in the manifest's listed output files (missing ones count 0): the size of the set
    the sampling rule of conform/plan.py is applied to, without parsing anything."""
    total = 0
    for entry in manifest_entries(export_dir)[0]:
        path = Path(export_dir) / _file_name(entry["url"])
        if path.is_file():
            last = b"\n"
            with _open(path) as fh:
                while chunk := fh.read(1 << 24):
                    total += chunk.count(b"\n")
                    last = chunk[-1:]
            total += last != b"\n"  # a last line without its newline
    return total


def _count_lines(path: Path) -> int:
    with _open(path) as fh:
        return sum(1 for raw in fh if raw.strip())


class CheckOptions(TypedDict, total=False):
    """``Checker``'s keyword options (structural, sample_size, seed, ...), passed through as they are."""

    structural: str
    sample_size: int
    seed: int
    assume_profiles: bool
    resolve_references: bool


def check_export(export_dir: Path, *, fast: bool = True, **options: Unpack[CheckOptions]) -> ConformReport:
    """The report over every listed file; ``options`` are ``Checker``'s, with its defaults.

    With ``fast`` (the default) and a sampled or no structure check, the files are read as
    columns and conform/fast.py tries to prove every cheap rule silent, as the run's own stage
    does; when it cannot, every line goes through the per-resource checker, which reports
    whatever is wrong. Either way the report is the same."""
    export_dir = Path(export_dir)
    entries, error_entries = manifest_entries(export_dir)
    by_type: dict[str, list[dict]] = {}
    for entry in entries:
        by_type.setdefault(str(entry.get("type") or ""), []).append(entry)
    checker = Checker(**options)  # refuses bad options before anything is read
    if fast and checker.structural in ("sample", "none"):
        report = _fast_export_report(export_dir, entries, error_entries, by_type, options)
        if report is not None:
            return report
    f = checker.findings
    _manifest_findings(entries, by_type, f)

    listed: set[str] = set()
    for rtype in frame_order(by_type):
        for entry in by_type[rtype]:
            name = _file_name(entry["url"])
            listed.add(name)
            path = export_dir / name
            if not path.is_file():
                f.add("export.file-missing", name)
                continue
            lines = 0
            with _open(path) as fh:
                for raw in fh:
                    line = raw.rstrip(b"\r\n")
                    if not line.strip():
                        f.add("export.blank-line", name)
                        continue
                    lines += 1
                    checker.add_text(line, expected_type=rtype or None)
            count = entry.get("count")
            if count is not None and count != lines:
                f.add("export.count-mismatch", name)

    _directory_findings(export_dir, error_entries, listed, f)
    return checker.report()


def _manifest_findings(entries: list[dict], by_type: dict[str, list[dict]], f: Findings) -> None:
    if not entries:
        f.add("export.output-empty", MANIFEST)
    for required in REQUIRED_TYPES:
        if required not in by_type:
            f.add("export.type-absent", required)


def _directory_findings(export_dir: Path, error_entries: list[dict], listed: set[str], f: Findings) -> None:
    """Error files (presence and count) and NDJSON files the manifest does not list."""
    # Error files (OperationOutcomes about refused input) are not ATR content: only presence and count.
    for entry in error_entries:
        name = _file_name(entry["url"])
        listed.add(name)
        path = export_dir / name
        if not path.is_file():
            f.add("export.file-missing", name)
        elif entry.get("count") is not None and entry["count"] != _count_lines(path):
            f.add("export.count-mismatch", name)

    for path in sorted(export_dir.iterdir()):
        if (path.name.endswith(".ndjson") or path.name.endswith(".ndjson.gz")) and path.name not in listed:
            f.add("export.file-unlisted", path.name)


# -- the column-wise path --------------------------------------------------------------------

# Every line of a well-formed NDJSON file is one JSON text, where a raw control character cannot
# occur, so U+001F never splits a line and each line is one cell (as publish/ reads its staging).
_NO_SEPARATOR = "\x1f"
_ID = r'^\{"resourceType":"[A-Za-z]+","id":"([^"]+)"'
_BOM = b"\xef\xbb\xbf"


class _Declined(Exception):
    """The file is not plain compact NDJSON the column reader reads as the line reader does."""


def _read_lines(path: Path) -> pl.DataFrame:
    """(id, json) of one NDJSON file, one row per line, exactly the bytes the line reader sees.

    Differences from ``for raw in fh`` are declined rather than papered over: a blank or
    whitespace-only line (null / no id: fast.py declines), a byte-order mark (polars drops it at
    the file start; orjson refuses it), invalid UTF-8 or a U+001F byte (polars raises)."""
    source: Path | bytes = path
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            source = fh.read()
        head = source[:3]
    else:
        with path.open("rb") as fh:
            head = fh.read(3)
    if head == _BOM:
        raise _Declined(path.name)
    try:
        lines = pl.read_csv(
            source, has_header=False, separator=_NO_SEPARATOR, quote_char=None, new_columns=["json"],
            schema={"json": pl.String()},
        )
    except pl.exceptions.PolarsError:
        raise _Declined(path.name) from None
    return lines.select(pl.col("json").str.extract(_ID, 1).alias("id"), "json")


class _ExportFiles(Mapping[str, pl.DataFrame]):
    """The listed files of each type, read one file at a time (``iter_parts``, as fast.py reads a
    staged build), in manifest order; the row count of every file read is kept for its manifest
    count. Missing files are skipped (the manifest findings name them)."""

    def __init__(self, export_dir: Path, by_type: dict[str, list[dict]]) -> None:
        self.export_dir = export_dir
        self.by_type = by_type
        self.lines: dict[int, int] = {}  # id(entry) -> lines read

    def iter_parts(self, rtype: str) -> Iterator[pl.DataFrame]:
        for entry in self.by_type[rtype]:
            path = self.export_dir / _file_name(entry["url"])
            if not path.is_file():
                continue
            part = _read_lines(path)
            self.lines[id(entry)] = part.height
            yield part

    def __getitem__(self, rtype: str) -> pl.DataFrame:
        parts = list(self.iter_parts(rtype))
        return pl.concat(parts) if parts else pl.DataFrame(schema={"id": pl.String(), "json": pl.String()})

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_type)

    def __len__(self) -> int:
        return len(self.by_type)


def _fast_export_report(
    export_dir: Path, entries: list[dict], error_entries: list[dict], by_type: dict[str, list[dict]], options: CheckOptions
) -> ConformReport | None:
    """check_export's report from the column-wise proof, or None (then the line path runs)."""
    from atr_pipeline.conform.fast import fast_report

    # A type the line path could not pass as expected_type (empty, not a name) stays with it.
    if not all(t.isalpha() for t in by_type):
        return None
    files = _ExportFiles(export_dir, by_type)
    try:
        report = fast_report(
            files,
            frame_order(by_type),
            structural=options.get("structural", "all"),
            sample_size=options.get("sample_size", 1000),
            seed=options.get("seed", 0),
            assume_profiles=options.get("assume_profiles", False),
            resolve_references=options.get("resolve_references", True),
        )
    except _Declined:
        return None
    if report is None:
        return None
    f = Findings(resolve_references=False)
    _manifest_findings(entries, by_type, f)
    listed: set[str] = set()
    for entry in entries:
        name = _file_name(entry["url"])
        listed.add(name)
        if id(entry) not in files.lines:
            f.add("export.file-missing", name)
        elif entry.get("count") is not None and entry["count"] != files.lines[id(entry)]:
            f.add("export.count-mismatch", name)
    _directory_findings(export_dir, error_entries, listed, f)
    # fast_report's findings are r4.structure only; the export.* ones are disjoint rules.
    report.results = sorted([*report.results, *f.results()], key=lambda r: r.rule)
    return report
