"""Join physical lines into records when a quoted field holds line breaks (RFC 4180).

In: one slice's physical lines (``line_number``, ``line``, ``blank``) of a delimited file with a
quote character, and the record left open at the end of the previous slice.
Out: the slice's records: a record spanning lines N..M becomes one row numbered N whose text is
those lines joined with LF (the CR of CRLF is already gone, so the joined text does not depend
on the line ends); the lines after N are gone. A record still open at the end of the slice is
held back (``OpenRecord``) and finished by the next slice.
Refused (``FileRefused``, rule ``unbalanced_quote``, naming the opening line): a quote still
open at the end of the file, or after ``format.max_record_lines`` lines.

Which lines open a record: a line with an odd number of quote characters whose last quote opens
a field (everything before it is well-formed fields and a delimiter). A stray quote inside an
unquoted field (``5" tall``) opens nothing: that line alone is a structural ``quote`` reject, as
before. An open record ends at the next line with an odd number of quotes ("" keeps the
count even). Only lines holding a quote are looked at, so a file without multi-line records
pays one literal scan per slice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import polars as pl

from atr_pipeline.errors import FileRefused

LINE = "line"
LINE_NO = "line_number"
BLANK = "blank"


@dataclass
class OpenRecord:
    """Lines of a record whose quoted field is still open, carried to the next slice."""

    first: int  # physical line that opened it
    parts: list[str] = field(default_factory=list)


class RecordJoiner:
    def __init__(self, delimiter: str, quote: str, max_lines: int, file_name: str):
        self.quote = quote
        self.max_lines = max_lines
        self.file_name = file_name
        d, q = re.escape(delimiter), re.escape(quote)
        field_re = f"(?:{q}(?:[^{q}]|{q}{q})*{q}|[^{d}{q}]*)"
        # Well-formed fields, each followed by a delimiter, then an opening quote whose field
        # runs to the end of the line ("" is an escaped quote, not a close).
        self._opener = re.compile(f"^(?:{field_re}{d})*{q}(?:[^{q}]|{q}{q})*$", re.DOTALL)
        self.open: OpenRecord | None = None
        # A record too long to be one: kept until ``finish`` so the refusal does not depend on
        # the slice size (a NUL byte or a bad byte later in the file still wins).
        self.refusal: FileRefused | None = None

    def _too_long(self, rec: OpenRecord) -> FileRefused:
        return FileRefused(
            self.file_name,
            "unbalanced_quote",
            f"the quoted field opened on line {rec.first} is not closed within {self.max_lines} lines "
            "(format.max_record_lines); a stray quote?",
            rec.first,
        )

    def finish(self) -> None:
        """End of file: a record still open means its quote never closed."""
        if self.refusal is not None:
            raise self.refusal
        if self.open is not None:
            rec = self.open
            raise FileRefused(self.file_name, "unbalanced_quote",
                              f"the quoted field opened on line {rec.first} is not closed by the end of the file", rec.first)

    def join(self, lines: pl.DataFrame) -> pl.DataFrame:
        if self.refusal is not None:
            return lines.clear()
        try:
            return self._join(lines)
        except FileRefused as exc:
            self.refusal, self.open = exc, None
            return lines.clear()

    def _join(self, lines: pl.DataFrame) -> pl.DataFrame:
        q = self.quote
        if self.open is None:
            quoted = lines.get_column(LINE).str.contains(q, literal=True)
            if not quoted.any():
                return lines
            odd_idx = self._odd(lines, quoted)
            if not odd_idx:
                return lines
        else:
            odd_idx = self._odd(lines, lines.get_column(LINE).str.contains(q, literal=True))

        texts = lines.get_column(LINE)
        numbers = lines.get_column(LINE_NO)
        drop: list[int] = []  # row indexes absorbed into an earlier record
        replace: dict[int, str] = {}  # row index of a record's first line -> joined text
        n = lines.height
        pos = 0  # next odd line to consider
        if self.open is not None:
            rec = self.open
            if not odd_idx:  # the whole slice is inside the open record
                rec.parts.extend(texts.to_list())
                if len(rec.parts) > self.max_lines:
                    raise self._too_long(rec)
                return lines.clear()
            close = odd_idx[0]
            rec.parts.extend(texts.slice(0, close + 1).to_list())
            if len(rec.parts) > self.max_lines:
                raise self._too_long(rec)
            self.open = None
            pos = 1
            # The carried record becomes the slice's first row: its number is the opening line.
            carried = pl.DataFrame({LINE_NO: [rec.first], LINE: ["\n".join(rec.parts)], BLANK: [False]}, schema=lines.schema)
            drop.extend(range(close + 1))
        else:
            carried = None
        while pos < len(odd_idx):
            i = odd_idx[pos]
            if not self._opener.match(texts[i]):
                pos += 1  # a stray quote: the line stays alone (a ``quote`` reject)
                continue
            if pos + 1 < len(odd_idx):
                close = odd_idx[pos + 1]
                if close - i + 1 > self.max_lines:
                    raise self._too_long(OpenRecord(int(numbers[i])))
                replace[i] = "\n".join(texts.slice(i, close - i + 1).to_list())
                drop.extend(range(i + 1, close + 1))
                pos += 2
                continue
            # Open at the end of the slice: carry it (and nothing after it is a record yet).
            self.open = OpenRecord(int(numbers[i]), texts.slice(i, n - i).to_list())
            if len(self.open.parts) > self.max_lines:
                raise self._too_long(self.open)
            drop.extend(range(i, n))
            break
        out = lines
        if replace:
            at = pl.Series(list(replace), dtype=pl.UInt32)
            joined = pl.Series(LINE, list(replace.values()), dtype=pl.String)
            out = out.with_columns(
                out.get_column(LINE).scatter(at, joined),
                out.get_column(BLANK).scatter(at, False),
            )
        if drop:
            keep = pl.Series(values=[True] * n, dtype=pl.Boolean).scatter(pl.Series(drop, dtype=pl.UInt32), False)
            out = out.filter(keep)
        if carried is not None:
            out = pl.concat([carried, out])
        return out

    def _odd(self, lines: pl.DataFrame, quoted: pl.Series) -> list[int]:
        """Row indexes of lines with an odd number of quote characters."""
        at = quoted.arg_true()
        if at.len() == 0:
            return []
        counts = lines.get_column(LINE).gather(at).str.count_matches(self.quote, literal=True)
        return at.filter(counts % 2 == 1).to_list()


def raw_records(lines: list[str], wanted: set[int], delimiter: str, quote: str, max_lines: int) -> dict[int, str]:
    """The text of the records starting at the ``wanted`` 1-based physical lines, joined the way
    ``RecordJoiner`` joins them (for the rejects CSV, which carries the whole raw record)."""
    joiner = RecordJoiner(delimiter, quote, max_lines, "")
    out: dict[int, str] = {}
    for number in sorted(wanted):
        i = number - 1
        if i >= len(lines):
            continue
        text = lines[i]
        if text.count(quote) % 2 == 1 and joiner._opener.match(text):
            parts = [text]
            for nxt in lines[i + 1 : i + max_lines]:
                parts.append(nxt)
                if nxt.count(quote) % 2 == 1:
                    break
            text = "\n".join(parts)
        out[number] = text
    return out
