"""A 100,000-member Group loads into the test server in chunks, with loader memory bounded by the
size of the Group line (memory, not time, is asserted)."""

from __future__ import annotations

import gc
import hashlib
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl
import pytest
from fhir_server_fixture import fhir, fhir_server  # noqa: F401

from atr_pipeline.publish.export import iter_ndjson, write_bulk_export
from atr_pipeline.publish.group_split import split_group
from atr_pipeline.publish.loader import load_export
from atr_pipeline.publish.server import RetryPolicy, ServerConfig, Timeouts
from atr_pipeline.publish.synthetic import synthetic_id, synthetic_resources


def _group_export(tmp_path: Path, members: int, name: str) -> tuple[Path, int]:
    """An export holding one Group of ``members`` members (the Patients themselves are not needed
    by the server, which does not enforce references)."""
    group = orjson.loads(synthetic_resources(1)["Group"]["json"][0])
    template = orjson.dumps(group["member"][0]).decode()
    placeholder = synthetic_id("patient", 0)
    lines = [template.replace(placeholder, synthetic_id("patient", i)) for i in range(members)]
    head = orjson.dumps({**{k: v for k, v in group.items() if k != "member"}, "quantity": members}).decode()
    line = head[:-1] + ',"member":[' + ",".join(lines) + "]}"
    del lines
    out = tmp_path / name
    write_bulk_export(
        out,
        {"Group": pl.DataFrame({"id": [group["id"]], "json": [line]})},
        errors=None,
        transaction_time=datetime(2026, 11, 1, tzinfo=UTC),
        request="Group/$davinci-data-export",
    )
    return out, len(line.encode())


def _load_measuring_peak(export_dir: Path, server) -> tuple[object, int]:
    config = ServerConfig(
        base_url=server.base_url,
        # The test server takes bodies up to 16 MB; each PATCH re-validates the whole Group, so
        # fewer, larger chunks are much cheaper for the server (see docs/LOADING.md).
        max_group_members_per_request=20_000,
        max_request_bytes=15_000_000,
        retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.5),
        timeouts=Timeouts(read=300, write=300),
    )
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        report = load_export(export_dir, config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return report, peak - base


@pytest.mark.slow  # 50-90 s here, most of it the server re-validating the growing Group per PATCH
def test_100k_member_group_loads_in_order_with_bounded_memory(fhir, tmp_path):
    small_dir, small_bytes = _group_export(tmp_path, 10_000, "small")
    small_report, small_peak = _load_measuring_peak(small_dir, fhir)
    assert small_report.status == "complete"

    big_dir, big_bytes = _group_export(tmp_path, 100_000, "big")
    assert big_bytes > 50_000_000  # a realistic ~58 MB NDJSON line
    report, peak = _load_measuring_peak(big_dir, fhir)
    assert report.status == "complete"
    assert report.counts["Group"].group_patches == 4  # 5 chunks of 20,000: one PUT, four PATCHes
    assert report.failed == []

    # Memory: the line itself plus member offsets and one request body at a time (measured ~2.7x
    # the line, tracemalloc). Parsing the line into Python objects would need ~10x; allow 4x.
    assert peak < 4 * big_bytes, (peak, big_bytes)
    # ... and no worse than linear: per byte of Group, the big load costs no more than the small one
    # (plus slack for fixed costs that the small load amortises less well).
    assert peak / big_bytes <= 1.25 * (small_peak / small_bytes) + 0.5, (peak, big_bytes, small_peak, small_bytes)

    # The server holds all 100,000 members, in export order, once each.
    group_id = orjson.loads(split_group(next(iter_ndjson(big_dir, "Group"))).head)["id"]
    stored = split_group(fhir.get(f"Group/{group_id}").content)
    assert len(stored) == 100_000
    expected = [f"Patient/{synthetic_id('patient', i)}" for i in range(100_000)]
    got = [orjson.loads(stored.member(i))["entity"]["reference"] for i in range(len(stored))]
    assert hashlib.sha256("\n".join(got).encode()).hexdigest() == hashlib.sha256("\n".join(expected).encode()).hexdigest()
