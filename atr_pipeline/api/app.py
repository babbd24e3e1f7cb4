"""The ASGI application: thin handlers that parse, authorise and call catalog/reads/jobs.

Routes live under ``/fhir``. Each handler is registered with what it implements, and the
CapabilityStatement is built from that list. Every refusal is a ``FhirError`` turned into an
OperationOutcome in one place (``_fhir_error``); the token endpoint answers OAuth errors instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from atr_pipeline.api import member_ops, reads
from atr_pipeline.api.capability import (
    ATTRIBUTION_STATUS_OPERATION,
    CONFIRM_OPERATION,
    DATA_EXPORT_OPERATION,
    GROUP_EXPORT_OPERATION,
    MEMBER_ADD_OPERATION,
    MEMBER_REMOVE_OPERATION,
    Registered,
    capability_statement,
)
from atr_pipeline.api.catalog import RESOURCE_TYPES, Catalog, CatalogView, GroupEntry
from atr_pipeline.api.clients import Client, load_client
from atr_pipeline.api.fhir_errors import (
    FHIR_JSON,
    FhirError,
    bad_request,
    forbidden,
    not_found,
    not_supported,
    operation_outcome,
    unauthorized,
)
from atr_pipeline.api.jobs import (
    ACTIVE,
    DEFAULT_FILE_BYTES,
    DEFAULT_RETENTION,
    MAX_ACTIVE_PER_CLIENT,
    Job,
    JobStore,
    now_instant,
    parse_instant,
)
from atr_pipeline.api.notify import Notifier
from atr_pipeline.api.search import SEARCH_PARAMS, parse_group_query
from atr_pipeline.api.tokens import (
    ASSERTION_ALGORITHMS,
    ASSERTION_TYPE,
    Grant,
    JtiLedger,
    TokenRefused,
    check_access_token,
    grant_scopes,
    issue_access_token,
    supported_scopes,
    verify_assertion,
)
from atr_pipeline.history.store import ListRequest
from atr_pipeline.requests.adjudicate import (
    confirm,
    contract_of,
    contract_system,
    create_group,
    created_group,
    patient_id,
    source_for_contract,
    submit_member_change,
)
from atr_pipeline.requests.model import MEMBER_ADD, MEMBER_REMOVE, RequestRefused, Target
from atr_pipeline.systems import ATR_BASE, ATR_EXPORT_TYPE

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
EXPORT_TYPES = (ATR_EXPORT_TYPE, ATR_BASE)  # the IG's package id; Firely posts the canonical base
OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
EXPORT_PARAMS = ("exportType", "_type", "_since", "_until", "patient", "_outputFormat", "_typeFilter")
DEFAULT_SCOPE = "system/*.read"  # when a client asks for none (MedplumClient's assertion login sends none)
_SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
CLEANUP_SECONDS = 60.0


@dataclass
class ApiConfig:
    home: Path
    public_url: str | None = None  # the base URL clients see (behind a TLS proxy); else taken from the request
    retention: timedelta | None = None
    max_file_bytes: int | None = None
    workers: int = 2
    allow_http_notifications: bool = False  # rest-hook endpoints over plain http beyond loopback (--allow-http-notifications)


@dataclass
class _Ctx:
    config: ApiConfig
    catalog: Catalog
    ledger: JtiLedger
    jobs: JobStore
    notifier: Notifier
    registered: list[Registered] = field(default_factory=list)
    started: str = field(default_factory=now_instant)
    _settings: Any = None

    def base(self, request: Request) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        return f"{request.url.scheme}://{request.url.netloc}/fhir"

    def url(self, request: Request) -> str:
        """The request's URL as the client sent it (through the proxy when there is one)."""
        if not self.config.public_url:
            return str(request.url)
        query = f"?{request.url.query}" if request.url.query else ""
        return self.base(request) + request.url.path.removeprefix("/fhir") + query

    def client(self, client_id: str) -> Client | None:
        return load_client(self.config.home, client_id)

    @property
    def settings(self) -> Any:
        """The pipeline's settings (mappings, id key): request handling calls the pipeline's functions."""
        if self._settings is None:
            from atr_pipeline.config import load_settings

            self._settings = load_settings(self.config.home)
        return self._settings


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None, media: str = FHIR_JSON) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=media)


