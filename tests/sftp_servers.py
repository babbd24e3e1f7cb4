"""Real SFTP servers on 127.0.0.1 for tests, as a pytest plugin (``pytest_plugins = ["sftp_servers"]``).

- ``AsyncSftpServer``: asyncssh in a background thread, port 0, a virtual chroot folder,
  password and public-key auth, its own Ed25519 host key; can drop connections after N bytes
  served (a dropped link mid-download), be killed and restarted on the same port.
- ``OpenSshServer``: Debian's ``/usr/sbin/sshd`` on a free port with its own sshd_config and host
  key, password (and key) auth for a test user made with ``useradd``; needs root and
  ``scripts/install/sshd.sh``; the fixture skips with the reason otherwise.

Fixtures: ``sftp_server`` (asyncssh), ``openssh_server``, ``client_keys`` (Ed25519, ECDSA, RSA).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import psutil
import pytest

USERNAME = "payer"


@dataclass(frozen=True)
class ClientKey:
    kind: str
    private_openssh: str
    public_openssh: str


def landed_files(landing: Path) -> list[Path]:
    """Every file landing wrote under ``landing`` (the ledger's sqlite files aside), sorted."""
    return sorted(p for p in landing.rglob("*") if p.is_file() and not p.name.startswith("ledger.sqlite"))


def make_client_key(kind: str) -> ClientKey:
    alg = {"ed25519": "ssh-ed25519", "ecdsa": "ecdsa-sha2-nistp256", "rsa": "ssh-rsa"}[kind]
    key = asyncssh.generate_private_key(alg, key_size=2048) if kind == "rsa" else asyncssh.generate_private_key(alg)
    return ClientKey(kind, key.export_private_key("openssh").decode(), key.export_public_key("openssh").decode().strip())


def known_hosts_line(port: int, public_openssh: str, host: str = "127.0.0.1") -> str:
    # For a non-22 port OpenSSH (and paramiko) look the host up as [host]:port.
    name = host if port == 22 else f"[{host}]:{port}"
    kind, data = public_openssh.split()[:2]
    return f"{name} {kind} {data}\n"


class _SshServer(asyncssh.SSHServer):
    def __init__(self, owner: AsyncSftpServer):
        self.owner = owner
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.owner._conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._conns.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        self.owner.password_attempts += 1  # what a payer's lockout counts
        return username == self.owner.username and password == self.owner.password

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        data = key.export_public_key("openssh").decode().split()[1]
        return username == self.owner.username and data in self.owner.authorized_keys

    def session_requested(self):
        # A server that authenticates but never starts SFTP: the subsystem request is accepted,
        # and then nothing is ever said on the channel.
        return _SilentSession() if self.owner.sftp_silent else True


class _SilentSession(asyncssh.SSHServerSession):
    def subsystem_requested(self, subsystem: str) -> bool:
        return True


class _FaultySftp(asyncssh.SFTPServer):
    """SFTP over a chroot folder that can drop the connection after N bytes served."""

    def __init__(self, chan: asyncssh.SSHServerChannel, owner: AsyncSftpServer):
        super().__init__(chan, chroot=str(owner.root).encode())
        self.owner = owner

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        data = super().read(file_obj, offset, size)
        owner = self.owner
        with owner._lock:
            owner.bytes_served += len(data)
            trip = owner.drop_after_bytes is not None and owner.bytes_served >= owner.drop_after_bytes
            if trip:
                owner.drop_after_bytes = None  # once
            hook = None
            if owner.hook_after_bytes is not None and owner.bytes_served >= owner.hook_after_bytes[0]:
                hook, owner.hook_after_bytes = owner.hook_after_bytes[1], None
        if hook is not None:
            hook()  # e.g. the payer appending to the file while we read it
        if trip:
            action = owner.on_drop
            owner.drops += 1
            if action == "kill":
                owner._loop.create_task(owner._kill_async(restart_after=owner.restart_after))
            else:
                self.connection.abort()
        return data


class AsyncSftpServer:
    def __init__(self, root: Path, *, username: str = USERNAME, password: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.username = username
        self.password = password or "pw-" + secrets.token_hex(8)
        self.authorized_keys: set[str] = set()
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.port = 0
        self.bytes_served = 0
        self.password_attempts = 0
        self.drops = 0
        self.drop_after_bytes: int | None = None
        self.on_drop = "abort"  # or "kill": stop listening too, optionally restart later
        self.sftp_silent = False  # True (never_start_sftp): log in, accept the sftp subsystem, never answer
        self.restart_after: float | None = None
        self.hook_after_bytes: tuple[int, object] | None = None  # (bytes served, callable run once)
        self._lock = threading.Lock()
        self._conns: set = set()
        self._listener = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="asyncssh-sftp")
        self._thread.start()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _listen(self) -> None:
        self._listener = await asyncssh.listen(
            "127.0.0.1", self.port, server_host_keys=[self.host_key],
            server_factory=lambda: _SshServer(self),
            # Without an sftp_factory asyncssh asks session_requested, which can then stay silent.
            sftp_factory=None if self.sftp_silent else (lambda chan: _FaultySftp(chan, self)),
            allow_scp=False, reuse_address=True,
        )
        self.port = self._listener.get_port()

    def start(self) -> AsyncSftpServer:
        self._call(self._listen())
        return self

    async def _kill_async(self, restart_after: float | None = None) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self._conns):
            conn.abort()
        if restart_after is not None:
            await asyncio.sleep(restart_after)
            await self._listen()

    def kill(self) -> None:
        """Stop listening and cut every open session, like a crashed server."""
        self._call(self._kill_async())

    def restart(self) -> None:
        self._call(self._listen())

    def stop(self) -> None:
        try:
            self._call(self._kill_async())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def never_start_sftp(self) -> None:
        """From now on: accept logins and the sftp subsystem request, then never answer."""
        self.sftp_silent = True
        self._call(self._kill_async())
        self._call(self._listen())

    def set_host_key(self, key: asyncssh.SSHKey) -> None:
        """Serve a different host key from now on (restarts the listener on the same port)."""
        self.host_key = key
        self._call(self._kill_async())
        self._call(self._listen())

    @property
    def public_host_key(self) -> str:
        return self.host_key.export_public_key("openssh").decode().strip()

    def known_hosts(self, path: Path) -> Path:
        path.write_text(known_hosts_line(self.port, self.public_host_key))
        return path

    def sensor_env(self, tmp_path: Path) -> dict[str, str]:
        """The ATR_SFTP_* settings that point the Dagster SFTP sensor at this server's /inbox."""
        return {
            "ATR_SFTP_HOST": "127.0.0.1", "ATR_SFTP_PORT": str(self.port), "ATR_SFTP_USER": self.username,
            "ATR_SFTP_PASSWORD": self.password, "ATR_SFTP_KNOWN_HOSTS": str(self.known_hosts(tmp_path / "kh")),
            "ATR_SFTP_INBOX": "/inbox", "ATR_SFTP_STABLE_POLLS": "2", "ATR_SFTP_QUIET_SECONDS": "0",
        }


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[AsyncSftpServer]:
    server = AsyncSftpServer(tmp_path / "sftp_root").start()
    (server.root / "inbox").mkdir()
    (server.root / "archive").mkdir()
    (server.root / "outbox").mkdir()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def client_keys() -> dict[str, ClientKey]:
    return {kind: make_client_key(kind) for kind in ("ed25519", "ecdsa", "rsa")}


