"""Read one landed payer file with its mapping into canonical rows.

In: a file path and its ``MappingSpec`` (delimited or fixed-width, optional header/detail/
trailer record types, control totals, per-field rules).
Out: ``ReadResult``: one canonical row per detail record that could be cut into fields (with
an ``_issues`` list for values that failed: bad date, code outside the map, bad number), one
structural reject per detail line that could not be cut (wrong field count or record length,
misplaced quote, unknown record type), control totals, the reporting month and column lineage.
Refused (``FileRefused``, nothing from the file goes further): bytes that do not decode in the
declared encoding (``encoding``), UTF-8 text on a feed declared latin-1/cp1252
(``encoding_mismatch``), NUL bytes or a head full of control bytes (``binary``), no bytes or only
whitespace (``empty``), no detail record (``no_detail_records``), a quoted field never closed
(``unbalanced_quote``), named columns missing from the header row (``missing_columns``), a
declared header or trailer record missing or out of place (``missing_trailer`` /
``record_order``), a control check disagreeing (``trailer_count`` / ``hash_total`` /
``control_sum``), a header value that fails its field (``record_field``), an unreadable
reference date (``reference_date``) or reporting month (``month``).

The work is columnar and streamed: the file is read in line-aligned slices (``CHUNK_BYTES``);
each slice's lines become a polars Series, record types, quoting and field counts are vectorised
string operations, good delimited lines go through ``pl.read_csv`` (all String) and fixed-width
lines through ``str.slice``, and only the slice's canonical rows are kept. Whole-file checks
(control records, counts, hash totals, refusal order) are totalled across slices and decided at
the end, so the result does not depend on the slice size. Python touches only the
header/trailer records.

Conventions: line numbers are 1-based physical lines (header, column-name and trailer lines
count). A UTF-8 BOM and CRLF endings are accepted. Whitespace-only lines are skipped (they are
not records and never counted). In a delimited layout with quoting, a quoted field may hold line
breaks: its lines are one record numbered by its first line (``multiline``); a record may cross
a slice boundary. A text field with a control character other than TAB/LF/CR gets a
``control_characters`` issue (checked only in slices whose bytes hold one, ``sniff.has_control``).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO

import polars as pl

from atr_pipeline.canonical import (
    FIELD_BY_NAME,
    FIELDS,
    ISSUE_DTYPE,
    ISSUES_COLUMN,
    LINEAGE_FIELDS,
    REJECT_SCHEMA,
    conform_columns,
)
from atr_pipeline.errors import FileRefused
from atr_pipeline.layouts import sniff
from atr_pipeline.layouts.fields import CONTROL_IN_TEXT, field_plan, issues_expr, raw_name
from atr_pipeline.layouts.multiline import RecordJoiner
from atr_pipeline.layouts.sniff import HEAD_BYTES
from atr_pipeline.layouts.spec import MappingSpec, Position, to_strftime

LINE = "line"
LINE_NO = "line_number"
KIND = "kind"
# Line kinds; only these three come from the file's own record-type codes.
HEADER, DETAIL, TRAILER = "header", "detail", "trailer"
UNKNOWN, NAMES, BLANK = "unknown", "names", "blank"



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
    # The date the row rules judge against ("birth date in the future"): the file's own date
    # (mapping's file.reference_date_field, else the last day of the reporting month), so a
    # re-run next year gives the same answer.
    reference_date: date | None = None


# --- bytes -> lines ---------------------------------------------------------------------------

# The file is read, checked and decoded in slices of about this many bytes, each cut just after
# a line feed, so its bytes, its text and its line frame never all exist at once for the whole
# file: peak memory is the canonical rows plus one slice's working set.
CHUNK_BYTES = 32 << 20


def _decode(data: bytes, encoding: str, name: str) -> str:
    codec = codecs.lookup(encoding).name
    wide = sniff.is_wide(codec)
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
        raise FileRefused(name, "encoding",
                          f"bytes at line {line} are not valid {encoding}; resend in {encoding} or fix the mapping's file.encoding",
                          line) from None
    if wide and "\x00" in text:
        raise FileRefused(name, "binary", "NUL characters found: this is not a text file", text.count("\n", 0, text.index("\x00")) + 1)
    return text.removeprefix("\ufeff")  # utf-16-le/-be keep a BOM as a character


def physical_lines(text: str) -> list[str]:
    """The file's physical lines, as every stage numbers them (line 1 is the first).

    LF, CRLF and a lone CR (old Mac line ends, or mixed endings) each end a line, as for every
    CSV reader; checked by counting so CRLF and LF files are not copied. A CRLF line keeps its
    CR here; callers strip it.
    """
    if text.count("\r") != text.count("\r\n"):
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _sliceable(codec: str) -> bool:
    """True when byte 0x0A is a line feed wherever it appears, so slices can end after one.

    UTF-8 and the single-byte ASCII supersets qualify; UTF-16/32 and the multi-byte East Asian
    codecs are decoded whole (as before) and re-encoded to UTF-8 first.
    """
    return codec in ("utf-8", "ascii") or codec.startswith(("iso8859", "latin", "cp125", "mac-"))


def _byte_slices(stream: BinaryIO, size: int) -> Iterator[bytes]:
    while chunk := stream.read(size):
        if not chunk.endswith(b"\n"):
            chunk += stream.readline()  # finish the line: a slice never splits one
        yield chunk


@dataclass
class _Bytes:
    """What the byte-level pass learns about the whole file while it streams."""

    hasher: Any = None  # hashlib object when the caller gave no digest
    content: bool = False  # some byte other than ASCII whitespace (else "the file is empty")
    lines: int = 0  # physical lines handed out so far
    control: bool = False  # the last slice may hold a control character (sniff.has_control)


def _line_slices(path: Path, encoding: str, name: str, size: int, state: _Bytes, *, detect: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(number of the slice's first line, its physical lines), file order, CR of CRLF kept.

    Refusals keep the whole-file order of ``_decode``: a NUL byte anywhere wins over a decoding
    error anywhere, so after a bad byte the rest of the file is still searched for NUL. Line
    numbers in those refusals count line feeds, as ``_decode`` does. A head (first 64 KiB) full
    of control bytes is ``binary`` at once, whatever the slice size. ``state.control`` tells
    whether the slice just handed out may hold a control character (``sniff.has_control``).
    """
    codec = codecs.lookup(encoding).name
    if _sliceable(codec):
        with open(path, "rb") as stream:
            _refuse_binary_head(stream.read(HEAD_BYTES), codec, name)
            stream.seek(0)
            yield from _decoded_slices(_byte_slices(stream, size), codec, encoding, name, state, strip_bom=codec == "utf-8", detect=detect)
        return
    data = path.read_bytes()
    if state.hasher is not None:
        state.hasher.update(data)
    state.content = bool(data.strip())
    if not state.content:
        return
    utf8 = _decode(data, encoding, name).encode("utf-8")
    del data
    _refuse_binary_head(utf8[:HEAD_BYTES], "utf-8", name)
    slices = _byte_slices(io.BytesIO(utf8), size)
    yield from _decoded_slices(slices, "utf-8", encoding, name, state, strip_bom=False, hashed=True)


