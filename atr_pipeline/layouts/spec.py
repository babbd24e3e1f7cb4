"""The mapping format: one YAML per payer layout (``mappings/<source>.yaml``).

A mapping says how to find a source's files (file-name pattern, reporting month), how to cut
them into records (delimited or fixed-width, header/detail/trailer record types), how to check
control totals, and how each canonical field is filled (column or positions, transforms, date
format, code map, default, constant). It is validated on load; every error names the YAML key
path, e.g. ``fields.birth_date.date: unknown date token 'MM-DD'``.

See README "Mapping format" for every key with an example.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atr_pipeline.canonical import DATE_FIELDS, FIELD_BY_NAME, MAPPABLE_FIELDS

Transform = Literal["trim", "upper", "lower", "title", "digits", "strip_zeros"]

NUMERIC_DTYPES = (pl.Float64(), pl.Float32(), pl.Int64(), pl.Int32())

# Friendly date tokens accepted in mappings, translated to strftime codes.
_DATE_TOKENS = (("YYYY", "%Y"), ("YY", "%y"), ("MM", "%m"), ("DD", "%d"))


class MappingError(ValueError):
    """A mapping file is invalid. ``problems`` holds (key path, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in problems)
        super().__init__(f"invalid mapping {source}:\n{lines}")


def to_strftime(fmt: str) -> str:
    """Translate ``MM/DD/YYYY``-style formats to strftime; strftime formats pass through."""
    if "%" in fmt:
        return fmt
    out = fmt
    for token, code in _DATE_TOKENS:
        out = out.replace(token, code)
    if re.search(r"[A-Za-z]", out.replace("%Y", "").replace("%y", "").replace("%m", "").replace("%d", "")):
        raise ValueError(f"unknown date token in {fmt!r} (use YYYY, YY, MM, DD or a strftime format)")
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Position(_Strict):
    """Where a value sits in a record: ``column`` (name or 1-based index) or ``start``/``length`` (1-based)."""

    column: str | int | None = None
    start: int | None = Field(default=None, ge=1)
    length: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Position:
        has_fixed = self.start is not None or self.length is not None
        if has_fixed and (self.start is None or self.length is None):
            raise ValueError("fixed-width positions need both 'start' and 'length'")
        if has_fixed and self.column is not None:
            raise ValueError("give either 'column' or 'start'/'length', not both")
        if isinstance(self.column, int) and self.column < 1:
            raise ValueError("'column' positions are 1-based")
        return self

    @property
    def is_fixed(self) -> bool:
        return self.start is not None

    @property
    def is_set(self) -> bool:
        return self.column is not None or self.start is not None


class FieldSpec(Position):
    """How one canonical field is filled."""

    constant: str | None = None
    default: str | None = None
    transforms: list[Transform] = Field(default_factory=lambda: list[Transform](["trim"]))
    date: str | None = None  # e.g. MM/DD/YYYY, YYYYMMDD or %m/%d/%Y
    # Code map, raw value (after transforms) -> canonical code; a null target maps to empty
    # (e.g. ``"99991231": null`` for an open-ended period).
    map: dict[str, str | None] | None = None
    # What a value outside ``map`` does: reject the row (default) or pass the raw value through.
    unmapped: Literal["reject", "keep"] = "reject"
    # Numeric fields written without a decimal point (COBOL ``9(3)V9(4)``): the digits are
    # divided by 10**implied_decimals. A value with a point of its own is a number_format issue.
    implied_decimals: int | None = Field(default=None, ge=0, le=18)
    # A named column the file may lack: absent -> the field is empty on every row. A column the
    # mapping needs (required: true, the default) missing from the header row refuses the file.
    required: bool = True
    # The value of a header or trailer record field ("header.<name>" / "trailer.<name>"), the
    # same for every row of the file (e.g. the payer id that only the header record carries).
    record_field: str | None = None

    @field_validator("date")
    @classmethod
    def _date_fmt(cls, v: str | None) -> str | None:
        if v is not None:
            to_strftime(v)
        return v

    @field_validator("map", mode="before")
    @classmethod
    def _map_keys_str(cls, v: Any) -> Any:
        # YAML reads 1: male as an int key; the file holds text, so compare as text.
        if isinstance(v, dict):
            return {str(k): (None if val is None else str(val)) for k, val in v.items()}
        return v

    @model_validator(mode="after")
    def _source(self) -> FieldSpec:
        sources = sum((self.constant is not None, self.is_set, self.record_field is not None))
        if sources > 1:
            raise ValueError("a field takes one source: 'constant', a position in the record, or 'record_field'")
        if sources == 0 and self.default is None:
            raise ValueError("a field needs 'column', 'start'/'length', 'record_field', 'constant' or 'default'")
        if self.record_field is not None and not re.fullmatch(r"(header|trailer)\.\w+", self.record_field):
            raise ValueError("'record_field' is 'header.<name>' or 'trailer.<name>'")
        if not self.required and not isinstance(self.column, str):
            raise ValueError("'required: false' is for named columns (a header-row name that may be absent)")
        return self

    @property
    def strftime(self) -> str | None:
        return to_strftime(self.date) if self.date else None


