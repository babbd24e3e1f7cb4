"""Record, check, adjudicate and apply providers' requests: the plain functions behind the API's
``$member-add`` / ``$member-remove`` / ``$confirm-attribution-list`` / ``POST Group`` and
`atr requests list|accept|reject`.

Every request is recorded (client, time, parameters as sent, X-Provenance, outcome). A request
that breaks a list rule is recorded ``rejected`` and raises ``RequestRefused``. Otherwise it is
``queued``; with the source's mapping saying ``requests: {adjudication: auto}`` it is accepted
at once. Accepting re-checks the rules (the list may have moved on while it waited), marks it
accepted and publishes the month again (``pipeline.publish_month``, as `atr publish` does), so
the Group gets a new version that the API serves.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime

import polars as pl

from atr_pipeline.canonical import CANONICAL_SCHEMA, FIELDS, Group
from atr_pipeline.config import Settings
from atr_pipeline.history.adjustments import ACTION_COLUMN, ADD, REMOVE
from atr_pipeline.history.store import HistoryStore, ListRequest
from atr_pipeline.requests.model import (
    CONFIRM,
    CREATE_GROUP,
    MEMBER_ADD,
    MEMBER_REMOVE,
    MemberChange,
    RequestRefused,
    Target,
)

Progress = Callable[[str], None]
_PROVIDER_FIELDS = [f.name for f in FIELDS if f.group is Group.PROVIDER]
_CONTRACT_FIELDS = [f.name for f in FIELDS if f.group is Group.CONTRACT]
ALLOWED_STATUSES = ("draft", "open")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _store(settings: Settings, source_id: str) -> HistoryStore:
    from atr_pipeline.pipeline import _store as pipeline_store

    return pipeline_store(settings, source_id)


def _stores(settings: Settings) -> list[HistoryStore]:
    """Every source's history store: requests looked up by id or by Group may be in any of them."""
    from atr_pipeline.history.stores import recorded_sources

    return [_store(settings, source_id) for source_id in recorded_sources(settings.home)]


def _holding(settings: Settings, request_id: str) -> tuple[HistoryStore, ListRequest] | None:
    """The store holding a request, and the request (history is one file per source)."""
    for store in _stores(settings):
        record = store.get_request(request_id)
        if record is not None:
            return store, record
    return None


def _spec(settings: Settings, source_id: str):
    from atr_pipeline.pipeline import _spec_for

    return _spec_for(source_id, settings, None)


def _lock(settings: Settings, source_id: str):
    from atr_pipeline.history.locking import source_lock

    return source_lock(settings.home, source_id)


def _new_record(target: Target, operation: str, *, client_id: str, parameters: str, provenance: str | None,
                channel: str, request_id: str | None = None) -> ListRequest:
    return ListRequest(request_id=request_id or str(uuid.uuid4()), source_id=target.source_id, contract_id=target.contract_id,
                       month=target.month, group_id=target.group_id, operation=operation, client_id=client_id,
                       received_at=_now(), parameters=parameters, provenance=provenance, status="queued", channel=channel)


def _refuse(store: HistoryStore, record: ListRequest, reason: str) -> RequestRefused:
    from dataclasses import replace

    store.record_request(replace(record, status="rejected", reason=reason, decided_at=_now(), decided_by="rules"))
    return RequestRefused(reason, record.request_id)


def _list_problem(store: HistoryStore, target: Target, operation: str) -> str | None:
    """Why no request may change this list now (None when one may)."""
    months = store.months(target.source_id)
    if not months:
        return f"source {target.source_id} has no list yet"
    if target.month != months[-1]:
        return (f"the list of {target.month:%Y-%m} was superseded by the payer's {months[-1]:%Y-%m} delivery; "
                "send the request again on the Group as it is now")
    status = store.list_status(target.source_id, target.contract_id, target.month)
    if status not in ALLOWED_STATUSES:
        return f"the list is {status}: {operation} is allowed only while it is draft or open"
    return None


def _latest_rows(store: HistoryStore, source_id: str, month: date, where: pl.Expr) -> pl.DataFrame:
    """Rows of the source matching ``where``: this month's snapshot first, then earlier months."""
    for m in reversed([m for m in store.months(source_id) if m <= month]):
        found = store.snapshot(source_id, m).filter(where)
        if found.height:
            return found
    return pl.DataFrame(schema=CANONICAL_SCHEMA)


