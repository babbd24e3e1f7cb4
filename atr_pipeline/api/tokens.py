"""SMART Backend Services, server side: check a client's signed assertion, issue and check access tokens.

Assertion (``private_key_jwt``, SMART App Launch 2.x "Backend Services"): RS384 or ES384 only (so
``none`` and HS256 are refused before any key is looked at), a ``kid`` naming a key of the
client's JWKS, ``iss`` = ``sub`` = the client id, ``aud`` = this token endpoint, ``exp`` in the
future and at most five minutes ahead, a ``jti`` never seen before from that client. Signature
checks are PyJWT's; used ``jti`` values are kept in ``ATR_HOME/api/jti.sqlite`` until they expire.

Access tokens are the server's own HS256 JWTs (key in ``ATR_HOME/api/token_key``), five minutes
long, naming the client and the granted scopes, so they survive a restart and need no lookup.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from atr_pipeline.api.clients import Client, client_jwks, load_client
from atr_pipeline.api.state import api_home, signing_key
from atr_pipeline.errors import AtrError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = 300  # seconds: SMART says exp no more than five minutes ahead
ACCESS_TOKEN_LIFETIME = 300
CLOCK_SKEW = 30  # seconds of leeway on exp and iat for clients with a slightly fast or slow clock
_ACCESS_ALGORITHM = "HS256"  # the server's own tokens: one secret, never accepted from clients
_ISSUER = "atr-serve"


class TokenRefused(Exception):
    """An OAuth error answer (RFC 6749 5.2): ``error`` code and a description with no secret in it."""

    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class Grant:
    client_id: str
    scopes: tuple[str, ...]

    def allows(self, resource_type: str) -> bool:
        for scope in self.scopes:
            target, _, access = scope.removeprefix("system/").partition(".")
            if target in ("*", resource_type) and access in ("read", "rs", "r", "s", "*"):
                return True
        return False

    def allows_write(self, resource_type: str) -> bool:
        """SMART v1 ``.write`` / ``.*``, or a v2 scope granting create, update or delete (``.cud``, ``.c``...)."""
        for scope in self.scopes:
            target, _, access = scope.removeprefix("system/").partition(".")
            if target not in ("*", resource_type):
                continue
            if access in ("write", "*") or (access and set(access) <= set("cruds") and set(access) & set("cud")):
                return True
        return False


def supported_scopes(resource_types: list[str]) -> list[str]:
    scopes = ["system/*.read", "system/*.rs", "system/*.write", "system/*.cud"]
    for t in resource_types:
        scopes += [f"system/{t}.read", f"system/{t}.rs"]
    # Writes go to Groups (the reconciliation operations and scenario 2's POST Group) and to the
    # client's own list-change Subscriptions.
    scopes += ["system/Group.write", "system/Group.cud", "system/Subscription.write", "system/Subscription.cud"]
    return scopes


class JtiLedger:
    """Assertion ``jti`` values already used, per client, until their ``exp`` passes."""

    def __init__(self, home: Path):
        self.path = api_home(home) / "jti.sqlite"
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS used (client_id TEXT, jti TEXT, exp INTEGER, PRIMARY KEY (client_id, jti))")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10.0, isolation_level=None)

    def first_use(self, client_id: str, jti: str, exp: int) -> bool:
        """Record ``jti``; False when the client used it before (a replay)."""
        with self._lock, self._connect() as con:
            con.execute("DELETE FROM used WHERE exp < ?", [int(time.time()) - CLOCK_SKEW])
            try:
                con.execute("INSERT INTO used VALUES (?, ?, ?)", [client_id, jti, exp])
            except sqlite3.IntegrityError:
                return False
        return True


def _client_key(client: Client, kid: str, alg: str) -> Any:
    for refresh in (False, True):
        try:
            jwks = client_jwks(client, refresh=refresh)
        except AtrError as exc:
            raise TokenRefused("invalid_client", str(exc)) from None
        for entry in jwks["keys"]:
            if entry.get("kid") == kid and entry.get("alg", alg) == alg:
                try:
                    return jwt.PyJWK(entry, algorithm=alg).key
                except jwt.PyJWTError:
                    raise TokenRefused("invalid_client", f"key {kid!r} cannot verify {alg}") from None
        if client.jwks is not None:
            break  # a registered JWKS cannot change by refetching
    raise TokenRefused("invalid_client", f"no key with kid {kid!r} (for {alg}) in the client's JWKS")


def verify_assertion(home: Path, assertion: str, token_url: str, ledger: JtiLedger) -> Client:
    """The registered client whose valid assertion this is; TokenRefused otherwise."""
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenRefused("invalid_client", "client_assertion is not a JWT") from None
    alg = header.get("alg")
    if alg not in ASSERTION_ALGORITHMS:
        raise TokenRefused("invalid_client", f"assertion algorithm {alg!r} refused; use one of {', '.join(ASSERTION_ALGORITHMS)}")
    kid = header.get("kid")
    if not kid:
        raise TokenRefused("invalid_client", "assertion header has no kid")
    client_id = unverified.get("iss")
    client = load_client(home, client_id) if isinstance(client_id, str) else None
    if client is None:
        raise TokenRefused("invalid_client", "unknown client (iss)")
    key = _client_key(client, kid, alg)
    try:
        claims = jwt.decode(
            assertion,
            key=key,
            algorithms=[alg],
            audience=token_url,
            issuer=client.client_id,
            leeway=CLOCK_SKEW,
            options={"require": ["iss", "sub", "aud", "exp", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenRefused("invalid_client", "assertion expired (exp is in the past)") from None
    except jwt.InvalidAudienceError:
        raise TokenRefused("invalid_client", f"assertion aud must be this token endpoint, {token_url}") from None
    except jwt.PyJWTError as exc:
        raise TokenRefused("invalid_client", f"assertion refused ({type(exc).__name__})") from None
    if claims["sub"] != client.client_id:
        raise TokenRefused("invalid_client", "assertion sub must equal iss (the client id)")
    now = time.time()
    if claims["exp"] > now + MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
        raise TokenRefused("invalid_client", "assertion exp is more than five minutes ahead")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise TokenRefused("invalid_client", "assertion jti must be a non-empty string")
    if not ledger.first_use(client.client_id, claims["jti"], int(claims["exp"])):
        raise TokenRefused("invalid_client", "assertion jti was already used (replay)")
    return client


def grant_scopes(requested: str, supported: list[str]) -> tuple[str, ...]:
    granted = tuple(s for s in dict.fromkeys(requested.split()) if s in supported)
    if not granted:
        raise TokenRefused("invalid_scope", f"none of the requested scopes is offered; supported: {' '.join(supported[:2])} and per-type forms")
    return granted


def issue_access_token(home: Path, client: Client, scopes: tuple[str, ...]) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": _ISSUER, "sub": client.client_id, "scope": " ".join(scopes), "iat": now,
              "exp": now + ACCESS_TOKEN_LIFETIME, "jti": uuid.uuid4().hex}
    token = jwt.encode(claims, signing_key(home), algorithm=_ACCESS_ALGORITHM)
    return {"access_token": token, "token_type": "bearer", "expires_in": ACCESS_TOKEN_LIFETIME, "scope": claims["scope"]}


def check_access_token(home: Path, token: str) -> Grant | None:
    """The grant behind a bearer token of this server, or None (expired, forged, unknown client)."""
    try:
        claims = jwt.decode(token, signing_key(home), algorithms=[_ACCESS_ALGORITHM], issuer=_ISSUER,
                            options={"require": ["sub", "exp", "scope"]})
    except jwt.PyJWTError:
        return None
    if load_client(home, claims["sub"]) is None:
        return None  # a removed client's tokens stop working at once
    return Grant(client_id=claims["sub"], scopes=tuple(claims["scope"].split()))
