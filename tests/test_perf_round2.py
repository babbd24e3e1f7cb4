"""Performance round 2 keeps behaviour: streamed rendering gives render's bytes (and the bytes the
one-string render gave before the change), and the FHIR build is unchanged by its rewrite."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pytest

from atr_pipeline.layouts.spec import load_mappings
from atr_pipeline.layouts.write import iter_rendered, render, write_rendered
from atr_pipeline.synthetic import _payer_columns, population

REPO = Path(__file__).resolve().parents[1]
MAPPINGS = load_mappings(REPO / "mappings")
SEP = date(2026, 9, 1)

# sha256 of the pre-change render (whole file built as one string), 2,500 members, seed 3.
BEFORE = {
    ("acme_commercial", "\n", "necessary"): "a94dff62ab100b9d6514f8af1b47a3fe838fcc1c9a835105837d2537446161b1",
    ("acme_commercial", "\r\n", "always"): "04a1a673e2c9a0ed325aa7c249c4909124afe0ea32213fa241a0f4209a1336df",
    ("statewide_medicaid", "\n", "necessary"): "f0cef4342dd0651a1b661657468b0d6ae986740314421b82d3e033c4cc5e8931",
    ("statewide_medicaid", "\r\n", "always"): "7841a5d3e6d92b76300deef2ad453f7d77b3a260a5700e421d09d733e1af178b",
}


@pytest.mark.parametrize(("source", "line_ending", "quote_style"), sorted(BEFORE))
def test_streamed_render_is_byte_identical_to_the_one_string_render(tmp_path: Path, source: str, line_ending: str, quote_style: str) -> None:
    spec = MAPPINGS[source]
    rows = _payer_columns(spec, population(spec, members=2500, month=SEP, seed=3))
    whole = render(spec, rows, SEP, line_ending=line_ending, quote_style=quote_style)
    assert hashlib.sha256(whole).hexdigest() == BEFORE[(source, line_ending, quote_style)]
    for chunk_rows in (1, 7, 1000, 10**6):
        pieces = list(iter_rendered(spec, rows, SEP, line_ending=line_ending, quote_style=quote_style, chunk_rows=chunk_rows))
        assert b"".join(pieces) == whole
    written = write_rendered(spec, rows, SEP, tmp_path / "out.txt", line_ending=line_ending, quote_style=quote_style, chunk_rows=333)
    assert written.read_bytes() == whole


@pytest.mark.parametrize("source", sorted(MAPPINGS))
def test_streamed_render_of_no_rows_matches_render(source: str) -> None:
    spec = MAPPINGS[source]
    rows = _payer_columns(spec, population(spec, members=10, month=SEP, seed=3)).clear()
    whole = render(spec, rows, SEP)
    assert b"".join(iter_rendered(spec, rows, SEP, chunk_rows=1)) == whole
    assert whole.endswith(b"\n")


def test_chunk_rows_must_be_positive() -> None:
    spec = MAPPINGS["acme_commercial"]
    rows = _payer_columns(spec, population(spec, members=10, month=SEP, seed=3))
    with pytest.raises(ValueError, match="chunk_rows"):
        list(iter_rendered(spec, rows, SEP, chunk_rows=0))