class FileSpec(_Strict):
    # Regular expression matched against the whole base name. Named groups ``year`` and ``month``
    # (or ``yyyymm``) give the reporting month when ``month_from`` is ``filename``.
    pattern: str
    month_from: Literal["filename", "header"] = "filename"
    month_header_field: str | None = None  # header field holding the month when month_from=header
    month_format: str = "YYYYMM"
    encoding: str = "utf-8"
    # A single-byte encoding (latin-1, cp1252...) declared for a file whose bytes are valid UTF-8
    # with non-ASCII characters is refused (encoding_mismatch): read as declared, every accented
    # name would be published as mojibake. true: read such a file as UTF-8 instead.
    detect_encoding: bool = False
    # The date rules ("birth date in the future") are judged against the file's own date, never
    # the day it is (re-)run: this header/trailer field ("header.<name>") when given, else the
    # last day of the reporting month.
    reference_date_field: str | None = None
    reference_date_format: str = "YYYYMMDD"

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {v!r}") from exc
        return v

    @field_validator("month_format", "reference_date_format")
    @classmethod
    def _month_fmt(cls, v: str) -> str:
        to_strftime(v)
        return v

    @model_validator(mode="after")
    def _month_source(self) -> FileSpec:
        groups = re.compile(self.pattern).groupindex
        if self.month_from == "filename" and not ({"year", "month"} <= set(groups) or "yyyymm" in groups):
            raise ValueError("month_from=filename needs named groups (?P<year>...) and (?P<month>...) or (?P<yyyymm>...) in 'pattern'")
        if self.month_from == "header" and not self.month_header_field:
            raise ValueError("month_from=header needs 'month_header_field'")
        return self

    def match(self, name: str) -> re.Match[str] | None:
        return re.fullmatch(self.pattern, name)


class FormatSpec(_Strict):
    kind: Literal["delimited", "fixed_width"]
    delimiter: str | None = None
    quote: str | None = '"'
    header_row: bool = False  # delimited: the first detail line holds column names
    record_length: int | None = Field(default=None, ge=1)  # fixed-width: expected detail line length
    # fixed-width: lines shorter than record_length are padded with spaces (trailing blanks are
    # often trimmed in transit); longer lines are always structural errors.
    pad_short_lines: bool = True
    # delimited with quote: a quoted field may hold line breaks (RFC 4180), so one record can
    # span physical lines; a quote still open after this many lines refuses the file (a stray
    # quote must not swallow the rest of it).
    max_record_lines: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _kind(self) -> FormatSpec:
        if self.kind == "delimited":
            if not self.delimiter or len(self.delimiter) != 1:
                raise ValueError("delimited layouts need a one-character 'delimiter'")
            if self.record_length is not None:
                raise ValueError("'record_length' is for fixed_width layouts")
        else:
            if self.record_length is None:
                raise ValueError("fixed_width layouts need 'record_length'")
            if self.delimiter is not None or self.header_row:
                raise ValueError("'delimiter'/'header_row' are for delimited layouts")
        if self.quote is not None and len(self.quote) != 1:
            raise ValueError("'quote' is one character or null")
        return self


class RecordTypeSpec(_Strict):
    code: str
    fields: dict[str, Position] = Field(default_factory=dict)  # header/trailer fields, by name


class RecordsSpec(_Strict):
    """Record types told apart by a record-type field (header, detail, trailer)."""

    type_field: Position
    detail: RecordTypeSpec
    header: RecordTypeSpec | None = None
    trailer: RecordTypeSpec | None = None


class HashTotalSpec(_Strict):
    # Sum of this canonical numeric field (or raw source column) over detail records must equal
    # the header/trailer field ``expected`` ("trailer.<name>" or "header.<name>").
    expected: str
    of: str  # canonical field name whose raw digits are summed
    scale: int = 0  # implied decimals in the expected value


