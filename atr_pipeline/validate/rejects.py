"""What happens to rejects: the sender's CSV, FHIR OperationOutcomes, the file-level threshold.

In:  reject records (``canonical.REJECT_SCHEMA``: from ``validate_rows`` and/or the reader's
     structural rejects, whose ``field`` may be null) and a ``ValidationResult``.
Out: - ``write_rejects_csv``: a spreadsheet-safe CSV for the sender (file_name, line_number,
       field, rule, reason, raw_record). It is the only output that carries the raw line (PHI),
       because the sender needs it to fix and resend; it lives under ATR_HOME/rejects.
     - ``rejects_to_operation_outcomes``: one OperationOutcome NDJSON line per rejected line,
       without values (no PHI), with deterministic ids.
     - ``failure_table``: rule, rows, example line numbers (Dagster check metadata).
Refused: ``check_reject_threshold`` raises ``FileRefused(file, "reject_threshold", ...)`` when
     the share of rejected rows is above the mapping's threshold.
"""

from __future__ import annotations

import codecs
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import orjson
import polars as pl

from atr_pipeline.canonical import REJECT_SCHEMA
from atr_pipeline.errors import FileRefused
from atr_pipeline.layouts.spec import MappingSpec
from atr_pipeline.private import private_dir

REJECTS_CSV_COLUMNS: tuple[str, ...] = ("file_name", "line_number", "field", "rule", "reason", "raw_record")
# Characters that make Excel/LibreOffice treat a cell as a formula (OWASP "CSV injection").
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Namespace for OperationOutcome ids: uuid5(namespace, "<file>|<line>") is stable across runs.
OUTCOME_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "atr_pipeline/validate/OperationOutcome")

# FHIR issue-type code for each rule; anything not listed is "invalid" (the parent code).
ISSUE_CODE_BY_RULE: dict[str, str] = {
    "required": "required",
    "duplicate_row": "duplicate",
    "conflicting_duplicate": "duplicate",
    "npi_format": "value",
    "npi_check_digit": "value",
    "tin_format": "value",
    "mbi_format": "value",
    "control_characters": "value",
    "gender_code": "value",
    "relationship_code": "value",
    "product_type_code": "value",
    "state_code": "value",
    "postal_code": "value",
    # reader (layouts/) issues and structural rejects
    "code_not_in_map": "value",
    "date_format": "value",
    "number_format": "value",
    "quote": "structure",
    "field_count": "structure",
    "record_length": "structure",
    "record_type": "structure",
}


def _sorted(rejects: pl.DataFrame) -> pl.DataFrame:
    return rejects.select(list(REJECT_SCHEMA)).sort("file_name", "line_number", "field", "rule", "reason", nulls_last=False)


def _defuse_expr(col: str) -> pl.Expr:
    c = pl.col(col)
    starts = pl.any_horizontal([c.str.starts_with(p) for p in _FORMULA_PREFIXES]).fill_null(False)
    return pl.when(starts).then(pl.lit("'") + c).otherwise(c).alias(col)


def read_lines(
    source_file: Path, line_numbers: Iterable[int], *, encoding: str = "utf-8", spec: MappingSpec | None = None
) -> dict[int, str]:
    """The raw record starting at each given 1-based physical line, numbered as layouts/ numbers them.

    Lines are split by ``layouts.read.physical_lines`` after decoding with the mapping's encoding
    (so latin-1 names stay readable and UTF-16 works; a file the mapping reads as detected UTF-8
    is decoded as UTF-8); bytes that do not decode become U+FFFD rather than failing, since this
    runs on rejected input. With a delimited ``spec`` that quotes, a record whose quoted field
    holds line breaks comes back whole (its lines joined with LF), as the reader joined it.
    """
    from atr_pipeline.layouts.multiline import raw_records
    from atr_pipeline.layouts.read import physical_lines
    from atr_pipeline.layouts.sniff import single_byte, utf8_mismatch_line

    wanted = set(line_numbers)
    if not wanted:
        return {}
    if spec is not None:
        encoding = spec.file.encoding
    data = Path(source_file).read_bytes()
    codec = codecs.lookup(encoding).name
    if spec is not None and spec.file.detect_encoding and single_byte(codec) and utf8_mismatch_line(data) is not None:
        codec = "utf-8"
    if codec == "utf-8" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    text = data.decode(codec, errors="replace").removeprefix("\ufeff")
    lines = [line.removesuffix("\r") for line in physical_lines(text)]
    fmt = spec.format if spec is not None else None
    if fmt is not None and fmt.kind == "delimited" and fmt.quote and fmt.delimiter:
        return raw_records(lines, wanted, fmt.delimiter, fmt.quote, fmt.max_record_lines)
    return {n: lines[n - 1] for n in wanted if 0 < n <= len(lines)}