def _contract_row(store: HistoryStore, target: Target, created: ListRequest | None) -> dict:
    rows = _latest_rows(store, target.source_id, target.month, pl.col("contract_id") == target.contract_id)
    if rows.height:
        return {k: rows.row(0, named=True)[k] for k in _CONTRACT_FIELDS}
    import orjson

    name = orjson.loads(created.parameters).get("name") if created else None
    return {**dict.fromkeys(_CONTRACT_FIELDS), "contract_id": target.contract_id, "contract_name": name}


def _current(store: HistoryStore, target: Target) -> pl.DataFrame:
    listed = store.member_list(target.source_id, target.month, target.contract_id)
    return listed.filter(~pl.col("inactive"))


def _add_rows(store: HistoryStore, target: Target, change: MemberChange, spec) -> pl.DataFrame:
    member_system = spec.identifier_systems.member_id
    if change.member_system and member_system and change.member_system != member_system:
        raise RequestRefused(f"memberId system {change.member_system!r} is not this payer's member id system ({member_system})")
    members = _latest_rows(store, target.source_id, target.month, pl.col("member_id") == change.member_id)
    if not members.height:
        raise RequestRefused("the member is not known to the payer (in no delivery of this source)")
    same_contract = members.filter(pl.col("contract_id") == target.contract_id)
    member = (same_contract if same_contract.height else members).row(0, named=True)
    providers = _latest_rows(store, target.source_id, target.month, pl.col("provider_npi") == change.provider_npi)
    if not providers.height:
        raise RequestRefused("the provider NPI is not known to the payer (in no delivery of this source)")
    provider = providers.row(0, named=True)
    row = dict(member)
    row.update({k: provider[k] for k in _PROVIDER_FIELDS})
    row.update(_contract_row(store, target, created_group_record(store, target.group_id)))
    row.update({
        "source_id": target.source_id, "reporting_month": target.month, "file_name": None, "file_sha256": None,
        "line_number": None, "attribution_start": change.period_start or target.month,
        "attribution_end": change.period_end, "change_reason": "provider request", "risk_score": None,
    })
    if change.plan_id is not None:
        row["plan_id"] = change.plan_id
    new = pl.DataFrame([row], schema=CANONICAL_SCHEMA)
    key = ["member_id", "payer_id", "contract_id", "plan_id", "provider_npi"]
    if _current(store, target).join(new.select(key), on=key, how="semi", nulls_equal=True).height:
        raise RequestRefused("the member is already attributed to that provider in this list")
    return new.with_columns(pl.lit(ADD).alias(ACTION_COLUMN))


def _remove_rows(store: HistoryStore, target: Target, change: MemberChange) -> pl.DataFrame:
    cond = pl.col("member_id") == change.member_id
    if change.provider_npi is not None:
        cond &= pl.col("provider_npi") == change.provider_npi
    if change.plan_id is not None:
        cond &= pl.col("plan_id") == change.plan_id
    found = _current(store, target).filter(cond)
    if not found.height:
        raise RequestRefused("no active entry of this list matches the request (not a member, or already removed)")
    return found.select(CANONICAL_SCHEMA.names()).with_columns(pl.lit(REMOVE).alias(ACTION_COLUMN))


def _resolve(store: HistoryStore, target: Target, change: MemberChange, spec) -> pl.DataFrame:
    if change.unresolved:
        raise RequestRefused(change.unresolved)
    if change.operation == MEMBER_ADD:
        return _add_rows(store, target, change, spec)
    return _remove_rows(store, target, change)


def submit_member_change(settings: Settings, target: Target, change: MemberChange, *, client_id: str, parameters: str,
                         provenance: str | None = None, channel: str = "api", request_id: str | None = None,
                         progress: Progress | None = None) -> ListRequest:
    """Record a member-add / member-remove; refuse it, queue it, or (auto mode) accept and publish it.

    ``request_id``: the caller's own (a request file derives it from the provider's id, so a file
    sent twice records each request once); a new one otherwise.
    """
    if change.operation not in (MEMBER_ADD, MEMBER_REMOVE):
        raise ValueError(change.operation)
    spec = _spec(settings, target.source_id)
    store = _store(settings, target.source_id)
    with _lock(settings, target.source_id):
        record = _new_record(target, change.operation, client_id=client_id, parameters=parameters,
                             provenance=provenance, channel=channel, request_id=request_id)
        problem = _list_problem(store, target, change.operation)
        if problem:
            raise _refuse(store, record, problem)
        try:
            rows = _resolve(store, target, change, spec)
        except RequestRefused as refused:
            raise _refuse(store, record, refused.reason) from None
        store.record_request(record, rows)
        if spec.requests.adjudication == "auto":
            return _accept(settings, store, record.request_id, "auto", progress)
    return record


