"""Count wrong outputs of overlapping `atr run`s into one ATR_HOME, on this code or another checkout.

    python benchmarks/overlap_tries.py [--code DIR] [--tries 12] [--members 0] [--gap 0.15]

For each try and scenario it starts two real `atr run` processes (the second ``--gap`` seconds
after the first) in a fresh home and compares the result with the same months run one after the
other (exports without publication times and version numbers, `atr trends`, Group versions in
month order, exit codes; for the same file twice also: one run says "already processed" and no
run failed). ``--code`` puts another checkout first on PYTHONPATH (e.g. a `git worktree` of
main); ``--members N`` uses `atr fixtures` files of N members instead of the bundled fixtures.
Prints tries and wrong outputs per scenario; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import overlap_tools  # noqa: E402
from overlap_tools import MAPPINGS, SOURCES, atr, differences, run_args, together, trend_rows  # noqa: E402


def _inbox(work: Path, source: str, members: int) -> Path | None:
    if not members:
        return None
    inbox = work / f"inbox_{source}"
    for month in ("2026-09", "2026-10"):
        res = atr([sys.executable, "-m", "atr_pipeline.cli", "fixtures", "--mapping", str(MAPPINGS / f"{source}.yaml"),
                   "--members", str(members), "--month", month, "--out", str(inbox), "--seed", "7"], work / "scratch")
        assert res.returncode == 0, res.stderr
    return inbox


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", type=Path, help="checkout to run (default: this one)")
    parser.add_argument("--tries", type=int, default=12)
    parser.add_argument("--members", type=int, default=0)
    parser.add_argument("--gap", type=float, default=0.15)
    args = parser.parse_args()
    code = str((args.code or Path(__file__).resolve().parents[1]).resolve())
    os.environ["PYTHONPATH"] = code
    overlap_tools.CODE = Path(code)
    acme, state = "acme_commercial", "statewide_medicaid"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inboxes = {s: _inbox(work, s, args.members) for s in SOURCES}

        def run(source: str, month: str) -> list[str]:
            return run_args(source, month, inboxes[source])

        refs = {acme: work / "ref_acme", state: work / "ref_state"}
        for source, months in ((acme, ["2026-09", "2026-10"]), (state, ["2026-09"])):
            for month in months:
                res = atr(run(source, month), refs[source])
                assert res.returncode == 0, res.stdout + res.stderr

        def agree(home: Path, source: str, months: list[str]) -> list[str]:
            problems = differences(home, refs[source], source, months=months)
            if trend_rows(home, source, pythonpath=code) != trend_rows(refs[source], source, months, pythonpath=code):
                problems.append("trends differ")
            return problems

        scenarios = {
            "two months of one source, 09 started first": [run(acme, "2026-09"), run(acme, "2026-10")],
            "two months of one source, 10 started first": [run(acme, "2026-10"), run(acme, "2026-09")],
            "the same file twice": [run(acme, "2026-09"), run(acme, "2026-09")],
            "two sources": [run(acme, "2026-09"), run(state, "2026-09")],
        }
        print(f"code: {code}, tries per scenario: {args.tries}, members: {args.members or 'bundled fixtures'}")
        for name, runs in scenarios.items():
            wrong = 0
            notes: dict[str, int] = {}
            for attempt in range(args.tries):
                home = work / f"h{abs(hash(name))}-{attempt}"
                results = together(runs, home, gap=args.gap)
                problems = [f"exit {c}" for c, _ in results if c != 0]
                if name == "the same file twice":
                    problems += agree(home, acme, ["2026-09"])
                    if sum("already processed" in out for _, out in results) != 1:
                        problems.append("no run reported it already processed")
                    if any("Traceback" in out for _, out in results):
                        problems.append("traceback")
                elif name == "two sources":
                    problems += agree(home, acme, ["2026-09"]) + agree(home, state, ["2026-09"])
                else:
                    problems += agree(home, acme, ["2026-09", "2026-10"])
                if problems:
                    wrong += 1
                    for p in problems:
                        key = p.split(":")[-1].strip()[:70]
                        notes[key] = notes.get(key, 0) + 1
            print(f"{name}: {args.tries} tries, {wrong} wrong" + (f"  ({'; '.join(f'{k} x{n}' for k, n in notes.items())})" if notes else ""))


if __name__ == "__main__":
    main()
