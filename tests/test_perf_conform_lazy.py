"""The conformance fast path reads each resource type once, from a mapping that loads on access.

The fhir/ stage hands ``check_ndjson_frames`` a read-only Mapping whose ``__getitem__`` reads a
type's (id, json) frame from disk every time. Here a Mapping over parquet files counts its loads:
the fast path must read each type exactly once, in load order, and still give the report the
per-resource checker gives on the same frames held in a plain dict (sample included).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import polars as pl
import pytest
from conform_frames import built_frames

from atr_pipeline.conform import fast
from atr_pipeline.conform.checker import check_ndjson_frames, frame_order


class CountingFrames(Mapping[str, pl.DataFrame]):
    """Each access reads the type's parquet file again; ``loads`` counts accesses per type."""

    def __init__(self, folder: Path, heights: bool = True) -> None:
        self.folder = folder
        self.types = sorted(p.stem for p in folder.glob("*.parquet"))
        self.loads: list[str] = []
        if heights:
            self.heights = {t: pl.scan_parquet(folder / f"{t}.parquet").select(pl.len()).collect().item() for t in self.types}

    def __getitem__(self, rtype: str) -> pl.DataFrame:
        if rtype not in self.types:
            raise KeyError(rtype)
        self.loads.append(rtype)
        return pl.read_parquet(self.folder / f"{rtype}.parquet")

    def __iter__(self) -> Iterator[str]:
        return iter(self.types)

    def __len__(self) -> int:
        return len(self.types)


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return built_frames(members=1200, seed=4)


def _on_disk(frames: dict[str, pl.DataFrame], folder: Path, **changed: pl.DataFrame) -> Path:
    folder.mkdir()
    for rtype, df in {**frames, **changed}.items():
        df.select("id", "json").write_parquet(folder / f"{rtype}.parquet")
    return folder


KW = dict(structural="sample", sample_size=300, seed=2, assume_profiles=False, resolve_references=True)


@pytest.mark.parametrize("heights", [True, False])
def test_each_type_is_loaded_once_in_load_order_with_the_same_report(frames, tmp_path, heights):
    lazy = CountingFrames(_on_disk(frames, tmp_path / "f"), heights=heights)
    report = fast.fast_report(lazy, frame_order(lazy), **KW)
    assert report is not None
    assert lazy.loads == frame_order(frames)  # every type once, targets before referrers
    slow = check_ndjson_frames(frames, fast=False, **KW)
    assert report == slow
    assert report.structurally_checked == 300
    assert report.resources_checked == sum(df.height for df in frames.values())


def test_check_ndjson_frames_on_a_lazy_mapping_loads_once_and_matches_the_dict(frames, tmp_path):
    lazy = CountingFrames(_on_disk(frames, tmp_path / "f"))
    report = check_ndjson_frames(lazy, **KW)
    assert sorted(lazy.loads) == sorted(frames)
    assert len(lazy.loads) == len(frames)
    assert report == check_ndjson_frames(frames, **KW)


def test_a_sample_that_finds_a_structural_error_is_the_same_from_disk(frames, tmp_path):
    # A bad birthDate passes every cheap rule: only the structural sample can see it, so the
    # streamed reservoir must pick exactly the resources the per-resource checker picks.
    patients = frames["Patient"].with_columns(pl.col("json").str.replace(r'"birthDate":"(\d{4})-\d\d', '"birthDate":"${1}-13'))
    lazy = CountingFrames(_on_disk(frames, tmp_path / "f", Patient=patients))
    for seed in (0, 7, 31):
        kw = dict(KW, seed=seed, sample_size=150)
        report = fast.fast_report(lazy, frame_order(lazy), **kw)
        slow = check_ndjson_frames(dict(frames, Patient=patients), fast=False, **kw)
        assert report == slow
        assert [r.rule for r in report.results] == ["r4.structure"]
        assert report.results[0].count == slow.results[0].count > 0
    assert lazy.loads == frame_order(frames) * 3


