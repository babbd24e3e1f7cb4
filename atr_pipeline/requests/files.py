"""Request files: providers without API access send member-add / member-remove / confirm requests
as a delimited file, and get a response file back.

In: one file from the source's inbox (local, or landed from SFTP by `atr sftp-pull`) whose name
matches a ``requests.files`` layout of the source's mapping (``RequestFileSpec``: provider,
contracts it may change, pattern with the list's month, columns, operation codes, date format).
Out: each line submitted through the same functions the API calls (``adjudicate``), recorded
with the layout's ``provider`` as client and channel ``file``; a response file in the same
delimiter, one line per request line (line number, the provider's request id, outcome
accepted | queued | rejected, reason, the payer's request id), written atomically and owner-only
to ``<outbox>/<provider>/<name>.response<suffix>`` (and, for a file that came over SFTP, uploaded
to ``ATR_SFTP_OUTBOX/<provider>/`` by `atr sftp-pull --run` and after each decision).
Refused whole (nothing submitted, the response says why and where): bytes that are not the
layout's encoding, no header row, a required column missing from it, a quote left open.
A bad line is never lost: it is answered ``rejected`` with the line and field that are wrong.

Sending the same file again is safe: a request's id is derived from the provider's own request
id, so a request already recorded is answered from history (its current outcome), never recorded
twice; the same id with different content is rejected. The check and the recording hold the
source's lock together, so two runs answering the same file at once record each request once.
"""

from __future__ import annotations

import csv
import io
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import orjson
import polars as pl

from atr_pipeline.config import Settings
from atr_pipeline.history.store import ListRequest
from atr_pipeline.layouts.spec import MappingSpec, RequestFileSpec, month_in, to_strftime
from atr_pipeline.private import write_private
from atr_pipeline.requests import adjudicate
from atr_pipeline.requests.model import CONFIRM, MEMBER_ADD, MEMBER_REMOVE, MemberChange, RequestRefused, Target

log = logging.getLogger(__name__)
CHANNEL = "file"
RESPONSE_COLUMNS = ("LINE", "PROVIDER_REQUEST_ID", "OUTCOME", "REASON", "REQUEST_ID")
_NAMESPACE = uuid.UUID("5b0f7d1e-3c1a-4d8e-9a53-7f1c2e6b9d40")  # request-file request ids (uuid5)
_QUEUED_REASON = "waiting for the payer's review"


