"""The executor of a run: in-process unless ATR_DAGSTER_EXECUTOR asks for a process per step.

Partitions of different sources run in parallel as separate runs either way (history is one file
per source); docs/PERFORMANCE.md measures both executors on 4 sources at once.
"""

from __future__ import annotations

import dagster as dg
import pytest

from atr_pipeline.defs.build import EXECUTOR_ENV, MAX_CONCURRENT_ENV, executor
from atr_pipeline.errors import AtrError


def test_in_process_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    assert executor() is dg.in_process_executor


def test_multiprocess_when_asked_with_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXECUTOR_ENV, "multiprocess")
    monkeypatch.delenv(MAX_CONCURRENT_ENV, raising=False)
    assert executor() is dg.multiprocess_executor
    monkeypatch.setenv(MAX_CONCURRENT_ENV, "3")
    chosen = executor()
    assert chosen.name == "multiprocess"
    assert chosen.apply_config_mapping({}).value["config"]["max_concurrent"] == 3


def test_an_unknown_executor_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXECUTOR_ENV, "celery")
    with pytest.raises(AtrError, match="ATR_DAGSTER_EXECUTOR must be one of in_process, multiprocess, not 'celery'"):
        executor()
