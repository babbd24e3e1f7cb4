"""SftpSource against Debian's OpenSSH sshd (internal-sftp) on 127.0.0.1: the realism tests.

Needs root and /usr/sbin/sshd (scripts/install/sshd.sh); skipped with the reason otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sftp_servers import landed_files

from atr_pipeline.sources.landing import Ledger
from atr_pipeline.sources.polling import RemoteFile
from atr_pipeline.sources.sftp import (
    AuthenticationFailed,
    HostKeyChanged,
    SftpConfig,
    SftpConnectionError,
    SftpSource,
)

pytest_plugins = ["sftp_servers"]
# A hang (a read that never returns) must fail the test, not stall the suite.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NAME = "acme_attribution_202601.csv"
MTIME = 1767225600


def _cfg(server, tmp_path: Path, **kw) -> SftpConfig:
    values = dict(host="127.0.0.1", port=server.port, username=server.username, password=server.password,
                  known_hosts=server.known_hosts(tmp_path / "known_hosts"), inbox=str(server.home / "inbox"),
                  retries=2, backoff_initial=0.05, backoff_max=0.2, connect_timeout=5, channel_timeout=20)
    values.update(kw)
    return SftpConfig(**{k: v for k, v in values.items() if v is not None})


def _put(server, name: str, data: bytes) -> None:
    from sftp_servers import write_as_user

    path = write_as_user(server, f"inbox/{name}", data)
    os.utime(path, (MTIME, MTIME))


def test_password_list_fetch_archive_and_upload(openssh_server, tmp_path, acme_spec):
    body = b"M1,x\n" * 10_000
    _put(openssh_server, NAME, body)
    _put(openssh_server, ".in-progress.csv", b"x")
    landing = tmp_path / "landing"
    rejects = tmp_path / "acme_attribution_202601.rejects.csv"
    rejects.write_bytes(b"line_number,rule\n2,npi\n")
    cfg = _cfg(openssh_server, tmp_path, after_landing="archive", archive=str(openssh_server.home / "archive"))
    with SftpSource(cfg) as src:
        assert src.list_inbox() == [RemoteFile(NAME, len(body), MTIME)]
        out = src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=Ledger.for_landing(landing))
        remote = src.upload_rejects(rejects, str(openssh_server.home / "outbox"))
        assert src.connects == 1
    assert out.file.sha256 == hashlib.sha256(body).hexdigest()
    assert out.file.path.read_bytes() == body
    assert sorted(p.name for p in (openssh_server.home / "inbox").iterdir()) == [".in-progress.csv"]
    [archived] = (openssh_server.home / "archive").iterdir()
    assert archived.name.startswith(f"{out.file.sha256[:12]}_") and archived.name.endswith(f"_{NAME}")
    assert archived.read_bytes() == body
    assert remote == str(openssh_server.home / "outbox" / rejects.name)
    assert [p.name for p in (openssh_server.home / "outbox").iterdir()] == [rejects.name]
    assert (openssh_server.home / "outbox" / rejects.name).read_bytes() == b"line_number,rule\n2,npi\n"


def test_wrong_password_is_refused_without_echo(openssh_server, tmp_path, caplog):
    secret = "Wr0ng-But-Secret-5521"
    caplog.set_level(logging.DEBUG)
    cfg = _cfg(openssh_server, tmp_path, password=secret)
    with pytest.raises(AuthenticationFailed) as err:
        SftpSource(cfg).__enter__()
    assert str(err.value) == (f"authentication failed for {openssh_server.username}@127.0.0.1:{openssh_server.port} "
                              "(password); check ATR_SFTP_USER and its credentials. Not retried: the payer may lock "
                              "the account after repeated failures")
    assert secret not in str(err.value) + repr(cfg) + caplog.text


def test_changed_host_key_is_refused(openssh_server, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = tmp_path / "changed_known_hosts"
    kind, data = Path(str(other) + ".pub").read_text().split()[:2]
    kh.write_text(f"[127.0.0.1]:{openssh_server.port} {kind} {data}\n")
    with pytest.raises(HostKeyChanged) as err:
        SftpSource(_cfg(openssh_server, tmp_path, known_hosts=kh)).__enter__()
    assert f"[127.0.0.1]:{openssh_server.port}" in str(err.value)
    assert data not in str(err.value)
    assert openssh_server.public_host_key.split()[1] not in str(err.value)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_ssh_keygen_keys_authenticate(openssh_server, tmp_path, kind):
    key = tmp_path / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True)
    openssh_server.authorized_keys.write_text(Path(str(key) + ".pub").read_text())
    _put(openssh_server, NAME, b"abc")
    with SftpSource(_cfg(openssh_server, tmp_path, password=None, private_key_path=key)) as src:
        assert src.list_inbox() == [RemoteFile(NAME, 3, MTIME)]
    with SftpSource(_cfg(openssh_server, tmp_path, password=None, private_key=key.read_text())) as src:
        assert src.list_inbox() == [RemoteFile(NAME, 3, MTIME)]


def test_sshd_killed_mid_download_leaves_no_partial(openssh_server, tmp_path, acme_spec):
    body = os.urandom(50 << 20)
    _put(openssh_server, NAME, body)
    landing = tmp_path / "landing"
    ledger = Ledger.for_landing(landing)
    incoming = landing / ".incoming"
    result: dict[str, BaseException | object] = {}

    def download() -> None:
        try:
            with SftpSource(_cfg(openssh_server, tmp_path, retries=2)) as src:
                result["out"] = src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=ledger)
        except BaseException as exc:  # handed to the test thread
            result["err"] = exc

    worker = threading.Thread(target=download)
    worker.start()
    partial_seen = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.is_alive():
        parts = list(incoming.glob("*.part")) if incoming.exists() else []
        sizes = [p.stat().st_size for p in parts if p.exists()]
        if sizes and max(sizes) >= 2 << 20:
            partial_seen = max(sizes)
            openssh_server.kill()  # the listener and the session child, like a crashed server
            break
        time.sleep(0.002)
    worker.join(timeout=60)
    assert 0 < partial_seen < len(body)
    assert isinstance(result.get("err"), SftpConnectionError)
    assert f"download of {NAME}" in str(result["err"])
    assert landed_files(landing) == []
    assert ledger.entries() == []

    # Back up on another port: the same file lands whole.
    openssh_server.start()
    with SftpSource(_cfg(openssh_server, tmp_path)) as src:
        out = src.fetch(NAME, spec=acme_spec, landing_dir=landing, ledger=ledger)
    assert out.file.sha256 == hashlib.sha256(body).hexdigest()
    assert landed_files(landing) == [out.file.path]
