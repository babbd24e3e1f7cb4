"""ATR list-change Subscriptions (R4 Subscriptions Backport 1.1.0): what a client may ask for, and their state.

In:  a client's ``Subscription`` (profile atr-list-change-subscription: criteria = the topic
     ``.../SubscriptionTopic/atr-list-change``, one ``backport-filter-criteria`` naming one of its
     Groups, channel ``rest-hook`` to an http(s) endpoint, payload ``application/fhir+json`` with
     ``backport-payload-content`` = ``id-only``).
Out: one JSON file per subscription, ``ATR_HOME/api/subscriptions/<id>.json`` (0600: the endpoint
     and its headers may carry the receiver's secret), holding the client's resource and the
     dispatcher's state: status, events counted since the start, the Group versions already turned
     into events (and the ones that existed at creation, which never are), the bounded queue of
     events not yet delivered.
Refuses: anything but that shape (400), a Group the client is not party to (401, the IG's answer,
     the same for an unknown Group so existence is not revealed), plain http to a non-loopback
     endpoint unless the server allows it. Notification bodies are built here too: id-only, so they
     name the Subscription, the topic and the Group version, never a member.
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from atr_pipeline.api.fhir_errors import bad_request
from atr_pipeline.api.jobs import now_instant, parse_instant
from atr_pipeline.api.state import api_home
from atr_pipeline.private import write_private
from atr_pipeline.systems import ATR_BASE

TOPIC = f"{ATR_BASE}/SubscriptionTopic/atr-list-change"
PROFILE = f"{ATR_BASE}/StructureDefinition/atr-list-change-subscription"
_BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"
BACKPORT_PROFILE = f"{_BACKPORT}/StructureDefinition/backport-subscription"
EXT_FILTER = f"{_BACKPORT}/StructureDefinition/backport-filter-criteria"
EXT_CONTENT = f"{_BACKPORT}/StructureDefinition/backport-payload-content"
EXT_HEARTBEAT = f"{_BACKPORT}/StructureDefinition/backport-heartbeat-period"
EXT_TIMEOUT = f"{_BACKPORT}/StructureDefinition/backport-timeout"
EXT_MAX_COUNT = f"{_BACKPORT}/StructureDefinition/backport-max-count"
EXT_TOPIC_CANONICAL = f"{_BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
STATUS_OPERATION = f"{_BACKPORT}/OperationDefinition/backport-subscription-status"
_NOTIFICATION_PROFILE = f"{_BACKPORT}/StructureDefinition/backport-subscription-notification-r4"
_STATUS_PROFILE = f"{_BACKPORT}/StructureDefinition/backport-subscription-status-r4"
PAYLOAD = "application/fhir+json"

# The queue of undelivered events per subscription; past it the oldest are dropped (see notify.py).
QUEUE_MAX = int(os.environ.get("ATR_API_NOTIFY_QUEUE") or 100)
DEFAULT_TIMEOUT = 10
MAX_TIMEOUT = 60
MIN_HEARTBEAT = 1
_ID = re.compile(r"^[0-9a-f]{32}$")
_GROUP_FILTER = re.compile(r"^Group(?:/|\?_id=)([A-Za-z0-9\-.]{1,64})$")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+:[\t -~]*$")  # an RFC 9110 field name, printable ASCII value
_NOT_YOURS = ("Group/{0} in the filter criteria is not a Group this client may see "
              "(a Subscription needs the client's authorisation for the Group)")


@dataclass
class Pending:
    """One event not yet delivered: its number, the Group version it announces, when it was noticed."""

    number: int
    version: str
    at: str


@dataclass
class Subscription:
    id: str
    client_id: str
    group_id: str
    base: str  # the FHIR base the client used, for the references in notifications
    endpoint: str
    headers: list[str]
    heartbeat: int | None
    timeout: int
    end: str | None
    status: str  # requested | active | error | off
    resource: dict[str, Any]  # what the client sent, as it sent it (minus status, id, meta)
    created: str = field(default_factory=now_instant)
    error: str | None = None
    handshake_failed: bool = False
    events: int = 0  # events generated since the start (handshakes and heartbeats excluded)
    dropped: int = 0
    overflowed: bool = False  # events were dropped since the last delivery: the error says so until one succeeds
    baseline: list[str] = field(default_factory=list)  # Group versions published before it existed: never notified
    notified: list[str] = field(default_factory=list)  # Group versions already turned into events
    pending: list[Pending] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        """The Subscription as the client reads it: what it sent, with the server's id, status and error."""
        out: dict[str, Any] = {"resourceType": "Subscription", "id": self.id,
                               "meta": {"lastUpdated": self.created, "profile": [PROFILE]}}
        out.update({k: v for k, v in self.resource.items() if k not in ("resourceType", "id", "meta", "status", "error")})
        out["status"] = self.status
        if self.error:
            out["error"] = self.error
        return out

    def url(self) -> str:
        return f"{self.base}/Subscription/{self.id}"


