"""Helpers for the `atr serve` tests: a published ATR_HOME, a live server subprocess, client keys.

- `publish(home, months)`: `atr run` on the acme fixtures for those months (the real pipeline).
- `live_server(home)`: `atr serve --port 0` as a subprocess on 127.0.0.1; yields its FHIR base URL.
- `ClientKey`: an RS384 or ES384 key pair with a kid, its public JWKS, and signed assertions.
- `register(home, key, *groups)`: `atr clients add` through the real entry point; returns client_id.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ROOT = Path(__file__).resolve().parents[1]
ATR = [sys.executable, "-m", "atr_pipeline.cli"]
ACME_CONTRACT_SYSTEM = "https://acme-health.example.org/fhir/sid/contract-id"
NPI = "http://hl7.org/fhir/sid/us-npi"


# Extra variables per home (e.g. ATR_MAPPINGS_DIR of a test's own mappings), for atr and atr serve alike.
HOME_ENV: dict[str, dict[str, str]] = {}


def env_for(home: Path) -> dict[str, str]:
    env = {**os.environ, "ATR_HOME": str(home), "ATR_ID_KEY": "test-key", "COLUMNS": "200", **HOME_ENV.get(str(home), {})}
    env.pop("ATR_INBOX", None)
    return env


def atr(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ATR, *args], cwd=ROOT, env=env_for(home), capture_output=True, text=True, timeout=timeout, check=False)


def publish(home: Path, *months: str, source: str = "acme_commercial") -> None:
    for month in months:
        res = atr(home, "run", "--mapping", f"mappings/{source}.yaml", "--inbox", f"fixtures/{source}", "--month", month)
        assert res.returncode == 0, res.stdout + res.stderr


@contextlib.contextmanager
def live_server(home: Path, *extra: str) -> Iterator[str]:
    proc = subprocess.Popen([*ATR, "serve", "--host", "127.0.0.1", "--port", "0", *extra], cwd=ROOT, env=env_for(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("serving "):
            proc.kill()
            raise RuntimeError(f"atr serve did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        base = line.split(" at ", 1)[1].split()[0]
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("atr serve did not answer /metadata")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class ClientKey:
    alg: str = "RS384"
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    client_id: str = ""

    def __post_init__(self) -> None:
        if self.alg == "RS384":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP384R1())
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk: dict[str, Any] = {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def assertion(self, token_url: str, *, lifetime: int = 240, jti: str | None = None, aud: str | None = None,
                  kid: str | None = None, alg: str | None = None, key: Any = None, iss: str | None = None) -> str:
        now = int(time.time())
        claims = {"iss": iss or self.client_id, "sub": self.client_id, "aud": aud or token_url,
                  "exp": now + lifetime, "iat": now, "jti": jti or uuid.uuid4().hex}
        return jwt.encode(claims, key if key is not None else self.private, algorithm=alg or self.alg,
                          headers={"kid": kid or self.kid})

    def token_form(self, token_url: str, scope: str | None = "system/*.read", **kw: Any) -> dict[str, str]:
        form = {"grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": self.assertion(token_url, **kw)}
        if scope:
            form["scope"] = scope
        return form

    def token(self, base: str, scope: str = "system/*.read") -> str:
        res = httpx.post(f"{base}/auth/token", data=self.token_form(f"{base}/auth/token", scope), timeout=120)
        assert res.status_code == 200, res.text
        return res.json()["access_token"]


def register(home: Path, key: ClientKey, *groups: str) -> str:
    jwks_file = home / f"jwks-{key.kid}.json"
    jwks_file.write_bytes(orjson.dumps(key.jwks()))
    args = ["clients", "add", "--jwks-file", str(jwks_file)]
    for g in groups:
        args += ["--group", g]
    res = atr(home, *args)
    assert res.returncode == 0, res.stderr
    key.client_id = res.stdout.strip()
    return key.client_id


def group_ids(home: Path, month: str, source: str = "acme_commercial") -> dict[str, str]:
    """contract id -> Group id in a published month (read straight from the export)."""
    out = {}
    for line in (home / "exports" / source / month / "Group.ndjson").read_bytes().splitlines():
        g = orjson.loads(line)
        contract = next(i["value"] for i in g["identifier"] if i["system"] == ACME_CONTRACT_SYSTEM)
        out[contract] = g["id"]
    return out