def _recheck(store: HistoryStore, record: ListRequest) -> str | None:
    target = Target(record.source_id, record.contract_id, record.month, record.group_id)
    problem = _list_problem(store, target, record.operation)
    if problem:
        return problem
    rows = store.request_rows(record.request_id)
    current = _current(store, target)
    key = ["member_id", "payer_id", "contract_id", "plan_id", "provider_npi"]
    hits = current.join(rows.select(key), on=key, how="semi", nulls_equal=True).height
    if record.operation == MEMBER_ADD and hits:
        return "the member is already attributed to that provider in this list"
    if record.operation == MEMBER_REMOVE and not hits:
        return "no active entry of this list matches the request any more"
    return None


def _publish(settings: Settings, source_id: str, month: date, progress: Progress | None) -> None:
    from atr_pipeline.errors import AtrError
    from atr_pipeline.pipeline import publish_month

    published = publish_month(_spec(settings, source_id), month, settings, progress=progress or (lambda _: None))
    if published.export_dir is None:
        raise AtrError(f"{source_id} {month:%Y-%m}: the list with the request failed conformance "
                       f"{published.conformance_errors}; nothing published")


def _accept(settings: Settings, store: HistoryStore, request_id: str, decided_by: str, progress: Progress | None) -> ListRequest:
    record = store.get_request(request_id)
    if record is None:
        raise RequestRefused(f"no request {request_id!r} (see `atr requests list`)", status=404, code="not-found")
    if record.status != "queued":
        raise RequestRefused(f"request {request_id} is already {record.status}", request_id, status=409, code="conflict")
    problem = _recheck(store, record)
    if problem:
        store.decide_request(request_id, "rejected", reason=problem, decided_by=decided_by)
        raise RequestRefused(problem, request_id)
    decided = store.decide_request(request_id, "accepted", decided_by=decided_by)
    _publish(settings, record.source_id, record.month, progress)
    return decided


def accept(settings: Settings, request_id: str, *, decided_by: str = "cli", progress: Progress | None = None) -> ListRequest:
    """Accept a queued request and publish its month (`atr requests accept ID`)."""
    held = _holding(settings, request_id)
    if held is None:
        raise RequestRefused(f"no request {request_id!r} (see `atr requests list`)", status=404, code="not-found")
    store, record = held
    with _lock(settings, record.source_id):
        try:
            decided = _accept(settings, store, request_id, decided_by, progress)
        except RequestRefused:
            _answer_file(settings, store.get_request(request_id))  # a re-check that rejected it
            raise
    _answer_file(settings, decided)
    return decided


def reject(settings: Settings, request_id: str, reason: str, *, decided_by: str = "cli") -> ListRequest:
    """Reject a queued request with a reason the provider will see (`atr requests reject ID --reason`)."""
    if not reason.strip():
        raise RequestRefused("a rejection needs a reason the provider can act on", status=400, code="required")
    held = _holding(settings, request_id)
    if held is None:
        raise RequestRefused(f"no request {request_id!r} (see `atr requests list`)", status=404, code="not-found")
    store, record = held
    if record.status != "queued":
        raise RequestRefused(f"request {request_id} is already {record.status}", request_id, status=409, code="conflict")
    decided = store.decide_request(request_id, "rejected", reason=reason.strip(), decided_by=decided_by)
    _answer_file(settings, decided)
    return decided


def _answer_file(settings: Settings, record: ListRequest | None) -> None:
    """A decision on a request that came in a file updates that file's response in the provider's outbox."""
    if record is not None and record.channel == "file" and record.status != "queued":
        from atr_pipeline.requests.files import answer_decision

        answer_decision(settings, record, _spec(settings, record.source_id))


