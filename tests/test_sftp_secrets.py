"""No form of an SFTP secret is ever echoed: not by `atr` (stdout, stderr), not into Dagster.

Each secret form, right or misplaced, goes through the real `atr` entry point (a subprocess)
and through a real Dagster run of the landing asset against a real asyncssh server; then every
output and every file of the Dagster instance folder (run/event-log sqlite, compute logs) is
searched for the secret's text.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncssh
import dagster as dg
import pytest

pytest_plugins = ["sftp_servers"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.filterwarnings("ignore:Warning. bcrypt.kdf:UserWarning")]  # few KDF rounds keep it fast

ROOT = Path(__file__).resolve().parents[1]
NAME = "ACME_ATTRIB_202608.csv"
MTIME = 1767225600


def _key_body(private_openssh: str) -> str:
    """The base64 body of a key without its BEGIN/END lines (a common paste mistake)."""
    return "".join(line for line in private_openssh.splitlines() if not line.startswith("-----"))


def _forms(server, tmp_path: Path) -> dict[str, tuple[dict[str, str], list[str], bool]]:
    """name -> (ATR_SFTP_* credential settings, secret strings that must never appear, should connect)."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key("openssh").decode()
    if isinstance(server.authorized_keys, Path):  # OpenSSH: an authorized_keys file
        server.authorized_keys.write_text(server.authorized_keys.read_text() + public)
    else:
        server.authorized_keys.add(public.split()[1])
    passphrase = "Pass-Phrase-4471-zebra"
    encrypted = key.export_private_key("openssh", passphrase=passphrase, rounds=4).decode()
    plain = key.export_private_key("openssh").decode()
    key_file = tmp_path / "id_ed25519"
    key_file.write_text(plain)
    key_file.chmod(0o600)
    putty = ("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: payer\nPublic-Lines: 2\n"
             "AAAAC3NzaC1lZDI1NTE5AAAAIPuttyPublicPart0123456789abcdefghij\nPrivate-Lines: 1\n"
             "AAAAIPuttyPrivateSecretPart9876543210zyxwvutsrqponmlk\nPrivate-MAC: 0f1e2d3c4b5a69788796a5b4c3d2e1f0\n")
    wrong_pw = "Wrong-Secret-Pw-5521"
    body = _key_body(plain)
    return {
        "password": ({"ATR_SFTP_PASSWORD": server.password}, [server.password], True),
        "wrong password": ({"ATR_SFTP_PASSWORD": wrong_pw}, [wrong_pw], False),
        "key text + passphrase": ({"ATR_SFTP_KEY": encrypted, "ATR_SFTP_KEY_PASSPHRASE": passphrase},
                                  [passphrase, _key_body(encrypted)[40:100]], True),
        "key file": ({"ATR_SFTP_KEY_FILE": str(key_file)}, [body[40:100]], True),
        "password in ATR_SFTP_KEY": ({"ATR_SFTP_KEY": server.password}, [server.password], False),
        "bare key body in ATR_SFTP_KEY": ({"ATR_SFTP_KEY": body}, [body[40:100], body[-40:]], False),
        "PuTTY key in ATR_SFTP_KEY": ({"ATR_SFTP_KEY": putty}, ["PuttyPrivateSecretPart", "0f1e2d3c4b5a6978"], False),
        "password in ATR_SFTP_KEY_FILE": ({"ATR_SFTP_KEY_FILE": server.password}, [server.password], False),
        "key text in ATR_SFTP_KEY_FILE": ({"ATR_SFTP_KEY_FILE": plain}, [body[40:100]], False),
    }


def _inbox(server) -> Path:
    return server.root / "inbox" if hasattr(server, "root") else server.home / "inbox"


def _base_env(server, tmp_path: Path) -> dict[str, str]:
    return {
        "ATR_SFTP_HOST": "127.0.0.1", "ATR_SFTP_PORT": str(server.port), "ATR_SFTP_USER": server.username,
        "ATR_SFTP_KNOWN_HOSTS": str(server.known_hosts(tmp_path / "kh")),
        "ATR_SFTP_INBOX": "/inbox" if hasattr(server, "root") else str(server.home / "inbox"),
        "ATR_SFTP_QUIET_SECONDS": "0", "ATR_SFTP_STABLE_POLLS": "2", "ATR_SFTP_RETRIES": "2",
        "ATR_MAPPINGS_DIR": str(ROOT / "mappings"), "ATR_ID_KEY": "secrets-test",
    }