async def _fhir_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    return _json(operation_outcome(exc.code, exc.diagnostics), exc.status, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _json(operation_outcome("exception", f"internal error ({type(exc).__name__})"), 500)


def _ctx(request: Request) -> _Ctx:
    return request.app.state.ctx


async def _authorise(request: Request, resource_type: str) -> tuple[Client, Grant]:
    client, grant = await _bearer(request)
    if not grant.allows(resource_type):
        raise forbidden(f"the token's scopes do not cover {resource_type}")
    return client, grant


async def _authorise_write(request: Request) -> Client:
    client, grant = await _bearer(request)
    if not grant.allows_write("Group"):
        raise forbidden("the token's scopes do not allow changes to Group (system/*.write or system/Group.cud)")
    return client


async def _bearer(request: Request) -> tuple[Client, Grant]:
    """The client behind a valid token, whatever its scopes (the caller checks them)."""
    ctx = _ctx(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("an access token is required (Authorization: Bearer ...); get one at the token endpoint")
    grant = await run_in_threadpool(check_access_token, ctx.config.home, token.strip())
    client = ctx.client(grant.client_id) if grant else None
    if grant is None or client is None:
        raise unauthorized("the access token is invalid or expired")
    return client, grant


async def _view(request: Request) -> CatalogView:
    return await run_in_threadpool(_ctx(request).catalog.snapshot)


# ---------------------------------------------------------------------- bundles and bodies


def _summary(entry: GroupEntry) -> bytes:
    head = dict(entry.head)
    meta = dict(head.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), _SUBSETTED]
    head["meta"] = meta
    return orjson.dumps(head)


def _group_body(entry: GroupEntry, summary: bool) -> Iterator[bytes]:
    return iter([_summary(entry)]) if summary else entry.read_chunks()


def _bundle(head: dict[str, Any], entries: Iterable[tuple[dict[str, Any], Iterator[bytes]]]) -> Iterator[bytes]:
    """Bundle JSON written piece by piece, so a huge Group is never one Python object."""
    yield orjson.dumps(head)[:-1] + b',"entry":['
    for n, (meta, resource) in enumerate(entries):
        prefix = orjson.dumps(meta)[:-1]
        yield (b"," if n else b"") + prefix + (b',"resource":' if meta else b'"resource":')
        yield from resource
        yield b"}"
    yield b"]}"


def _stream(chunks: Iterator[bytes], headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(iterate_in_threadpool(chunks), media_type=FHIR_JSON, headers=headers)


def _history_bundle(base: str, resource_type: str, resource_id: str,
                    versions: list[tuple[str, str, Iterator[bytes]]]) -> Iterator[bytes]:
    head = {"resourceType": "Bundle", "type": "history", "total": len(versions),
            "link": [{"relation": "self", "url": f"{base}/{resource_type}/{resource_id}/_history"}]}
    entries = (
        ({"fullUrl": f"{base}/{resource_type}/{resource_id}",
          "request": {"method": "PUT", "url": f"{resource_type}/{resource_id}"},
          "response": {"status": "200", "lastModified": updated, "etag": f'W/"{vid}"'}}, body)
        for vid, updated, body in reversed(versions)  # newest first, as FHIR history is
    )
    return _bundle(head, entries)


# ---------------------------------------------------------------------- handlers


async def metadata(request: Request) -> Response:
    ctx = _ctx(request)
    base = ctx.base(request)
    return _json(capability_statement(ctx.registered, base, f"{base}/auth/token", ctx.started))


async def smart_configuration(request: Request) -> Response:
    base = _ctx(request).base(request)
    return JSONResponse({
        "token_endpoint": f"{base}/auth/token",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": supported_scopes(list(RESOURCE_TYPES)),
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    })


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (the token request and POST _search send no files)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise bad_request("expected an application/x-www-form-urlencoded body")
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))


async def _form_items(request: Request) -> list[tuple[str, str]]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise bad_request("expected an application/x-www-form-urlencoded body")
    return parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)


