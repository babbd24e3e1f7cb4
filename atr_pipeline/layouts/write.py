"""Write canonical rows back out in a mapping's layout ("the reader in reverse").

In: canonical rows (any subset of ``canonical.FIELDS``), a ``MappingSpec`` and the reporting
month. Out: the file's bytes (header/trailer records with their control totals, column-name
row, quoted CSV or padded fixed-width records) and a file name the mapping's pattern matches.
Refused (``ValueError``): a file-name pattern this module cannot invert.

Used by the synthetic generator and the fixture builder, so test files honour exactly the
layout the reader expects. Values are written in file terms: code maps inverted (first raw
code of each canonical code), dates in the mapping's format, risk scores with 4 decimals.
Text longer than a fixed-width slot is cut; nothing else is altered.
"""

from __future__ import annotations

# The regex parser walks file.pattern; private modules, named re._* since Python 3.11 (our oldest).
import re._constants as _src
import re._parser as _sre
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import polars as pl

from atr_pipeline.canonical import FIELD_BY_NAME
from atr_pipeline.layouts.spec import FieldSpec, MappingSpec, Position, to_strftime

# polars' write_csv quoting modes.
QuoteStyle = Literal["necessary", "always", "non_numeric", "never"]

NUMBER_DECIMALS = 4
CHUNK_ROWS = 200_000  # rows rendered at a time by write_rendered / iter_rendered
_RECORD_TYPE = "__record_type"


