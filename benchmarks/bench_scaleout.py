"""Several sources of one month as concurrent Dagster runs, against the same runs one at a time.

    python benchmarks/bench_scaleout.py [--members 250000] [--sources 4]
                                        [--modes sequential,concurrent,multiprocess] [--work DIR] [--keep]

Writes ``--sources`` synthetic mappings in the work folder (copies of the bundled CSV and
fixed-width layouts under new source ids and file names; never in mappings/) and one month of
``--members`` members for each, then, per mode, on a fresh ATR_HOME and DAGSTER_HOME:
queues one `attribution_job` run per source partition (`dagster job launch`, as a backfill of the
month would), starts a real `dagster-daemon` (QueuedRunCoordinator; every run is its own process,
started by the default run launcher) and waits until every run has finished.

Modes: ``sequential`` max_concurrent_runs 1; ``concurrent`` max_concurrent_runs = sources; both with
the in-process executor (the default). ``multiprocess`` is ``concurrent`` with
ATR_DAGSTER_EXECUTOR=multiprocess (a process per step, as Celery and Kubernetes step executors run).

Prints per mode: wall seconds from the daemon's start until the last run ended, the span of the
runs themselves (first run start to last run end, from Dagster's run records), CPU seconds (user +
system of every process of the daemon's tree, sampled every 0.2 s, so a process living under 0.2 s
is missed), the peak of the tree's summed RSS and the largest single process; the load average;
the speed-up against ``sequential``; and whether the published output is identical: the sha256 of
every file under exports/ compared between modes, Group NDJSON and manifest.json after removing
their publication time (Group ``meta.lastUpdated``, the manifest's ``transactionTime`` and the
Group files' sha256 in its ``extension.sha256``), which is the moment of publishing by design. Asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MONTH = date(2026, 9, 1)
LAYOUTS = (("acme_commercial", "ACME_ATTRIB_"), ("statewide_medicaid", "SWMCD_ME_"))
DAGSTER_YAML = """\
nux:
  enabled: false
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {limit}
    dequeue_interval_seconds: 1
