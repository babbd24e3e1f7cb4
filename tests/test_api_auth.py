"""SMART Backend Services on a live `atr serve`: registration, the token endpoint, and what it refuses."""

from __future__ import annotations

import stat

import httpx
import jwt
import pytest
from api_server import (
    ACME_CONTRACT_SYSTEM,
    ClientKey,
    atr,
    group_ids,
    live_server,
    publish,
    register,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    publish(home, "2026-08")
    rsa_key, ec_key, other = ClientKey("RS384"), ClientKey("ES384"), ClientKey("RS384")
    register(home, rsa_key, f"{ACME_CONTRACT_SYSTEM}|VBC25-0001")
    register(home, ec_key, f"{ACME_CONTRACT_SYSTEM}|VBC25-0001")
    register(home, other, f"{ACME_CONTRACT_SYSTEM}|VBC25-0002")
    with live_server(home) as base:
        yield home, base, rsa_key, ec_key, other


def refused(res: httpx.Response, error: str = "invalid_client") -> str:
    assert res.status_code in (400, 401), res.text
    body = res.json()
    assert body["error"] == error
    return body["error_description"]


def test_clients_add_prints_only_the_client_id_and_keeps_it_owner_only(served):
    home, _, rsa_key, _, _ = served
    assert rsa_key.client_id.startswith("atr-") and "\n" not in rsa_key.client_id
    record = home / "api" / "clients" / f"{rsa_key.client_id}.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "api").stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "api" / "clients").stat().st_mode) == 0o700


def test_clients_add_refuses_a_private_jwk_and_a_bad_group(served, tmp_path):
    home = served[0]
    key = ClientKey("RS384")
    private = jwt.algorithms.RSAAlgorithm.to_jwk(key.private, as_dict=True) | {"kid": "k1"}
    path = tmp_path / "private.json"
    path.write_text(__import__("json").dumps({"keys": [private]}))
    res = atr(home, "clients", "add", "--jwks-file", str(path), "--group", "x|y")
    assert res.returncode == 2 and "private key material" in res.stderr and res.stdout == ""
    path.write_text(__import__("json").dumps(key.jwks()))
    res = atr(home, "clients", "add", "--jwks-file", str(path), "--group", "no-bar")
    assert res.returncode == 2 and "SYSTEM|VALUE" in res.stderr


def test_smart_configuration_lists_what_the_ig_requires(served):
    base = served[1]
    conf = httpx.get(f"{base}/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == f"{base}/auth/token"
    assert conf["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert conf["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert {"system/*.read", "system/*.rs"} <= set(conf["scopes_supported"])


@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_rs384_and_es384_assertions_get_a_short_lived_token_that_reads(served, which):
    home, base, rsa_key, ec_key, _ = served
    key = rsa_key if which == "rsa" else ec_key
    res = httpx.post(f"{base}/auth/token", data=key.token_form(f"{base}/auth/token", "system/*.rs"))
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["token_type"] == "bearer" and body["scope"] == "system/*.rs" and 0 < body["expires_in"] <= 300
    gid = group_ids(home, "2026-08")["VBC25-0001"]
    read = httpx.get(f"{base}/Group/{gid}", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert read.status_code == 200 and read.json()["id"] == gid


def test_expired_assertion_is_refused(served):
    _, base, key, _, _ = served
    url = f"{base}/auth/token"
    assert "expired" in refused(httpx.post(url, data=key.token_form(url, lifetime=-120)))


def test_assertion_living_longer_than_five_minutes_is_refused(served):
    _, base, key, _, _ = served
    url = f"{base}/auth/token"
    assert "five minutes" in refused(httpx.post(url, data=key.token_form(url, lifetime=3600)))


def test_wrong_audience_is_refused(served):
    _, base, key, _, _ = served
    url = f"{base}/auth/token"
    assert "aud" in refused(httpx.post(url, data=key.token_form(url, aud="https://other.example.org/token")))


def test_replayed_jti_is_refused(served):
    _, base, key, _, _ = served
    url = f"{base}/auth/token"
    assert httpx.post(url, data=key.token_form(url, jti="same-jti-1")).status_code == 200
    assert "replay" in refused(httpx.post(url, data=key.token_form(url, jti="same-jti-1")))


def test_unknown_kid_is_refused(served):
    _, base, key, _, _ = served
    url = f"{base}/auth/token"
    assert "kid" in refused(httpx.post(url, data=key.token_form(url, kid="not-registered")))


def test_a_key_of_another_client_under_the_registered_kid_fails_the_signature(served):
    _, base, key, _, other = served
    url = f"{base}/auth/token"
    assert "InvalidSignature" in refused(httpx.post(url, data=key.token_form(url, key=other.private)))


def test_none_and_hs256_algorithms_are_refused(served):
    _, base, key, _, _ = served
    url = f"{base}/auth/token"
    unsigned = jwt.encode({"iss": key.client_id, "sub": key.client_id, "aud": url, "exp": 9999999999, "jti": "n1"},
                          None, algorithm="none", headers={"kid": key.kid})
    form = key.token_form(url) | {"client_assertion": unsigned}
    assert "'none' refused" in refused(httpx.post(url, data=form))
    hs = key.assertion(url, alg="HS256", key=b"k" * 32)
    assert "'HS256' refused" in refused(httpx.post(url, data=key.token_form(url) | {"client_assertion": hs}))


def test_iss_of_another_client_is_refused(served):
    _, base, key, _, other = served
    url = f"{base}/auth/token"
    # signed by `key` but claiming to be `other`: other's JWKS has no such kid
    assert refused(httpx.post(url, data=key.token_form(url, iss=other.client_id)))


def test_unoffered_scope_and_wrong_grant_type_are_refused(served):
    _, base, key, _, _ = served
    url = f"{base}/auth/token"
    refused(httpx.post(url, data=key.token_form(url, "system/Patient.write")), "invalid_scope")
    refused(httpx.post(url, data=key.token_form(url) | {"grant_type": "password"}), "unsupported_grant_type")


def test_requests_without_or_with_a_forged_token_get_401_operation_outcome(served):
    _, base, _, _, _ = served
    res = httpx.get(f"{base}/Group")
    assert res.status_code == 401 and res.json()["resourceType"] == "OperationOutcome"
    forged = jwt.encode({"iss": "atr-serve", "sub": "atr-x", "scope": "system/*.read", "exp": 9999999999}, "guess-" * 8, algorithm="HS256")
    res = httpx.get(f"{base}/Group", headers={"Authorization": f"Bearer {forged}"})
    assert res.status_code == 401 and res.json()["issue"][0]["code"] == "login"


def test_serve_refuses_a_public_bind_without_the_tls_flag(served):
    res = atr(served[0], "serve", "--host", "0.0.0.0", "--port", "0", timeout=30)
    assert res.returncode == 2 and "--tls-terminated-in-front" in res.stderr


def test_behind_a_proxy_urls_and_the_assertion_audience_are_the_public_ones(served):
    home, _, key, _, _ = served
    public = "https://atr.example.org/fhir"
    with live_server(home, "--public-url", public) as base:
        assert httpx.get(f"{base}/.well-known/smart-configuration").json()["token_endpoint"] == f"{public}/auth/token"
        ok = httpx.post(f"{base}/auth/token", data=key.token_form(f"{public}/auth/token"))
        assert ok.status_code == 200, ok.text
        assert "aud" in refused(httpx.post(f"{base}/auth/token", data=key.token_form(f"{base}/auth/token")))
        token = ok.json()["access_token"]
        gid = group_ids(home, "2026-08")["VBC25-0001"]
        kick = httpx.get(f"{base}/Group/{gid}/$davinci-data-export", headers={"Authorization": f"Bearer {token}"})
        assert kick.headers["Content-Location"].startswith(f"{public}/bulkstatus/")
