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
from pathlib import Path, PurePosixPath
from typing import TypedDict, Unpack
from urllib.parse import urlparse

from atr_pipeline.conform.checker import Checker, frame_order
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


def check_export(export_dir: Path, **options: Unpack[CheckOptions]) -> ConformReport:
    """The report over every listed file; ``options`` are ``Checker``'s, with its defaults."""
    export_dir = Path(export_dir)
    entries, error_entries = manifest_entries(export_dir)
    checker = Checker(**options)
    f = checker.findings
    by_type: dict[str, list[dict]] = {}
    for entry in entries:
        by_type.setdefault(str(entry.get("type") or ""), []).append(entry)
    if not entries:
        f.add("export.output-empty", MANIFEST)
    for required in REQUIRED_TYPES:
        if required not in by_type:
            f.add("export.type-absent", required)

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
    return checker.report()
