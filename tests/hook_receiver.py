"""A real rest-hook receiver for the Subscription tests: an HTTP server on 127.0.0.1 that keeps what it is sent.

`Receiver()` listens on a free port; `url` is its endpoint. `failing = True` makes it answer 503
(and count the refused POSTs in `refused`), the way an endpoint that is down for maintenance does.
`wait(predicate)` blocks until the notifications received satisfy it (or fails the test, showing them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (the http.server hook name)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        receiver = self.server.receiver
        with receiver.lock:
            if receiver.failing:
                receiver.refused += 1
                status = 503
            else:
                receiver.received.append(Notification(orjson.loads(raw), raw, dict(self.headers.items())))
                status = 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    receiver: Receiver


class Notification:
    def __init__(self, bundle: dict[str, Any], raw: bytes, headers: dict[str, str]):
        self.bundle = bundle
        self.raw = raw
        self.headers = headers
        status = bundle["entry"][0]["resource"]
        self.status = status
        self.params = {p["name"]: p for p in status["parameter"]}

    @property
    def kind(self) -> str:
        return self.params["type"]["valueCode"]

    @property
    def events_since_start(self) -> str:
        return self.params["events-since-subscription-start"]["valueString"]

    def events(self) -> list[dict[str, Any]]:
        """Each notification-event as {part name: value}."""
        out = []
        for p in self.status["parameter"]:
            if p["name"] == "notification-event":
                out.append({part["name"]: next(v for k, v in part.items() if k.startswith("value")) for part in p["part"]})
        return out


class Receiver:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Notification] = []
        self.failing = False
        self.refused = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def of_kind(self, kind: str) -> list[Notification]:
        with self.lock:
            return [n for n in self.received if n.kind == kind]

    def event_numbers(self) -> list[str]:
        return [e["event-number"] for n in self.of_kind("event-notification") for e in n.events()]

    def wait(self, predicate: Callable[[Receiver], bool], what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                with self.lock:
                    seen = [(n.kind, n.events_since_start) for n in self.received]
                raise AssertionError(f"receiver never saw {what}; it got {len(seen)} notification(s), the last: {seen[-12:]}, "
                                     f"refused {self.refused}")
            time.sleep(0.05)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