def _raw_expr(fname: str, spec: FieldSpec, fixed_len: int | None) -> pl.Expr:
    dtype = FIELD_BY_NAME[fname].dtype
    col = pl.col(fname)
    if dtype == pl.Date():
        text = col.dt.strftime(spec.strftime or "%Y-%m-%d")
    elif dtype == pl.Float64() and spec.implied_decimals is not None:
        # COBOL V9(n): digits only, the point implied (a sign in front when negative).
        text = (col * 10**spec.implied_decimals).round(0).cast(pl.Int64).cast(pl.String)
        if fixed_len:
            text = text.str.pad_start(fixed_len, "0")
    elif dtype == pl.Float64():
        scaled = (col * 10**NUMBER_DECIMALS).round(0).cast(pl.Int64)
        text = pl.format(
            "{}.{}",
            (scaled // 10**NUMBER_DECIMALS).cast(pl.String),
            (scaled % 10**NUMBER_DECIMALS).cast(pl.String).str.pad_start(NUMBER_DECIMALS, "0"),
        )
        if fixed_len:
            text = text.str.pad_start(fixed_len, "0")
    else:
        text = col.cast(pl.String)
    if spec.map:
        inverse: dict[str, str] = {}
        for raw, canon in spec.map.items():
            if canon is not None:
                inverse.setdefault(canon, raw)
        text = text.replace_strict(list(inverse), list(inverse.values()), default=text, return_dtype=pl.String())
    return text


def _fixed_line(parts: list[tuple[Position, pl.Expr]], length: int) -> pl.Expr:
    """Concatenate slot values at their 1-based starts, blanks in between, padded to length."""
    segs: list[pl.Expr] = []
    cursor = 1
    for pos, expr in sorted(parts, key=lambda p: p[0].start or 0):
        start, width = pos.start or 1, pos.length or 1
        if start > cursor:
            segs.append(pl.lit(" " * (start - cursor)))
        segs.append(expr.fill_null("").str.slice(0, width).str.pad_end(width))
        cursor = start + width
    line = pl.concat_str(segs) if segs else pl.lit("")
    return line.str.pad_end(length)


def _control_values(spec: MappingSpec, rows: pl.DataFrame, raw: pl.DataFrame, month: date, kind: str) -> dict[str, str]:
    """Values of header/trailer fields the writer knows how to fill."""
    rec = getattr(spec.records, kind)
    checks = {c.expected: c for c in spec.control.all_checks()}
    record_fields = {fs.record_field: f for f, fs in spec.fields.items() if fs.record_field}
    out: dict[str, str] = {}
    for fname in rec.fields:
        ref = f"{kind}.{fname}"
        check = checks.get(ref)
        if check is not None and check.kind == "count":
            out[fname] = str(rows.height)
        elif check is not None and check.kind == "hash" and check.of in raw.columns:
            col = raw.get_column(check.of)
            total = col.str.replace_all(r"[^0-9]", "").cast(pl.Decimal(38, 0), strict=False).sum()
            out[fname] = str(int(total or 0))
        elif check is not None and check.kind == "sum" and check.of in raw.columns:
            # The sum of the values as written (what the reader will add up), exactly.
            decimals = spec.fields[check.of].implied_decimals
            texts = raw.get_column(check.of).drop_nulls().to_list()
            values = [Decimal(t).scaleb(-decimals) if decimals else Decimal(t) for t in texts if t.strip()]
            places = max(check.scale, decimals or NUMBER_DECIMALS)
            out[fname] = f"{sum(values, Decimal(0)):.{places}f}"
        elif kind == "header" and spec.file.month_from == "header" and spec.file.month_header_field == fname:
            out[fname] = month.strftime(to_strftime(spec.file.month_format))
        elif spec.file.reference_date_field == ref:
            out[fname] = month.strftime(to_strftime(spec.file.reference_date_format))  # the month's first day
        elif ref in record_fields and record_fields[ref] in rows.columns and rows.height:
            value = rows.get_column(record_fields[ref])[0]
            out[fname] = "" if value is None else str(value)
        elif fname in FIELD_BY_NAME and fname in rows.columns and rows.height:
            value = rows.get_column(fname)[0]
            out[fname] = "" if value is None else str(value)
        else:
            out[fname] = ""
    return out


def _control_line(spec: MappingSpec, kind: str, values: dict[str, str]) -> str:
    rec = getattr(spec.records, kind)
    assert spec.records is not None
    slots: list[tuple[Position, str]] = [(spec.records.type_field, rec.code)]
    slots += [(rec.fields[f], v) for f, v in values.items()]
    if spec.format.kind == "fixed_width":
        line = [" "] * max((p.start or 1) + (p.length or 1) - 1 for p, _ in slots)
        for pos, v in slots:
            start, width = (pos.start or 1) - 1, pos.length or 1
            # Counts and totals are right-aligned with zeros, as legacy trailers write them.
            text = v.rjust(width, "0") if v.isdigit() else v.ljust(width)
            line[start : start + width] = list(text[:width])
        return "".join(line).rstrip()
    cells = [""] * max(int(p.column) for p, _ in slots)  # type: ignore[arg-type]
    for pos, v in slots:
        cells[int(pos.column) - 1] = v  # type: ignore[arg-type]
    return (spec.format.delimiter or ",").join(cells)


def render(spec: MappingSpec, rows: pl.DataFrame, month: date, *, line_ending: str = "\n", quote_style: QuoteStyle = "necessary") -> bytes:
    """The bytes of a file in ``spec``'s layout holding ``rows`` (in the given order)."""
    return b"".join(iter_rendered(spec, rows, month, line_ending=line_ending, quote_style=quote_style))


def write_rendered(
    spec: MappingSpec, rows: pl.DataFrame, month: date, path: Path, *,
    line_ending: str = "\n", quote_style: QuoteStyle = "necessary", chunk_rows: int = CHUNK_ROWS,
) -> Path:
    """Write ``render(spec, rows, month)``'s bytes to ``path`` one slice of rows at a time.

    Why: a 5M-row file is several GB of text; building it as one Python string needs a multiple
    of that (the 5M benchmark died with MemoryError in ``render``). Same bytes as ``render``.
    """
    with open(path, "wb") as fh:
        for piece in iter_rendered(spec, rows, month, line_ending=line_ending, quote_style=quote_style, chunk_rows=chunk_rows):
            fh.write(piece)
    return path


def iter_rendered(
    spec: MappingSpec, rows: pl.DataFrame, month: date, *,
    line_ending: str = "\n", quote_style: QuoteStyle = "necessary", chunk_rows: int = CHUNK_ROWS,
) -> Iterator[bytes]:
    """The file's bytes in pieces: header record, the records of each slice of ``chunk_rows``
    rows, trailer record. Joined, they are exactly ``render``'s bytes."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    fixed = spec.format.kind == "fixed_width"
    encoding = spec.file.encoding
    # A slot read into two fields (e.g. member_id and medicaid_id) is written once.
    written: dict[str, FieldSpec] = {}
    seen: set[tuple[object, ...]] = set()
    for f, s in spec.fields.items():
        slot = (s.column, s.start, s.length)
        if s.is_set and slot not in seen:
            seen.add(slot)
            written[f] = s
    raw_exprs = {
        f: (_raw_expr(f, s, s.length if fixed else None) if f in rows.columns else pl.lit("")).alias(f) for f, s in written.items()
    }
    # Control totals need only their own column over every row; the body is rendered per slice.
    totalled = list(dict.fromkeys(c.of for c in spec.control.all_checks() if c.of in raw_exprs))
    control_raw = rows.select(raw_exprs[f] for f in totalled) if totalled else pl.DataFrame()
    wrote_any = False
    if spec.records and spec.records.header:
        wrote_any = True
        yield (_control_line(spec, "header", _control_values(spec, rows, control_raw, month, "header")) + line_ending).encode(encoding)

    exprs = list(raw_exprs.values())
    for index, start in enumerate(range(0, max(rows.height, 1), chunk_rows)):
        raw = rows.slice(start, chunk_rows).select(exprs)
        if fixed:
            parts: list[tuple[Position, pl.Expr]] = [(s, pl.col(f)) for f, s in written.items()]
            if spec.records:
                parts.append((spec.records.type_field, pl.lit(spec.records.detail.code)))
            body = raw.select(_fixed_line(parts, spec.format.record_length or 1).str.strip_chars_end().alias("l"))["l"]
            body_text = line_ending.join(body.to_list())
        else:
            body_text = _delimited_body(spec, raw, written, line_ending, quote_style, include_header=index == 0)
        if body_text:
            wrote_any = True
            yield (body_text + line_ending).encode(encoding)

    if spec.records and spec.records.trailer:
        yield (_control_line(spec, "trailer", _control_values(spec, rows, control_raw, month, "trailer")) + line_ending).encode(encoding)
    elif not wrote_any:
        yield line_ending.encode(encoding)  # render has always ended an empty file with one line ending


def _delimited_body(
    spec: MappingSpec, raw: pl.DataFrame, written: dict[str, FieldSpec], line_ending: str, quote_style: QuoteStyle, *, include_header: bool = True
) -> str:
    fmt = spec.format
    positions: dict[str, Position] = {}
    values = raw
    if spec.records:
        positions[_RECORD_TYPE] = spec.records.type_field
        values = values.with_columns(pl.lit(spec.records.detail.code).alias(_RECORD_TYPE))
    positions.update(written)
    if fmt.header_row:
        # Named columns in mapping order; numbered ones keep their place.
        names: list[str] = []
        for f, p in positions.items():
            names.append(str(p.column) if isinstance(p.column, str) else f)
        out = values.select([pl.col(f).alias(n) for f, n in zip(positions, names, strict=True)])
    else:
        width = max(int(p.column) for p in positions.values())  # type: ignore[arg-type]
        by_index = {int(p.column): f for f, p in positions.items()}  # type: ignore[arg-type]
        out = values.select([(pl.col(by_index[i]) if i in by_index else pl.lit("")).alias(f"c{i}") for i in range(1, width + 1)])
    text = out.write_csv(
        include_header=fmt.header_row and include_header,
        separator=fmt.delimiter or ",",
        quote_char=fmt.quote or '"',
        quote_style=quote_style if fmt.quote else "never",
        line_terminator=line_ending,
    )
    return text.removesuffix(line_ending)


# --- file names ---------------------------------------------------------------------------------


def file_name_for(spec: MappingSpec, month: date, stem: str = "") -> str:
    """A base name the mapping's pattern matches and whose month (if any) is ``month``."""
    groups = {
        "year": f"{month:%Y}",
        "month": f"{month:%m}",
        "yyyymm": f"{month:%Y%m}",
        "yyyymmdd": f"{month:%Y%m%d}",
        "date": f"{month:%Y%m%d}",
    }
    parsed = _sre.parse(spec.file.pattern)
    name = _invert(parsed, groups, parsed.state.groupdict if hasattr(parsed, "state") else {})
    if not spec.file.match(name) or (spec.file.month_from == "filename" and spec.month_from_name(name) != month):
        raise ValueError(f"cannot build a file name for pattern {spec.file.pattern!r}")
    return name


def _invert(items: Any, groups: dict[str, str], names: dict[str, int]) -> str:
    by_number = {v: k for k, v in names.items()}
    out: list[str] = []
    for op, arg in items:
        if op is _src.LITERAL:
            out.append(chr(arg))
        elif op is _src.SUBPATTERN:
            num, _, _, sub = arg
            gname = by_number.get(num)
            out.append(groups[gname] if gname in groups else _invert(sub, groups, names))
        elif op in (_src.MAX_REPEAT, _src.MIN_REPEAT):
            lo, _, sub = arg
            out.append(_invert(sub, groups, names) * max(lo, 1))
        elif op is _src.BRANCH:
            out.append(_invert(arg[1][0], groups, names))
        elif op is _src.IN:
            out.append(_class_char(arg))
        elif op is _src.ANY:
            out.append("X")
        elif op is _src.AT:
            continue
        else:
            raise ValueError(f"pattern element {op} is not supported by the file-name builder")
    return "".join(out)


def _class_char(items: Any) -> str:
    for op, arg in items:
        if op is _src.LITERAL:
            return chr(arg)
        if op is _src.RANGE:
            return chr(arg[0])
        if op is _src.CATEGORY:
            return "0" if arg is _src.CATEGORY_DIGIT else "A"
    return "X"