# ---------------------------------------------------------------------- what a client may ask for


def _extensions(holder: Any, url: str) -> list[dict[str, Any]]:
    found = holder.get("extension", []) if isinstance(holder, dict) else []
    return [e for e in found if isinstance(e, dict) and e.get("url") == url]


def _unsigned(channel: dict[str, Any], url: str, name: str) -> int | None:
    found = _extensions(channel, url)
    if not found:
        return None
    value = found[0].get("valueUnsignedInt")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad_request(f"Subscription.channel {name}: expected valueUnsignedInt")
    return value


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: Any, allow_http: bool = False) -> str:
    """An https endpoint, or http on loopback (anywhere with ``allow_http``); never credentials in the URL."""
    if not isinstance(url, str) or not url:
        raise bad_request("Subscription.channel.endpoint is required (the rest-hook URL)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request("Subscription.channel.endpoint must be an http(s) URL")
    if parts.username or parts.password:
        raise bad_request("Subscription.channel.endpoint must not carry credentials; use channel.header")
    if parts.scheme == "http" and not allow_http and not _loopback(parts.hostname):
        raise bad_request("Subscription.channel.endpoint must be https (plain http only on loopback, "
                          "unless the server runs with --allow-http-notifications)")
    return url


def parse_subscription(body: Any, allow_http: bool = False, update: bool = False) -> dict[str, Any]:
    """The fields of a valid ATR list-change Subscription; a 400 naming the first thing wrong otherwise.

    ``update``: the body replaces a stored Subscription (PUT), whose status may also be ``off``
    (the backport's way for a consumer to deactivate one it no longer uses).
    """
    if not isinstance(body, dict) or body.get("resourceType") != "Subscription":
        raise bad_request("the body must be a FHIR Subscription resource")
    if body.get("criteria") != TOPIC:
        raise bad_request(f"Subscription.criteria must be the topic {TOPIC}")
    filters = _extensions(body.get("_criteria"), EXT_FILTER)
    if len(filters) != 1 or not isinstance(filters[0].get("valueString"), str):
        raise bad_request(f"Subscription.criteria needs exactly one {EXT_FILTER} extension with valueString Group/[id]")
    match = _GROUP_FILTER.match(filters[0]["valueString"].strip())
    if not match:
        raise bad_request("filter criteria: expected Group/[id] (or Group?_id=[id]) naming one Group")
    if update and body.get("status") not in ("requested", "active", "off"):
        raise bad_request("an updated Subscription's status must be requested or active (handshake again) or off (deactivate)")
    if not update and body.get("status", "requested") not in ("requested", "active"):
        raise bad_request("a new Subscription's status must be requested (it becomes active after the handshake)")
    channel = body.get("channel")
    if not isinstance(channel, dict) or channel.get("type") != "rest-hook":
        raise bad_request("Subscription.channel.type must be rest-hook")
    if channel.get("payload") != PAYLOAD:
        raise bad_request(f"Subscription.channel.payload must be {PAYLOAD}")
    content = _extensions(channel.get("_payload"), EXT_CONTENT)
    if len(content) != 1 or content[0].get("valueCode") != "id-only":
        raise bad_request(f"Subscription.channel.payload needs the {EXT_CONTENT} extension with valueCode id-only "
                          "(the only content this server sends: notifications never carry member data)")
    headers = channel.get("header", [])
    if not isinstance(headers, list) or not all(isinstance(h, str) and _HEADER.match(h) for h in headers):
        raise bad_request("Subscription.channel.header: each entry must be 'Name: value' in printable ASCII")
    heartbeat = _unsigned(channel, EXT_HEARTBEAT, "heartbeatPeriod")
    if heartbeat is not None and heartbeat < MIN_HEARTBEAT:
        raise bad_request(f"heartbeatPeriod must be at least {MIN_HEARTBEAT} second(s)")
    timeout = _unsigned(channel, EXT_TIMEOUT, "timeout")
    end = body.get("end")
    if end is not None:
        try:
            parse_instant(end)
        except (TypeError, ValueError):
            raise bad_request("Subscription.end must be an instant with a time zone") from None
    return {
        "group_id": match.group(1),
        "endpoint": check_endpoint(channel.get("endpoint"), allow_http),
        "headers": list(headers),
        "heartbeat": heartbeat,
        "timeout": min(timeout or DEFAULT_TIMEOUT, MAX_TIMEOUT),
        "end": end,
    }


def not_yours(group_id: str) -> str:
    return _NOT_YOURS.format(group_id)


# ---------------------------------------------------------------------- notification bodies


def status_parameters(sub: Subscription, kind: str, events: list[Pending] | None = None) -> dict[str, Any]:
    """The backport's R4 SubscriptionStatus (a Parameters): handshake, heartbeat, event-notification, query-status."""
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": sub.url()}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": sub.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(sub.events)},
    ]
    for event in events or []:
        focus = f"{sub.base}/Group/{sub.group_id}/_history/{event.version}"
        params.append({"name": "notification-event", "part": [
            {"name": "event-number", "valueString": str(event.number)},
            {"name": "timestamp", "valueInstant": event.at},
            {"name": "focus", "valueReference": {"reference": focus}},
        ]})
    if sub.error:
        params.append({"name": "error", "valueCodeableConcept": {"text": sub.error}})
    return {"resourceType": "Parameters", "id": uuid.uuid4().hex, "meta": {"profile": [_STATUS_PROFILE]}, "parameter": params}


