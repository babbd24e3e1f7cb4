"""Round-3 conformance fast path pieces: the inlined reservoir draws and the byte slices."""

from __future__ import annotations

import random

import polars as pl
import pytest

from atr_pipeline.conform import fast


def _reservoir_by_randrange(total: int, size: int, seed: int) -> list[int]:
    # The Checker's own algorithm (checker.py): rng.randrange per resource after the first `size`.
    rng = random.Random(seed)
    sample = list(range(min(size, total)))
    for seen in range(size + 1, total + 1):
        j = rng.randrange(seen)
        if j < size:
            sample[j] = seen - 1
    return sample


@pytest.mark.parametrize(("total", "size", "seed"), [(0, 5, 0), (3, 5, 1), (5, 5, 2), (70_000, 2_000, 0), (10_000, 7, 12345)])
def test_inlined_reservoir_draws_the_same_positions_as_randrange(total: int, size: int, seed: int) -> None:
    assert fast._reservoir(total, size, seed) == _reservoir_by_randrange(total, size, seed)


def test_byte_slices_cover_every_row_once_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "BULK_SLICE_BYTES", 10)
    texts = pl.Series("json", ["abcd"] * 7 + ["x" * 25, "y", None, "zz"])
    slices = fast._byte_slices(texts)
    assert slices[0][0] == 0
    assert [a + n for a, n in slices[:-1]] == [a for a, _ in slices[1:]]
    assert sum(n for _, n in slices) == texts.len()
    assert all(n > 0 for _, n in slices)
    # cumulative bytes 4,8,12,16,20,24,28,53,54,54,56: cuts after the rows that pass 10, 20, 30
    assert slices == [(0, 3), (3, 2), (5, 3), (8, 3)]


def test_byte_slices_of_an_empty_column() -> None:
    assert fast._byte_slices(pl.Series("json", [], dtype=pl.String)) == [(0, 0)]