def _all_bytes(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.mark.parametrize("server_kind", ["asyncssh", "openssh"])
def test_cli_never_echoes_a_secret_in_any_form(server_kind, request, tmp_path):
    sftp_server = request.getfixturevalue("sftp_server" if server_kind == "asyncssh" else "openssh_server")
    if server_kind == "openssh":
        from sftp_servers import write_as_user

        write_as_user(sftp_server, f"inbox/{NAME}", (ROOT / "fixtures" / "acme_commercial" / NAME).read_bytes())
    else:
        (_inbox(sftp_server) / NAME).write_bytes((ROOT / "fixtures" / "acme_commercial" / NAME).read_bytes())
    base = _base_env(sftp_server, tmp_path)
    env0 = {k: v for k, v in os.environ.items() if not k.startswith("ATR_")}
    env0["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    seen = {}
    for form, (creds, secrets, connects) in _forms(sftp_server, tmp_path).items():
        env = {**env0, **base, **creds, "ATR_HOME": str(tmp_path / form.replace(" ", "_"))}
        for args in (["sftp-check"], ["sftp-pull", "--settle-seconds", "0"]):
            proc = subprocess.run([sys.executable, "-m", "atr_pipeline.cli", *args], env=env, capture_output=True,
                                  text=True, timeout=120)
            out = proc.stdout + proc.stderr
            seen[(form, args[0])] = (proc.returncode, out)
            for secret in secrets:
                assert secret not in out, (form, args, out)
            assert "Traceback" not in out, (form, args, out)
            assert (proc.returncode == 0) == connects, (form, args, out)
    # The misplaced forms say what is wrong without quoting the value.
    assert "ATR_SFTP_KEY must hold the private key text" in seen[("password in ATR_SFTP_KEY", "sftp-check")][1]
    assert "ATR_SFTP_KEY holds a PuTTY key; convert it" in seen[("PuTTY key in ATR_SFTP_KEY", "sftp-check")][1]
    assert "cannot read the key file ATR_SFTP_KEY_FILE" in seen[("password in ATR_SFTP_KEY_FILE", "sftp-check")][1]
    assert "authentication failed" in seen[("wrong password", "sftp-pull")][1]


def test_dagster_never_stores_a_secret_in_any_form(sftp_server, tmp_path, monkeypatch, capfd):
    from atr_pipeline.defs import assets
    from atr_pipeline.defs.build import build_definitions

    (sftp_server.root / "inbox" / NAME).write_bytes((ROOT / "fixtures" / "acme_commercial" / NAME).read_bytes())
    os.utime(sftp_server.root / "inbox" / NAME, (MTIME, MTIME))
    size = (sftp_server.root / "inbox" / NAME).stat().st_size
    tags = {"atr/remote_file": NAME, "atr/source_id": "acme_commercial", "atr/remote_size": str(size),
            "atr/remote_mtime": str(MTIME)}
    partition = dg.MultiPartitionKey({"month": "2026-08-01", "source": "acme_commercial"})
    instance_dir = tmp_path / "dagster_home"
    instance_dir.mkdir()
    all_secrets: list[str] = []
    outcomes = {}
    with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
        for form, (creds, secrets, connects) in _forms(sftp_server, tmp_path).items():
            all_secrets += secrets
            for var in ("ATR_SFTP_PASSWORD", "ATR_SFTP_KEY", "ATR_SFTP_KEY_FILE", "ATR_SFTP_KEY_PASSPHRASE"):
                monkeypatch.delenv(var, raising=False)
            for k, v in {**_base_env(sftp_server, tmp_path), **creds,
                         "ATR_HOME": str(tmp_path / "home" / form.replace(" ", "_"))}.items():
                monkeypatch.setenv(k, v)
            defs = build_definitions()
            # The definitions hold only variable names: the value is read at run time.
            resource = defs.resources["sftp"]
            for field in ("password", "private_key", "private_key_file", "private_key_passphrase"):
                value = getattr(resource, field)
                assert value is None or isinstance(value, dg.EnvVar), (form, field)
            result = dg.materialize([assets.landed_file], partition_key=partition, resources=defs.resources,
                                    tags=tags, instance=instance, raise_on_error=False)
            outcomes[form] = result.success
            failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
            if not connects:
                # One attempt only: a misconfigured or refused credential is never retried.
                assert len(failures) == 1 and not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"], form
    assert outcomes == {form: connects for form, (_, _, connects) in _forms(sftp_server, tmp_path).items()}
    captured = capfd.readouterr()
    stored = _all_bytes(instance_dir)
    assert b"STEP_FAILURE" in stored or b"step_failure" in stored.lower()  # the search covers the event log
    for secret in all_secrets:
        assert secret.encode() not in stored, secret
        assert secret not in captured.out + captured.err, secret


def test_refused_login_is_not_retried_by_dagsters_retry_policy(sftp_server, tmp_path, monkeypatch):
    from atr_pipeline.defs import assets
    from atr_pipeline.defs.build import build_definitions

    (sftp_server.root / "inbox" / NAME).write_bytes(b"x")
    for k, v in {**_base_env(sftp_server, tmp_path), "ATR_SFTP_PASSWORD": "not-it-8812", "ATR_SFTP_RETRIES": "4",
                 "ATR_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(k, v)
    defs = build_definitions()
    assert assets.landed_file.op.retry_policy is not None and assets.landed_file.op.retry_policy.max_retries == 3
    result = dg.materialize([assets.landed_file], resources=defs.resources, raise_on_error=False,
                            partition_key=dg.MultiPartitionKey({"month": "2026-08-01", "source": "acme_commercial"}),
                            tags={"atr/remote_file": NAME})
    assert not result.success
    assert sftp_server.password_attempts == 1  # a payer's 3-strike lockout sees one failure, not four
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "authentication failed for payer@127.0.0.1" in failure.event_specific_data.error.message