def _refuse_binary_head(head: bytes, codec: str, name: str) -> None:
    """Control bytes (not NUL: that keeps its whole-file order below) throughout the head."""
    if codec == "utf-8" and head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    reason = sniff.binary_reason(head.replace(b"\x00", b""))
    if reason is not None:
        raise FileRefused(name, "binary", reason, 1)


def _decoded_slices(
    slices: Iterator[bytes], codec: str, encoding: str, name: str, state: _Bytes, *, strip_bom: bool, hashed: bool = False, detect: bool = False
) -> Iterator[tuple[int, list[str]]]:
    feeds = 0  # line feeds before this slice (refusal line numbers)
    bad: FileRefused | None = None
    # A single-byte encoding is checked against UTF-8 on its first slice with non-ASCII bytes.
    check_utf8 = sniff.single_byte(codec)
    for i, chunk in enumerate(slices):
        if state.hasher is not None and not hashed:
            state.hasher.update(chunk)
        if not state.content:
            state.content = bool(chunk.strip())
        nul = chunk.find(b"\x00")
        if nul >= 0:
            raise FileRefused(name, "binary", "NUL bytes found: this is not a text file (compressed or encrypted?)", feeds + chunk.count(b"\n", 0, nul) + 1)
        if bad is None:
            if i == 0 and strip_bom and chunk.startswith(codecs.BOM_UTF8):
                chunk = chunk[len(codecs.BOM_UTF8) :]
            if check_utf8 and not chunk.isascii():
                check_utf8 = False
                at = sniff.utf8_mismatch_line(chunk)
                if at is not None and detect:
                    codec = "utf-8"  # the mapping opted in: these bytes are UTF-8 text
                elif at is not None:
                    line = feeds + at
                    bad = FileRefused(
                        name,
                        "encoding_mismatch",
                        f"line {line} holds UTF-8 text but the mapping declares {encoding}; read as {encoding} every accented "
                        "letter would be garbled. Resend in the declared encoding, or set file.detect_encoding: true",
                        line,
                    )
            if bad is None:
                try:
                    text = chunk.decode(codec, errors="strict")
                except UnicodeDecodeError as exc:
                    line = feeds + chunk.count(b"\n", 0, exc.start) + 1
                    what = encoding if codec == codecs.lookup(encoding).name else "utf-8 (detected from the file's first non-ASCII text)"
                    bad = FileRefused(name, "encoding",
                                      f"bytes at line {line} are not valid {what}; resend in {encoding} or fix the mapping's file.encoding",
                                      line)
                else:
                    parts = physical_lines(text)
                    del text
                    if chunk.endswith(b"\n"):
                        parts.pop()  # the empty piece after the slice's last line feed is not a line
                    first = state.lines + 1
                    state.lines += len(parts)
                    state.control = sniff.has_control(chunk, codec)
                    yield first, parts
        feeds += chunk.count(b"\n")
    if bad is not None:
        raise bad


