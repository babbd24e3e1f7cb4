"""Benchmark `atr serve`: concurrent $davinci-data-export jobs, read latency under that load,
export throughput against polars writing the same NDJSON, and server RSS exporting one huge Group.

Run: ``python benchmarks/bench_api.py [--members 1000000] [--clients 50] [--big-group 1000000] [--work DIR]``

1. A synthetic month of ``--members`` members spread over ``--clients`` contracts is written as a
   published export (fast string templates; ids are counters, names are "Test"), one client is
   registered per contract, and `atr serve` runs as a subprocess on 127.0.0.1.
2. Each client (one thread each) gets a token, kicks off ``$davinci-data-export`` on its own Group,
   polls, and downloads its files; meanwhile two reader threads time Group reads (``_summary``)
   and Patient reads. Printed: first manifest ready, all done, read p50/p99.
3. Throughput: the bytes of one job's files / the job's run time, against polars writing the same
   lines as NDJSON (``write_csv`` of one raw column): a ratio.
4. A second server on a month holding one Group of ``--big-group`` members: peak RSS of the server
   process and of its export worker process (psutil, every 20 ms) during the export, against the
   Group line size.
Figures on a shared 2-core machine are noisy: read the ratios. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson
import polars as pl
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from api_server import ClientKey, live_server

from atr_pipeline.api.clients import add_client
from atr_pipeline.systems import (
    EXT_ATTRIBUTED_PROVIDER,
    EXT_ATTRIBUTION_LIST_STATUS,
    EXT_COVERAGE_REFERENCE,
)

CONTRACTS = "http://example.org/synthetic-payer/contract-id"
TRANSACTION = "2026-11-01T00:00:00.000Z"


def _id(kind: int, n: int) -> str:
    return f"00000000-0000-4000-{8000 + kind:04d}-{n:012d}"


def write_month(folder: Path, members: int, groups: int) -> dict[str, int]:
    """A published month: Organization, PractitionerRole, Patient, Coverage, Group NDJSON + manifest."""
    folder.mkdir(parents=True)
    org, role = _id(1, 0), _id(2, 0)
    counts = {"Organization": 1, "PractitionerRole": 1, "Patient": members, "Coverage": members, "Group": groups}
    (folder / "Organization.ndjson").write_text(
        f'{{"resourceType":"Organization","id":"{org}","active":true,"name":"Synthetic Payer"}}\n')
    (folder / "PractitionerRole.ndjson").write_text(
        f'{{"resourceType":"PractitionerRole","id":"{role}","organization":{{"reference":"Organization/{org}"}}}}\n')
    with open(folder / "Patient.ndjson", "w") as fh:
        fh.writelines(f'{{"resourceType":"Patient","id":"{_id(3, n)}","identifier":[{{"system":"http://example.org/m","value":"M{n:09d}"}}],'
                     f'"name":[{{"family":"Test","given":["Member"]}}],"gender":"unknown","birthDate":"1970-01-01"}}\n' for n in range(members))
    with open(folder / "Coverage.ndjson", "w") as fh:
        fh.writelines(f'{{"resourceType":"Coverage","id":"{_id(4, n)}","status":"active","subscriberId":"S{n:09d}",'
                     f'"beneficiary":{{"reference":"Patient/{_id(3, n)}"}},"payor":[{{"reference":"Organization/{org}"}}],'
                     f'"period":{{"start":"2026-01-01"}}}}\n' for n in range(members))
    with open(folder / "Group.ndjson", "w") as fh:
        for g in range(groups):
            mine = range(g, members, groups)
            head = {"resourceType": "Group", "id": _id(5, g), "meta": {"versionId": "1", "lastUpdated": "2026-11-01T00:00:00Z"},
                    "extension": [{"url": EXT_ATTRIBUTION_LIST_STATUS, "valueCode": "draft"}],
                    "identifier": [{"system": CONTRACTS, "value": f"C{g:04d}"}], "active": True, "type": "person",
                    "actual": True, "name": f"Synthetic contract {g}", "managingEntity": {"reference": f"Organization/{org}"},
                    "quantity": len(mine)}
            fh.write(orjson.dumps(head).decode()[:-1] + ',"member":[')
            fh.writelines(("," if i else "") + f'{{"extension":[{{"url":"{EXT_COVERAGE_REFERENCE}","valueReference":{{"reference":"Coverage/{_id(4, n)}"}}}},'
                         f'{{"url":"{EXT_ATTRIBUTED_PROVIDER}","valueReference":{{"reference":"PractitionerRole/{role}"}}}}],'
                         f'"entity":{{"reference":"Patient/{_id(3, n)}"}},"period":{{"start":"2026-01-01"}},"inactive":false}}' for i, n in enumerate(mine))
            fh.write("]}\n")
    manifest = {"transactionTime": TRANSACTION, "request": "bench", "requiresAccessToken": True,
                "output": [{"type": t, "url": f"{t}.ndjson", "count": c} for t, c in counts.items()], "error": [], "extension": {}}
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    return counts


def register(home: Path, groups: int) -> list[ClientKey]:
    keys = []
    for g in range(groups):
        key = ClientKey("ES384")
        jwks = home / f"jwks{g}.json"
        jwks.write_bytes(orjson.dumps(key.jwks()))
        key.client_id = add_client(home, [f"{CONTRACTS}|C{g:04d}"], jwks_file=jwks).client_id
        keys.append(key)
    return keys


def export(base: str, key: ClientKey, group: int, out: Path | None, marks: dict) -> dict:
    headers = {"Authorization": f"Bearer {key.token(base)}", "Prefer": "respond-async"}
    with httpx.Client(headers=headers, timeout=600) as http:
        res = http.get(f"{base}/Group/{_id(5, group)}/$davinci-data-export", params={"exportType": "hl7.fhir.us.davinci-atr"})
        assert res.status_code == 202, res.text
        status = res.headers["Content-Location"]
        issued = time.monotonic()
        while (res := http.get(status)).status_code == 202:
            time.sleep(0.25)
            if time.monotonic() - issued > 120:  # access tokens last 5 minutes; a long job outlives one
                http.headers["Authorization"] = f"Bearer {key.token(base)}"
                issued = time.monotonic()
        assert res.status_code == 200, res.text
        marks.setdefault("first_manifest", time.monotonic())
        manifest = res.json()
        size = 0
        for item in manifest["output"]:
            with http.stream("GET", item["url"]) as body:
                if out is None:
                    size += sum(len(c) for c in body.iter_bytes())
                else:
                    with open(out / item["url"].rsplit("/", 1)[1], "wb") as fh:
                        for chunk in body.iter_bytes():
                            fh.write(chunk)
                            size += len(chunk)
        return {"bytes": size, "job": status.rsplit("/", 1)[1]}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def concurrent_phase(work: Path, members: int, clients: int) -> None:
    home = work / "home"
    counts = write_month(home / "exports" / "bench" / "2026-11", members, clients)
    keys = register(home, clients)
    print(f"month: {members:,} members in {clients} Groups ({sum(counts.values()):,} resources)")
    with live_server(home, "--export-workers", "2") as base:
        marks: dict = {}
        latencies: list[float] = []
        stop = threading.Event()

        def reader() -> None:
            key = keys[0]
            headers = {"Authorization": f"Bearer {key.token(base)}"}
            with httpx.Client(headers=headers, timeout=60) as http:
                while not stop.is_set():
                    for path in (f"Group/{_id(5, 0)}?_summary=true", f"Patient/{_id(3, 0)}"):
                        t = time.monotonic()
                        res = http.get(f"{base}/{path}")
                        assert res.status_code == 200, res.text[:300]
                        latencies.append(time.monotonic() - t)
                    time.sleep(0.05)

        results: list[dict] = [{}] * clients
        one = work / "one"
        one.mkdir()
        start = time.monotonic()

        def run(i: int) -> None:
            results[i] = export(base, keys[i], i, one if i == 0 else None, marks)

        readers = [threading.Thread(target=reader) for _ in range(2)]
        workers = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in [*readers, *workers]:
            t.start()
        for t in workers:
            t.join()
        total = time.monotonic() - start
        stop.set()
        for t in readers:
            t.join()
        print(f"{clients} concurrent exports: first manifest ready {marks['first_manifest'] - start:.1f} s, all downloaded {total:.1f} s")
        print(f"read latency under load ({len(latencies)} reads): p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms")
    job = orjson.loads((home / "api" / "jobs" / results[0]["job"] / "job.json").read_bytes())
    # Throughput on its own (no other job running): the same job again, timed from its JSON, after
    # one untimed export so the worker processes have started.
    with live_server(home) as base:
        export(base, keys[1], 1, None, {})
        again = export(base, keys[0], 0, None, {})
    job = orjson.loads((home / "api" / "jobs" / again["job"] / "job.json").read_bytes())
    from atr_pipeline.api.jobs import parse_instant

    seconds = (parse_instant(job["finished"]) - parse_instant(job["created"])).total_seconds()
    polars_seconds = _polars_write(sorted(one.glob("*.ndjson")), work / "polars.ndjson")
    mb = again["bytes"] / 2**20
    print(f"one Group alone: {mb:.1f} MiB in {seconds:.2f} s ({mb / seconds:.0f} MiB/s) vs polars write_csv "
          f"{polars_seconds:.3f} s ({mb / polars_seconds:.0f} MiB/s): polars is {seconds / polars_seconds:.1f}x faster")


def big_group_phase(work: Path, members: int) -> None:
    home = work / "big"
    write_month(home / "exports" / "big" / "2026-11", members, 1)
    size = (home / "exports" / "big" / "2026-11" / "Group.ndjson").stat().st_size
    (key,) = register(home, 1)
    with live_server(home) as base:
        server = next(p for p in psutil.Process(os.getpid()).children() if "serve" in " ".join(p.cmdline()))

        def rss() -> tuple[int, int]:
            """(server process, largest export worker process) RSS."""
            workers = [0]
            for child in server.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    workers.append(child.memory_info().rss)
            return server.memory_info().rss, max(workers)

        before = rss()
        peak = list(before)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(psutil.NoSuchProcess):
                    now = rss()
                    peak[0], peak[1] = max(peak[0], now[0]), max(peak[1], now[1])
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t = time.monotonic()
        out = work / "big-out"
        out.mkdir()
        result = export(base, key, 0, out, {})
        elapsed = time.monotonic() - t
        stop.set()
        sampler.join()
    print(f"one Group of {members:,} members (Group line {size / 2**20:.0f} MiB, export {result['bytes'] / 2**20:.0f} MiB) "
          f"in {elapsed:.1f} s: server process RSS {before[0] / 2**20:.0f} MiB before, peak {peak[0] / 2**20:.0f} MiB; "
          f"export worker process peak {peak[1] / 2**20:.0f} MiB")
    job = orjson.loads((home / "api" / "jobs" / result["job"] / "job.json").read_bytes())
    from atr_pipeline.api.jobs import parse_instant

    seconds = (parse_instant(job["finished"]) - parse_instant(job["created"])).total_seconds()
    polars_seconds = _polars_write(sorted(out.glob("*.ndjson")), work / "big-polars.ndjson")
    mb = result["bytes"] / 2**20
    print(f"  throughput: job {seconds:.1f} s ({mb / seconds:.0f} MiB/s) vs polars writing the same lines "
          f"{polars_seconds:.1f} s ({mb / polars_seconds:.0f} MiB/s): ratio {seconds / polars_seconds:.1f}")


def _polars_write(files: list[Path], target: Path) -> float:
    """Seconds polars takes to write these NDJSON lines (read untimed first)."""
    lines = pl.concat([pl.read_csv(p, has_header=False, separator="\x1f", quote_char=None, new_columns=["json"],
                                   schema={"json": pl.String()}) for p in files])
    t = time.monotonic()
    lines.write_csv(target, include_header=False, quote_style="never")
    return time.monotonic() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--big-group", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--only", choices=("concurrent", "big"), help="run one phase")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_api_"))
    try:
        if args.only != "big":
            concurrent_phase(work, args.members, args.clients)
        if args.only != "concurrent":
            big_group_phase(work, args.big_group)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