# -- Debian OpenSSH sshd ----------------------------------------------------------------------

SSHD = "/usr/sbin/sshd"
SSHD_USER = "atrsftptest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 10.0) -> bool:
    """Wait for sshd's "Server listening" log line (a probe connection would fork a session)."""
    needle = f"Server listening on 127.0.0.1 port {port}".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if needle in log.read_bytes():
            return True
        time.sleep(0.01)
    return False


class OpenSshServer:
    """A private sshd (password + key auth, internal-sftp) for the test user."""

    def __init__(self, workdir: Path, password: str):
        self.workdir = workdir
        self.password = password
        self.extra_config: list[str] = []  # lines placed first: for sshd the first value of a keyword wins
        self.username = SSHD_USER
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.home = workdir / "home"
        self.authorized_keys = workdir / "authorized_keys"
        self.authorized_keys.write_text("")
        # sshd reads it as the test user: readable whatever the umask (atr_pipeline.private tightens
        # this process's umask to 077 once any test has loaded settings in-process).
        self.authorized_keys.chmod(0o644)
        self.host_key_path = workdir / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key_path)], check=True)
        self.log = workdir / "sshd.log"

    @property
    def public_host_key(self) -> str:
        return Path(str(self.host_key_path) + ".pub").read_text().strip()

    def known_hosts(self, path: Path) -> Path:
        path.write_text(known_hosts_line(self.port, self.public_host_key))
        return path

    def _config(self, port: int) -> Path:
        cfg = self.workdir / "sshd_config"
        cfg.write_text(
            "".join(line + "\n" for line in self.extra_config) +
            f"ListenAddress 127.0.0.1:{port}\n"
            f"HostKey {self.host_key_path}\n"
            f"PidFile {self.workdir / 'sshd.pid'}\n"
            "Subsystem sftp internal-sftp\n"
            "ForceCommand internal-sftp\n"
            f"AllowUsers {SSHD_USER}\n"
            "PermitRootLogin no\n"
            "PasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "UseDNS no\n"
            "MaxAuthTries 3\n"
            "AllowTcpForwarding no\n"
            "X11Forwarding no\n"
            "LogLevel VERBOSE\n"
        )
        return cfg

    def start(self) -> OpenSshServer:
        for _ in range(5):  # sshd cannot take port 0: pick a free one, retry on a collision
            port = _free_port()
            cfg = self._config(port)
            with open(self.log, "ab") as log:
                proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=log)
            if _wait_listening(port, proc, self.log):
                self.proc, self.port = proc, port
                return self
            proc.kill()
            proc.wait()
        raise RuntimeError(f"sshd did not start; see {self.log}: {self.log.read_text()[-2000:]}")

    def restart_with(self, *extra_config: str) -> OpenSshServer:
        """Restart (on a new port) with these sshd_config lines taking precedence."""
        self.kill(crash=False)
        self.extra_config = list(extra_config)
        return self.start()

    def log_count(self, text: str) -> int:
        """How often sshd logged ``text`` (e.g. "Failed password"): what the payer's server saw."""
        return self.log.read_text(errors="replace").count(text)

    def kill(self, *, crash: bool = True) -> None:
        """Kill the listener and every session child (they call setsid(): killing the listener
        or its process group leaves them running).

        ``crash``: listener first, so no retry can reconnect in between (a crashed server);
        otherwise sessions first, so the listener reaps them and teardown does not wait on orphans.
        """
        if self.proc is None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if crash:
            self.proc.kill()
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        if not crash:
            psutil.wait_procs(children, timeout=2)
            self.proc.kill()
        self.proc.wait()
        psutil.wait_procs(children, timeout=2)
        self.proc = None