def _lines(first: int, parts: list[str]) -> pl.DataFrame:
    """Physical lines with 1-based numbers, CR of CRLF removed, and whether each is blank."""
    lines = pl.Series(LINE, parts, dtype=pl.String).str.strip_suffix("\r")
    df = pl.DataFrame({LINE_NO: pl.int_range(first, first + len(parts), eager=True, dtype=pl.Int64), LINE: lines})
    return df.with_columns((pl.col(LINE).str.strip_chars() == "").alias(BLANK))


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
            unquoted = value.str.slice(1, value.str.len_chars() - 2).str.replace_all(q + q, q, literal=True)
            value = pl.when(value.str.starts_with(q)).then(unquoted).otherwise(value)
        return value

    def split_one(self, line: str) -> list[str]:
        """Split a single (header, trailer or column-name) line in Python."""
        if self.quote is None:
            return line.split(self.delimiter)
        return next(csv.reader([line], delimiter=self.delimiter, quotechar=self.quote, strict=False))


# --- the reader -------------------------------------------------------------------------------


def read_file(
    path: Path, spec: MappingSpec, *, sha256: str | None = None, file_name: str | None = None, chunk_bytes: int = CHUNK_BYTES
) -> ReadResult:
    """``file_name`` is the delivered name when ``path`` is a landed copy (landing prefixes its sha).

    ``chunk_bytes`` sets the slice size (tests use tiny slices to cross slice boundaries);
    the result does not depend on it.
    """
    path = Path(path)
    name = file_name or path.name
    return _Reader(spec, name, path, chunk_bytes).read(sha256)


@dataclass
class _Control:
    """First two header / trailer records seen (line, text), their counts, record bounds."""

    found: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: {HEADER: [], TRAILER: []})
    counts: dict[str, int] = field(default_factory=lambda: {HEADER: 0, TRAILER: 0})
    first_record: int | None = None
    last_record: int | None = None


