"""The notification dispatcher inside `atr serve`: every new published Group version -> its subscribers.

In:  the catalog (what publish/ wrote: a monthly delivery, an accepted provider request and a
     confirmation all end as a new published Group version) and the subscriptions (subscriptions.py).
Out: id-only notification Bundles POSTed to each subscriber's endpoint; the subscription files
     updated with what was turned into events and what is still to deliver.

Every ``TICK`` seconds the dispatcher compares, per subscription, the Group's published versions
with the ones it has already turned into events and the ones that existed when it was created;
each version left becomes an event (the next event number) in the subscription's queue, written
with the version recorded in one atomic file write. So a restart neither loses an event (versions
published while the server was down are found at start-up) nor makes one twice; delivery is
at-least-once (an event whose POST succeeded just before a crash is sent again, with the same
event number, and the receiver can tell).

Delivery: one POST per event, oldest first, one in flight per subscription. A failure (no 2xx,
timeout, refused connection) sets the status to ``error`` and retries with backoff (1 s, doubling,
at most 5 minutes); the next success sets it back to ``active``. The queue holds ``QUEUE_MAX``
events: past that the oldest are dropped, the status becomes ``error`` with a message saying so,
and the missing event numbers tell the client to re-read its Group. A new subscription is
``requested`` until a handshake gets a 2xx (3 tries), ``error`` for good otherwise (PUT it with
status ``requested`` to try again, or delete it). A heartbeat goes out when ``heartbeatPeriod`` passes without any notification.
Logs and stored errors hold status codes and exception type names only, never an endpoint's
answer or the request body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.concurrency import run_in_threadpool

from atr_pipeline.api.catalog import Catalog, CatalogView
from atr_pipeline.api.clients import load_client
from atr_pipeline.api.jobs import now_instant, parse_instant
from atr_pipeline.api.subscriptions import (
    PAYLOAD,
    QUEUE_MAX,
    Pending,
    Subscription,
    SubscriptionStore,
    notification_bundle,
)

log = logging.getLogger(__name__)

TICK = 0.5
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
HANDSHAKE_ATTEMPTS = 3


def backoff(attempts: int) -> float:
    return min(BACKOFF_FIRST * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version) if version.isdigit() else 0, version)


@dataclass
class _Runtime:
    """What only this process needs about a subscription: retry clock, heartbeat clock, the POST in flight."""

    attempts: int = 0
    next_attempt: float = 0.0
    last_sent: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None


def add_events(sub: Subscription, view: CatalogView, home: Path, queue_max: int) -> bool:
    """Turn the Group versions ``sub`` has not seen into queued events; True when ``sub`` changed."""
    if sub.status == "off" or sub.handshake_failed:
        return False
    if sub.end and parse_instant(sub.end) <= datetime.now(UTC):
        sub.status, sub.pending = "off", []
        return True
    client = load_client(home, sub.client_id)
    if client is None:  # a removed client's subscriptions stop with it
        sub.status, sub.error, sub.pending = "off", "the client is no longer registered", []
        return True
    changed = False
    seen = set(sub.baseline) | set(sub.notified)
    for entry in sorted(view.groups.get(sub.group_id, []), key=lambda e: _version_key(e.version_id)):
        if entry.version_id in seen:
            continue
        seen.add(entry.version_id)
        sub.notified.append(entry.version_id)
        changed = True
        if not client.may_see(entry.identifiers):
            continue  # this version is no longer the client's Group: nothing to tell it
        sub.events += 1
        sub.pending.append(Pending(sub.events, entry.version_id, now_instant()))
    if len(sub.pending) > queue_max:
        lost = len(sub.pending) - queue_max
        del sub.pending[:lost]
        sub.dropped += lost
        sub.overflowed = True
        sub.status = "error"
        sub.error = (f"{sub.dropped} event(s) dropped because the queue of undelivered notifications was full "
                     "(see the gaps in event-number): read the Group again")
    return changed


class Notifier:
    def __init__(self, home: Path, catalog: Catalog, queue_max: int = QUEUE_MAX):
        self.home = Path(home)
        self.catalog = catalog
        self.store = SubscriptionStore(home)
        self.queue_max = queue_max
        self._runtime: dict[str, _Runtime] = {}
        self._http: httpx.AsyncClient | None = None

    async def run(self) -> None:
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as http:
            self._http = http
            try:
                while True:
                    try:
                        await self.tick()
                    except Exception as exc:  # keep dispatching; say what kind of failure, never its text
                        log.warning("notification dispatcher: tick failed (%s)", type(exc).__name__)
                    await asyncio.sleep(TICK)
            finally:
                for rt in self._runtime.values():
                    if rt.task is not None:
                        rt.task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await rt.task

    def restart(self, sub_id: str) -> None:
        """Forget the retry count and clock of an updated subscription: its next handshake gets 3 tries again."""
        rt = self._runtime.get(sub_id)
        if rt is not None:
            rt.attempts, rt.next_attempt = 0, 0.0

    async def tick(self) -> None:
        view = await run_in_threadpool(self.catalog.snapshot)
        subs = await run_in_threadpool(self._record, view)
        now = time.monotonic()
        for sub in subs:
            rt = self._runtime.setdefault(sub.id, _Runtime())
            if (rt.task is not None and not rt.task.done()) or now < rt.next_attempt:
                continue
            job = self._next(sub, rt, now)
            if job is not None:
                rt.task = asyncio.create_task(job)
        for gone in set(self._runtime) - {s.id for s in subs}:
            del self._runtime[gone]

    def _record(self, view: CatalogView) -> list[Subscription]:
        out = []
        for sub in self.store.all():
            updated = self.store.update(sub.id, lambda s: add_events(s, view, self.home, self.queue_max))
            if updated is not None:
                out.append(updated)
        return out

    def _next(self, sub: Subscription, rt: _Runtime, now: float) -> Coroutine[Any, Any, None] | None:
        if sub.status == "off" or sub.handshake_failed:
            return None
        if sub.status == "requested":
            return self._handshake(sub, rt)
        if sub.pending:
            return self._deliver(sub, rt, sub.pending[0])
        if sub.heartbeat and now - rt.last_sent >= sub.heartbeat:
            return self._heartbeat(sub, rt)
        return None

    async def _post(self, sub: Subscription, kind: str, events: list[Pending] | None = None) -> str | None:
        """POST one notification; None when the endpoint answered 2xx, else what went wrong (no body, no URL)."""
        assert self._http is not None
        headers = {"Content-Type": PAYLOAD, "Accept": PAYLOAD}
        for line in sub.headers:
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        try:
            response = await self._http.post(sub.endpoint, content=orjson.dumps(notification_bundle(sub, kind, events)),
                                              headers=headers, timeout=sub.timeout)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"

    async def _change(self, sub_id: str, change: Callable[[Subscription], bool]) -> Subscription | None:
        return await run_in_threadpool(self.store.update, sub_id, change)

    async def _handshake(self, sub: Subscription, rt: _Runtime) -> None:
        problem = await self._post(sub, "handshake")
        rt.last_sent = time.monotonic()
        if problem is None:
            rt.attempts = 0
            await self._change(sub.id, _set(status="active", error=None))
            return
        rt.attempts += 1
        log.info("subscription %s: handshake failed (%s), attempt %d", sub.id, problem, rt.attempts)
        if rt.attempts >= HANDSHAKE_ATTEMPTS:
            await self._change(sub.id, _set(status="error", handshake_failed=True,
                                            error=f"handshake failed ({problem}); update it with status requested to try again"))
        else:
            rt.next_attempt = time.monotonic() + backoff(rt.attempts)

    async def _deliver(self, sub: Subscription, rt: _Runtime, event: Pending) -> None:
        problem = await self._post(sub, "event-notification", [event])
        rt.last_sent = time.monotonic()
        if problem is None:
            rt.attempts = 0

            def delivered(s: Subscription) -> bool:
                s.pending = [p for p in s.pending if p.number != event.number]
                if s.status == "error":
                    s.status, s.error, s.overflowed = "active", None, False
                return True

            await self._change(sub.id, delivered)
            return
        rt.attempts += 1
        rt.next_attempt = time.monotonic() + backoff(rt.attempts)
        log.info("subscription %s: event %d not delivered (%s), attempt %d", sub.id, event.number, problem, rt.attempts)
        await self._change(sub.id, _failing(problem))

    async def _heartbeat(self, sub: Subscription, rt: _Runtime) -> None:
        problem = await self._post(sub, "heartbeat")
        rt.last_sent = time.monotonic()
        if problem is None:
            if sub.status == "error":
                await self._change(sub.id, _set(status="active", error=None))
            return
        log.info("subscription %s: heartbeat not delivered (%s)", sub.id, problem)
        await self._change(sub.id, _failing(problem))


def _set(**values: Any) -> Callable[[Subscription], bool]:
    def change(sub: Subscription) -> bool:
        if sub.status == "off":
            return False
        for name, value in values.items():
            setattr(sub, name, value)
        return True

    return change


def _failing(problem: str) -> Callable[[Subscription], bool]:
    def change(sub: Subscription) -> bool:
        if sub.status not in ("active", "error"):
            return False
        if sub.overflowed:
            return False  # keep telling the client it lost events until a delivery succeeds
        sub.status, sub.error = "error", f"notifications are not being delivered ({problem}); retrying"
        return True

    return change
