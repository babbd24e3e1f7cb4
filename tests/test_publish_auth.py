"""Bearer and SMART Backend Services auth against a real (loopback) token endpoint."""

from __future__ import annotations

import json

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from token_server import TokenServer

from atr_pipeline.publish.auth import (
    AuthError,
    BearerAuth,
    SmartBackendAuth,
    auth_from_env,
    load_private_key,
)


def _pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def server():
    srv = TokenServer(expires_in=300).start()
    yield srv
    srv.stop()


class FakeClock:
    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_valid_rs384_assertion_gets_a_token_that_opens_the_protected_endpoint(server, rsa_key):
    server.register("loader-1", _public_pem(rsa_key))
    auth = SmartBackendAuth(server.token_url, "loader-1", rsa_key, kid="k1", scope="system/*.write")
    with httpx.Client(auth=auth) as client:
        response = client.get(server.protected_url)
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert server.token_requests == 1
    assert server.refused == 0


def test_assertion_claims_follow_smart_backend_services(rsa_key):
    auth = SmartBackendAuth("https://auth.example.org/token", "client-9", rsa_key, kid="kid-a")
    first = auth.client_assertion()
    second = auth.client_assertion()
    header = jwt.get_unverified_header(first)
    claims = jwt.decode(first, rsa_key.public_key(), algorithms=["RS384"], audience="https://auth.example.org/token")
    assert header["alg"] == "RS384"
    assert header["kid"] == "kid-a"
    assert claims["iss"] == claims["sub"] == "client-9"
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert claims["jti"] != jwt.decode(second, options={"verify_signature": False})["jti"]


def test_es384_with_jwks_registration(server):
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "ec-1", "alg": "ES384"})
    server.register("loader-ec", {"keys": [jwk]})
    auth = SmartBackendAuth(server.token_url, "loader-ec", key, kid="ec-1")
    assert jwt.get_unverified_header(auth.client_assertion())["alg"] == "ES384"
    with httpx.Client(auth=auth) as client:
        assert client.get(server.protected_url).status_code == 200
    assert server.token_requests == 1


def test_bad_signature_is_refused_with_401(server, rsa_key):
    server.register("loader-1", _public_pem(rsa_key))
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = SmartBackendAuth(server.token_url, "loader-1", impostor)
    with pytest.raises(AuthError, match="HTTP 401 invalid_client") as info:
        auth.token()
    assert server.refused == 1
    assert server.last_error == "InvalidSignatureError"
    assert "loader-1" not in str(info.value)


def test_wrong_audience_is_refused(server, rsa_key):
    server.register("loader-1", _public_pem(rsa_key))
    auth = SmartBackendAuth(server.token_url, "loader-1", rsa_key)
    auth.token_url = server.token_url.replace("/token", "/other")  # signs the wrong aud
    status, body = server.issue(
        {"grant_type": "client_credentials",
         "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
         "client_assertion": auth.client_assertion()}
    )
    assert (status, body) == (401, {"error": "invalid_client"})
    assert server.last_error == "InvalidAudienceError"


def test_token_is_cached_across_many_requests(server, rsa_key):
    server.register("loader-1", _public_pem(rsa_key))
    auth = SmartBackendAuth(server.token_url, "loader-1", rsa_key)
    with httpx.Client(auth=auth) as client:
        statuses = [client.get(server.protected_url).status_code for _ in range(25)]
    assert statuses == [200] * 25
    assert server.token_requests == 1
    assert auth.token_requests == 1


def test_token_is_refreshed_before_expiry(server, rsa_key):
    server.register("loader-1", _public_pem(rsa_key))
    clock = FakeClock(1_900_000_000.0)
    server.clock = clock  # client and token server share one moving clock
    auth = SmartBackendAuth(server.token_url, "loader-1", rsa_key, refresh_margin=60, clock=clock)
    first = auth.token()
    clock.now += 239  # 61 s left of 300: still cached
    assert auth.token() == first
    assert server.token_requests == 1
    clock.now += 2  # 59 s left: inside the refresh margin
    second = auth.token()
    assert second != first
    assert server.token_requests == 2
    clock.now += 60  # t=301: the first token has expired on the server, the refreshed one has not
    assert not server.is_live(f"Bearer {first}")
    assert server.is_live(f"Bearer {second}")


def test_server_side_revocation_triggers_one_refresh_and_retry(server, rsa_key):
    server.register("loader-1", _public_pem(rsa_key))
    auth = SmartBackendAuth(server.token_url, "loader-1", rsa_key)
    with httpx.Client(auth=auth) as client:
        assert client.get(server.protected_url).status_code == 200
        server.revoke_all()
        assert client.get(server.protected_url).status_code == 200
    assert server.token_requests == 2


def test_bearer_from_env_and_secrets_never_in_repr(server):
    server.tokens["static-token-123"] = 4_000_000_000.0
    auth = auth_from_env("auto", env={"ATR_FHIR_TOKEN": "static-token-123"})
    assert isinstance(auth, BearerAuth)
    assert "static-token-123" not in repr(auth)
    with httpx.Client(auth=auth) as client:
        assert client.get(server.protected_url).status_code == 200
    assert auth_from_env("auto", env={}) is None


def test_smart_from_env_with_key_file(server, rsa_key, tmp_path):
    server.register("loader-env", _public_pem(rsa_key))
    key_file = tmp_path / "client.pem"
    key_file.write_text(_pem(rsa_key))
    env = {
        "ATR_SMART_TOKEN_URL": server.token_url,
        "ATR_SMART_CLIENT_ID": "loader-env",
        "ATR_SMART_PRIVATE_KEY": str(key_file),
        "ATR_SMART_KID": "kid-env",
        "ATR_SMART_SCOPE": "system/Group.write",
        "ATR_FHIR_TOKEN": "ignored-when-smart-is-set",
    }
    auth = auth_from_env("auto", env=env)
    assert isinstance(auth, SmartBackendAuth)
    assert auth.scope == "system/Group.write"
    assert "loader-env" not in repr(auth)
    with httpx.Client(auth=auth) as client:
        assert client.get(server.protected_url).status_code == 200


def test_missing_or_bad_settings_are_named_without_values(rsa_key):
    with pytest.raises(AuthError, match="ATR_SMART_CLIENT_ID, ATR_SMART_PRIVATE_KEY"):
        auth_from_env("smart", env={"ATR_SMART_TOKEN_URL": "https://t.example.org/token"})
    with pytest.raises(AuthError, match="needs ATR_FHIR_TOKEN"):
        auth_from_env("bearer", env={})
    with pytest.raises(AuthError, match="not an unencrypted PEM"):
        load_private_key("-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----")
    p256 = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthError, match="RSA \\(RS384\\) or EC P-384"):
        load_private_key(_pem(p256))
    assert load_private_key(_pem(rsa_key)).key_size == 2048
