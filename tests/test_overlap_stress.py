"""Overlapping `atr run`s into one ATR_HOME give what runs one after the other give.

Each try starts two real `atr run` processes together (the second ``GAP`` seconds after the
first, so either may win the race) and compares every export and `atr trends` with homes where
the same months ran in month order, ignoring only publication times and version numbers, and
checks that Group versions follow month order:

* two months of one source, in both start orders (the later month may reach history first);
* the same file twice (one processes it, the other waits and reports it already processed);
* two sources (they do not wait for each other's lock; each equals its own run).

ATR_OVERLAP_TRIES (default 1) repeats every scenario; benchmarks/overlap_tries.py counts wrong
outputs over many tries, on this code or an older checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from overlap_tools import differences, in_order_reference, run_args, together, trend_rows

TRIES = int(os.environ.get("ATR_OVERLAP_TRIES", "1"))
GAP = 0.15
ACME, STATE = "acme_commercial", "statewide_medicaid"


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    acme = in_order_reference(tmp_path_factory.mktemp("ref_acme"), ACME, ["2026-09", "2026-10"])
    state = in_order_reference(tmp_path_factory.mktemp("ref_state"), STATE, ["2026-09"])
    return {ACME: acme, STATE: state}


_REFERENCE_TRENDS: dict[tuple[Path, str, tuple[str, ...]], list[list[str]]] = {}


def _agree(home: Path, reference: Path, source: str, months: list[str]) -> list[str]:
    problems = differences(home, reference, source, months=months)
    key = (reference, source, tuple(months))
    if key not in _REFERENCE_TRENDS:
        _REFERENCE_TRENDS[key] = trend_rows(reference, source, months)
    if trend_rows(home, source) != _REFERENCE_TRENDS[key]:
        problems.append(f"{source}: `atr trends` differs from the run in order")
    return problems


@pytest.mark.parametrize("first, second", [("2026-09", "2026-10"), ("2026-10", "2026-09")])
def test_two_months_of_one_source_started_together(tmp_path: Path, references, first: str, second: str) -> None:
    for attempt in range(TRIES):
        home = tmp_path / f"try{attempt}"
        results = together([run_args(ACME, first), run_args(ACME, second)], home, gap=GAP)
        for code, output in results:
            assert code == 0, output
        assert _agree(home, references[ACME], ACME, ["2026-09", "2026-10"]) == []


def test_the_same_file_twice_at_once(tmp_path: Path, references) -> None:
    for attempt in range(TRIES):
        home = tmp_path / f"try{attempt}"
        results = together([run_args(ACME, "2026-09"), run_args(ACME, "2026-09")], home, gap=GAP)
        assert [code for code, _ in results] == [0, 0], results
        outputs = [out for _, out in results]
        # One run did the work; the other waited for it and said so, without redoing anything.
        assert sum("ok       ACME_ATTRIB_202609.csv" in out for out in outputs) == 1, outputs
        assert sum("already processed" in out for out in outputs) == 1, outputs
        assert not any("Traceback" in out or "gone or was replaced" in out for out in outputs), outputs
        assert _agree(home, references[ACME], ACME, ["2026-09"]) == []


def test_two_sources_at_once(tmp_path: Path, references) -> None:
    for attempt in range(TRIES):
        home = tmp_path / f"try{attempt}"
        results = together([run_args(ACME, "2026-09"), run_args(STATE, "2026-09")], home, gap=GAP)
        for code, output in results:
            assert code == 0, output
        assert _agree(home, references[ACME], ACME, ["2026-09"]) == []
        assert _agree(home, references[STATE], STATE, ["2026-09"]) == []