class RequestFileRefused(Exception):
    """The whole file is refused; ``line`` is where the problem is (0: the file as a whole)."""

    def __init__(self, reason: str, line: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class Answer:
    line: int
    provider_request_id: str
    outcome: str  # accepted | queued | rejected
    reason: str = ""
    request_id: str = ""

    def row(self) -> list[str]:
        return [str(self.line) if self.line else "", self.provider_request_id, self.outcome, self.reason, self.request_id]


@dataclass
class FileAnswer:
    file_name: str
    provider: str
    response: Path
    answers: list[Answer] = field(default_factory=list)
    refused: str | None = None  # the whole file was refused (nothing submitted)

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(a.outcome for a in self.answers)


@dataclass(frozen=True)
class _Line:
    line: int
    provider_request_id: str
    operation: str
    contract_id: str
    member_id: str | None
    provider_npi: str | None
    plan_id: str | None
    start: date | None
    end: date | None

    def parameters(self) -> dict[str, str | None]:
        """What the request says (compared when the same provider request id comes again)."""
        return {"requestId": self.provider_request_id, "operation": self.operation, "contractId": self.contract_id,
                "memberId": self.member_id, "providerNpi": self.provider_npi, "planId": self.plan_id,
                "attributionStart": self.start.isoformat() if self.start else None,
                "attributionEnd": self.end.isoformat() if self.end else None}


# ---------------------------------------------------------------------- where files go


def response_name(name: str) -> str:
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.response.{suffix}" if dot and stem else f"{name}.response"


def response_path(settings: Settings, provider: str, name: str) -> Path:
    return settings.outbox_dir / provider / response_name(name)


def month_of(layout: RequestFileSpec, name: str) -> date | None:
    return month_in(layout.file.match(name))


def _request_id(source_id: str, provider: str, provider_request_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{source_id}\x1f{provider}\x1f{provider_request_id}"))


# ---------------------------------------------------------------------- reading


def _rows(raw: bytes, layout: RequestFileSpec) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank record, the header first; refuses a broken file."""
    try:
        text = raw.decode(layout.file.encoding)
    except UnicodeDecodeError as exc:
        raise RequestFileRefused(f"not {layout.file.encoding} text", raw[: exc.start].count(b"\n") + 1) from None
    text = text.removeprefix("\ufeff")
    fmt = layout.format
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt.delimiter or ",", quotechar=fmt.quote or '"',
                        quoting=csv.QUOTE_MINIMAL if fmt.quote else csv.QUOTE_NONE, strict=True)
    out: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                out.append((start, fields))
            start = reader.line_num + 1
    except csv.Error:
        raise RequestFileRefused("a record cannot be split (a quote left open or a stray quote)", start) from None
    if not out:
        raise RequestFileRefused("the file holds no header row")
    return out


def _date(value: str, fmt: str) -> date:
    return datetime.strptime(value, to_strftime(fmt)).date()


def _parse_line(line: int, values: dict[str, str], layout: RequestFileSpec, seen: dict[str, int]) -> _Line | Answer:
    """A request line, or its rejection naming the line's field (by the file's column name, no values)."""
    col = layout.columns
    get = {name: (values.get(column) or "").strip() for name, column in col.items()}
    rid = get["request_id"]

    def bad(name: str, why: str) -> Answer:
        return Answer(line, rid, "rejected", f"line {line}, field {col.get(name, name)}: {why}")

    if not rid:
        return bad("request_id", "empty; every request needs the provider's own request id")
    if rid in seen:
        return bad("request_id", f"the same id as line {seen[rid]} of this file")
    seen[rid] = line
    operation = layout.operations.get(get["operation"].lower())
    if operation is None:
        return bad("operation", f"not one of {', '.join(layout.operations)}")
    if not get["contract_id"]:
        return bad("contract_id", "empty")
    member, npi = get.get("member_id") or None, get.get("provider_npi") or None
    if operation in (MEMBER_ADD, MEMBER_REMOVE) and not member:
        return bad("member_id", f"empty; {operation} needs the member id")
    if operation == MEMBER_ADD and not npi:
        return bad("provider_npi", "empty; member-add needs the attributed provider's NPI")
    if operation == CONFIRM:
        named = [n for n in ("member_id", "provider_npi", "plan_id", "attribution_start", "attribution_end") if get.get(n)]
        if named:
            return bad(named[0], "a confirm line is about the whole list; leave the member columns empty")
    dates: dict[str, date | None] = {}
    for name in ("attribution_start", "attribution_end"):
        dates[name] = None
        if get.get(name):
            if operation != MEMBER_ADD:
                return bad(name, "an attribution period goes with member-add only")
            try:
                dates[name] = _date(get[name], layout.date_format)
            except ValueError:
                return bad(name, f"not a date in {layout.date_format}")
    start, end = dates["attribution_start"], dates["attribution_end"]
    if start and end and end < start:
        return bad("attribution_end", f"before {col['attribution_start']}")
    return _Line(line, rid, operation, get["contract_id"], member, npi, get.get("plan_id") or None, start, end)


def read_request_file(raw: bytes, layout: RequestFileSpec) -> list[_Line | Answer]:
    rows = _rows(raw, layout)
    header_line, header = rows[0]
    names = [h.strip() for h in header]
    missing = [c for c in layout.columns.values() if c not in names]
    if missing:
        raise RequestFileRefused(f"the header row has no column {', '.join(missing)}", header_line)
    out: list[_Line | Answer] = []
    seen: dict[str, int] = {}
    for line, fields in rows[1:]:
        if len(fields) != len(names):
            rid_col = names.index(layout.columns["request_id"])
            rid = fields[rid_col].strip() if rid_col < len(fields) else ""
            out.append(Answer(line, rid, "rejected", f"line {line}: {len(fields)} fields, the header has {len(names)}"))
            continue
        out.append(_parse_line(line, dict(zip(names, fields, strict=True)), layout, seen))
    return out


# ---------------------------------------------------------------------- answering


def _outcome(record: ListRequest, line: int, provider_request_id: str) -> Answer:
    reason = record.reason or (_QUEUED_REASON if record.status == "queued" else "")
    return Answer(line, provider_request_id, record.status, reason, record.request_id)


def _target(settings: Settings, spec: MappingSpec, month: date, contract_id: str) -> Target | str:
    """The list a line is about, or why there is none (not recorded: the API answers 404 alike)."""
    from atr_pipeline.fhir.ids import resource_id

    store = adjudicate._store(settings, spec.source_id)
    if month not in store.months(spec.source_id):
        return f"the payer has no list of {month:%Y-%m} (the month in the file name)"
    rows = store.snapshot(spec.source_id, month)
    payers = rows.get_column("payer_id").drop_nulls()
    if not payers.len():
        return f"source {spec.source_id} names no payer id"
    group_id = resource_id(settings.id_key, "Group", payers[0], contract_id)
    if not rows.filter(pl.col("contract_id") == contract_id).height and adjudicate.created_group_record(store, group_id) is None:
        return f"no list for contract {contract_id} in {month:%Y-%m}"
    return Target(spec.source_id, contract_id, month, group_id)


def _submit(settings: Settings, spec: MappingSpec, layout: RequestFileSpec, month: date, file_name: str, req: _Line,
            progress: adjudicate.Progress | None) -> Answer:
    # The "recorded before?" check and the recording are one step under the source's lock (the
    # one adjudicate takes to record; re-entrant): two runs answering the same file at once (an
    # `atr run` and an `atr sftp-pull --run`, or two of either) record each request once, and the
    # second answers from the first's record instead of colliding with it.
    with adjudicate._lock(settings, spec.source_id):
        return _submit_locked(settings, spec, layout, month, file_name, req, progress)


def _submit_locked(settings: Settings, spec: MappingSpec, layout: RequestFileSpec, month: date, file_name: str,
                   req: _Line, progress: adjudicate.Progress | None) -> Answer:
    store = adjudicate._store(settings, spec.source_id)
    rid = _request_id(spec.source_id, layout.provider, req.provider_request_id)
    said = req.parameters()
    earlier = store.get_request(rid)
    if earlier is not None:  # the file (or this request) was sent before: answer from history
        before = orjson.loads(earlier.parameters)
        if {k: before.get(k) for k in said} != said or earlier.month != month:
            return Answer(req.line, req.provider_request_id, "rejected",
                          f"line {req.line}, field {layout.columns['request_id']}: this id was used for a different "
                          "request before; send a new id")
        return _outcome(earlier, req.line, req.provider_request_id)
    if req.contract_id not in layout.contracts:
        return Answer(req.line, req.provider_request_id, "rejected",
                      f"line {req.line}: provider {layout.provider} may not change the list of contract {req.contract_id}")
    target = _target(settings, spec, month, req.contract_id)
    if isinstance(target, str):
        return Answer(req.line, req.provider_request_id, "rejected", f"line {req.line}: {target}")
    parameters = orjson.dumps({**said, "file": file_name, "line": req.line}).decode()
    try:
        if req.operation == CONFIRM:
            record = adjudicate.confirm(settings, target, client_id=layout.provider, parameters=parameters,
                                        channel=CHANNEL, request_id=rid, progress=progress)
        else:
            change = MemberChange(req.operation, member_id=req.member_id, provider_npi=req.provider_npi,
                                  plan_id=req.plan_id, period_start=req.start, period_end=req.end)
            record = adjudicate.submit_member_change(settings, target, change, client_id=layout.provider,
                                                     parameters=parameters, channel=CHANNEL, request_id=rid,
                                                     progress=progress)
    except RequestRefused as refused:
        return Answer(req.line, req.provider_request_id, "rejected", refused.reason, refused.request_id or "")
    return _outcome(record, req.line, req.provider_request_id)


def answer_file(path: Path, spec: MappingSpec, layout: RequestFileSpec, settings: Settings, *, name: str | None = None,
                progress: adjudicate.Progress | None = None) -> FileAnswer:
    """Submit every request of one request file and write its response to the provider's outbox.

    ``name``: the name the provider sent it under (a file landed from SFTP is stored under
    ``<sha256[:12]>_<name>``); the month and the response's name come from it. Default: the path's.
    """
    name = name or path.name
    out = FileAnswer(name, layout.provider, response_path(settings, layout.provider, name))
    month = month_of(layout, name)
    try:
        if month is None:
            raise RequestFileRefused("the file name gives no reporting month")
        lines = read_request_file(path.read_bytes(), layout)
    except RequestFileRefused as refused:
        where = f"line {refused.line}: " if refused.line else ""
        out.refused = f"{where}{refused.reason}"
        out.answers = [Answer(refused.line, "", "rejected", f"file refused, no request in it was taken: {out.refused}")]
    else:
        for item in lines:
            out.answers.append(item if isinstance(item, Answer)
                               else _submit(settings, spec, layout, month, name, item, progress))
    write_response(out.response, out.answers, layout)
    return out


# ---------------------------------------------------------------------- the response file


def _dialect(layout: RequestFileSpec) -> dict[str, object]:
    fmt = layout.format
    if fmt.quote:
        return {"delimiter": fmt.delimiter, "quotechar": fmt.quote, "lineterminator": "\n"}
    return {"delimiter": fmt.delimiter, "quoting": csv.QUOTE_NONE, "escapechar": "\\", "lineterminator": "\n"}


def write_response(path: Path, answers: list[Answer], layout: RequestFileSpec) -> None:
    """The response, atomically (a provider fetching it never sees half a file) and 0600 in a 0700 folder."""
    buf = io.StringIO()
    writer = csv.writer(buf, **_dialect(layout))  # type: ignore[arg-type]
    writer.writerow(RESPONSE_COLUMNS)
    writer.writerows(a.row() for a in answers)
    write_private(path, buf.getvalue().encode(layout.file.encoding, "replace"))


def read_response(path: Path, layout: RequestFileSpec) -> list[Answer]:
    reader = csv.reader(io.StringIO(path.read_text(encoding=layout.file.encoding), newline=""), **_dialect(layout))  # type: ignore[arg-type]
    rows = list(reader)[1:]
    return [Answer(int(r[0]) if r[0] else 0, r[1], r[2], r[3], r[4]) for r in rows if len(r) == len(RESPONSE_COLUMNS)]


def answer_decision(settings: Settings, record: ListRequest, spec: MappingSpec) -> Path | None:
    """After `atr requests accept|reject` on a request from a file: its line in that file's response
    is rewritten with the decision (the response is written again whole, atomically). When the
    provider has already taken the response away, a response with that one line is written."""
    said = orjson.loads(record.parameters)
    name, line = said.get("file"), said.get("line")
    layout = next((f for f in spec.requests.files if f.provider == record.client_id and name and f.file.match(name)), None)
    if layout is None or not isinstance(name, str):
        return None
    path = response_path(settings, layout.provider, name)
    answers = read_response(path, layout) if path.is_file() else []
    decided = _outcome(record, int(line or 0), str(said.get("requestId") or ""))
    if any(a.request_id == record.request_id for a in answers):
        answers = [decided if a.request_id == record.request_id else a for a in answers]
    else:
        answers.append(decided)
    write_response(path, answers, layout)
    _upload_if_landed(settings, spec, layout, name, path)
    return path


def _upload_if_landed(settings: Settings, spec: MappingSpec, layout: RequestFileSpec, name: str, response: Path) -> None:
    """A file that came over SFTP (landed: `atr sftp-pull`; the local inbox's are answered in place)
    gets its rewritten response uploaded to ATR_SFTP_OUTBOX/<provider>/ too. A failed upload does
    not undo the decision: it is recorded and in ATR_OUTBOX, and the warning says so."""
    from atr_pipeline.errors import AtrError
    from atr_pipeline.pipeline import return_response
    from atr_pipeline.sources.landing import LEDGER_NAME, Ledger

    if not (settings.landing_dir / LEDGER_NAME).is_file():
        return
    if Ledger.for_landing(settings.landing_dir).latest_by_name(spec.source_id, name) is None:
        return
    try:
        return_response(response, layout.provider)
    except (AtrError, OSError) as exc:
        log.warning("the response to %s is rewritten in %s but not uploaded to the SFTP "
                                            "outbox: %s", name, response.parent, exc)


def landing_spec(spec: MappingSpec, layout: RequestFileSpec) -> MappingSpec:
    """The source's mapping as landing sees a request file: its name pattern (and month) are the
    request layout's, so the file lands under ``landing/<source>/<month>/`` in the same ledger."""
    return spec.model_copy(update={"file": layout.file})


def is_request_file(name: str, mappings: dict[str, MappingSpec]) -> tuple[MappingSpec, RequestFileSpec] | None:
    for spec in mappings.values():
        layout = spec.requests.file_for(name)
        if layout is not None:
            return spec, layout
    return None

