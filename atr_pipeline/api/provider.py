"""The provider's side, for trying the API and for the README walkthrough: a key pair, a signed
assertion, and a pull of one's Group into a folder that `atr conform` checks.

Not part of serving. A real provider keeps its private key to itself and registers only the
public JWKS (``atr clients add --jwks-file jwks.json``). The token requests reuse publish/auth.py's
``SmartBackendAuth``, the same client the loader uses against other servers.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from atr_pipeline.errors import AtrError
from atr_pipeline.publish.auth import SmartBackendAuth, algorithm_for, load_private_key

PRIVATE_KEY_NAME = "private_key.pem"
JWKS_NAME = "jwks.json"


def key_id(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """A kid derived from the public key, so the assertion command needs nothing but the key file."""
    der = private_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def make_key_pair(out: Path, alg: str = "ES384") -> tuple[Path, Path, str]:
    """``out/private_key.pem`` (0600) and ``out/jwks.json`` (the public half, with kid and alg)."""
    if alg == "ES384":
        private: Any = ec.generate_private_key(ec.SECP384R1())
        public_jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg == "RS384":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        public_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        raise AtrError(f"--alg {alg!r}: use ES384 or RS384")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    kid = key_id(private)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_path = out / PRIVATE_KEY_NAME
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    jwks_path = out / JWKS_NAME
    jwks_path.write_bytes(orjson.dumps({"keys": [{**public_jwk, "kid": kid, "alg": alg, "use": "sig"}]}, option=orjson.OPT_INDENT_2))
    return key_path, jwks_path, kid


def _auth(base: str, client_id: str, key_file: Path) -> SmartBackendAuth:
    private = load_private_key(str(key_file))
    return SmartBackendAuth(f"{base.rstrip('/')}/auth/token", client_id, private, kid=key_id(private), scope="system/*.read")


def signed_assertion(token_url: str, client_id: str, key_file: Path) -> str:
    private = load_private_key(str(key_file))
    auth = SmartBackendAuth(token_url, client_id, private, kid=key_id(private))
    assert algorithm_for(private) in ("RS384", "ES384")
    return auth.client_assertion()


def pull(base: str, client_id: str, key_file: Path, identifier: str, out: Path, poll_seconds: float = 1.0) -> dict[str, int]:
    """Find the Group by identifier, run $davinci-data-export, download every file into ``out``
    with a manifest of relative URLs. Returns lines per type."""
    base = base.rstrip("/")
    with httpx.Client(auth=_auth(base, client_id, key_file), timeout=600, headers={"Accept": "application/fhir+json"}) as http:
        found = http.get(f"{base}/Group", params={"identifier": identifier, "_summary": "true"})
        found.raise_for_status()
        entries = found.json().get("entry", [])
        if len(entries) != 1:
            raise AtrError(f"{len(entries)} Groups match {identifier!r} for this client; expected exactly one")
        group_id = entries[0]["resource"]["id"]
        kick = http.get(f"{base}/Group/{group_id}/$davinci-data-export", params={"exportType": "hl7.fhir.us.davinci-atr"},
                        headers={"Prefer": "respond-async"})
        if kick.status_code != 202:
            raise AtrError(f"kick-off answered {kick.status_code}: {kick.text[:300]}")
        status_url = kick.headers["Content-Location"]
        while (status := http.get(status_url)).status_code == 202:
            time.sleep(float(status.headers.get("Retry-After", poll_seconds)))
        if status.status_code != 200:
            raise AtrError(f"export status answered {status.status_code}: {status.text[:300]}")
        manifest = status.json()
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        counts: dict[str, int] = {}
        local = {**manifest, "output": [], "error": []}
        for kind in ("output", "error"):
            for item in manifest[kind]:
                name = item["url"].rsplit("/", 1)[1]
                with http.stream("GET", item["url"]) as body, open(out / name, "wb") as fh:
                    body.raise_for_status()
                    fh.writelines(body.iter_bytes())
                local[kind].append({**item, "url": name})
                counts[item["type"]] = counts.get(item["type"], 0) + item["count"]
        (out / "manifest.json").write_bytes(orjson.dumps(local, option=orjson.OPT_INDENT_2))
    return counts
