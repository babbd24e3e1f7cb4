"""The Subscription routes: create, read, search, update, delete and ``$status``, each for the client's own only.

Thin handlers like the rest of app.py (whose token and error helpers they use): parse with
subscriptions.py, authorise, store; the dispatcher (notify.py) does the handshake and the rest.
Reading, searching and ``$status`` need a token whose scopes cover Subscription and Group
(``system/*.read`` does); create, update and delete also need a write scope on Subscription
(``system/*.write``, ``system/Subscription.write`` or a v2 ``.cud``), as any write does. PUT is the
backport's update: ``status: off`` deactivates a Subscription the consumer no longer uses (ATR §6:
consumers SHALL deactivate them), ``requested`` turns it on again with a new handshake; either
way the versions published while it was off are not announced (the client reads the Group when it
resumes). Another client's Subscription answers 404, like an unknown id; a filter on a Group the
client is not party to answers 401 on create and on an update that changes it (ATR 2.1.0 §6:
"SHALL reject unauthorized create/update with 401"), the same answer for an unknown Group, so
neither reveals that a Group exists.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from atr_pipeline.api.app import _authorise, _ctx, _json
from atr_pipeline.api.capability import Registered
from atr_pipeline.api.clients import Client
from atr_pipeline.api.fhir_errors import FhirError, bad_request, forbidden, not_found
from atr_pipeline.api.subscriptions import (
    PROFILE,
    STATUS_OPERATION,
    TOPIC,
    Subscription,
    SubscriptionStore,
    not_yours,
    parse_subscription,
    status_parameters,
)

STATUSES = ("requested", "active", "error", "off")


def _store(request: Request) -> SubscriptionStore:
    return _ctx(request).notifier.store


async def _client(request: Request, write: bool = False) -> Client:
    client, grant = await _authorise(request, "Subscription")
    if not grant.allows("Group"):
        raise forbidden("the token's scopes do not cover Group, which every list-change Subscription is about")
    if write and not grant.allows_write("Subscription"):
        raise forbidden("creating, changing or deleting a Subscription needs a write scope "
                        "(system/*.write, system/Subscription.write or system/Subscription.cud)")
    return client


async def _own(request: Request, write: bool = False) -> tuple[Client, Subscription]:
    client = await _client(request, write)
    sub = await run_in_threadpool(_store(request).load, request.path_params["id"])
    if sub is None or sub.client_id != client.client_id:
        raise not_found("no such Subscription for this client (deleted, never created, or another client's)")
    return client, sub


async def _body(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise bad_request("the body is not JSON") from None


async def _versions_of_its_group(request: Request, client: Client, group_id: str) -> list[str]:
    """Every published version of ``group_id``, when the client may see it; 401 otherwise (ATR §6)."""
    view = await run_in_threadpool(_ctx(request).catalog.snapshot, True)  # fresh: what exists now is the baseline
    entries = view.groups.get(group_id, [])
    if not any(client.may_see(e.identifiers) for e in entries):
        raise FhirError(401, "forbidden", not_yours(group_id), headers={"WWW-Authenticate": 'Bearer realm="atr", error="insufficient_scope"'})
    return sorted({e.version_id for e in entries})


async def subscription_create(request: Request) -> Response:
    ctx = _ctx(request)
    client = await _client(request, write=True)
    body = await _body(request)
    fields = parse_subscription(body, ctx.config.allow_http_notifications)
    baseline = await _versions_of_its_group(request, client, fields["group_id"])
    sub = Subscription(id="", client_id=client.client_id, base=ctx.base(request), status="requested", resource=body,
                       baseline=baseline, **fields)
    sub = await run_in_threadpool(_store(request).create, sub)
    return _json(sub.body(), 201, {"Location": sub.url()})


async def subscription_update(request: Request) -> Response:
    ctx = _ctx(request)
    client, sub = await _own(request, write=True)
    body = await _body(request)
    if isinstance(body, dict) and body.get("id") not in (None, sub.id):
        raise bad_request(f"the body's id must be the id in the URL ({sub.id})")
    fields = parse_subscription(body, ctx.config.allow_http_notifications, update=True)
    known = await _versions_of_its_group(request, client, fields["group_id"])
    off = body["status"] == "off"

    def replace(s: Subscription) -> bool:
        was_off, same_group = s.status == "off", fields["group_id"] == s.group_id
        for name, value in fields.items():
            setattr(s, name, value)
        s.resource, s.base, s.error = body, ctx.base(request), None
        if not same_group:  # a new filter starts afresh, like a new Subscription
            s.baseline, s.notified, s.pending = known, [], []
        elif was_off:  # on again: what was published while it was off is not announced
            s.baseline = sorted(set(s.baseline) | set(known))
        if off:
            s.pending = []
        s.status, s.handshake_failed, s.overflowed = ("off" if off else "requested"), False, False
        return True

    updated = await run_in_threadpool(_store(request).update, sub.id, replace)
    ctx.notifier.restart(sub.id)
    if updated is None:
        raise not_found("no such Subscription for this client (deleted, never created, or another client's)")
    return _json(updated.body())


async def subscription_read(request: Request) -> Response:
    _, sub = await _own(request)
    return _json(sub.body())


async def subscription_delete(request: Request) -> Response:
    _, sub = await _own(request, write=True)
    await run_in_threadpool(_store(request).delete, sub.id)
    return Response(status_code=204)


async def subscription_search(request: Request) -> Response:
    client = await _client(request)
    wanted: set[str] = set()
    for name, value in request.query_params.multi_items():
        if name != "status":
            raise bad_request(f"unknown Subscription search parameter {name!r}; supported: status")
        unknown = [v for v in value.split(",") if v not in STATUSES]
        if unknown:
            raise bad_request(f"status {', '.join(unknown)}: expected one of {', '.join(STATUSES)}")
        wanted.update(value.split(","))
    subs = [s for s in await run_in_threadpool(_store(request).all)
            if s.client_id == client.client_id and (not wanted or s.status in wanted)]
    base = _ctx(request).base(request)
    return _json({"resourceType": "Bundle", "type": "searchset", "total": len(subs),
                  "link": [{"relation": "self", "url": _ctx(request).url(request)}],
                  "entry": [{"fullUrl": f"{base}/Subscription/{s.id}", "resource": s.body(), "search": {"mode": "match"}}
                            for s in subs]})


async def subscription_status(request: Request) -> Response:
    _, sub = await _own(request)
    status = status_parameters(sub, "query-status")
    return _json({"resourceType": "Bundle", "type": "searchset", "total": 1,
                  "entry": [{"fullUrl": f"urn:uuid:{status['id']}", "resource": status, "search": {"mode": "match"}}]})


def _registered(interaction: str | None = None, operation: tuple[str, str] | None = None,
                search_params: tuple[tuple[str, str], ...] = ()) -> list[Registered]:
    return [Registered("Subscription", interaction, operation, search_params, profile=PROFILE, topic=TOPIC)]


def subscription_routes() -> list[tuple[str, Any, list[str], list[Registered]]]:
    """The route table rows app.py registers (before its generic ``/{type}/{id}`` reads)."""
    return [
        ("/fhir/Subscription", subscription_create, ["POST"], _registered("create")),
        ("/fhir/Subscription", subscription_search, ["GET"], _registered("search-type", search_params=(("status", "token"),))),
        ("/fhir/Subscription/{id}/$status", subscription_status, ["GET"], _registered(operation=("status", STATUS_OPERATION))),
        ("/fhir/Subscription/{id}", subscription_read, ["GET"], _registered("read")),
        ("/fhir/Subscription/{id}", subscription_update, ["PUT"], _registered("update")),
        ("/fhir/Subscription/{id}", subscription_delete, ["DELETE"], _registered("delete")),
    ]
