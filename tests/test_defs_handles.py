"""Staged rows come back as they were read: every ReadResult field survives the handle."""

from __future__ import annotations

import dataclasses
import pickle
import stat
from pathlib import Path

import pytest

from atr_pipeline import pipeline
from atr_pipeline.config import load_settings
from atr_pipeline.defs import handles
from atr_pipeline.layouts.read import ReadResult
from atr_pipeline.layouts.spec import load_mapping

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("source", "name"), [("acme_commercial", "ACME_ATTRIB_202608.csv"), ("statewide_medicaid", "SWMCD_ME_202608.txt")])
def test_read_handle_round_trips_every_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, name: str) -> None:
    monkeypatch.setenv("ATR_ID_KEY", "handles-test")
    settings = load_settings(tmp_path / "home", inbox=tmp_path / "inbox", mappings_dir=ROOT / "mappings")
    spec = load_mapping(ROOT / "mappings" / f"{source}.yaml")
    landed = pipeline.land_path(ROOT / "fixtures" / source / name, spec, settings)
    read = pipeline.read_landed(landed, spec)
    handle = handles.stage_read(read, landed, settings)
    assert len(pickle.dumps(handle)) < 4_000  # what Dagster stores: a handle, not rows
    back = handles.load_read(pickle.loads(pickle.dumps(handle)))
    for f in dataclasses.fields(ReadResult):
        a, b = getattr(read, f.name), getattr(back, f.name)
        assert (a.equals(b) if hasattr(a, "equals") else a == b), f.name
    staged = [p for p in handle.folder.iterdir()]
    assert staged and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in staged)
    assert stat.S_IMODE(handle.folder.stat().st_mode) == 0o700
    handles.discard(handle.folder)
    with pytest.raises(handles.StagedRowsGone, match="re-materialize the partition from canonical_rows"):
        handles.load_read(handle)
