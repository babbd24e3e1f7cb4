"""Screenshots of the Dagster UI on the demo data, for docs/ANALYST.md.

In: the bundled fixtures (run through `atr demo` into a temporary home first, unless --home
points at an existing demo home), Debian's headless Chromium (scripts/install/chromium.sh).
Out: docs/img/asset_graph.png, docs/img/materialization_metadata.png, docs/img/checks.png
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
}


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
    server = web.start_webserver(home / "dagster", env, log_path=home / "webserver.log")
    try:
        for name, (path, size) in SHOTS.items():
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
