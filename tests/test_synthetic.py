"""Synthetic files: deterministic, valid, readable by their own mapping, with bounded churn."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from stdnum import luhn

from atr_pipeline.canonical import ISSUES_COLUMN, MEMBER_ENTRY_KEY
from atr_pipeline.layouts.read import read_file
from atr_pipeline.layouts.spec import load_mappings
from atr_pipeline.synthetic import luhn_npi, population, write_synthetic

REPO = Path(__file__).resolve().parents[1]
MAPPINGS = load_mappings(REPO / "mappings")
# The MBI format: C=1-9, A=letter without S L O I B Z, N=digit, AN=either; positions C A AN N A AN N A A N N.
_A, _AN = "[ACDEFGHJKMNPQRTUVWXY]", "[ACDEFGHJKMNPQRTUVWXY0-9]"
MBI_RE = re.compile(rf"^[1-9]{_A}{_AN}[0-9]{_A}{_AN}[0-9]{_A}{{2}}[0-9]{{2}}$")
AUG, SEP = date(2026, 8, 1), date(2026, 9, 1)


@pytest.mark.parametrize("source", ["acme_commercial", "statewide_medicaid"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, source: str) -> None:
    spec = MAPPINGS[source]
    a = write_synthetic(spec, members=300, month=AUG, out_dir=tmp_path / "a", seed=5)
    b = write_synthetic(spec, members=300, month=AUG, out_dir=tmp_path / "b", seed=5)
    c = write_synthetic(spec, members=300, month=AUG, out_dir=tmp_path / "c", seed=6)
    assert a.name == b.name == spec.file.match(a.name).string  # type: ignore[union-attr]
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


@pytest.mark.parametrize("source", ["acme_commercial", "statewide_medicaid"])
def test_mapping_reads_its_own_synthetic_file_cleanly(tmp_path: Path, source: str) -> None:
    spec = MAPPINGS[source]
    path = write_synthetic(spec, members=3000, month=SEP, out_dir=tmp_path, seed=1)
    result = read_file(path, spec)
    rows = result.rows
    assert result.structural_rejects.height == 0
    assert rows.get_column(ISSUES_COLUMN).list.len().sum() == 0
    assert result.reporting_month == SEP
    assert rows.get_column("member_id").n_unique() == 3000
    assert rows.select(MEMBER_ENTRY_KEY).is_duplicated().sum() == 0
    # identifiers are valid
    assert all(luhn.is_valid("80840" + n) for n in rows.get_column("provider_npi").unique().to_list())
    assert all(luhn.is_valid("80840" + n) for n in rows.get_column("provider_org_npi").unique().to_list())
    assert rows.get_column("provider_tin").str.contains(r"^[0-9]{9}$").all()
    mbis = rows.unique("member_id").get_column("mbi").drop_nulls().to_list()  # one per person
    assert all(MBI_RE.match(m) for m in mbis)
    assert len(set(mbis)) == len(mbis)
    assert (len(mbis) > 0) == (source == "acme_commercial")  # only ACME has a Medicare product
    assert rows.get_column("birth_date").max() < SEP
    assert rows.get_column("gender").is_in(["male", "female"]).all()
    # structure: dependents share the subscriber id; ~3% have a second PCP in the same contract
    assert rows.filter(pl.col("relationship") != "self").get_column("subscriber_id").is_in(
        rows.filter(pl.col("relationship") == "self").get_column("subscriber_id").to_list()
    ).mean() > 0.95
    per_member = rows.group_by("member_id").agg(pl.col("provider_npi").n_unique().alias("n"), pl.col("contract_id").n_unique().alias("c"))
    dual_share = (per_member["n"] == 2).mean()
    assert 0.015 < dual_share < 0.045
    assert per_member["c"].max() == 1


def test_shape_follows_member_count() -> None:
    spec = MAPPINGS["acme_commercial"]
    rows = population(spec, members=20_000, month=AUG, seed=2)
    assert rows.get_column("contract_id").n_unique() == 4
    assert rows.get_column("provider_npi").n_unique() == 100
    assert rows.get_column("provider_tin").n_unique() == 13


def test_consecutive_months_churn_within_bounds() -> None:
    spec = MAPPINGS["acme_commercial"]
    n = 20_000
    prev = population(spec, members=n, month=AUG, seed=3)
    cur = population(spec, members=n, month=SEP, seed=3)
    a = set(prev.get_column("member_id").to_list())
    b = set(cur.get_column("member_id").to_list())
    adds, drops = len(b - a) / n, len(a - b) / n
    assert 0.012 < adds < 0.03 and 0.012 < drops < 0.03
    stay = sorted(a & b)
    first = lambda df: df.filter(pl.col("member_id").is_in(stay)).group_by("member_id").agg(pl.all().sort_by("provider_npi").first()).sort("member_id")  # noqa: E731
    p, c = first(prev), first(cur)
    demo = ["address_line1", "address_line2", "city", "postal_code", "phone", "plan_id", "deceased_date"]
    diff = pl.DataFrame({col: (p[col].eq_missing(c[col]).not_()) for col in demo})
    demo_share = diff.select(pl.any_horizontal(pl.all())).to_series().mean()
    assert 0.004 < demo_share < 0.02
    prov = pl.DataFrame({"x": p["provider_npi"].eq_missing(c["provider_npi"]).not_()})["x"].mean()
    assert 0.001 < prov < 0.012


def test_luhn_npi_matches_stdnum() -> None:
    import numpy as np

    npis = luhn_npi(np.array([100000000, 123456789, 299999999]))
    assert [luhn.is_valid("80840" + str(n)) for n in npis] == [True, True, True]
    assert str(npis[1]) == "1234567893"  # CMS's published NPI check-digit example
