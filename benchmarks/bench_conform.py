"""`atr conform` on a pipeline-built export, timed the way a user runs it.

    python benchmarks/bench_conform.py [--members 300000] [--mapping mappings/acme_commercial.yaml]
                                       [--export DIR] [--no-full] [--work DIR] [--keep]

Builds one synthetic month of N members with the project's own pipeline (the functions `atr run`
calls: land, read + validate, history, FHIR build, conformance, export), then runs
`atr conform EXPORT` (default: every rule on every resource, R4 structure on the run's sample)
and `atr conform EXPORT --full` (structure on every resource) as subprocesses, and prints wall
time, CPU time (user + system of the child), peak RSS and resources/s for each, plus the ratio
to the run's own conformance stage on the same month. ``--export`` reuses an existing export
(skips the build). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_export(members: int, mapping: Path, work: Path) -> tuple[Path, float, float]:
    """One month through the pipeline; returns the export folder and the run's conformance
    stage wall and CPU seconds (in this process)."""
    os.environ.setdefault("ATR_ID_KEY", "benchmark-key")
    from atr_pipeline import pipeline
    from atr_pipeline.config import load_settings
    from atr_pipeline.layouts.spec import load_mapping
    from atr_pipeline.synthetic import write_synthetic

    spec = load_mapping(mapping)
    settings = load_settings(work / "home", inbox=work / "inbox", mappings_dir=mapping.parent)
    month = date(2026, 9, 1)
    path = write_synthetic(spec, members=members, month=month, out_dir=settings.inbox_dir, seed=7)
    landed = pipeline.land_path(path, spec, settings)
    validated = pipeline.validate_read(pipeline.read_landed(landed, spec), landed, spec)
    _, outcomes = pipeline.write_rejects(validated, settings, spec)
    pipeline.record_history(validated, settings, spec)
    del validated
    built = pipeline.build_month(spec, month, settings)
    t0, c0 = time.perf_counter(), time.process_time()
    report = pipeline.check_month(built)
    stage = (time.perf_counter() - t0, time.process_time() - c0)
    print(f"run's conformance stage: {stage[0]:.2f} s wall, {stage[1]:.2f} s CPU, "
          f"{report.resources_checked:,} resources, structure on {report.structurally_checked:,}, ok={report.ok}")
    return pipeline.export_month(built, settings, errors=outcomes), *stage


def run_child(export: Path, *extra: str) -> dict:
    """`atr conform EXPORT --json-out [extra]` in a child process: wall, CPU, peak RSS, report."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "atr_pipeline.cli", "conform", str(export), "--json-out", *extra]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        # wait4: this child's own CPU time and peak RSS (KiB), not all children's.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{cmd} failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    return {
        "cmd": " ".join(["atr conform EXPORT", *extra]),
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
        "report": orjson.loads(stdout),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=300_000)
    ap.add_argument("--mapping", type=Path, default=ROOT / "mappings" / "acme_commercial.yaml")
    ap.add_argument("--export", type=Path, default=None, help="check this export instead of building one")
    ap.add_argument("--no-full", action="store_true", help="skip `--full` (minutes at 1M)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    print(f"machine: {platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"Python {platform.python_version()}")
    work = args.work or Path(tempfile.mkdtemp(prefix="atr-bench-conform-"))
    stage = None
    if args.export is None:
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        export, *stage = build_export(args.members, args.mapping, work)
        print(f"built {args.members:,} members into {export} in {time.perf_counter() - t0:.1f} s")
    else:
        export = args.export
    size = sum(p.stat().st_size for p in export.iterdir())
    print(f"export: {export} ({size / 2**30:.2f} GiB)")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    runs = [run_child(export)]
    if not args.no_full:
        runs.append(run_child(export, "--full"))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print("| command | resources | structure checked | wall s | CPU s | peak RSS MiB | resources/s (wall) | reported resources/s | ok |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        rep = r["report"]
        n = rep["resources_checked"]
        print(f"| `{r['cmd']}` | {n:,} | {rep['structurally_checked']:,} | {r['wall']:.2f} | {r['cpu']:.2f} | "
              f"{r['rss_mib']:.0f} | {n / r['wall']:,.0f} | {rep['resources_per_second']:,} | {rep['ok']} |")
    if stage is not None:
        default = runs[0]
        print()
        print(f"run's own stage {stage[0]:.2f} s wall / {stage[1]:.2f} s CPU; `atr conform` default "
              f"{default['wall']:.2f} s / {default['cpu']:.2f} s: {default['cpu'] / stage[1]:.2f}x the stage's CPU")
    if not args.keep and args.work is None and args.export is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