def test_a_declined_set_falls_back_and_reports_the_broken_rule(frames, tmp_path):
    coverage = frames["Coverage"]
    broken = coverage.with_columns(
        pl.when(pl.int_range(0, pl.len()) == 5)
        .then(pl.col("json").str.replace('"status":"active"', '"status":"cancelled"', literal=True))
        .otherwise(pl.col("json"))
        .alias("json")
    )
    lazy = CountingFrames(_on_disk(frames, tmp_path / "f", Coverage=broken))
    report = check_ndjson_frames(lazy, **KW)
    assert [r.rule for r in report.results] == ["coverage.status.fixed"]
    assert report.results[0].count == 1
    # The fast path stops at Coverage (its loads so far), then the per-resource path reads each type once.
    order = frame_order(frames)
    assert lazy.loads == order[: order.index("Coverage") + 1] + order


@pytest.mark.parametrize(("total", "size", "seed", "splits"), [(1000, 40, 3, [0, 10, 0, 400, 590]), (50, 80, 1, [20, 30]), (9000, 7, 5, [1, 1, 8998])])
def test_reservoir_drawn_per_type_keeps_the_positions_of_the_whole_stream(total, size, seed, splits):
    import random

    assert sum(splits) == total
    sample: list[int] = []
    rng, seen = random.Random(seed), 0
    for n in splits:
        seen = fast._draw(rng, sample, seen, n, size)
    assert seen == total
    assert sample == fast._reservoir(total, size, seed)
    assert len(sample) == min(size, total)


# ---------------------------------------------------------------- the staged build, part by part


def test_a_staged_build_is_checked_part_by_part_with_the_same_report(frames, tmp_path):
    """StagedResources offers iter_parts: the fast path reads one NDJSON part at a time (here 100
    lines) and must give the in-memory report, sample included."""
    from atr_pipeline.publish.export import stage_resources

    staged = stage_resources(tmp_path / "m", frames, max_lines_per_file=100)
    assert max(len(items) for items in staged.files.values()) > 5  # several parts per bulk type
    for seed in (0, 7):
        kw = dict(KW, seed=seed, sample_size=150)
        report = fast.fast_report(staged, frame_order(staged), **kw)
        assert report is not None and report == check_ndjson_frames(frames, fast=False, **kw)
        assert report.structurally_checked == 150


class _Parted(dict):
    """A plain dict of frames that also hands out given types in given parts."""

    def __init__(self, frames: dict[str, pl.DataFrame], parts: dict[str, list[pl.DataFrame]]) -> None:
        super().__init__(frames)
        self.parts = parts

    def iter_parts(self, rtype: str) -> Iterator[pl.DataFrame]:
        yield from self.parts.get(rtype, [self[rtype]])


def test_a_duplicate_id_in_two_parts_is_caught_across_parts(frames):
    """Each part alone has unique ids; the same Patient at the end of one part and the start of
    the next must still decline the fast path, and the per-resource checker reports it."""
    patients = frames["Patient"].sort("id")
    twin = pl.concat([patients.head(100), patients.slice(99)])  # row 99 twice, ids still sorted
    split = _Parted(dict(frames, Patient=twin), {"Patient": [twin.head(100), twin.slice(100)]})
    assert split.parts["Patient"][0]["id"].is_unique().all() and split.parts["Patient"][1]["id"].is_unique().all()
    assert fast.fast_report(split, frame_order(split), **KW) is None
    report = check_ndjson_frames(split, **KW)
    assert {r.rule: r.count for r in report.results} == {"resource.id.duplicate": 1}
    # The same parts without the twin pass the fast path with the whole-frame report.
    clean = _Parted(dict(frames), {"Patient": [patients.head(100), patients.slice(100)]})
    assert fast.fast_report(clean, frame_order(clean), **KW) == check_ndjson_frames(frames, fast=False, **KW)