class ControlCheck(_Strict):
    """One control total. ``count``: detail records read; ``hash``: the digits of field ``of``
    as written, summed (implied decimals, like ``hash_total``); ``sum``: the field's numeric
    values summed (signs and decimal points count). ``scale`` places the decimal point of the
    expected value for ``hash`` (and of a ``sum`` written without a point)."""

    kind: Literal["count", "hash", "sum"]
    expected: str  # "header.<field>" or "trailer.<field>"
    of: str | None = None  # canonical field (hash, sum)
    scale: int = Field(default=0, ge=0, le=18)

    @model_validator(mode="after")
    def _of(self) -> ControlCheck:
        if self.kind == "count" and self.of is not None:
            raise ValueError("a 'count' check takes no 'of'")
        if self.kind != "count" and self.of is None:
            raise ValueError(f"a '{self.kind}' check needs 'of' (the field to total)")
        return self


class ControlSpec(_Strict):
    record_count: str | None = None  # "trailer.<field>" or "header.<field>"
    hash_total: HashTotalSpec | None = None
    checks: list[ControlCheck] = Field(default_factory=list)  # any number of further checks

    def all_checks(self) -> list[ControlCheck]:
        """``record_count`` and ``hash_total`` (the short forms) first, then ``checks``."""
        out: list[ControlCheck] = []
        if self.record_count:
            out.append(ControlCheck(kind="count", expected=self.record_count))
        if self.hash_total:
            ht = self.hash_total
            out.append(ControlCheck(kind="hash", expected=ht.expected, of=ht.of, scale=ht.scale))
        return out + list(self.checks)


class IdentifierSystems(_Strict):
    """Payer-owned identifier system URIs. Mint them once and never change them."""

    member_id: str
    payer_id: str
    contract_id: str
    plan_id: str | None = None
    settlement_entity_id: str | None = None
    mrn: str | None = None
    medicaid_id: str | None = None
    subscriber_id: str | None = None


def parse_first_month(value: object) -> date:
    """A mapping's ``first_month``: ``2026-08`` (YAML text) or ``2026-08-01`` (a YAML date), the first of a month."""
    if isinstance(value, date):
        if value.day != 1:
            raise ValueError(f"first_month is a month: write {value:%Y-%m}, not {value.isoformat()}")
        return value
    m = re.fullmatch(r"(\d{4})-(\d{2})(?:-01)?", str(value).strip())
    if not m or not 1 <= int(m[2]) <= 12:
        raise ValueError(f"first_month is a month written YYYY-MM (e.g. 2026-08), got {value!r}")
    return date(int(m[1]), int(m[2]), 1)


