"""Benchmark: write a synthetic export and load it into the Medplum test server; then a big Group.

Run: ``python benchmarks/bench_load.py [--members 5000] [--group-members 100000] [--dir /tmp/x]``
(needs Node and tests/fhir_server/node_modules, like the integration tests).
Prints, per loader setting, resources/s and requests; then, for one large Group, the load time,
the loader's peak traced memory and its ratio to the Group line's size. Speeds on a shared 2-core
machine are noisy: compare the ratios between settings, not the absolute numbers.
All data is synthetic (generated ids and names), never real members.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test server's launcher lives with the tests

from fhir_server_fixture import start_fhir_server  # noqa: E402

from atr_pipeline.publish.export import iter_ndjson, write_bulk_export  # noqa: E402
from atr_pipeline.publish.group_split import split_group  # noqa: E402
from atr_pipeline.publish.loader import load_export  # noqa: E402
from atr_pipeline.publish.server import ServerConfig, Timeouts  # noqa: E402
from atr_pipeline.publish.synthetic import synthetic_id, synthetic_resources  # noqa: E402

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def big_group_export(folder: Path, members: int) -> tuple[Path, int]:
    group = orjson.loads(synthetic_resources(1)["Group"]["json"][0])
    template = orjson.dumps(group["member"][0]).decode()
    placeholder = synthetic_id("patient", 0)
    head = orjson.dumps({k: v for k, v in group.items() if k != "member"}).decode()
    line = head[:-1] + ',"member":[' + ",".join(template.replace(placeholder, synthetic_id("patient", i)) for i in range(members)) + "]}"
    out = folder / "big-group"
    write_bulk_export(out, {"Group": pl.DataFrame({"id": [group["id"]], "json": [line]})}, errors=None, transaction_time=T0, request="bench")
    return out, len(line.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5_000)
    parser.add_argument("--group-members", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--versions", action="store_true", help="only measure what a re-run and --restart do to versions")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        if args.versions:
            measure_versions(args, folder)
        else:
            run(args, folder)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


def _versions_per_resource(server, export_dir: Path, sample: int = 30) -> dict[str, float]:
    """Mean number of stored versions per resource, over the first ``sample`` ids of each type."""
    out = {}
    for resource_type in ("Organization", "Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Coverage", "Group"):
        ids = []
        for line in iter_ndjson(export_dir, resource_type):
            ids.append(orjson.loads(line)["id"] if resource_type != "Group" else orjson.loads(split_group(line).head)["id"])
            if len(ids) == sample:
                break
        totals = [server.get(f"{resource_type}/{i}/_history").json().get("total", 0) for i in ids]
        out[resource_type] = sum(totals) / len(totals)
    return out


def measure_versions(args: argparse.Namespace, folder: Path) -> None:
    """A load, a re-run, ``--restart`` (read first, the default) and ``--restart --always-put``:
    versions per resource after each, and what each cost. Groups above 400 members go through the
    PUT + JSON Patch path, so both ways of writing a Group are measured."""
    export_dir = folder / "export"
    manifest = write_bulk_export(export_dir, synthetic_resources(args.members, groups=4), errors=None, transaction_time=T0, request="bench")
    total = sum(f.count for f in manifest.output)
    print(f"export: {total} resources, Groups of ~{args.members // 4} members (over 400: PUT + PATCH)")
    base = {"bundle_size": 50, "concurrency": 2, "max_group_members_per_request": 400}
    steps = [
        ("first load (read first)", True, {}),
        ("re-run (checkpoint verified, nothing sent)", True, {}),
        ("--restart (read first, PUT only what differs)", False, {}),
        ("--restart --always-put", False, {"skip_unchanged": False}),
    ]
    with start_fhir_server() as server:
        for label, resume, options in steps:
            t = time.perf_counter()
            report = load_export(export_dir, ServerConfig(base_url=server.base_url, **base, **options), resume=resume)
            seconds = time.perf_counter() - t
            versions = _versions_per_resource(server, export_dir)
            shown = ", ".join(f"{k} {v:.2f}" for k, v in versions.items())
            print(
                f"{label:48s} {seconds:6.2f} s, {report.requests} writes, {report.reads} reads, {report.check_requests} check reads, "
                f"unchanged {report.total('unchanged')}, status {report.status}; versions per resource: {shown}"
            )
        server.reset()
        t = time.perf_counter()
        load_export(export_dir, ServerConfig(base_url=server.base_url, **base, skip_unchanged=False), resume=False)
        always = time.perf_counter() - t
        server.reset()
        t = time.perf_counter()
        load_export(export_dir, ServerConfig(base_url=server.base_url, **base), resume=False)
        first = time.perf_counter() - t
        print(f"first load into an empty server: read-first / always-put time = {first / always:.2f}")


def run(args: argparse.Namespace, folder: Path) -> None:

    t = time.perf_counter()
    export_dir = folder / "export"
    manifest = write_bulk_export(export_dir, synthetic_resources(args.members, groups=10), errors=None, transaction_time=T0, request="bench")
    total = sum(f.count for f in manifest.output)
    print(f"export: {total} resources written in {time.perf_counter() - t:.2f} s")

    settings = [
        ("batch, bundle 50, concurrency 1", {"mode": "batch", "bundle_size": 50, "concurrency": 1}),
        ("batch, bundle 50, concurrency 2", {"mode": "batch", "bundle_size": 50, "concurrency": 2}),
        ("transaction, bundle 50, concurrency 2", {"mode": "transaction", "bundle_size": 50, "concurrency": 2}),
        ("batch, bundle 10, concurrency 2", {"mode": "batch", "bundle_size": 10, "concurrency": 2}),
    ]
    with start_fhir_server() as server:
        baseline = None
        for label, options in settings:
            server.reset()
            t = time.perf_counter()
            report = load_export(export_dir, ServerConfig(base_url=server.base_url, **options), resume=False)
            seconds = time.perf_counter() - t
            rate = total / seconds
            baseline = baseline or rate
            print(f"{label:40s} {rate:8.0f} resources/s  ({report.requests} requests, {report.status}, x{rate / baseline:.2f})")

        # Idempotent re-run: a complete checkpoint means nothing is sent.
        t = time.perf_counter()
        again = load_export(export_dir, ServerConfig(base_url=server.base_url, **settings[-1][1]))
        print(f"resumed re-run of a complete load: {again.requests} requests in {time.perf_counter() - t:.2f} s")

        server.reset()
        group_dir, line_bytes = big_group_export(folder, args.group_members)
        config = ServerConfig(
            base_url=server.base_url,
            max_group_members_per_request=20_000,
            max_request_bytes=15_000_000,
            timeouts=Timeouts(read=600, write=600),
        )
        gc.collect()
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        t = time.perf_counter()
        report = load_export(group_dir, config)
        seconds = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            f"Group of {args.group_members} members ({line_bytes / 1e6:.1f} MB line): {seconds:.1f} s, "
            f"{report.counts['Group'].group_patches} PATCHes, {report.status}; loader peak traced memory "
            f"{(peak - base) / 1e6:.1f} MB = {(peak - base) / line_bytes:.2f} x the line"
        )


if __name__ == "__main__":
    main()
