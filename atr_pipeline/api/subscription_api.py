"""The Subscription routes: create, read, search, delete and ``$status``, each for the client's own only.

Thin handlers like the rest of app.py (whose token and error helpers they use): parse with
subscriptions.py, authorise, store; the dispatcher (notify.py) does the handshake and the rest.
Managing a Subscription needs a token whose scopes cover Subscription and Group (``system/*.read``
does): a Subscription is the client's own resource and tells it only the ids of a Group it may
already read. Another client's Subscription answers 404, like an unknown id; a filter on a Group
the client is not party to answers 401 (ATR 2.1.0 §6: "SHALL reject unauthorized create with
401"), the same answer for an unknown Group, so neither reveals that a Group exists.
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


async def _client(request: Request) -> Client:
    client, grant = await _authorise(request, "Subscription")
    if not grant.allows("Group"):
        raise forbidden("the token's scopes do not cover Group, which every list-change Subscription is about")
    return client


async def _own(request: Request) -> tuple[Client, Subscription]:
    client = await _client(request)
    sub = await run_in_threadpool(_store(request).load, request.path_params["id"])
    if sub is None or sub.client_id != client.client_id:
        raise not_found("no such Subscription for this client (deleted, never created, or another client's)")
    return client, sub


async def subscription_create(request: Request) -> Response:
    ctx = _ctx(request)
    client = await _client(request)
    try:
        body: Any = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise bad_request("the body is not JSON") from None
    fields = parse_subscription(body, ctx.config.allow_http_notifications)
    group_id = fields["group_id"]
    view = await run_in_threadpool(ctx.catalog.snapshot, True)  # fresh: what exists now is the baseline
    entries = view.groups.get(group_id, [])
    if not any(client.may_see(e.identifiers) for e in entries):
        raise FhirError(401, "forbidden", not_yours(group_id), headers={"WWW-Authenticate": 'Bearer realm="atr", error="insufficient_scope"'})
    sub = Subscription(id="", client_id=client.client_id, base=ctx.base(request), status="requested", resource=body,
                       baseline=sorted({e.version_id for e in entries}), **fields)
    sub = await run_in_threadpool(_store(request).create, sub)
    return _json(sub.body(), 201, {"Location": sub.url()})


async def subscription_read(request: Request) -> Response:
    _, sub = await _own(request)
    return _json(sub.body())


async def subscription_delete(request: Request) -> Response:
    _, sub = await _own(request)
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
        ("/fhir/Subscription/{id}", subscription_delete, ["DELETE"], _registered("delete")),
    ]
