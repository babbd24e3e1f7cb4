"""The README's walkthrough through the real `atr` entry point: keygen, clients add, serve, pull, conform;
and the curl path's signed assertion."""

from __future__ import annotations

import stat

import httpx
from api_server import ACME_CONTRACT_SYSTEM, atr, live_server, publish


def test_readme_walkthrough_pulls_a_group_that_passes_conform(tmp_path):
    home = tmp_path / "home"
    publish(home, "2026-08")
    keys = tmp_path / "provider"
    res = atr(home, "clients", "keygen", "--out", str(keys))
    assert res.returncode == 0 and res.stdout == "", res.stderr
    assert stat.S_IMODE((keys / "private_key.pem").stat().st_mode) == 0o600
    res = atr(home, "clients", "add", "--jwks-file", str(keys / "jwks.json"), "--group", f"{ACME_CONTRACT_SYSTEM}|VBC25-0001")
    assert res.returncode == 0, res.stderr
    client_id = res.stdout.strip()
    assert client_id.startswith("atr-") and res.stdout.count("\n") == 1
    listed = atr(home, "clients", "list")
    assert client_id in listed.stdout and "VBC25-0001" in listed.stdout
    with live_server(home) as base:
        out = tmp_path / "pulled"
        res = atr(home, "pull", "--base", base, "--client-id", client_id, "--key", str(keys / "private_key.pem"),
                  "--identifier", f"{ACME_CONTRACT_SYSTEM}|VBC25-0001", "--out", str(out))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Group 1" in res.stdout and "Patient" in res.stdout
        res = atr(home, "conform", str(out))
        assert res.returncode == 0, res.stdout[-2000:]
        # the curl path: a signed assertion from the CLI, traded for a token
        token_url = f"{base}/auth/token"
        assertion = atr(home, "clients", "assertion", "--client-id", client_id, "--key", str(keys / "private_key.pem"),
                        "--token-url", token_url).stdout.strip()
        token = httpx.post(token_url, data={"grant_type": "client_credentials", "scope": "system/*.read",
                                            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                            "client_assertion": assertion})
        assert token.status_code == 200, token.text
        # the same other-contract identifier finds nothing for this client
        res = atr(home, "pull", "--base", base, "--client-id", client_id, "--key", str(keys / "private_key.pem"),
                  "--identifier", f"{ACME_CONTRACT_SYSTEM}|VBC25-0002", "--out", str(tmp_path / "none"))
        assert res.returncode == 1 and "0 Groups match" in res.stderr
