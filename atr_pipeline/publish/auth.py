"""Credentials for FHIR server requests: none, a static bearer token, or SMART Backend Services.

In:  environment variables (``ATR_FHIR_TOKEN``; or ``ATR_SMART_TOKEN_URL``, ``ATR_SMART_CLIENT_ID``,
     ``ATR_SMART_PRIVATE_KEY`` (PEM text or a path to a PEM file), ``ATR_SMART_KID``, ``ATR_SMART_SCOPE``).
Out: an ``httpx.Auth`` that adds ``Authorization: Bearer ...`` to each request.
Refused: missing variables for the chosen mode, keys that are neither RSA nor EC P-384, token
     responses without ``access_token``.

SMART Backend Services (SMART App Launch 2.x): the client signs a JWT assertion (RS384 or ES384,
``iss`` = ``sub`` = client id, ``aud`` = token URL, random ``jti``, ``exp`` at most 5 minutes ahead)
and trades it for an access token with ``grant_type=client_credentials``. The token is cached and
refreshed ``refresh_margin`` seconds before it expires, and once more if the server answers 401.
Tokens and keys never appear in logs, exceptions or reprs.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Literal

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from atr_pipeline.errors import AtrError

AuthKind = Literal["none", "bearer", "smart"]
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300  # SMART: exp no more than five minutes in the future
DEFAULT_SCOPE = "system/*.write"


class AuthError(AtrError):
    """Authentication could not be set up or the token endpoint refused us (no secrets inside)."""


class BearerAuth(httpx.Auth):
    """A static token, e.g. from ``ATR_FHIR_TOKEN``."""

    def __init__(self, token: str):
        if not token:
            raise AuthError("empty bearer token")
        self._token = token

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def load_private_key(pem_or_path: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """A PEM private key given inline or as a file path."""
    text = pem_or_path.strip()
    data = text.encode() if text.startswith("-----BEGIN") else Path(text).expanduser().read_bytes()
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise AuthError("ATR_SMART_PRIVATE_KEY is not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return key
    raise AuthError("SMART Backend Services needs an RSA (RS384) or EC P-384 (ES384) key")


def algorithm_for(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return "RS384" if isinstance(key, rsa.RSAPrivateKey) else "ES384"


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services client-credentials grant with a signed JWT assertion.

    Thread-safe: concurrent loader workers share one cached token and at most one of them asks the
    token endpoint at a time. ``clock`` is injectable so tests can move time without sleeping.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        *,
        kid: str | None = None,
        scope: str = DEFAULT_SCOPE,
        refresh_margin: float = 60.0,
        assertion_lifetime: int = MAX_ASSERTION_LIFETIME,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
        verify: bool = True,
    ):
        if not token_url or not client_id:
            raise AuthError("SMART auth needs a token URL and a client id")
        self.token_url = token_url
        self.client_id = client_id
        self._key = private_key
        self._alg = algorithm_for(private_key)
        self.kid = kid
        self.scope = scope
        self.refresh_margin = refresh_margin
        self.assertion_lifetime = min(assertion_lifetime, MAX_ASSERTION_LIFETIME)
        self._clock = clock
        self._timeout = timeout
        self._verify = verify
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.token_requests = 0  # how many times the token endpoint was called (for reports/tests)

    def __repr__(self) -> str:
        return f"SmartBackendAuth(token_url={self.token_url!r}, client_id=***, alg={self._alg})"

    def client_assertion(self) -> str:
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + self.assertion_lifetime,
        }
        headers = {"typ": "JWT"}
        if self.kid:
            headers["kid"] = self.kid
        return jwt.encode(claims, self._key, algorithm=self._alg, headers=headers)

    def _request_token(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        self.token_requests += 1
        try:
            response = httpx.post(self.token_url, data=form, timeout=self._timeout, verify=self._verify, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise AuthError(f"token endpoint unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            # The body may name the client or the reason; keep only the OAuth error code.
            code = _oauth_error_code(response)
            raise AuthError(f"token endpoint refused the client assertion: HTTP {response.status_code} {code}".rstrip())
        try:
            body = response.json()
            token = body["access_token"]
        except (ValueError, KeyError, TypeError):
            raise AuthError("token endpoint answered without an access_token") from None
        lifetime = float(body.get("expires_in", 300))
        self._token = str(token)
        self._expires_at = self._clock() + lifetime

    def token(self, *, force: bool = False) -> str:
        with self._lock:
            if force or self._token is None or self._clock() >= self._expires_at - self.refresh_margin:
                self._request_token()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            # Revoked or expired early (clock skew): one fresh token, one more try.
            self.invalidate(token)
            request.headers["Authorization"] = f"Bearer {self.token()}"
            yield request


def _oauth_error_code(response: httpx.Response) -> str:
    try:
        code = response.json().get("error", "")
    except ValueError:
        return ""
    return code if isinstance(code, str) and code.replace("_", "").isalpha() else ""


def auth_from_env(kind: AuthKind | Literal["auto"] = "auto", env: dict[str, str] | None = None, **smart_options) -> httpx.Auth | None:
    """The auth the environment configures. ``auto``: SMART if ATR_SMART_TOKEN_URL is set, else
    bearer if ATR_FHIR_TOKEN is set, else none."""
    env = dict(os.environ if env is None else env)
    get = lambda name: (env.get(name) or "").strip()  # noqa: E731
    if kind == "auto":
        kind = "smart" if get("ATR_SMART_TOKEN_URL") else "bearer" if get("ATR_FHIR_TOKEN") else "none"
    if kind == "none":
        return None
    if kind == "bearer":
        if not get("ATR_FHIR_TOKEN"):
            raise AuthError("auth 'bearer' needs ATR_FHIR_TOKEN")
        return BearerAuth(get("ATR_FHIR_TOKEN"))
    if kind == "smart":
        missing = [n for n in ("ATR_SMART_TOKEN_URL", "ATR_SMART_CLIENT_ID", "ATR_SMART_PRIVATE_KEY") if not get(n)]
        if missing:
            raise AuthError(f"auth 'smart' needs {', '.join(missing)}")
        return SmartBackendAuth(
            get("ATR_SMART_TOKEN_URL"),
            get("ATR_SMART_CLIENT_ID"),
            load_private_key(get("ATR_SMART_PRIVATE_KEY")),
            kid=get("ATR_SMART_KID") or None,
            scope=get("ATR_SMART_SCOPE") or DEFAULT_SCOPE,
            **smart_options,
        )
    raise AuthError(f"unknown auth kind {kind!r}; use none, bearer or smart")
