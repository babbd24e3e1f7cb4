"""A tiny SMART Backend Services token endpoint for tests (stdlib http.server on 127.0.0.1:0).

``POST /token`` verifies the client assertion (signature with the client's registered public key,
given as PEM or as a JWKS; ``iss`` = ``sub`` = client id; ``aud`` = this token URL; ``exp`` no more
than five minutes ahead; ``jti`` not seen before) and issues a random short-lived bearer token.
``GET /protected`` answers 200 for a live token and 401 otherwise, so clients can be exercised
end to end. ``revoke_all()`` makes every issued token invalid (to test the 401 -> refresh path).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
import orjson

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ["RS384", "ES384"]


@dataclass
class TokenServer:
    expires_in: int = 300
    clients: dict[str, Any] = field(default_factory=dict)  # client id -> PEM bytes/str or JWKS dict
    token_requests: int = 0
    refused: int = 0
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (server clock)
    seen_jti: set[str] = field(default_factory=set)
    last_error: str = ""
    clock: Callable[[], float] = time.time  # injectable so tests can move time without sleeping
    _httpd: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def protected_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/protected"

    def register(self, client_id: str, public_key: Any) -> None:
        self.clients[client_id] = public_key

    def revoke_all(self) -> None:
        with self._lock:
            self.tokens.clear()

    def _key_for(self, client_id: str, kid: str | None) -> Any:
        registered = self.clients[client_id]
        if isinstance(registered, dict) and "keys" in registered:
            for jwk in registered["keys"]:
                if kid is None or jwk.get("kid") == kid:
                    return jwt.PyJWK(jwk).key
            raise jwt.InvalidKeyError("no key with that kid")
        return registered

    def issue(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.token_requests += 1
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != ASSERTION_TYPE:
            return 400, {"error": "invalid_request"}
        assertion = form.get("client_assertion", "")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            header = jwt.get_unverified_header(assertion)
            client_id = unverified.get("iss")
            if client_id not in self.clients or unverified.get("sub") != client_id:
                raise jwt.InvalidIssuerError("unknown client or iss != sub")
            claims = jwt.decode(
                assertion,
                self._key_for(client_id, header.get("kid")),
                algorithms=ALGORITHMS,
                audience=self.token_url,
                # time claims are checked below against this server's (injectable) clock
                options={"require": ["exp", "iss", "sub", "aud", "jti"], "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
            now = self.clock()
            if claims["exp"] <= now:
                raise jwt.ExpiredSignatureError("assertion expired")
            if claims["exp"] - now > 300 + 5:
                raise jwt.InvalidTokenError("exp more than five minutes ahead")
            with self._lock:
                if claims["jti"] in self.seen_jti:
                    raise jwt.InvalidTokenError("jti replayed")
                self.seen_jti.add(claims["jti"])
        except (jwt.PyJWTError, KeyError, ValueError) as exc:
            with self._lock:
                self.refused += 1
                self.last_error = type(exc).__name__
            return 401, {"error": "invalid_client"}
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = self.clock() + self.expires_in
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in, "scope": form.get("scope", "")}

    def is_live(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        with self._lock:
            expiry = self.tokens.get(authorization[len("Bearer ") :])
        return expiry is not None and expiry > self.clock()

    def start(self) -> TokenServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                if self.path != "/token":
                    self._send(404, {"error": "not_found"})
                    return
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                self._send(*server.issue(form))

            def do_GET(self) -> None:
                if self.path != "/protected":
                    self._send(404, {"error": "not_found"})
                elif server.is_live(self.headers.get("Authorization")):
                    self._send(200, {"ok": True})
                else:
                    self._send(401, {"error": "invalid_token"})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
