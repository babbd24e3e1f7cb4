"""The sender sees what was refused: `atr run` uploads the rejects CSV to the SFTP outbox."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["sftp_servers"]


def test_rejects_csv_reaches_the_remote_outbox(sftp_server, tmp_path):
    (sftp_server.root / "outbox").mkdir(exist_ok=True)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(ROOT / "fixtures/bad/bad_values/ACME_ATTRIB_202608.csv", inbox)
    env = {
        **os.environ,
        "ATR_HOME": str(tmp_path / "home"),
        "ATR_ID_KEY": "k",
        "ATR_SFTP_HOST": "127.0.0.1",
        "ATR_SFTP_PORT": str(sftp_server.port),
        "ATR_SFTP_USER": sftp_server.username,
        "ATR_SFTP_PASSWORD": sftp_server.password,
        "ATR_SFTP_KNOWN_HOSTS": str(sftp_server.known_hosts(tmp_path / "known_hosts")),
        "ATR_SFTP_OUTBOX": "/outbox",
    }
    res = subprocess.run([sys.executable, "-m", "atr_pipeline.cli", "run", "--mapping", "mappings/acme_commercial.yaml", "--inbox", str(inbox)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # Too many rejects for the 5% threshold: the file is refused, and its rejects still go back.
    assert res.returncode == 1, res.stdout + res.stderr
    assert "reject_threshold" in res.stdout
    remote = sftp_server.root / "outbox" / "ACME_ATTRIB_202608.rejects.csv"
    local = tmp_path / "home" / "rejects" / "acme_commercial" / "2026-08" / "ACME_ATTRIB_202608.rejects.csv"
    assert remote.read_bytes() == local.read_bytes()
    rules = {row["rule"] for row in csv.DictReader(remote.read_text(encoding="utf-8-sig").splitlines())}
    assert {"date_format", "code_not_in_map", "number_format"} <= rules
    assert sftp_server.password not in res.stdout + res.stderr
