"""`atr serve` while `atr run` publishes the next months: no errors, never a half-published month,
and the new months served without a restart."""

from __future__ import annotations

import re
import subprocess
import threading
import time

import httpx
import orjson
from api_server import (
    ACME_CONTRACT_SYSTEM,
    ATR,
    ROOT,
    ClientKey,
    env_for,
    group_ids,
    live_server,
    publish,
    register,
)


def test_serving_while_the_pipeline_publishes_the_next_months(tmp_path):
    home = tmp_path
    publish(home, "2026-08")
    key = ClientKey()
    register(home, key, f"{ACME_CONTRACT_SYSTEM}|VBC25-0001")
    gid = group_ids(home, "2026-08")["VBC25-0001"]
    seen: list[tuple[str, int, int, int]] = []  # (versionId, quantity, active members, status code)
    failures: list[str] = []
    stop = threading.Event()

    with live_server(home) as base:
        token = key.token(base)
        headers = {"Authorization": f"Bearer {token}"}

        def reader() -> None:
            with httpx.Client(headers=headers, timeout=30) as http:
                while not stop.is_set():
                    res = http.get(f"{base}/Group/{gid}")
                    if res.status_code != 200:
                        failures.append(f"read {res.status_code} {res.text[:200]}")
                        continue
                    group = orjson.loads(res.content)
                    active = sum(1 for m in group["member"] if not m.get("inactive"))
                    seen.append((group["meta"]["versionId"], group["quantity"], active, res.status_code))
                    patient = group["member"][-1]["entity"]["reference"]
                    # the member just read must be readable in the same publication or the next one
                    res = http.get(f"{base}/{patient}")
                    if res.status_code != 200:
                        failures.append(f"member read {res.status_code}")
                    search = http.get(f"{base}/Group", params={"identifier": f"{ACME_CONTRACT_SYSTEM}|VBC25-0001", "_summary": "true"})
                    if search.status_code != 200 or search.json()["total"] != 1:
                        failures.append(f"search {search.status_code}")

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            run = subprocess.run([*ATR, "run", "--mapping", "mappings/acme_commercial.yaml", "--inbox", "fixtures/acme_commercial"],
                                 cwd=ROOT, env=env_for(home), capture_output=True, text=True, timeout=300, check=False)
            time.sleep(1.5)  # the catalog re-reads manifests at most once a second
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert run.returncode == 0, run.stdout + run.stderr
        assert re.search(r"\block(ed|s)?\b", run.stdout + run.stderr, re.IGNORECASE) is None  # no lock error or wait
        assert failures == []
        versions = [int(v) for v, *_ in seen]
        assert versions == sorted(versions), "a reader went back to an older publication"
        assert set(versions) >= {1, 3}, "both the first and the newest month were served"
        # each publication is whole: a Group's quantity always equals its attributed members
        assert all(quantity == active for _, quantity, active, _ in seen)
        final = httpx.get(f"{base}/Group/{gid}", headers=headers).json()
        assert final["meta"]["versionId"] == "3"