"""


def _bin(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else name


def write_sources(work: Path, sources: int, members: int) -> list[str]:
    """``sources`` mappings (alternating the CSV and fixed-width layouts) and a month of data for each."""
    from atr_pipeline.layouts.spec import load_mapping
    from atr_pipeline.synthetic import write_synthetic

    mappings, inbox = work / "mappings", work / "inbox"
    mappings.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(sources):
        layout, prefix = LAYOUTS[i % len(LAYOUTS)]
        source_id = f"payer_{i + 1}"
        text = (ROOT / "mappings" / f"{layout}.yaml").read_text()
        text = re.sub(r"(?m)^source_id: .*$", f"source_id: {source_id}", text, count=1)
        text = text.replace(prefix, f"P{i + 1}_{prefix}")
        path = mappings / f"{source_id}.yaml"
        path.write_text(text)
        spec = load_mapping(path)
        started = time.perf_counter()
        written = write_synthetic(spec, members=members, month=MONTH, out_dir=inbox, seed=7 + i)
        print(f"  {source_id}: {written.name} ({written.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - started:.1f} s)")
        ids.append(source_id)
    return ids


@dataclass
class TreeSampler:
    """CPU and RSS of a process and all its descendants, sampled every 0.2 s."""

    root: int
    cpu: dict[int, float] = field(default_factory=dict)  # pid -> last seen user+system seconds
    peak_total_rss: int = 0
    peak_process_rss: int = 0

    def sample(self) -> None:
        try:
            procs = [psutil.Process(self.root), *psutil.Process(self.root).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for p in procs:
            try:
                times, rss = p.cpu_times(), p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            key = p.pid * 10**7 + int(p.create_time() * 10) % 10**7  # a reused pid is another process
            self.cpu[key] = times.user + times.system
            total += rss
            self.peak_process_rss = max(self.peak_process_rss, rss)
        self.peak_total_rss = max(self.peak_total_rss, total)


@dataclass
class ModeResult:
    mode: str
    wall: float
    span: float
    cpu: float
    peak_total_mb: float
    peak_process_mb: float
    runs: list[tuple[str, str, float]]  # (source, status, seconds)
    load_before: float
    load_after: float
    home: Path


def run_mode(mode: str, work: Path, sources: list[str]) -> ModeResult:
    from dagster import DagsterInstance, DagsterRunStatus

    base = work / mode
    shutil.rmtree(base, ignore_errors=True)
    dagster_home, home = base / "dagster", base / "home"
    dagster_home.mkdir(parents=True)
    limit = 1 if mode == "sequential" else len(sources)
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML.format(limit=limit))
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "ATR_HOME": str(home), "ATR_INBOX": str(work / "inbox"),
           "ATR_MAPPINGS_DIR": str(work / "mappings"), "ATR_ID_KEY": "scaleout-benchmark"}
    if mode == "multiprocess":
        env["ATR_DAGSTER_EXECUTOR"] = "multiprocess"
    instance = DagsterInstance.from_config(str(dagster_home))
    instance.get_runs()  # create the storages before the daemon and the launches race on them
    instance.dispose()
    for source in sources:  # queued now, started by the daemon below
        key = f"{MONTH:%Y-%m-01}|{source}"
        tags = json.dumps({"dagster/partition": key, "dagster/partition/month": f"{MONTH:%Y-%m-01}",
                           "dagster/partition/source": source, "dagster/backfill": f"bench-{mode}"})
        launched = subprocess.run([_bin("dagster"), "job", "launch", "-j", "attribution_job", "-w", str(ROOT / "workspace.yaml"),
                                   "--tags", tags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if launched.returncode != 0:
            raise SystemExit(f"dagster job launch failed for {source}:\n{launched.stdout}{launched.stderr}")
    load_before = os.getloadavg()[0]
    log = (base / "daemon.log").open("w")
    started = time.perf_counter()
    daemon = subprocess.Popen([_bin("dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sampler = TreeSampler(daemon.pid)
    instance = DagsterInstance.from_config(str(dagster_home))
    finished = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
    try:
        polled = 0.0
        while True:
            sampler.sample()
            if time.perf_counter() - polled > 1.0:
                polled = time.perf_counter()
                runs = instance.get_runs()
                if len(runs) == len(sources) and all(r.status in finished for r in runs):
                    break
            time.sleep(0.2)
        wall = time.perf_counter() - started
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=60)
        log.close()
    records = [instance.get_run_record_by_id(r.run_id) for r in runs]
    starts = [r.start_time for r in records if r and r.start_time]
    ends = [r.end_time for r in records if r and r.end_time]
    per_run = sorted((r.dagster_run.tags["dagster/partition/source"], r.dagster_run.status.value,
                      (r.end_time or 0) - (r.start_time or 0)) for r in records if r)
    instance.dispose()
    return ModeResult(mode, wall, max(ends) - min(starts) if starts and ends else float("nan"), sum(sampler.cpu.values()),
                      sampler.peak_total_rss / 2**20, sampler.peak_process_rss / 2**20, per_run, load_before,
                      os.getloadavg()[0], home)


_TIME_FIELDS = re.compile(rb'"(lastUpdated|transactionTime)":"[^"]*"')


def published_digests(home: Path) -> dict[str, str]:
    """relative path -> sha256 of every published file; Group NDJSON and manifests without their publication time."""
    out: dict[str, str] = {}
    root = home / "exports"
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts[len(root.parts):])):
        rel = str(path.relative_to(root))
        data = path.read_bytes()
        if path.name.startswith("Group"):
            data = _TIME_FIELDS.sub(rb'"\1":"-"', data)
        elif path.name == "manifest.json":
            manifest = json.loads(data)
            manifest.pop("transactionTime", None)
            sums = manifest.get("extension", {}).get("sha256", {})
            for name in sums:
                if name.startswith("Group"):
                    sums[name] = "-"
            data = json.dumps(manifest, sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=250_000)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--modes", default="sequential,concurrent,multiprocess")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - {"sequential", "concurrent", "multiprocess"}
    if unknown:
        raise SystemExit(f"unknown mode(s): {', '.join(sorted(unknown))}")
    work = args.work or Path(tempfile.mkdtemp(prefix="atr-scaleout-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"{args.sources} sources x {args.members:,} members, month {MONTH:%Y-%m}; {os.cpu_count()} cores; work {work}")
        sources = write_sources(work, args.sources, args.members)
        results = []
        for mode in modes:
            print(f"\n== {mode} ==", flush=True)
            result = run_mode(mode, work, sources)
            for source, status, seconds in result.runs:
                print(f"  run {source}: {status} in {seconds:.1f} s")
            results.append(result)
        print("\n| mode | wall s | runs span s | CPU s | peak RSS, all processes (MiB) | largest process (MiB) | load before/after |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for r in results:
            print(f"| {r.mode} | {r.wall:.1f} | {r.span:.1f} | {r.cpu:.1f} | {r.peak_total_mb:,.0f} | {r.peak_process_mb:,.0f} "
                  f"| {r.load_before:.1f} / {r.load_after:.1f} |")
        by_mode = {r.mode: r for r in results}
        if "sequential" in by_mode:
            seq = by_mode["sequential"]
            for r in results:
                if r.mode != "sequential":
                    print(f"speed-up {r.mode} vs sequential: wall {seq.wall / r.wall:.2f}x, runs span {seq.span / r.span:.2f}x, "
                          f"CPU {r.cpu / seq.cpu:.2f}x of sequential's")
        digests = {r.mode: published_digests(r.home) for r in results}
        first = results[0].mode
        for r in results[1:]:
            a, b = digests[first], digests[r.mode]
            differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            print(f"output {r.mode} vs {first}: {len(a)} / {len(b)} published files, "
                  + ("identical" if not differing else f"{len(differing)} differ: {', '.join(differing[:6])}"))
        failed = [(r.mode, s) for r in results for s, status, _ in r.runs if status != "SUCCESS"]
        if failed:
            print(f"FAILED runs: {failed} (daemon logs in {work}/<mode>/daemon.log)")
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