class _Reader:
    """One pass over the file's line slices; whole-file refusals are decided at the end in the
    order the checks are listed in ``read`` (a file with two problems gets the same refusal
    whatever the slice size)."""

    def __init__(self, spec: MappingSpec, name: str, path: Path, chunk_bytes: int):
        self.spec = spec
        self.name = name
        self.path = path
        self.chunk_bytes = max(1, chunk_bytes)
        fmt = spec.format
        self.delim: _Delim | None = None
        if fmt.kind == "delimited":
            assert fmt.delimiter is not None  # spec.py requires one for delimited layouts
            self.delim = _Delim(fmt.delimiter, fmt.quote)
        self.names: list[str] | None = None
        self.absent: set[str] = set()  # ``required: false`` named columns this file lacks
        self.digest = ""
        self.month = date(1, 1, 1)  # placeholder until the month is known (see _patch_lineage)

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
            value: str | None
            if pos.is_fixed:
                value = line[pos.start - 1 : pos.start - 1 + pos.length]  # type: ignore[operator]
            else:
                idx = self._column_index(pos, fname)
                value = cells[idx] if cells is not None and idx < len(cells) else None
            out[fname] = value.strip() if value is not None else None
        return out

    # -- the pass --

    def _slices(self, state: _Bytes) -> Iterator[tuple[pl.DataFrame, bool]]:
        """The file's records, a slice at a time: physical lines, with the lines of a quoted
        field that holds line breaks joined into one record (``multiline``)."""
        fmt = self.spec.format
        joiner = RecordJoiner(self.delim.delimiter, fmt.quote, fmt.max_record_lines, self.name) if self.delim and fmt.quote else None
        f = self.spec.file
        for first, parts in _line_slices(self.path, f.encoding, self.name, self.chunk_bytes, state, detect=f.detect_encoding):
            lines = _lines(first, parts)
            del parts
            yield (joiner.join(lines) if joiner else lines), state.control
        if joiner:
            joiner.finish()

    def read(self, sha256: str | None) -> ReadResult:
        spec = self.spec
        state = _Bytes(hashlib.sha256() if sha256 is None else None)
        self.digest = sha256 or ""
        if spec.format.kind == "delimited" and not spec.format.header_row:
            expected: int | None = self._usual_width(_Bytes())
        else:
            expected = None

        # The column-name row is the first non-blank line, or the second when a header record
        # leads; slices are held back (rarely more than the first) until it is found.
        want_names = bool(self.delim and spec.format.header_row)
        names_idx = 1 if spec.records and spec.records.header else 0
        names_line: int | None = None
        names_error: FileRefused | None = None
        nonblank = 0
        held: list[tuple[pl.DataFrame, bool]] = []
        ctl = _Control()
        n_details = n_unknown = 0
        rejects: list[pl.DataFrame] = []
        rows: list[pl.DataFrame] = []
        hash_totals: dict[str, int] = {}
        header_vals: dict[str, str | None] | None = None
        month_error: FileRefused | None = None
        fields = self._mapped_read_fields()
        needed = 0

        def ready() -> None:
            nonlocal expected, needed, names_error, fields
            if self.delim is None:
                return
            if self.names is not None:
                expected = len(self.names)
            fields = self._mapped_read_fields()  # without the absent optional columns
            needed = max((self._column_index(p, f) + 1 for f, p in fields.items()), default=0)

        def process(lines: pl.DataFrame, control: bool) -> None:
            nonlocal n_details, n_unknown, header_vals, month_error
            lines = self._classify(lines, names_line)
            self._note_control(lines, ctl)
            if header_vals is None and ctl.found[HEADER]:
                header_vals = self._record_values(ctl.found[HEADER][0][1], spec.records.header.fields)  # type: ignore[union-attr]
            if header_vals is not None or not (spec.records and spec.records.header):
                if month_error is None and self.month == date(1, 1, 1):
                    try:
                        self.month = self._month(header_vals or {})
                    except FileRefused as exc:
                        month_error = exc
            details = lines.filter(pl.col(KIND) == DETAIL)
            unknown = lines.filter(pl.col(KIND) == UNKNOWN)
            del lines
            n_details += details.height
            n_unknown += unknown.height
            if unknown.height:
                rejects.append(self._unknown_rejects(unknown))
            if names_error is not None or (expected is not None and needed > expected):
                return  # refused at the end; nothing can be cut
            # The byte scan said this slice may hold a control character: find its records, so
            # only they pay for the per-field control_characters checks.
            flagged = details.filter(pl.col(LINE).str.contains(CONTROL_IN_TEXT)).get_column(LINE_NO) if control else None
            if self.delim:
                raw, bad, hashed = self._cut_delimited(details, expected or 0)
            else:
                raw, bad, hashed = self._cut_fixed(details, unknown)
            del details, unknown
            for f, v in hashed.items():
                hash_totals[f] = hash_totals.get(f, 0) + v
            if bad.height:
                rejects.append(bad)
            if raw.height and flagged is not None and flagged.len():
                hit = pl.col(LINE_NO).is_in(flagged.implode())
                parts = [self._canonical(raw.filter(~hit), control=False), self._canonical(raw.filter(hit), control=True)]
                rows.append(pl.concat(parts).sort(LINE_NO))
            elif raw.height:
                rows.append(self._canonical(raw, control=False))

        for lines, has_ctl in self._slices(state):
            if want_names and names_line is None:
                body = lines.filter(~pl.col(BLANK))
                if nonblank + body.height > names_idx:
                    names_line = body[LINE_NO][names_idx - nonblank]
                    self.names = [c.strip().lstrip("\ufeff") for c in self.delim.split_one(body[LINE][names_idx - nonblank])]  # type: ignore[union-attr]
                    try:
                        self._check_named_columns(names_line)
                        ready()
                    except FileRefused as exc:
                        names_error = exc
                    nonblank += body.height
                    for early in held:
                        process(*early)
                    held.clear()
                    process(lines, has_ctl)
                else:
                    nonblank += body.height
                    held.append((lines, has_ctl))
                continue
            if not want_names and not nonblank:
                ready()
            nonblank += lines.filter(~pl.col(BLANK)).height
            process(lines, has_ctl)
        del held

        # Whole-file refusals, in the order a reader of the whole text would meet them.
        if not state.content:
            raise self.refuse("empty", "the file is empty")
        if nonblank == 0:
            raise self.refuse("empty", "the file holds no records")
        if want_names and names_line is None:
            raise self.refuse("empty", "no column-name row and no detail records")
        if names_error is not None:
            raise names_error
        header_vals, trailer_vals = self._control_records(ctl)
        if n_details == 0:
            extra = f" ({n_unknown} line(s) of unknown record type)" if n_unknown else ""
            raise self.refuse("no_detail_records", f"no detail records{extra}: only header, column-name or trailer records")
        if expected and needed > expected:
            raise self.refuse("missing_columns", f"the mapping reads column {needed} but detail records have {expected} fields")
        if sha256 is None:
            self.digest = state.hasher.hexdigest()

        rejected = pl.concat(rejects).sort(LINE_NO) if rejects else self._rejects(_no_lines(), pl.lit(None, pl.String), pl.lit(None, pl.String))
        out = pl.concat(rows, rechunk=False) if rows else self._canonical(self._no_raw())
        records_read = out.height + rejected.select(pl.col(LINE_NO).n_unique()).item()
        if month_error is not None:
            raise month_error
        month = self._month(header_vals)
        control = self._control(header_vals, trailer_vals, records_read, hash_totals, out)
        out = self._patch_lineage(out, month)
        out = self._record_field_values(out, header_vals, trailer_vals)
        reference = self._reference_date(month, header_vals, trailer_vals)
        source_columns = self._source_columns(expected or 0)
        rejected = rejected.select(REJECT_SCHEMA.names()).cast(REJECT_SCHEMA)
        return ReadResult(out, rejected, records_read, month, control, source_columns, reference)

    def _patch_lineage(self, rows: pl.DataFrame, month: date) -> pl.DataFrame:
        """Rows were cut before the whole file was hashed or its month known: set them now."""
        if month != self.month:
            rows = rows.with_columns(pl.lit(month).alias("reporting_month"))
        if rows.height and rows["file_sha256"][0] != self.digest:
            rows = rows.with_columns(pl.lit(self.digest).alias("file_sha256"))
        return rows

    def _usual_width(self, state: _Bytes) -> int:
        """A headerless delimited file's width: the most common field count of its detail lines
        whose quotes balance (ties go to the wider). Needs the whole file, so it is a pass of its own."""
        d = self.delim
        assert d is not None
        tally: dict[int, int] = {}
        for lines, _ in self._slices(state):
            details = self._classify(lines, None).filter(pl.col(KIND) == DETAIL)
            checked = self._field_counts(details)
            for width, n in checked.filter(pl.col("_quote_ok")).group_by("_fields").len().iter_rows():
                tally[width] = tally.get(width, 0) + n
        if not tally:
            return 0
        return max(tally.items(), key=lambda kv: (kv[1], kv[0]))[0]

    def _no_raw(self) -> pl.DataFrame:
        return pl.DataFrame(schema={LINE_NO: pl.Int64, **{raw_name(f): pl.String for f in self._mapped_read_fields()}})

    def _source_columns(self, expected: int) -> list[str]:
        if self.delim:
            return list(self.names) if self.names is not None else [str(i + 1) for i in range(expected)]
        ordered = sorted(self._mapped_read_fields().values(), key=lambda p: (p.start, p.length))
        return list(dict.fromkeys(f"{p.start}-{p.start + p.length - 1}" for p in ordered))  # type: ignore[operator]

    def _classify(self, lines: pl.DataFrame, names_line: int | None) -> pl.DataFrame:
        recs = self.spec.records
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
        positions = self._positions()
        optional = {f for f, p in positions.items() if not getattr(p, "required", True)}
        self.absent = {f for f in optional if positions[f].column not in self.names}
        wanted = [p.column for f, p in positions.items() if isinstance(p.column, str) and f not in optional]
        missing = sorted({c for c in wanted if c not in self.names})
        if missing:
            raise self.refuse("missing_columns", f"header row lacks column(s) {missing}", names_line)

    def _positions(self) -> dict[str, Position]:
        """Every position read from detail records: mapped fields and the record-type field."""
        out: dict[str, Position] = {f: s for f, s in self.spec.fields.items() if s.is_set}
        if self.spec.records:
            out["records.type_field"] = self.spec.records.type_field
        return out

    def _note_control(self, lines: pl.DataFrame, ctl: _Control) -> None:
        if self.spec.records is None:
            return
        records = lines.filter(~pl.col(KIND).is_in([BLANK, NAMES]))
        if records.height == 0:
            return
        if ctl.first_record is None:
            ctl.first_record = records[LINE_NO][0]
        ctl.last_record = records[LINE_NO][-1]
        for kind in (HEADER, TRAILER):
            found = records.filter(pl.col(KIND) == kind)
            ctl.counts[kind] += found.height
            room = 2 - len(ctl.found[kind])
            if room > 0 and found.height:
                ctl.found[kind].extend(found.head(room).select(LINE_NO, LINE).iter_rows())

    def _control_records(self, ctl: _Control) -> tuple[dict[str, str | None], dict[str, str | None]]:
        recs = self.spec.records
        vals: dict[str, dict[str, str | None]] = {HEADER: {}, TRAILER: {}}
        if recs is None:
            return vals[HEADER], vals[TRAILER]
        for kind, rec, must_be in ((HEADER, recs.header, ctl.first_record), (TRAILER, recs.trailer, ctl.last_record)):
            found, count = ctl.found[kind], ctl.counts[kind]
            if rec is None:
                continue
            if count == 0:
                raise self.refuse("missing_trailer", f"no {kind} record (record type {rec.code!r}); the file may be truncated")
            if count > 1:
                raise self.refuse("record_order", f"{count} {kind} records, expected one", found[1][0])
            if found[0][0] != must_be:
                where = "first" if kind == HEADER else "last"
                raise self.refuse("record_order", f"the {kind} record must be the {where} record", found[0][0])
            vals[kind] = self._record_values(found[0][1], rec.fields)
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
        """Fields cut from detail records (not constants, header values or absent columns)."""
        return {f: s for f, s in self.spec.fields.items() if s.is_set and f not in self.absent}

    def _hash_fields(self) -> list[str]:
        """Fields whose digits a ``hash`` control check sums (hash_total and checks)."""
        read = self._mapped_read_fields()
        return list(dict.fromkeys(c.of for c in self.spec.control.all_checks() if c.kind == "hash" and c.of in read))

    def _field_counts(self, details: pl.DataFrame) -> pl.DataFrame:
        """``_quote_ok`` and ``_fields`` per line. Lines without a quote character are always
        balanced and their width is a delimiter count, so the quote regexes run only on lines
        that hold a quote."""
        d = self.delim
        assert d is not None
        count = pl.col(LINE).str.count_matches(d.delimiter, literal=True) + 1
        if d.quote is None:
            return details.with_columns(pl.lit(True).alias("_quote_ok"), count.alias("_fields"))
        quoted = details.select(pl.col(LINE).str.contains(d.quote, literal=True)).to_series()
        if not quoted.any():
            return details.with_columns(pl.lit(True).alias("_quote_ok"), count.alias("_fields"))
        if quoted.all():
            return details.with_columns(pl.col(LINE).str.contains(d.line_re).alias("_quote_ok"), d.field_count(pl.col(LINE)).alias("_fields"))
        at = quoted.arg_true()
        sub = details.select(pl.col(LINE).gather(at).str.contains(d.line_re).alias("ok"), d.field_count(pl.col(LINE).gather(at)).alias("n"))
        plain = details.select(count.alias("n"))["n"]
        return details.with_columns(
            pl.repeat(True, details.height, eager=True).scatter(at, sub["ok"]).alias("_quote_ok"),
            plain.scatter(at, sub["n"]).alias("_fields"),
        )

    def _cut_delimited(self, details: pl.DataFrame, expected: int) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
        d = self.delim
        assert d is not None
        checked = self._field_counts(details)
        fields = self._mapped_read_fields()
        good_mask = pl.col("_quote_ok") & (pl.col("_fields") == expected)
        bad = checked.filter(~good_mask)
        bad_rejects = self._rejects(
            bad,
            pl.when(~pl.col("_quote_ok")).then(pl.lit("quote")).otherwise(pl.lit("field_count")),
            pl.when(~pl.col("_quote_ok"))
            .then(pl.lit("unbalanced or misplaced quote"))
            .otherwise(pl.format(f"expected {expected} fields, found {{}}", pl.col("_fields"))),
        )
        good = checked.filter(good_mask) if bad.height else checked
        del checked
        cols = [f"c{i}" for i in range(expected)]
        if good.height:
            # The lines, one per row, written by polars from its own buffers (quote_style="never"
            # writes the text as is) and cut by its CSV reader: one Python string per line or
            # one joined string needs several copies of the text.
            payload = io.BytesIO()
            good.select(LINE).write_csv(payload, include_header=False, quote_style="never", line_terminator="\n")
            payload.seek(0)
            wanted = sorted({self._column_index(p, f) for f, p in fields.items()})
            cells = pl.read_csv(
                payload,
                has_header=False,
                separator=d.delimiter,
                quote_char=d.quote,
                infer_schema=False,
                columns=wanted,  # unmapped columns are never materialised
                new_columns=[cols[i] for i in wanted],
            )
            del payload
            if cells.height != good.height:  # would mean read_csv saw records differently
                raise RuntimeError(f"{self.name}: csv reader returned {cells.height} records for {good.height} lines")
        else:
            cells = pl.DataFrame(schema={c: pl.String for c in cols})
        raw = good.select(LINE_NO).hstack(cells.get_columns()).select(
            pl.col(LINE_NO), *[pl.col(cols[self._column_index(p, f)]).alias(raw_name(f)) for f, p in fields.items()]
        )
        return raw, bad_rejects, self._hash_sums(raw)

    def _hash_sums(self, frame: pl.DataFrame) -> dict[str, int]:
        """Hash totals sum each field's digits as written (implied decimals), like the sender."""
        fields = self._hash_fields()
        if not fields or frame.height == 0:
            return {}
        sums = frame.select(
            pl.col(raw_name(f)).str.replace_all(r"[^0-9]", "").cast(pl.Decimal(38, 0), strict=False).sum().alias(f) for f in fields
        ).row(0)
        return {f: int(v or 0) for f, v in zip(fields, sums, strict=True)}

    def _cut_fixed(self, details: pl.DataFrame, unknown: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
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

        raw = cut(details.filter(~bad_mask) if bad.height else details, fields)
        # The sender's hash total covers every record it wrote as detail, including lines we
        # reject for their length or a damaged record-type code: positions still cut them.
        hashed: dict[str, int] = {}
        if self._hash_fields():
            hashed = self._hash_sums(cut(pl.concat([details, unknown]), {f: fields[f] for f in self._hash_fields()}))
        return raw, bad_rejects, hashed

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

    def _control(
        self, header_vals: dict[str, str | None], trailer_vals: dict[str, str | None], records_read: int, hash_totals: dict[str, int], rows: pl.DataFrame
    ) -> ControlTotals:
        """Every control check, in the mapping's order (``ControlSpec.all_checks``); the first
        that disagrees refuses the file with both numbers. The returned totals are the first
        count and the first hash check (what metadata shows)."""
        expected_records = expected_hash = actual_hash = None
        for check in self.spec.control.all_checks():
            raw, kind = self._ref_value(check.expected, header_vals, trailer_vals)
            if check.kind == "count":
                if not raw.isdigit():
                    raise self.refuse("trailer_count", f"{kind} record count field is not a number")
                if int(raw) != records_read:
                    raise self.refuse("trailer_count", f"{kind} says {int(raw)} detail records, the file has {records_read}")
                expected_records = int(raw) if expected_records is None else expected_records
                continue
            rule = "hash_total" if check.kind == "hash" else "control_sum"
            what = "hash total" if check.kind == "hash" else "sum"
            try:
                expected = Decimal(raw) if "." in raw else Decimal(int(raw)).scaleb(-check.scale)
            except (InvalidOperation, ValueError):
                raise self.refuse(rule, f"{kind} {what} field is not a number") from None
            assert check.of is not None
            if check.kind == "hash":
                actual = Decimal(hash_totals.get(check.of, 0)).scaleb(-check.scale)
            else:
                # Values as converted (signs, points, implied decimals) over the rows read;
                # compared at the precision the control field is written in.
                total = rows.get_column(check.of).sum() if rows.height else 0
                places = expected.as_tuple().exponent
                assert isinstance(places, int)  # a finite number: Decimal(raw) refused NaN and infinities above
                actual = Decimal(repr(float(total or 0))).quantize(Decimal(1).scaleb(places))
            if actual != expected:
                raise self.refuse(rule, f"{kind} {what} of {check.of} is {expected}, the detail records sum to {actual}")
            if check.kind == "hash" and expected_hash is None:
                expected_hash, actual_hash = expected, actual
        return ControlTotals(expected_records, records_read, expected_hash, actual_hash)

    def _record_field_values(self, rows: pl.DataFrame, header_vals: dict[str, str | None], trailer_vals: dict[str, str | None]) -> pl.DataFrame:
        """Fields filled from a header or trailer record field, the same on every row. The value
        goes through the field's transforms, default, map and format like a row value; one that
        fails refuses the file (every row would carry the same bad value)."""
        values = []
        for fname, fspec in self.spec.fields.items():
            if fspec.record_field is None:
                continue
            raw, kind = self._ref_value(fspec.record_field, header_vals, trailer_vals)
            as_column = fspec.model_copy(update={"record_field": None, "column": 1})
            plan = field_plan(fname, as_column)
            one = pl.DataFrame({raw_name(fname): [raw]}, schema={raw_name(fname): pl.String}).select(plan.text)
            got = one.select(plan.value, *[c.failed.fill_null(False).alias(c.reason) for c in plan.checks])
            failed = [c.reason for c in plan.checks if got.get_column(c.reason)[0]]
            if failed:
                raise self.refuse("record_field", f"{kind} field {fspec.record_field.partition('.')[2]!r} for {failed[0]}")
            values.append(pl.lit(got.get_column(fname)[0], dtype=FIELD_BY_NAME[fname].dtype).alias(fname))
        return rows.with_columns(values) if values and rows.height else rows

    def _reference_date(self, month: date, header_vals: dict[str, str | None], trailer_vals: dict[str, str | None]) -> date:
        f = self.spec.file
        if f.reference_date_field is None:
            nxt = date(month.year + (month.month == 12), month.month % 12 + 1, 1)
            return nxt - timedelta(days=1)
        raw, kind = self._ref_value(f.reference_date_field, header_vals, trailer_vals)
        try:
            return datetime.strptime(raw, to_strftime(f.reference_date_format)).date()
        except ValueError:
            raise self.refuse("reference_date", f"{kind} field {f.reference_date_field.partition('.')[2]!r} is not a {f.reference_date_format} date") from None

    def _canonical(self, raw: pl.DataFrame, *, control: bool = True) -> pl.DataFrame:
        """``control``: the slice may hold control characters, so the per-field
        ``control_characters`` checks run; otherwise they cannot fire and are skipped."""
        plans = [field_plan(f, s) for f, s in self.spec.fields.items()]
        checks = [c for p in plans for c in p.checks if control or c.rule != "control_characters"]
        flags = [f"_flag{i}" for i in range(len(checks))]
        if self.absent:  # optional named columns this file lacks: empty on every row
            raw = raw.with_columns(pl.lit(None, dtype=pl.String).alias(raw_name(f)) for f in sorted(self.absent))
        # Stage 1: each field's cleaned text once; stage 2: values and failure flags from it.
        texts = raw.select(pl.col(LINE_NO), *[p.text for p in plans if p.text is not None])
        lineage = [
            pl.lit(self.spec.source_id).alias("source_id"),
            pl.lit(self.name).alias("file_name"),
            pl.lit(self.digest).alias("file_sha256"),
            pl.col(LINE_NO),
            pl.lit(self.month).alias("reporting_month"),
        ]
        assert [e.meta.output_name() for e in lineage] == list(LINEAGE_FIELDS)
        out = texts.select(*lineage, *[p.value for p in plans], *[c.failed.fill_null(False).alias(n) for c, n in zip(checks, flags, strict=True)])
        # Only rows with a failed check pay for building their issue list.
        failing = pl.any_horizontal(flags) if flags else pl.lit(False)
        bad = out.filter(failing).with_columns(issues_expr(checks, flags))
        good = out.filter(~failing) if bad.height else out
        good = good.with_columns(pl.lit([], dtype=ISSUE_DTYPE).alias(ISSUES_COLUMN))
        rows = pl.concat([good, bad]).sort(LINE_NO) if bad.height else good
        return conform_columns(rows, keep_issues=True).select(*[f.name for f in FIELDS], ISSUES_COLUMN)


def _no_lines() -> pl.DataFrame:
    return pl.DataFrame(schema={LINE_NO: pl.Int64, LINE: pl.String})