def declared_first_month(path: str | Path) -> date | None:
    """The ``first_month`` a mapping file declares, read on its own: None when absent or unreadable.

    Dagster's partitions are built from this even while another key of the same file is broken
    (mapping_errors_sensor reports that), so a typo elsewhere never moves a source's months.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        raw = data.get("first_month") if isinstance(data, dict) else None
        return None if raw is None else parse_first_month(raw)
    except (OSError, ValueError, yaml.YAMLError):
        return None


class RecipientIdentifier(_Strict):
    system: str
    value: str


# The columns of a request file (docs/MAPPINGS.md "Request files"): request field -> column name.
REQUEST_COLUMNS = ("request_id", "operation", "contract_id", "member_id", "provider_npi", "attribution_start",
                   "attribution_end", "plan_id")
_REQUIRED_REQUEST_COLUMNS = ("request_id", "operation", "contract_id")
RequestOperation = Literal["member-add", "member-remove", "confirm"]
_DEFAULT_OPERATION_CODES: dict[str, RequestOperation] = {"add": "member-add", "remove": "member-remove", "confirm": "confirm"}


class RequestFileSpec(_Strict):
    """One provider's request file layout: how its file is named and cut, whose it is, what it may change.

    Requests arrive through the source's inbox next to the payer's files; each line goes through
    the same adjudication as the API's, recorded with ``provider`` as its client and channel
    ``file``; the answer goes to ``<outbox>/<provider>/``.
    """

    # Recorded as the requests' client id and names the outbox folder the response goes to.
    provider: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    # The contract ids whose lists this provider may change (the API's per-Group authorisation).
    contracts: list[str] = Field(min_length=1)
    # pattern with (?P<yyyymm>...) or (?P<year>...)(?P<month>...): the reporting month of the list the requests are about
    file: FileSpec
    format: FormatSpec
    columns: dict[str, str]
    # code in the operation column (compared case-insensitively) -> member-add | member-remove | confirm
    operations: dict[str, RequestOperation] = Field(default_factory=lambda: dict(_DEFAULT_OPERATION_CODES))
    date_format: str = "YYYY-MM-DD"

    @field_validator("date_format")
    @classmethod
    def _date_format(cls, v: str) -> str:
        to_strftime(v)
        return v

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(REQUEST_COLUMNS))
        if unknown:
            raise ValueError(f"unknown request field(s) {unknown}; known: {', '.join(REQUEST_COLUMNS)}")
        missing = [c for c in _REQUIRED_REQUEST_COLUMNS if c not in v]
        if missing:
            raise ValueError(f"required request field(s) not mapped: {missing}")
        if len(set(v.values())) != len(v):
            raise ValueError("two request fields name the same column")
        return v

    @field_validator("operations")
    @classmethod
    def _operations(cls, v: dict[str, RequestOperation]) -> dict[str, RequestOperation]:
        return {code.strip().lower(): op for code, op in v.items()}

    @model_validator(mode="after")
    def _layout(self) -> RequestFileSpec:
        if self.file.month_from != "filename":
            raise ValueError("file.month_from: a request file's month comes from its name")
        if self.format.kind != "delimited" or not self.format.header_row:
            raise ValueError("format: a request file is delimited with a header row (columns are named)")
        return self


class RequestsSpec(_Strict):
    # Providers' member-add / member-remove requests (docs/API.md): ``review`` queues them for
    # `atr requests accept|reject`; ``auto`` accepts every request that passes the list rules.
    adjudication: Literal["review", "auto"] = "review"
    # Request files from providers without API access (docs/API.md "Request files").
    files: list[RequestFileSpec] = Field(default_factory=list)

    def file_for(self, name: str) -> RequestFileSpec | None:
        return next((f for f in self.files if f.file.match(name)), None)



def month_in(m: re.Match[str] | None) -> date | None:
    """The month a file-name pattern's match names (``yyyymm``, or ``year`` + ``month``), else None."""
    if not m:
        return None
    g = m.groupdict()
    try:
        if g.get("yyyymm"):
            return date(int(g["yyyymm"][:4]), int(g["yyyymm"][4:6]), 1)
        if g.get("year") is None or g.get("month") is None:
            return None  # a name without a month (PAYER.ATTR.D<CCYYMMDD>.txt): the header says
        return date(int(g["year"]), int(g["month"]), 1)
    except (TypeError, ValueError):
        return None