def write_rejects_csv(
    rejects: pl.DataFrame, path: Path, *, source_file: Path | None, encoding: str = "utf-8", spec: MappingSpec | None = None
) -> int:
    """Write the sender's rejects CSV; return the number of records written.

    One record per (line, problem), sorted by file, line, field, rule. ``raw_record`` is the
    original record read back from ``source_file``, decoded with the mapping's encoding
    (``spec.file.encoding`` when ``spec`` is given, else ``encoding``), whole when it spans
    lines; only for rejected lines; empty when no source file is given. UTF-8 with BOM so Excel
    detects the encoding; every cell starting with = + - @ TAB or CR gets a leading apostrophe.
    """
    ordered = _sorted(rejects)
    lines: dict[int, str] = {}
    if source_file is not None:
        lines = read_lines(source_file, ordered["line_number"].drop_nulls().unique().to_list(), encoding=encoding, spec=spec)
    raw = pl.Series("raw_record", [lines.get(n) if n is not None else None for n in ordered["line_number"]], dtype=pl.String)
    table = ordered.with_columns(raw).select(list(REJECTS_CSV_COLUMNS))
    table = table.with_columns(_defuse_expr(c) for c in REJECTS_CSV_COLUMNS if table.schema[c] == pl.String)
    path = Path(path)
    private_dir(path.parent)  # rejects carry the raw PHI lines: 0700/0600 whatever the umask
    tmp = path.with_name(path.name + ".part")
    # quote_style "always" keeps raw records with stray delimiters or line breaks in one cell.
    table.write_csv(tmp, include_bom=True, quote_style="always", line_terminator="\r\n")
    tmp.replace(path)
    return table.height


def _outcome_id(file_name: str | None, line_number: int | None, file_sha256: str | None) -> str:
    anchor = file_sha256 or file_name or ""
    return str(uuid.uuid5(OUTCOME_NAMESPACE, f"{anchor}|{line_number}"))


def rejects_to_operation_outcomes(rejects: pl.DataFrame, *, file_sha256: str | None = None) -> list[bytes]:
    """One FHIR R4 OperationOutcome per rejected line, as NDJSON lines (each ends with a newline).

    ``issue[]`` holds one entry per problem: severity ``error``, a FHIR issue-type code for the
    rule, ``diagnostics`` = the reason (never a value), ``expression`` = the canonical field
    (absent for structural rejects), ``details.text`` = file, line and rule. Ids are
    ``uuid5(file sha256 or file name, line)``, so re-running gives byte-identical output.
    """
    out: list[bytes] = []
    ordered = _sorted(rejects)
    for (file_name, line_number), group in ordered.group_by(["file_name", "line_number"], maintain_order=True):
        issues = []
        for rec in group.iter_rows(named=True):
            rule = rec["rule"] or "invalid"
            issue: dict[str, object] = {
                "severity": "error",
                "code": ISSUE_CODE_BY_RULE.get(rule, "invalid"),
                "details": {"text": f"file {file_name}, line {line_number}, rule {rule}"},
                "diagnostics": rec["reason"] or rule,
            }
            if rec["field"]:
                issue["expression"] = [rec["field"]]
            issues.append(issue)
        resource = {
            "resourceType": "OperationOutcome",
            "id": _outcome_id(file_name, line_number, file_sha256),
            "issue": issues,
        }
        out.append(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE))
    return out


def rejected_share(rows_rejected: int, rows_read: int) -> float:
    return rows_rejected / rows_read if rows_read else 0.0


class RowCounts(Protocol):
    """What the threshold reads: a ValidationResult, or the pipeline's ValidatedFile."""

    @property
    def rows_read(self) -> int: ...

    @property
    def rows_rejected(self) -> int: ...


def check_reject_threshold(
    result: RowCounts, *, file_name: str, threshold: float, structural_rejected: int = 0, minimum: int = 0
) -> None:
    """Refuse the whole file when more than ``threshold`` (0..1) of its rows were rejected AND
    more than ``minimum`` rows were, or when not one row was accepted.

    A share alone is noise on a small file (2 bad rows of 40 is 5%, yet the rejects name exactly
    the lines to fix); the minimum lets a mapping keep such files while a broken layout, which
    rejects nearly every row, is still refused. ``structural_rejected`` adds lines the reader
    could not cut into rows (distinct lines in ``ReadResult.structural_rejects``): they count as
    read and as rejected.
    """
    read = result.rows_read + structural_rejected
    rejected = result.rows_rejected + structural_rejected
    share = rejected_share(rejected, read)
    if share > threshold and (rejected > minimum or rejected == read):
        floor = f" and the minimum of {minimum} rows" if minimum else ""
        raise FileRefused(
            file_name,
            "reject_threshold",
            f"{rejected} of {read} rows rejected ({share * 100:.1f}%), above the {threshold * 100:.1f}% threshold{floor}",
        )


def failure_table(rejects: pl.DataFrame, max_examples: int = 5) -> list[dict]:
    """Per rule: rows rejected and the first example line numbers. No values, so no PHI.

    Sorted by rows descending, then rule name: the biggest problem first, deterministically.
    """
    if rejects.height == 0:
        return []
    table = (
        rejects.group_by("rule")
        .agg(
            pl.col("line_number").n_unique().alias("count"),
            pl.col("field").drop_nulls().unique().sort().alias("fields"),
            pl.col("line_number").unique().sort().head(max_examples).alias("example_lines"),
        )
        .sort(["count", "rule"], descending=[True, False])
    )
    return [
        {"rule": r["rule"], "count": int(r["count"]), "fields": list(r["fields"]), "example_lines": list(r["example_lines"])}
        for r in table.iter_rows(named=True)
    ]
