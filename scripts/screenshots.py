"""Screenshots of the Dagster UI on the demo data, for docs/ANALYST.md.

In: the bundled fixtures (run through `atr demo` into a temporary home first, unless --home
points at an existing demo home), then a real run of a refused file (fixtures/bad/bad_values
delivered as acme's November file: 3 of 7 rows rejected) and the daily lateness checks (the
demo months end in October, so every month due since is late); Debian's headless Chromium
(scripts/install/chromium.sh).
Out: docs/img/{asset_graph,materialization_metadata,checks,refused_run,late_month,lineage}.png
(or the --out folder). The webserver it starts on a free 127.0.0.1 port is stopped at the end.
Refused: no /usr/bin/chromium (exit 2, with the install command).

    .venv/bin/python scripts/screenshots.py [--home /tmp/atr-demo] [--out docs/img]

Chromium is driven with --screenshot (no Playwright, no browser download): the flags are the
ones FACTS.md measured; without --virtual-time-budget the React UI is captured blank.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
PARTITION = "2026-09-01|acme_commercial"  # a month with every change type, for the metadata shot

# name -> (path in the UI, window size). Multi-partition keys are "month|source" in URLs.
SHOTS = {
    # The asset lineage view draws every asset inside its group box (/asset-groups collapses groups).
    "asset_graph": ("/assets/server_load?view=lineage&lineageScope=upstream&lineageDepth=7", "1600,900"),
    "materialization_metadata": (f"/assets/attribution_snapshot?view=partitions&partition={quote(PARTITION)}", "1600,1300"),
    "checks": ("/assets/canonical_rows?view=checks", "1600,1000"),
    "late_month": ("/assets/landed_file?view=checks", "1600,1000"),
    "lineage": (f"/assets/fhir_resources?view=partitions&partition={quote(PARTITION)}", "1600,2200"),
    # refused_run: the run page of the refused file, added once its run id is known
}
REFUSED_MONTH = "2026-11-01"
REFUSED_FILE = "ACME_ATTRIB_202611.csv"

# Runs in a subprocess with the demo's ATR_* / DAGSTER_HOME: the refused month, then the lateness checks.
REFUSE_AND_CHECK = f"""
import dagster as dg
from atr_pipeline.definitions import defs
instance = dg.DagsterInstance.get()
res = defs.resolve_job_def("attribution_job").execute_in_process(
    partition_key=dg.MultiPartitionKey({{"month": "{REFUSED_MONTH}", "source": "acme_commercial"}}),
    instance=instance, raise_on_error=False, run_config={{"loggers": {{"console": {{"config": {{"log_level": "ERROR"}}}}}}}})
assert not res.success
defs.resolve_job_def("delivery_check_job").execute_in_process(instance=instance)
print(res.run_id)
"""


def refuse_and_check(home: Path, env: dict[str, str]) -> str:
    """A refused file and the lateness checks, run for real against the demo's instance; returns the refused run's id."""
    shutil.copy2(ROOT / "fixtures" / "bad" / "bad_values" / "ACME_ATTRIB_202608.csv", home / "inbox" / REFUSED_FILE)
    run_env = {**env, "DAGSTER_HOME": str(home / "dagster")}
    out = subprocess.run([sys.executable, "-c", REFUSE_AND_CHECK], cwd=ROOT, env=run_env, check=True,
                         capture_output=True, text=True, timeout=300)
    return out.stdout.strip().splitlines()[-1]


def _webserver_module():
    # tests/ is not a package: load the helper by path.
    spec = importlib.util.spec_from_file_location("atr_test_webserver", ROOT / "tests" / "webserver_fixture.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def run_demo(home: Path, env: dict[str, str]) -> None:
    atr = str(Path(sys.executable).with_name("atr"))
    subprocess.run([atr, "demo", "--home", str(home)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def screenshot(url: str, out: Path, size: str, budget_ms: int) -> None:
    with tempfile.TemporaryDirectory(prefix="atr-chromium-") as profile:
        cmd = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size}",
            f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url,
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=180)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="an existing `atr demo` home (default: run the demo into a temp folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--budget-ms", type=int, default=15000, help="Chromium virtual time budget per page")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"no {CHROMIUM}: run `sudo bash scripts/install/chromium.sh` first", file=sys.stderr)
        return 2
    web = _webserver_module()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATR_", "DAGSTER_"))}
    env.setdefault("ATR_ID_KEY", "screenshots-demo-key")
    tmp = None
    home = args.home
    if home is None:
        tmp = Path(tempfile.mkdtemp(prefix="atr-screens-"))
        home = tmp / "demo"
        print(f"running `atr demo` into {home} ...", file=sys.stderr)
        run_demo(home, env)
    home = home.resolve()
    env.update({"ATR_HOME": str(home), "ATR_INBOX": str(home / "inbox"), "ATR_MAPPINGS_DIR": str(ROOT / "mappings")})
    args.out.mkdir(parents=True, exist_ok=True)
    refused_run = refuse_and_check(home, env)
    shots = {**SHOTS, "refused_run": (f"/runs/{refused_run}", "1600,1000")}
    server = web.start_webserver(home / "dagster", env, log_path=home / "webserver.log")
    try:
        for name, (path, size) in shots.items():
            out = args.out / f"{name}.png"
            screenshot(server.url + path, out, size, args.budget_ms)
            print(f"wrote {out} ({out.stat().st_size:,} bytes)", file=sys.stderr)
    finally:
        server.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
