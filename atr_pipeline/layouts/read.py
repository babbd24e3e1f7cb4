"""Read one landed payer file with its mapping into canonical rows.

In: a file path and its ``MappingSpec`` (delimited or fixed-width, optional header/detail/
trailer record types, control totals, per-field rules).
Out: ``ReadResult``: one canonical row per detail record that could be cut into fields (with
an ``_issues`` list for values that failed: bad date, code outside the map, bad number), one
structural reject per detail line that could not be cut (wrong field count or record length,
misplaced quote, unknown record type), control totals, the reporting month and column lineage.
Refused (``FileRefused``, nothing from the file goes further): bytes that do not decode in the
declared encoding (``encoding``), NUL bytes (``binary``), no detail records (``empty``), named
columns missing from the header row (``missing_columns``), a declared header or trailer record
missing or out of place (``missing_trailer`` / ``record_order``), record count or hash total
disagreeing with the control record (``trailer_count`` / ``hash_total``), an unreadable
reporting month (``month``).

The work is columnar: lines become a polars Series once, record types, quoting and field counts
are vectorised string operations, good delimited lines go through ``pl.read_csv`` (all String)
and fixed-width lines through ``str.slice``. Python touches only the header/trailer records.

Conventions: line numbers are 1-based physical lines (header, column-name and trailer lines
count). A UTF-8 BOM and CRLF endings are accepted. Whitespace-only lines carry no data and are
skipped (they are not records and never counted). A delimited record is one physical line:
a quoted field cannot span lines (such a line is rejected for its unbalanced quote).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import polars as pl

from atr_pipeline.canonical import FIELDS, ISSUE_DTYPE, ISSUES_COLUMN, LINEAGE_FIELDS, REJECT_SCHEMA, conform_columns
from atr_pipeline.errors import FileRefused
from atr_pipeline.layouts.fields import field_plan, issues_expr, raw_name
from atr_pipeline.layouts.spec import MappingSpec, Position, to_strftime

LINE = "line"
LINE_NO = "line_number"
KIND = "kind"
# Line kinds; only these three come from the file's own record-type codes.
HEADER, DETAIL, TRAILER = "header", "detail", "trailer"
UNKNOWN, NAMES, BLANK = "unknown", "names", "blank"

_WIDE_ENCODINGS = ("utf_16", "utf_32")  # NUL bytes are normal inside these


@dataclass(frozen=True)
class ControlTotals:
    expected_records: int | None
    actual_records: int
    expected_hash: Decimal | None
    actual_hash: Decimal | None


@dataclass
class ReadResult:
    rows: pl.DataFrame  # canonical columns in order + ISSUES_COLUMN
    structural_rejects: pl.DataFrame  # REJECT_SCHEMA
    records_read: int  # len(rows) + distinct structurally rejected lines
    reporting_month: date
    control: ControlTotals
    source_columns: list[str] = field(default_factory=list)


# --- bytes -> lines ---------------------------------------------------------------------------


def _decode(data: bytes, encoding: str, name: str) -> str:
    codec = codecs.lookup(encoding).name
    wide = codec.startswith(_WIDE_ENCODINGS)
    if not wide:
        nul = data.find(b"\x00")
        if nul >= 0:
            raise FileRefused(name, "binary", "NUL bytes found: this is not a text file (compressed or encrypted?)", data.count(b"\n", 0, nul) + 1)
    if codec == "utf-8" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode(codec, errors="strict")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode(codec, errors="replace").count("\n") + 1
        raise FileRefused(name, "encoding", f"bytes at line {line} are not valid {encoding}; resend in {encoding} or fix the mapping's file.encoding", line) from None
    if wide and "\x00" in text:
        raise FileRefused(name, "binary", "NUL characters found: this is not a text file", text.count("\n", 0, text.index("\x00")) + 1)
    return text


def physical_lines(text: str) -> list[str]:
    """The file's physical lines, as every stage numbers them (line 1 is the first).

    LF, CRLF and a lone CR (old Mac line ends, or mixed endings) each end a line, as for every
    CSV reader; checked by counting so CRLF and LF files are not copied. A CRLF line keeps its
    CR here; callers strip it.
    """
    if text.count("\r") != text.count("\r\n"):
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _lines(text: str) -> pl.DataFrame:
    """Physical lines with 1-based numbers; CR of CRLF removed; trailing empty lines dropped."""
    parts = physical_lines(text)
    lines = pl.Series(LINE, parts, dtype=pl.String).str.strip_suffix("\r")
    df = pl.DataFrame({LINE_NO: pl.int_range(1, len(parts) + 1, eager=True, dtype=pl.Int64), LINE: lines})
    df = df.with_columns((pl.col(LINE).str.strip_chars() == "").alias(BLANK))
    last = df.filter(~pl.col(BLANK)).select(pl.col(LINE_NO).max()).item()
    return df.filter(pl.col(LINE_NO) <= (last or 0))


# --- delimited helpers ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Delim:
    delimiter: str
    quote: str | None

    @property
    def field_re(self) -> str:
        d = re.escape(self.delimiter)
        if self.quote is None:
            return f"[^{d}]*"
        q = re.escape(self.quote)
        return f"(?:{q}(?:[^{q}]|{q}{q})*{q}|[^{d}{q}]*)"

    @property
    def line_re(self) -> str:
        return f"^{self.field_re}(?:{re.escape(self.delimiter)}{self.field_re})*$"

    def field_count(self, line: pl.Expr) -> pl.Expr:
        if self.quote is not None:
            q = re.escape(self.quote)
            line = line.str.replace_all(f"{q}(?:[^{q}]|{q}{q})*{q}", "")
        return line.str.count_matches(self.delimiter, literal=True) + 1

    def nth_field(self, line: pl.Expr, n: int) -> pl.Expr:
        """The n-th (1-based) field of a line, unquoted."""
        pat = f"^(?:{self.field_re}{re.escape(self.delimiter)}){{{n - 1}}}({self.field_re})"
        value = line.str.extract(pat, 1)
        if self.quote is not None:
            q = self.quote
            value = pl.when(value.str.starts_with(q)).then(value.str.slice(1, value.str.len_chars() - 2).str.replace_all(q + q, q, literal=True)).otherwise(value)
        return value

    def split_one(self, line: str) -> list[str]:
        """Split a single (header, trailer or column-name) line in Python."""
        if self.quote is None:
            return line.split(self.delimiter)
        return next(csv.reader([line], delimiter=self.delimiter, quotechar=self.quote, strict=False))


# --- the reader -------------------------------------------------------------------------------


def read_file(path: Path, spec: MappingSpec, *, sha256: str | None = None, file_name: str | None = None) -> ReadResult:
    """``file_name`` is the delivered name when ``path`` is a landed copy (landing prefixes its sha)."""
    path = Path(path)
    name = file_name or path.name
    data = path.read_bytes()
    digest = sha256 or hashlib.sha256(data).hexdigest()
    if not data.strip():
        raise FileRefused(name, "empty", "the file is empty")
    text = _decode(data, spec.file.encoding, name)
    del data
    return _Reader(spec, name, digest).read(_lines(text))


class _Reader:
    def __init__(self, spec: MappingSpec, name: str, digest: str):
        self.spec = spec
        self.name = name
        self.digest = digest
        fmt = spec.format
        self.delim = _Delim(fmt.delimiter, fmt.quote) if fmt.kind == "delimited" else None
        self.names: list[str] | None = None

    def refuse(self, rule: str, reason: str, line: int | None = None) -> FileRefused:
        return FileRefused(self.name, rule, reason, line)

    # -- positions --

    def _column_index(self, pos: Position, what: str) -> int:
        """0-based index of a delimited column given by 1-based number or header name."""
        if isinstance(pos.column, int):
            return pos.column - 1
        assert self.names is not None  # spec.py forbids names without header_row
        try:
            return self.names.index(str(pos.column))
        except ValueError:
            raise self.refuse("missing_columns", f"header row lacks column(s) {[pos.column]} ({what})") from None

    def _value_expr(self, line: pl.Expr, pos: Position, what: str) -> pl.Expr:
        if pos.is_fixed:
            return line.str.slice(pos.start - 1, pos.length)  # type: ignore[operator]
        assert self.delim is not None
        return self.delim.nth_field(line, self._column_index(pos, what) + 1)

    def _record_values(self, line: str, fields: dict[str, Position]) -> dict[str, str | None]:
        """Fields of one header or trailer record (Python: there is one of each)."""
        out: dict[str, str | None] = {}
        cells = self.delim.split_one(line) if self.delim else None
        for fname, pos in fields.items():
            if pos.is_fixed:
                value = line[pos.start - 1 : pos.start - 1 + pos.length]  # type: ignore[operator]
            else:
                idx = self._column_index(pos, fname)
                value = cells[idx] if cells is not None and idx < len(cells) else None
            out[fname] = value.strip() if value is not None else None
        return out

    # -- steps --

    def read(self, lines: pl.DataFrame) -> ReadResult:
        spec = self.spec
        if lines.filter(~pl.col(BLANK)).height == 0:
            raise self.refuse("empty", "the file holds no records")
        lines = self._classify(lines)
        header_vals, trailer_vals = self._control_records(lines)

        details = lines.filter(pl.col(KIND) == DETAIL)
        unknown = lines.filter(pl.col(KIND) == UNKNOWN)
        if details.height == 0:
            extra = f" ({unknown.height} line(s) of unknown record type)" if unknown.height else ""
            raise self.refuse("empty", f"no detail records{extra}")

        if self.delim:
            raw, bad, hash_frame, source_columns = self._cut_delimited(details)
        else:
            raw, bad, hash_frame, source_columns = self._cut_fixed(details, unknown)
        rejects = pl.concat([self._unknown_rejects(unknown), bad]).sort(LINE_NO)

        records_read = raw.height + rejects.select(pl.col(LINE_NO).n_unique()).item()
        month = self._month(header_vals)
        control = self._control(header_vals, trailer_vals, records_read, hash_frame)
        rows = self._canonical(raw, month)
        return ReadResult(rows, rejects.select(REJECT_SCHEMA.names()).cast(dict(REJECT_SCHEMA)), records_read, month, control, source_columns)

    def _classify(self, lines: pl.DataFrame) -> pl.DataFrame:
        spec, recs = self.spec, self.spec.records
        body = lines.filter(~pl.col(BLANK))
        names_line: int | None = None
        if self.delim and spec.format.header_row:
            # The column-name row is the first record, or the second when a header record leads.
            idx = 1 if recs and recs.header else 0
            if body.height <= idx:
                raise self.refuse("empty", "no column-name row and no detail records")
            names_line = body[LINE_NO][idx]
            self.names = [c.strip().lstrip("\ufeff") for c in self.delim.split_one(body[LINE][idx])]
            self._check_named_columns(names_line)

        if recs is None:
            kind = pl.lit(DETAIL)
        else:
            code = self._value_expr(pl.col(LINE), recs.type_field, "records.type_field").str.strip_chars()
            kind = pl.when(code == recs.detail.code).then(pl.lit(DETAIL))
            if recs.header:
                kind = kind.when(code == recs.header.code).then(pl.lit(HEADER))
            if recs.trailer:
                kind = kind.when(code == recs.trailer.code).then(pl.lit(TRAILER))
            kind = kind.otherwise(pl.lit(UNKNOWN))
        is_names = pl.col(LINE_NO) == names_line if names_line is not None else pl.lit(False)
        kind = pl.when(pl.col(BLANK)).then(pl.lit(BLANK)).when(is_names).then(pl.lit(NAMES)).otherwise(kind)
        return lines.with_columns(kind.alias(KIND))

    def _check_named_columns(self, names_line: int) -> None:
        assert self.names is not None
        wanted = [p.column for p in self._positions().values() if isinstance(p.column, str)]
        missing = sorted({c for c in wanted if c not in self.names})
        if missing:
            raise self.refuse("missing_columns", f"header row lacks column(s) {missing}", names_line)

    def _positions(self) -> dict[str, Position]:
        """Every position read from detail records: mapped fields and the record-type field."""
        out: dict[str, Position] = {f: s for f, s in self.spec.fields.items() if s.is_set}
        if self.spec.records:
            out["records.type_field"] = self.spec.records.type_field
        return out

    def _control_records(self, lines: pl.DataFrame) -> tuple[dict[str, str | None], dict[str, str | None]]:
        recs = self.spec.records
        vals: dict[str, dict[str, str | None]] = {HEADER: {}, TRAILER: {}}
        if recs is None:
            return vals[HEADER], vals[TRAILER]
        records = lines.filter(~pl.col(KIND).is_in([BLANK, NAMES]))
        first, last = records[LINE_NO][0], records[LINE_NO][-1]
        for kind, rec, must_be in ((HEADER, recs.header, first), (TRAILER, recs.trailer, last)):
            found = records.filter(pl.col(KIND) == kind)
            if rec is None:
                continue
            if found.height == 0:
                raise self.refuse("missing_trailer", f"no {kind} record (record type {rec.code!r}); the file may be truncated")
            if found.height > 1:
                raise self.refuse("record_order", f"{found.height} {kind} records, expected one", found[LINE_NO][1])
            if found[LINE_NO][0] != must_be:
                where = "first" if kind == HEADER else "last"
                raise self.refuse("record_order", f"the {kind} record must be the {where} record", found[LINE_NO][0])
            vals[kind] = self._record_values(found[LINE][0], rec.fields)
        return vals[HEADER], vals[TRAILER]

    def _unknown_rejects(self, unknown: pl.DataFrame) -> pl.DataFrame:
        recs = self.spec.records
        codes = ", ".join(c.code for c in (recs.header, recs.detail, recs.trailer) if c) if recs else ""
        reason = f"record type is not one of {codes}"
        if self.delim and self.delim.quote is not None:
            # A broken quote can hide the record-type field; say so rather than blame the type.
            bad_quote = ~pl.col(LINE).str.contains(self.delim.line_re)
            rule = pl.when(bad_quote).then(pl.lit("quote")).otherwise(pl.lit("record_type"))
            why = pl.when(bad_quote).then(pl.lit("unbalanced or misplaced quote")).otherwise(pl.lit(reason))
        else:
            rule, why = pl.lit("record_type"), pl.lit(reason)
        return self._rejects(unknown, rule, why)

    def _rejects(self, df: pl.DataFrame, rule: pl.Expr, reason: pl.Expr) -> pl.DataFrame:
        return df.select(
            pl.lit(self.spec.source_id).alias("source_id"),
            pl.lit(self.name).alias("file_name"),
            pl.col(LINE_NO),
            pl.lit(None, dtype=pl.String).alias("field"),
            rule.alias("rule"),
            reason.alias("reason"),
        )

    def _mapped_read_fields(self) -> dict[str, Position]:
        return {f: s for f, s in self.spec.fields.items() if s.is_set}

    def _hash_source(self) -> str | None:
        ht = self.spec.control.hash_total
        return raw_name(ht.of) if ht and self.spec.fields[ht.of].is_set else None

    def _cut_delimited(self, details: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, list[str]]:
        d = self.delim
        assert d is not None
        checked = details.with_columns(
            (pl.col(LINE).str.contains(d.line_re) if d.quote is not None else pl.lit(True)).alias("_quote_ok"),
            d.field_count(pl.col(LINE)).alias("_fields"),
        )
        if self.names is not None:
            expected = len(self.names)
        else:
            # No header row: the usual width of this file's detail lines is its width.
            counts = checked.filter(pl.col("_quote_ok")).group_by("_fields").len().sort(["len", "_fields"], descending=True)
            expected = counts["_fields"][0] if counts.height else 0
        fields = self._mapped_read_fields()
        needed = max((self._column_index(p, f) + 1 for f, p in fields.items()), default=0)
        if expected and needed > expected:
            raise self.refuse("missing_columns", f"the mapping reads column {needed} but detail records have {expected} fields")

        good_mask = pl.col("_quote_ok") & (pl.col("_fields") == expected)
        bad = checked.filter(~good_mask)
        bad_rejects = self._rejects(
            bad,
            pl.when(~pl.col("_quote_ok")).then(pl.lit("quote")).otherwise(pl.lit("field_count")),
            pl.when(~pl.col("_quote_ok"))
            .then(pl.lit("unbalanced or misplaced quote"))
            .otherwise(pl.format(f"expected {expected} fields, found {{}}", pl.col("_fields"))),
        )
        good = checked.filter(good_mask)
        cols = [f"c{i}" for i in range(expected)]
        if good.height:
            # The lines, one per row, written by polars from its own buffers (quote_style="never"
            # writes the text as is): joining them into one Python string needed ~4 copies of the
            # file and ran out of memory at 5M rows.
            payload = io.BytesIO()
            pl.DataFrame({LINE: good[LINE]}).write_csv(payload, include_header=False, quote_style="never", line_terminator="\n")
            payload.seek(0)
            cells = pl.read_csv(
                payload,
                has_header=False,
                separator=d.delimiter,
                quote_char=d.quote,
                infer_schema=False,
                new_columns=cols,
            )
            if cells.height != good.height:  # would mean read_csv saw records differently
                raise RuntimeError(f"{self.name}: csv reader returned {cells.height} records for {good.height} lines")
        else:
            cells = pl.DataFrame(schema={c: pl.String for c in cols})
        raw = good.select(LINE_NO).hstack(cells.get_columns()).select(
            pl.col(LINE_NO), *[pl.col(cols[self._column_index(p, f)]).alias(raw_name(f)) for f, p in fields.items()]
        )
        source_columns = list(self.names) if self.names is not None else [str(i + 1) for i in range(expected)]
        hash_col = self._hash_source()
        hash_frame = raw.select(pl.col(hash_col)) if hash_col else pl.DataFrame()
        return raw, bad_rejects, hash_frame, source_columns

    def _cut_fixed(self, details: pl.DataFrame, unknown: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, list[str]]:
        fmt = self.spec.format
        length = fmt.record_length
        assert length is not None
        n = pl.col(LINE).str.len_chars()
        bad_mask = (n > length) | ((n < length) & pl.lit(not fmt.pad_short_lines))
        bad = details.filter(bad_mask)
        bad_rejects = self._rejects(bad, pl.lit("record_length"), pl.format(f"expected {length} characters, found {{}}", n))
        fields = self._mapped_read_fields()

        def cut(df: pl.DataFrame, only: dict[str, Position]) -> pl.DataFrame:
            # Pad once into a column: an inline pad per field would copy every line per field.
            padded = df.select(pl.col(LINE_NO), pl.col(LINE).str.pad_end(length))
            return padded.select(pl.col(LINE_NO), *[self._value_expr(pl.col(LINE), p, f).alias(raw_name(f)) for f, p in only.items()])

        raw = cut(details.filter(~bad_mask), fields)
        hash_col = self._hash_source()
        ht = self.spec.control.hash_total
        # The sender's hash total covers every record it wrote as detail, including lines we
        # reject for their length or a damaged record-type code: positions still cut them.
        if hash_col and ht:
            hash_frame = cut(pl.concat([details, unknown]), {ht.of: fields[ht.of]}).select(pl.col(hash_col))
        else:
            hash_frame = pl.DataFrame()
        ordered = sorted(fields.values(), key=lambda p: (p.start, p.length))
        source_columns = list(dict.fromkeys(f"{p.start}-{p.start + p.length - 1}" for p in ordered))  # type: ignore[operator]
        return raw, bad_rejects, hash_frame, source_columns

    def _month(self, header_vals: dict[str, str | None]) -> date:
        f = self.spec.file
        from_name = self.spec.month_from_name(self.name)
        if f.month_from == "filename":
            if from_name is None:
                raise self.refuse("month", f"no reporting month in the file name (pattern {f.pattern!r})")
            return from_name
        raw = header_vals.get(f.month_header_field or "") or ""
        try:
            parsed = datetime.strptime(raw, to_strftime(f.month_format)).date().replace(day=1)
        except ValueError:
            raise self.refuse("month", f"header field {f.month_header_field!r} is not a {f.month_format} month", 1) from None
        if from_name is not None and from_name != parsed:
            raise self.refuse("month", f"header reports {parsed:%Y-%m} but the file name says {from_name:%Y-%m}", 1)
        return parsed

    def _ref_value(self, ref: str, header_vals: dict[str, str | None], trailer_vals: dict[str, str | None]) -> tuple[str, str]:
        kind, _, fname = ref.partition(".")
        return (header_vals if kind == "header" else trailer_vals).get(fname) or "", kind

    def _control(self, header_vals: dict[str, str | None], trailer_vals: dict[str, str | None], records_read: int, hash_frame: pl.DataFrame) -> ControlTotals:
        ctl = self.spec.control
        expected_records = expected_hash = actual_hash = None
        if ctl.record_count:
            raw, kind = self._ref_value(ctl.record_count, header_vals, trailer_vals)
            if not raw.isdigit():
                raise self.refuse("trailer_count", f"{kind} record count field is not a number")
            expected_records = int(raw)
            if expected_records != records_read:
                raise self.refuse("trailer_count", f"{kind} says {expected_records} detail records, the file has {records_read}")
        if ctl.hash_total:
            ht = ctl.hash_total
            raw, kind = self._ref_value(ht.expected, header_vals, trailer_vals)
            try:
                expected_hash = Decimal(raw) if "." in raw else Decimal(int(raw)).scaleb(-ht.scale)
            except (InvalidOperation, ValueError):
                raise self.refuse("hash_total", f"{kind} hash total field is not a number") from None
            # Hash totals sum the field's digits as written (implied decimals), like the sender.
            total = 0
            if hash_frame.width:
                total = hash_frame.select(
                    pl.col(hash_frame.columns[0]).str.replace_all(r"[^0-9]", "").cast(pl.Decimal(38, 0), strict=False).sum()
                ).item()
            actual_hash = Decimal(int(total or 0)).scaleb(-ht.scale)
            if actual_hash != expected_hash:
                raise self.refuse("hash_total", f"{kind} hash total of {ht.of} is {expected_hash}, the detail records sum to {actual_hash}")
        return ControlTotals(expected_records, records_read, expected_hash, actual_hash)

    def _canonical(self, raw: pl.DataFrame, month: date) -> pl.DataFrame:
        plans = [field_plan(f, s) for f, s in self.spec.fields.items()]
        checks = [c for p in plans for c in p.checks]
        flags = [f"_flag{i}" for i in range(len(checks))]
        # Stage 1: each field's cleaned text once; stage 2: values and failure flags from it.
        texts = raw.select(pl.col(LINE_NO), *[p.text for p in plans if p.text is not None])
        lineage = [
            pl.lit(self.spec.source_id).alias("source_id"),
            pl.lit(self.name).alias("file_name"),
            pl.lit(self.digest).alias("file_sha256"),
            pl.col(LINE_NO),
            pl.lit(month).alias("reporting_month"),
        ]
        assert [e.meta.output_name() for e in lineage] == list(LINEAGE_FIELDS)
        out = texts.select(*lineage, *[p.value for p in plans], *[c.failed.fill_null(False).alias(n) for c, n in zip(checks, flags)])
        # Only rows with a failed check pay for building their issue list.
        failing = pl.any_horizontal(flags) if flags else pl.lit(False)
        bad = out.filter(failing).with_columns(issues_expr(checks, flags))
        good = out.filter(~failing).with_columns(pl.lit([], dtype=ISSUE_DTYPE).alias(ISSUES_COLUMN))
        rows = pl.concat([good, bad]).sort(LINE_NO) if bad.height else good
        return conform_columns(rows, keep_issues=True).select(*[f.name for f in FIELDS], ISSUES_COLUMN)