def confirm(settings: Settings, target: Target, *, client_id: str, parameters: str = "{}", provenance: str | None = None,
            channel: str = "api", request_id: str | None = None, progress: Progress | None = None) -> ListRequest:
    """``$confirm-attribution-list``: the list becomes final (as `atr finalize`) and is published again.

    Never queued: the consumer states it has no more changes. Requests still queued on the list
    are then refused when someone accepts them (the list is final).
    """
    store = _store(settings, target.source_id)
    with _lock(settings, target.source_id):
        record = _new_record(target, CONFIRM, client_id=client_id, parameters=parameters, provenance=provenance,
                             channel=channel, request_id=request_id)
        problem = _list_problem(store, target, CONFIRM)
        if problem:
            raise _refuse(store, record, problem)
        store.record_request(record)
        store.set_month_status(target.source_id, target.contract_id, target.month, "final")
        decided = store.decide_request(record.request_id, "accepted", decided_by="rules")
        _publish(settings, target.source_id, target.month, progress)
    return decided


def create_group(settings: Settings, source_id: str, contract_id: str, name: str | None, *, client_id: str,
                 parameters: str, provenance: str | None) -> ListRequest:
    """Scenario 2: a consumer creates an empty Group (a contract list) in the payer system.

    Recorded (with X-Provenance) against the source's latest month; members come by member-add,
    and the Group is published with its first accepted member.
    """
    from atr_pipeline.fhir.ids import resource_id

    store = _store(settings, source_id)
    months = store.months(source_id)
    if not months:
        raise RequestRefused(f"source {source_id} has no list yet; a Group is created on a recorded month")
    rows = store.snapshot(source_id, months[-1])
    if rows.filter(pl.col("contract_id") == contract_id).height:
        raise RequestRefused("a Group with that contract identifier exists already", status=409, code="duplicate")
    payer = rows.get_column("payer_id").drop_nulls()
    if not payer.len():
        raise RequestRefused(f"source {source_id} names no payer id")
    group_id = resource_id(settings.id_key, "Group", payer[0], contract_id)
    if created_group_record(store, group_id) is not None:
        raise RequestRefused("a Group with that contract identifier exists already", status=409, code="duplicate")
    record = _new_record(Target(source_id, contract_id, months[-1], group_id), CREATE_GROUP, client_id=client_id,
                         parameters=parameters, provenance=provenance, channel="api")
    store.record_request(record)
    return store.decide_request(record.request_id, "accepted", decided_by="rules")


def created_group_record(store: HistoryStore, group_id: str) -> ListRequest | None:
    found = [r for r in store.list_requests(group_id=group_id) if r.operation == CREATE_GROUP and r.status == "accepted"]
    return found[-1] if found else None


def created_group(settings: Settings, group_id: str) -> ListRequest | None:
    """The POST Group record behind a Group id (scenario 2), or None."""
    for store in _stores(settings):
        found = created_group_record(store, group_id)
        if found is not None:
            return found
    return None


def patient_id(settings: Settings, source_id: str, month: date, member_id: str) -> str | None:
    """The Patient id of a member id known to the source (for ``$attribution-status``)."""
    from atr_pipeline.fhir.ids import resource_id

    rows = _latest_rows(_store(settings, source_id), source_id, month, pl.col("member_id") == member_id)
    if not rows.height:
        return None
    return resource_id(settings.id_key, "Patient", rows.get_column("payer_id")[0], member_id)


def list_requests(settings: Settings, source_id: str | None = None, status: str | None = None) -> list[ListRequest]:
    if source_id is not None:
        return _store(settings, source_id).list_requests(source_id, status=status)
    found = [r for store in _stores(settings) for r in store.list_requests(status=status)]
    return sorted(found, key=lambda r: (r.received_at, r.request_id))


def contract_system(settings: Settings, source_id: str) -> str | None:
    """The contract id system of the source's mapping (a Group's contract identifier)."""
    return _spec(settings, source_id).identifier_systems.contract_id


def contract_of(settings: Settings, source_id: str, identifiers: tuple[tuple[str, str], ...]) -> str | None:
    """The contract id among a published Group's identifiers."""
    system = contract_system(settings, source_id)
    return next((value for s, value in identifiers if s == system), None)


def source_for_contract(settings: Settings, identifiers: list[tuple[str, str]],
                        sources: list[str]) -> tuple[str, str, str] | None:
    """(source, system, contract id) for the first identifier in a source's contract id system."""
    for source_id in sources:
        system = contract_system(settings, source_id)
        for s, value in identifiers:
            if system and s == system and value:
                return source_id, system, value
    return None