def _ensure_user(home: Path, password: str) -> None:
    try:
        pwd.getpwnam(SSHD_USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--home-dir", str(home), SSHD_USER],
                       check=True, capture_output=True)
    subprocess.run(["usermod", "--home", str(home), SSHD_USER], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{SSHD_USER}:{password}\n".encode(), check=True, capture_output=True)


def remove_test_user() -> None:
    """Delete the test user (and its group): nothing with a password stays on the machine."""
    try:
        pwd.getpwnam(SSHD_USER)
    except KeyError:
        return
    subprocess.run(["userdel", SSHD_USER], check=True, capture_output=True)
    subprocess.run(["groupdel", SSHD_USER], check=False, capture_output=True)  # gone with the user on Debian


@pytest.fixture(scope="session")
def _sshd_test_user() -> Iterator[None]:
    """The system test user exists for the session only; removed when the suite ends."""
    yield
    for proc in psutil.process_iter(["username"]):  # sessions of the user must end before userdel
        if proc.info["username"] == SSHD_USER:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    remove_test_user()


@pytest.fixture
def openssh_server(_sshd_test_user) -> Iterator[OpenSshServer]:
    if os.geteuid() != 0:
        pytest.skip("the OpenSSH sshd fixture needs root (useradd, password auth); CI runs as root")
    if not Path(SSHD).exists():
        pytest.skip(f"{SSHD} is missing: run scripts/install/sshd.sh")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    # Not under pytest's 0700 tmp folder: the test user must traverse to its home (no chroot,
    # since ChrootDirectory can never be under /tmp).
    workdir = Path(tempfile.mkdtemp(prefix="atr-sshd-"))
    os.chmod(workdir, 0o711)
    password = "pw-" + secrets.token_hex(8)
    server = OpenSshServer(workdir, password)
    _ensure_user(server.home, password)
    uid, gid = pwd.getpwnam(SSHD_USER).pw_uid, pwd.getpwnam(SSHD_USER).pw_gid
    for sub in ("", "inbox", "archive", "outbox"):
        (server.home / sub).mkdir(exist_ok=True)
        os.chown(server.home / sub, uid, gid)
    server.start()
    try:
        yield server
    finally:
        server.kill(crash=False)
        shutil.rmtree(workdir, ignore_errors=True)


def write_as_user(server: OpenSshServer, rel: str, data: bytes) -> Path:
    """Put a file in the sshd user's home, owned by that user (as the payer would)."""
    path = server.home / rel
    path.write_bytes(data)
    pw = pwd.getpwnam(SSHD_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


__all__ = ["AsyncSftpServer", "ClientKey", "OpenSshServer", "known_hosts_line", "make_client_key", "write_as_user"]


# -- mappings for source tests ------------------------------------------------------------------


def make_mapping(source_id: str = "acme", pattern: str = r"acme_attribution_(?P<yyyymm>\d{6})\.csv"):
    """A minimal valid MappingSpec; sources/ reads only its source_id and file section."""
    from atr_pipeline.layouts.spec import parse_mapping

    return parse_mapping({
        "source_id": source_id,
        "file": {"pattern": pattern},
        "format": {"kind": "delimited", "delimiter": ","},
        "fields": {"member_id": {"column": 1}, "payer_id": {"constant": "P1"}, "contract_id": {"constant": "C1"}},
        "identifier_systems": {"member_id": "urn:example:member", "payer_id": "urn:example:payer",
                               "contract_id": "urn:example:contract"},
    })


@pytest.fixture
def acme_spec():
    return make_mapping()


@pytest.fixture
def mapping_factory():
    """``make_mapping`` as a fixture, so test modules need not import this plugin."""
    return make_mapping