class MappingSpec(_Strict):
    source_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]{0,62}$")]
    description: str = ""
    file: FileSpec
    format: FormatSpec
    records: RecordsSpec | None = None
    control: ControlSpec = Field(default_factory=ControlSpec)
    fields: dict[str, FieldSpec]
    identifier_systems: IdentifierSystems
    intended_recipient: RecipientIdentifier | None = None
    # The whole file is refused when its rejected rows are above this share AND above
    # ``reject_min_rows`` (or when no row at all is accepted); docs/BAD_INPUT.md says why.
    reject_threshold: float = Field(default=0.05, ge=0.0, le=1.0)
    reject_min_rows: int = Field(default=0, ge=0)
    requests: RequestsSpec = Field(default_factory=RequestsSpec)
    # The first reporting month this source delivers (its first Dagster partition; the month the
    # lateness check starts counting from). None: ATR_PARTITIONS_START, and lateness counts from
    # the first landed delivery.
    first_month: date | None = None

    @field_validator("first_month", mode="before")
    @classmethod
    def _first_month(cls, v: Any) -> date | None:
        return None if v is None else parse_first_month(v)

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, v: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        unknown = sorted(set(v) - set(MAPPABLE_FIELDS))
        if unknown:
            raise ValueError(f"unknown canonical field(s) {unknown}; known: {', '.join(MAPPABLE_FIELDS)}")
        for name, spec in v.items():
            if spec.date and name not in DATE_FIELDS:
                raise ValueError(f"{name}: 'date' given but {name} is not a date field")
            if name in DATE_FIELDS and spec.is_set and not spec.date:
                raise ValueError(f"{name}: date fields read from the file need a 'date' format")
        missing = [f for f in ("member_id", "payer_id", "contract_id") if f not in v]
        if missing:
            raise ValueError(f"required field(s) not mapped: {missing}")
        return v

    @model_validator(mode="after")
    def _positions_fit_format(self) -> MappingSpec:
        fixed = self.format.kind == "fixed_width"
        problems = []
        for name, spec in self.fields.items():
            if not spec.is_set:
                continue
            if fixed and not spec.is_fixed:
                problems.append(f"fields.{name}: fixed_width layouts use 'start'/'length', not 'column'")
            if not fixed and spec.is_fixed:
                problems.append(f"fields.{name}: delimited layouts use 'column', not 'start'/'length'")
            if not fixed and isinstance(spec.column, str) and not self.format.header_row:
                problems.append(f"fields.{name}: column names need format.header_row: true (use 1-based numbers otherwise)")
            if fixed and spec.start is not None and spec.length is not None and self.format.record_length:
                if spec.start + spec.length - 1 > self.format.record_length:
                    problems.append(f"fields.{name}: ends at {spec.start + spec.length - 1}, past record_length {self.format.record_length}")
        for name, spec in self.fields.items():
            if spec.record_field is not None and not self._control_ref_ok(spec.record_field):
                problems.append(f"fields.{name}.record_field: {spec.record_field!r} is not a defined header./trailer. field")
            if spec.implied_decimals is not None and FIELD_BY_NAME[name].dtype not in NUMERIC_DTYPES:
                problems.append(f"fields.{name}.implied_decimals: {name} is not a numeric field")
            if not spec.required and not self.format.header_row:
                problems.append(f"fields.{name}.required: absent columns need format.header_row: true")
        if problems:
            raise ValueError("; ".join(problems))
        if self.control.record_count and not self._control_ref_ok(self.control.record_count):
            raise ValueError(f"control.record_count: {self.control.record_count!r} is not a defined header./trailer. field")
        if self.control.hash_total:
            if not self._control_ref_ok(self.control.hash_total.expected):
                raise ValueError(f"control.hash_total.expected: {self.control.hash_total.expected!r} is not a defined header./trailer. field")
            if self.control.hash_total.of not in self.fields:
                raise ValueError(f"control.hash_total.of: {self.control.hash_total.of!r} is not a mapped field")
        for i, check in enumerate(self.control.checks):
            if not self._control_ref_ok(check.expected):
                raise ValueError(f"control.checks[{i}].expected: {check.expected!r} is not a defined header./trailer. field")
            if check.of is not None and not (check.of in self.fields and self.fields[check.of].is_set):
                raise ValueError(f"control.checks[{i}].of: {check.of!r} is not a field read from the detail records")
            if check.kind == "sum" and check.of is not None and FIELD_BY_NAME[check.of].dtype not in NUMERIC_DTYPES:
                raise ValueError(f"control.checks[{i}].of: a 'sum' needs a numeric field, {check.of} is not")
        ref = self.file.reference_date_field
        if ref is not None and not self._control_ref_ok(ref):
            raise ValueError(f"file.reference_date_field: {ref!r} is not a defined header./trailer. field")
        if self.file.month_from == "header":
            if not (self.records and self.records.header and self.file.month_header_field in self.records.header.fields):
                raise ValueError("file.month_header_field: must name a field of records.header")
        return self

    def _control_ref_ok(self, ref: str) -> bool:
        kind, _, name = ref.partition(".")
        rec = getattr(self.records, kind, None) if self.records and kind in ("header", "trailer") else None
        return rec is not None and name in rec.fields

    def request_layout(self, name: str) -> RequestFileSpec | None:
        """The provider request layout a file of this source is in; None for the payer's own files
        (a name the payer's ``file.pattern`` matches is the payer's). Landing and the ledger hold
        both kinds; lateness and supersession count the payer's only."""
        return None if self.file.match(name) else self.requests.file_for(name)

    def month_from_name(self, name: str) -> date | None:
        return month_in(self.file.match(name))


def _loc_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in ("function-after", "function-before") or str(p).startswith(("function-", "literal[", "tagged-union")):
            continue
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def parse_mapping(data: Any, source: str = "<mapping>") -> MappingSpec:
    if not isinstance(data, dict):
        raise MappingError(source, [("", "a mapping is a YAML object with keys source_id, file, format, fields, ...")])
    try:
        return MappingSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append((_loc_path(err["loc"]), msg))
        raise MappingError(source, problems) from None


def load_mapping(path: str | Path) -> MappingSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(str(path), [("", f"cannot read: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise MappingError(str(path), [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    spec = parse_mapping(data, str(path))
    if spec.source_id != path.stem:
        raise MappingError(str(path), [("source_id", f"must equal the file name stem {path.stem!r}, got {spec.source_id!r}")])
    return spec


def load_mappings(folder: str | Path) -> dict[str, MappingSpec]:
    """All mappings in a folder, by source id."""
    return {p.stem: load_mapping(p) for p in sorted(Path(folder).glob("*.yaml"))}


def field_doc(name: str) -> str:
    return FIELD_BY_NAME[name].description