def notification_bundle(sub: Subscription, kind: str, events: list[Pending] | None = None) -> dict[str, Any]:
    """What is POSTed to the endpoint: a history Bundle whose only entry is the status (id-only content)."""
    status = status_parameters(sub, kind, events)
    return {
        "resourceType": "Bundle",
        "id": uuid.uuid4().hex,
        "meta": {"profile": [_NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": now_instant(),
        "entry": [{
            "fullUrl": f"urn:uuid:{status['id']}",
            "resource": status,
            "request": {"method": "GET", "url": f"{sub.url()}/$status"},
            "response": {"status": "200"},
        }],
    }


# ---------------------------------------------------------------------- the store


def _from_json(raw: bytes) -> Subscription:
    record = orjson.loads(raw)
    record["pending"] = [Pending(**p) for p in record.get("pending", [])]
    return Subscription(**record)


class SubscriptionStore:
    """The subscription files; every change is a read-modify-write under one lock, written atomically."""

    def __init__(self, home: Path):
        self.folder = api_home(home) / "subscriptions"
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, sub_id: str) -> Path | None:
        return self.folder / f"{sub_id}.json" if _ID.match(sub_id) else None  # never let an id become a path

    def _write(self, sub: Subscription) -> None:
        path = self._path(sub.id)
        assert path is not None
        write_private(path, orjson.dumps(asdict(sub)))

    def create(self, sub: Subscription) -> Subscription:
        with self._lock:
            sub.id = uuid.uuid4().hex
            self._write(sub)
        return sub

    def load(self, sub_id: str) -> Subscription | None:
        path = self._path(sub_id)
        if path is None:
            return None
        try:
            return _from_json(path.read_bytes())
        except FileNotFoundError:
            return None

    def all(self) -> list[Subscription]:
        found = (self.load(p.stem) for p in sorted(self.folder.glob("*.json")))
        return [s for s in found if s is not None]

    def delete(self, sub_id: str) -> None:
        path = self._path(sub_id)
        with self._lock:
            if path is not None:
                path.unlink(missing_ok=True)

    def update(self, sub_id: str, change: Callable[[Subscription], bool]) -> Subscription | None:
        """Apply ``change`` to the stored subscription and write it when it says it changed; None if deleted."""
        with self._lock:
            sub = self.load(sub_id)
            if sub is None:
                return None
            if change(sub):
                self._write(sub)
            return sub
