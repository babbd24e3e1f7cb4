"""Registered Backend Services clients: who may ask for a token, with which keys, for which Groups.

One JSON file per client under ``ATR_HOME/api/clients/<client_id>.json`` (0600): the client's
public JWKS (copied from ``--jwks-file``) or its JWKS URL, and the Group identifiers
(``system|value``: contract id, NPI, TIN ...) whose Groups it may see. A Group is the client's
when any of its identifiers equals one of these exactly (ATR: authorisation per Group instance).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from atr_pipeline.api.state import api_home
from atr_pipeline.errors import AtrError
from atr_pipeline.private import write_private

_CLIENT_ID_PREFIX = "atr-"
_JWKS_CACHE_SECONDS = 300.0
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")  # JWK members that only a private or symmetric key has


@dataclass(frozen=True)
class Client:
    client_id: str
    groups: tuple[tuple[str, str], ...]
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    created: str = ""

    def may_see(self, identifiers: tuple[tuple[str, str], ...]) -> bool:
        return any(ident in self.groups for ident in identifiers)


@dataclass
class _Cached:
    jwks: dict[str, Any]
    fetched: float = field(default_factory=time.monotonic)


_url_cache: dict[str, _Cached] = {}


def clients_dir(home: Path) -> Path:
    folder = api_home(home) / "clients"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def parse_group_identifier(text: str) -> tuple[str, str]:
    system, sep, value = text.partition("|")
    if not sep or not system or not value:
        raise AtrError(f"--group {text!r}: expected SYSTEM|VALUE, e.g. http://hl7.org/fhir/sid/us-npi|1234567893")
    return system, value


def check_jwks(jwks: Any, where: str) -> dict[str, Any]:
    """A public JWKS whose every key has a ``kid``; private or symmetric keys are refused."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise AtrError(f"{where}: not a JWKS (expected an object with a non-empty 'keys' array)")
    for index, key in enumerate(keys):
        if not isinstance(key, dict) or not key.get("kid"):
            raise AtrError(f"{where}: keys[{index}] has no 'kid'; the token endpoint matches assertions by kid")
        if key.get("kty") not in ("RSA", "EC"):
            raise AtrError(f"{where}: keys[{index}] kty {key.get('kty')!r}: only RSA and EC public keys are accepted")
        if any(m in key for m in _PRIVATE_MEMBERS):
            raise AtrError(f"{where}: keys[{index}] holds private key material; register the public JWKS only")
    return {"keys": keys}


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise AtrError(f"--jwks-url {url!r}: must be https (plain http only on loopback)")
    return url


def add_client(home: Path, groups: list[str], *, jwks_file: Path | None = None, jwks_url: str | None = None) -> Client:
    if (jwks_file is None) == (jwks_url is None):
        raise AtrError("give exactly one of --jwks-file or --jwks-url")
    if not groups:
        raise AtrError("give at least one --group SYSTEM|VALUE: a client sees only the Groups it is party to")
    parsed = tuple(dict.fromkeys(parse_group_identifier(g) for g in groups))
    jwks = None
    if jwks_file is not None:
        try:
            jwks = check_jwks(orjson.loads(Path(jwks_file).read_bytes()), str(jwks_file))
        except OSError as exc:
            raise AtrError(f"{jwks_file}: cannot read ({exc.strerror})") from None
        except orjson.JSONDecodeError:
            raise AtrError(f"{jwks_file}: not JSON") from None
    client = Client(
        client_id=_CLIENT_ID_PREFIX + secrets.token_hex(12),
        groups=parsed,
        jwks=jwks,
        jwks_url=_check_url(jwks_url) if jwks_url else None,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    record = {
        "client_id": client.client_id,
        "groups": [f"{s}|{v}" for s, v in client.groups],
        "jwks": client.jwks,
        "jwks_url": client.jwks_url,
        "created": client.created,
    }
    write_private(clients_dir(home) / f"{client.client_id}.json", orjson.dumps(record, option=orjson.OPT_INDENT_2))
    return client


def load_client(home: Path, client_id: str) -> Client | None:
    if not client_id.startswith(_CLIENT_ID_PREFIX) or not client_id[len(_CLIENT_ID_PREFIX):].isalnum():
        return None  # never let a client id become a path
    path = clients_dir(home) / f"{client_id}.json"
    try:
        record = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return Client(
        client_id=record["client_id"],
        groups=tuple(parse_group_identifier(g) for g in record["groups"]),
        jwks=record.get("jwks"),
        jwks_url=record.get("jwks_url"),
        created=record.get("created", ""),
    )


def list_clients(home: Path) -> list[Client]:
    found = (load_client(home, p.stem) for p in sorted(clients_dir(home).glob("atr-*.json")))
    return [c for c in found if c is not None]


def client_jwks(client: Client, *, refresh: bool = False) -> dict[str, Any]:
    """The client's JWKS: registered, or fetched from its URL (cached five minutes; refetched on an unknown kid)."""
    if client.jwks is not None:
        return client.jwks
    assert client.jwks_url is not None
    cached = _url_cache.get(client.jwks_url)
    if cached and not refresh and time.monotonic() - cached.fetched < _JWKS_CACHE_SECONDS:
        return cached.jwks
    try:
        response = httpx.get(client.jwks_url, timeout=10.0, follow_redirects=False)
        response.raise_for_status()
        jwks = check_jwks(response.json(), client.jwks_url)
    except (httpx.HTTPError, ValueError) as exc:
        raise AtrError(f"client {client.client_id}: JWKS URL could not be read ({type(exc).__name__})") from None
    _url_cache[client.jwks_url] = _Cached(jwks)
    return jwks