async def token(request: Request) -> Response:
    ctx = _ctx(request)
    try:
        form = await _form(request)
    except FhirError:
        return JSONResponse({"error": "invalid_request", "error_description": "expected a form-encoded body"}, status_code=400)
    try:
        if form.get("grant_type") != "client_credentials":
            raise TokenRefused("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise TokenRefused("invalid_client", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = str(form.get("client_assertion") or "")
        token_url = f"{ctx.base(request)}/auth/token"
        client = await run_in_threadpool(verify_assertion, ctx.config.home, assertion, token_url, ctx.ledger)
        scopes = grant_scopes(str(form.get("scope") or DEFAULT_SCOPE), supported_scopes(list(RESOURCE_TYPES)))
    except TokenRefused as refused:
        status = 401 if refused.error == "invalid_client" else refused.status
        return JSONResponse({"error": refused.error, "error_description": refused.description}, status_code=status,
                            headers={"Cache-Control": "no-store"})
    body = issue_access_token(ctx.config.home, client, scopes)
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def group_search(request: Request) -> Response:
    client, _ = await _authorise(request, "Group")
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        params += await _form_items(request)
    query = parse_group_query(params)
    view = await _view(request)
    matches = [g for g in reads.client_groups(view, client) if query.matches(g)]
    page = matches[query.offset : query.offset + query.count]
    base = _ctx(request).base(request)
    kept = [(k, v) for k, v in params if k not in ("_offset",)]

    def link(relation: str, offset: int) -> dict[str, str]:
        return {"relation": relation, "url": f"{base}/Group?{urlencode([*kept, ('_offset', str(offset))])}"}

    links = [link("self", query.offset)]
    if query.offset + query.count < len(matches) and query.count:
        links.append(link("next", query.offset + query.count))
    if query.offset > 0:
        links.append(link("previous", max(0, query.offset - query.count)))
    head = {"resourceType": "Bundle", "type": "searchset", "total": len(matches), "link": links}
    entries = (({"fullUrl": f"{base}/Group/{g.id}", "search": {"mode": "match"}}, _group_body(g, query.summary)) for g in page)
    return _stream(_bundle(head, entries))


def _summary_flag(request: Request) -> bool:
    value = request.query_params.get("_summary")
    if value not in (None, "true", "false"):
        raise not_supported(f"_summary={value!r}: only true and false are supported")
    return value == "true"


async def group_read(request: Request) -> Response:
    client, _ = await _authorise(request, "Group")
    summary = _summary_flag(request)
    view = await _view(request)
    entry = reads.group_entries(view, client, request.path_params["id"])[-1]
    return _stream(_group_body(entry, summary), {"ETag": f'W/"{entry.version_id}"'})


async def group_vread(request: Request) -> Response:
    client, _ = await _authorise(request, "Group")
    summary = _summary_flag(request)
    view = await _view(request)
    group_id, vid = request.path_params["id"], request.path_params["vid"]
    found = [e for e in reads.group_versions(view, client, group_id) if e.version_id == vid]
    if not found:
        raise not_found(f"Group/{group_id} has no published version {vid!r}")
    return _stream(_group_body(found[0], summary), {"ETag": f'W/"{vid}"'})


async def group_history(request: Request) -> Response:
    client, _ = await _authorise(request, "Group")
    summary = _summary_flag(request)
    view = await _view(request)
    group_id = request.path_params["id"]
    versions = [(e.version_id, e.last_updated, _group_body(e, summary)) for e in reads.group_versions(view, client, group_id)]
    return _stream(_history_bundle(_ctx(request).base(request), "Group", group_id, versions))


def _member_type(request: Request) -> str:
    resource_type = request.path_params["type"]
    reads.check_type(resource_type)
    if resource_type == "Group":
        raise not_found("Group is served by its own routes")
    return resource_type


async def member_read(request: Request) -> Response:
    resource_type = _member_type(request)
    client, _ = await _authorise(request, resource_type)
    view = await _view(request)
    versions = await run_in_threadpool(reads.resource_versions, view, client, resource_type, request.path_params["id"])
    latest = versions[-1]
    return _json(latest.resource(), headers={"ETag": f'W/"{latest.version_id}"'})


async def member_vread(request: Request) -> Response:
    resource_type = _member_type(request)
    client, _ = await _authorise(request, resource_type)
    view = await _view(request)
    rid, vid = request.path_params["id"], request.path_params["vid"]
    versions = await run_in_threadpool(reads.resource_versions, view, client, resource_type, rid)
    found = [v for v in versions if v.version_id == vid]
    if not found:
        raise not_found(f"{resource_type}/{rid} has no version {vid!r}")
    return _json(found[0].resource(), headers={"ETag": f'W/"{vid}"'})


async def member_history(request: Request) -> Response:
    resource_type = _member_type(request)
    client, _ = await _authorise(request, resource_type)
    view = await _view(request)
    rid = request.path_params["id"]
    versions = await run_in_threadpool(reads.resource_versions, view, client, resource_type, rid)
    items = [(v.version_id, v.last_updated, iter([orjson.dumps(v.resource())])) for v in versions]
    return _stream(_history_bundle(_ctx(request).base(request), resource_type, rid, items))


# ---------------------------------------------------------------------- $davinci-data-export


def _parameters(body: Any) -> list[tuple[str, str]]:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("the POST body must be a FHIR Parameters resource")
    out: list[tuple[str, str]] = []
    for p in body.get("parameter", []):
        name = p.get("name")
        value = next((v for k, v in p.items() if k.startswith("value")), None)
        if isinstance(value, dict):
            value = value.get("reference")
        if not isinstance(name, str) or not isinstance(value, str):
            raise bad_request(f"parameter {name!r}: expected a primitive value or a valueReference")
        out.append((name, value))
    return out


def _instant(name: str, text: str) -> str:
    try:
        parse_instant(text)
    except ValueError:
        raise bad_request(f"{name}={text!r} is not a FHIR instant with a time zone") from None
    return text


async def _parse_export(request: Request) -> dict[str, Any]:
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        raw = await request.body()
        if raw.strip():
            try:
                params += _parameters(orjson.loads(raw))
            except orjson.JSONDecodeError:
                raise bad_request("the POST body is not JSON") from None
    found: dict[str, list[str]] = {}
    for name, value in params:
        if name == "_typeFilter":
            raise not_supported("_typeFilter is not supported by this server; filter the files after download")
        if name not in EXPORT_PARAMS:
            raise bad_request(f"unknown $davinci-data-export parameter {name!r}; supported: {', '.join(EXPORT_PARAMS[:-1])}")
        # _type and patient may repeat and hold comma lists; for the others the last one wins
        found.setdefault(name, []).extend([v for v in value.split(",") if v] if name in ("_type", "patient") else [value])
    export_type = (found.get("exportType") or [ATR_EXPORT_TYPE])[-1]
    if export_type not in EXPORT_TYPES:
        raise not_supported(f"exportType {export_type!r} is not supported; use {ATR_EXPORT_TYPE}")
    out_format = (found.get("_outputFormat") or [NDJSON])[-1]
    if out_format not in OUTPUT_FORMATS:
        raise not_supported(f"_outputFormat {out_format!r} is not supported; use {NDJSON}")
    types = list(dict.fromkeys(found.get("_type") or RESOURCE_TYPES))
    unknown = [t for t in types if t not in RESOURCE_TYPES]
    if unknown:
        raise bad_request(f"_type {', '.join(unknown)} cannot be exported; exportable: {', '.join(RESOURCE_TYPES)}")
    patients = found.get("patient", [])
    for ref in patients:
        if not ref.startswith("Patient/") or "/" in ref.removeprefix("Patient/"):
            raise bad_request(f"patient {ref!r}: expected a reference Patient/<id>")
    since = _instant("_since", found["_since"][-1]) if "_since" in found else None
    until = _instant("_until", found["_until"][-1]) if "_until" in found else None
    return {"types": types, "since": since, "until": until, "patients": patients}


async def data_export(request: Request) -> Response:
    ctx = _ctx(request)
    client, grant = await _authorise(request, "Group")
    group_id = request.path_params["id"]
    view = await _view(request)
    reads.group_entries(view, client, group_id)  # 404 before anything else for another's Group
    parsed = await _parse_export(request)
    denied = [t for t in parsed["types"] if not grant.allows(t)]
    if denied:
        raise forbidden(f"the token's scopes do not cover {', '.join(denied)}")
    if await run_in_threadpool(ctx.jobs.active_count, client.client_id) >= MAX_ACTIVE_PER_CLIENT:
        raise FhirError(429, "throttled", f"at most {MAX_ACTIVE_PER_CLIENT} exports may run at once per client; retry later",
                        headers={"Retry-After": "10"})
    job = Job(id="", client_id=client.client_id, group_id=group_id, request=ctx.url(request), **parsed)
    job = await run_in_threadpool(ctx.jobs.create, job)
    ctx.jobs.submit(job)
    status_url = f"{ctx.base(request)}/bulkstatus/{job.id}"
    return _json(operation_outcome("informational", "export accepted; poll the Content-Location URL", "information"),
                 202, {"Content-Location": status_url})


async def _own_job(request: Request) -> Job:
    client, _ = await _authorise(request, "Group")
    job = await run_in_threadpool(_ctx(request).jobs.load, request.path_params["job"])
    if job is None or job.client_id != client.client_id:
        raise not_found("no such export job for this client (expired, deleted, or another client's)")
    return job


async def export_status(request: Request) -> Response:
    ctx = _ctx(request)
    job = await _own_job(request)
    if job.status in ACTIVE:
        return Response(status_code=202, headers={"X-Progress": job.progress, "Retry-After": "1"})
    if job.status == "failed":
        return _json(operation_outcome("exception", job.failure or "export failed"), 500)
    expires = parse_instant(job.expires).strftime("%a, %d %b %Y %H:%M:%S GMT") if job.expires else None
    return _json(job.manifest(f"{ctx.base(request)}/bulkfiles"), headers={"Expires": expires} if expires else None,
                 media="application/json")


async def export_delete(request: Request) -> Response:
    job = await _own_job(request)
    await run_in_threadpool(_ctx(request).jobs.cancel, job.id)
    return _json(operation_outcome("informational", "export cancelled and its files deleted", "information"), 202)


async def export_file(request: Request) -> Response:
    job = await _own_job(request)
    name = request.path_params["file"]
    if job.status != "completed" or name not in {e["file"] for e in [*job.output, *job.error]}:
        raise not_found(f"{name!r} is not a file of this export")
    return FileResponse(_ctx(request).jobs.folder(job.id) / name, media_type=NDJSON)


# ---------------------------------------------------------------------- reconciliation (ATR §4.2-4.6)


def _month_of(text: str) -> date:
    return date.fromisoformat(f"{text}-01")


async def _target(request: Request, client: Client) -> tuple[Target, GroupEntry | None]:
    """The list an operation on Group/[id] is about: its latest published month, or a Group a
    consumer created (scenario 2) that has no published member yet. 404 when not the client's."""
    ctx = _ctx(request)
    group_id = request.path_params["id"]
    view = await _view(request)
    if group_id in view.groups:
        entry = reads.group_entries(view, client, group_id)[-1]
        contract = await run_in_threadpool(contract_of, ctx.settings, entry.export.source, entry.identifiers)
        if contract is None:
            raise not_found(f"Group/{group_id} names no contract id of its source's mapping")
        return Target(entry.export.source, contract, _month_of(entry.month), group_id), entry
    created = await run_in_threadpool(created_group, ctx.settings, group_id)
    if created is None:
        raise not_found(f"Group/{group_id} is not known, or not a Group this client is party to")
    system = await run_in_threadpool(contract_system, ctx.settings, created.source_id)
    if not client.may_see(((system or "", created.contract_id),)):
        raise not_found(f"Group/{group_id} is not known, or not a Group this client is party to")
    return Target(created.source_id, created.contract_id, created.month, group_id), None


def _refused(refused: RequestRefused) -> FhirError:
    suffix = f" (request {refused.request_id})" if refused.request_id else ""
    return FhirError(refused.status, refused.code, refused.reason + suffix)


def _request_outcome(record: ListRequest, group_id: str) -> Response:
    if record.status == "accepted":
        return _json(operation_outcome("informational", f"request {record.request_id} accepted: Group/{group_id} "
                                       "has a new version", "information"), 200, {"X-Request-Id": record.request_id})
    return _json(operation_outcome("informational", f"request {record.request_id} is queued for the payer's review; "
                                   "the Group gets a new version if it is accepted", "information"),
                 202, {"X-Request-Id": record.request_id})


async def _member_operation(request: Request, operation: str, allowed: tuple[str, ...]) -> Response:
    ctx = _ctx(request)
    client = await _authorise_write(request)
    target, _ = await _target(request, client)
    raw = await request.body()
    params = member_ops.parameters(raw, allowed, operation)
    view = await _view(request)
    change = await run_in_threadpool(member_ops.member_change, view, target.source_id, operation, params)
    try:
        record = await run_in_threadpool(
            lambda: submit_member_change(ctx.settings, target, change, client_id=client.client_id,
                                         parameters=raw.decode("utf-8", "replace"),
                                         provenance=request.headers.get("x-provenance")))
    except RequestRefused as refused:
        raise _refused(refused) from None
    await run_in_threadpool(ctx.catalog.snapshot, True)  # the new version is served from the next request on
    return _request_outcome(record, target.group_id)


async def member_add(request: Request) -> Response:
    return await _member_operation(request, MEMBER_ADD, member_ops.ADD_PARAMS)


async def member_remove(request: Request) -> Response:
    return await _member_operation(request, MEMBER_REMOVE, member_ops.REMOVE_PARAMS)


async def confirm_list(request: Request) -> Response:
    ctx = _ctx(request)
    client = await _authorise_write(request)
    target, _ = await _target(request, client)
    raw = await request.body()
    member_ops.parameters(raw, (), "confirm-attribution-list")
    try:
        record = await run_in_threadpool(
            lambda: confirm(ctx.settings, target, client_id=client.client_id, parameters=raw.decode("utf-8", "replace") or "{}",
                            provenance=request.headers.get("x-provenance")))
    except RequestRefused as refused:
        raise _refused(refused) from None
    await run_in_threadpool(ctx.catalog.snapshot, True)
    return _json(operation_outcome("informational", f"request {record.request_id}: the attribution list of "
                                   f"{target.month:%Y-%m} is final", "information"), 201, {"X-Request-Id": record.request_id})


async def attribution_status(request: Request) -> Response:
    ctx = _ctx(request)
    client, _ = await _authorise(request, "Group")
    target, entry = await _target(request, client)
    if request.method == "POST":
        params = member_ops.parameters(await request.body(), member_ops.STATUS_PARAMS, "attribution-status")
    else:
        params = {}
        for name, value in request.query_params.multi_items():
            if name not in member_ops.STATUS_PARAMS:
                raise bad_request(f"unknown $attribution-status parameter {name!r}")
            system, _, code = value.rpartition("|")
            params[name] = {"system": system, "value": code} if name == "memberId" else {"reference": value}
    if ("memberId" in params) == ("patientReference" in params):
        raise bad_request("$attribution-status needs exactly one of memberId or patientReference")
    if entry is None:
        raise not_found("the Group has no published member yet")
    if "memberId" in params:
        _, member_id = member_ops._identifier("memberId", params["memberId"])
        patient = await run_in_threadpool(patient_id, ctx.settings, target.source_id, target.month, member_id)
        if patient is None:
            raise not_found("that member is not a member of this Group")
    else:
        _, patient = member_ops._reference("patientReference", params["patientReference"], ("Patient",))
    view = await _view(request)
    bundle = await run_in_threadpool(member_ops.status_bundle, view, entry, patient, ctx.base(request))
    return _json(bundle)


async def group_create(request: Request) -> Response:
    """Scenario 2 (ATR §4.6): a consumer creates an empty Group; X-Provenance is kept with it."""
    ctx = _ctx(request)
    client = await _authorise_write(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise bad_request("the POST body is not JSON") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Group":
        raise bad_request("POST /Group takes a Group resource")
    if body.get("member"):
        raise bad_request("create the Group empty and add members with $member-add (ATR §4.6)")
    identifiers = [(i.get("system", ""), i.get("value", "")) for i in body.get("identifier", []) if isinstance(i, dict)]
    found = await run_in_threadpool(source_for_contract, ctx.settings, identifiers, sorted({m.source for m in (await _view(request)).months}))
    if found is None:
        raise FhirError(422, "business-rule", "the Group needs an identifier in a payer's contract id system")
    source, system, contract = found
    if not client.may_see(((system, contract),)):
        raise forbidden("this client is not registered for that contract identifier")
    try:
        record = await run_in_threadpool(
            lambda: create_group(ctx.settings, source, contract, body.get("name"), client_id=client.client_id,
                                 parameters=orjson.dumps(body).decode(), provenance=request.headers.get("x-provenance")))
    except RequestRefused as refused:
        raise _refused(refused) from None
    created = {"resourceType": "Group", "id": record.group_id, "meta": {"versionId": "0"},
               "identifier": [{"system": system, "value": contract}], "active": True, "type": "person", "actual": True,
               **({"name": body["name"]} if isinstance(body.get("name"), str) else {}), "quantity": 0}
    return _json(created, 201, {"Location": f"{ctx.base(request)}/Group/{record.group_id}", "X-Request-Id": record.request_id})


# ---------------------------------------------------------------------- wiring


Handler = Callable[[Request], Awaitable[Response]]


def _routes(registered: list[Registered]) -> list[Route]:
    from atr_pipeline.api.subscription_api import subscription_routes  # it uses this module's helpers

    group_params = tuple(SEARCH_PARAMS.items())
    table: list[tuple[str, Handler, list[str], list[Registered]]] = [
        ("/fhir/metadata", metadata, ["GET"], []),
        ("/fhir/.well-known/smart-configuration", smart_configuration, ["GET"], []),
        ("/fhir/auth/token", token, ["POST"], []),
        ("/fhir/Group", group_search, ["GET"], [Registered("Group", "search-type", search_params=group_params)]),
        ("/fhir/Group", group_create, ["POST"], [Registered("Group", "create")]),
        ("/fhir/Group/_search", group_search, ["POST"], []),
        ("/fhir/Group/{id}/$davinci-data-export", data_export, ["GET", "POST"],
         [Registered("Group", operation=("davinci-data-export", DATA_EXPORT_OPERATION))]),
        ("/fhir/Group/{id}/$member-add", member_add, ["POST"], [Registered("Group", operation=("member-add", MEMBER_ADD_OPERATION))]),
        ("/fhir/Group/{id}/$member-remove", member_remove, ["POST"],
         [Registered("Group", operation=("member-remove", MEMBER_REMOVE_OPERATION))]),
        ("/fhir/Group/{id}/$confirm-attribution-list", confirm_list, ["POST"],
         [Registered("Group", operation=("confirm-attribution-list", CONFIRM_OPERATION))]),
        ("/fhir/Group/{id}/$attribution-status", attribution_status, ["GET", "POST"],
         [Registered("Group", operation=("attribution-status", ATTRIBUTION_STATUS_OPERATION))]),
        ("/fhir/Group/{id}/$export", data_export, ["GET", "POST"], [Registered("Group", operation=("export", GROUP_EXPORT_OPERATION))]),
        ("/fhir/Group/{id}/_history/{vid}", group_vread, ["GET"], [Registered("Group", "vread")]),
        ("/fhir/Group/{id}/_history", group_history, ["GET"], [Registered("Group", "history-instance")]),
        ("/fhir/Group/{id}", group_read, ["GET"], [Registered("Group", "read")]),
        ("/fhir/bulkstatus/{job}", export_status, ["GET"], []),
        ("/fhir/bulkstatus/{job}", export_delete, ["DELETE"], []),
        ("/fhir/bulkfiles/{job}/{file}", export_file, ["GET"], []),
        *subscription_routes(),
        ("/fhir/{type}/{id}/_history/{vid}", member_vread, ["GET"], [Registered(t, "vread") for t in RESOURCE_TYPES if t != "Group"]),
        ("/fhir/{type}/{id}/_history", member_history, ["GET"], [Registered(t, "history-instance") for t in RESOURCE_TYPES if t != "Group"]),
        ("/fhir/{type}/{id}", member_read, ["GET"], [Registered(t, "read") for t in RESOURCE_TYPES if t != "Group"]),
    ]
    routes = []
    for path, handler, methods, what in table:
        routes.append(Route(path, handler, methods=methods))
        registered.extend(what)
    return routes


def create_app(config: ApiConfig) -> Starlette:
    home = Path(config.home)
    exports_dir = home / "exports"
    catalog = Catalog(exports_dir)
    ctx = _Ctx(
        config=config,
        catalog=catalog,
        ledger=JtiLedger(home),
        jobs=JobStore(home, workers=config.workers, retention=config.retention or DEFAULT_RETENTION,
                      max_file_bytes=config.max_file_bytes or DEFAULT_FILE_BYTES),
        notifier=Notifier(home, catalog),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(ctx.jobs.cleanup)
        await run_in_threadpool(ctx.jobs.resume)

        async def cleanup_loop() -> None:
            while True:
                await asyncio.sleep(CLEANUP_SECONDS)
                await run_in_threadpool(ctx.jobs.cleanup)

        task = asyncio.create_task(cleanup_loop())
        notifications = asyncio.create_task(ctx.notifier.run())
        try:
            yield
        finally:
            task.cancel()
            notifications.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await notifications
            ctx.jobs.shutdown()

    app = Starlette(routes=_routes(ctx.registered), exception_handlers={FhirError: _fhir_error, Exception: _unexpected},
                    lifespan=lifespan)
    app.state.ctx = ctx
    return app
