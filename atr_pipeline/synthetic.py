"""Synthetic attribution files: a realistic, valid population written in any mapping's layout.

In: a ``MappingSpec``, a member count, a reporting month, a seed. Out: a file in the mapping's
layout (header/trailer and control totals included, name matching the pattern) or the
canonical rows themselves (``population``). Refused: nothing; every value it makes is valid
(Luhn-valid NPIs, CMS-format MBIs, 9-digit TINs, real dates, USPS states, plausible ZIPs) and
every name is obviously synthetic.

Model (all vectorised, numpy + polars, no per-member Python):
- Member index i belongs to a household "unit" u (1-4 people: self, spouse, children sharing
  the subscriber id). Unit sizes depend on (seed, u) only, so index i is the same person slot
  every month.
- Each unit turns over every p(u) months (p in 36..64, phase from a hash): the family is
  dropped and a new family takes the slot. That gives ~2% drops and ~2% adds a month.
- Within a tenure, an address/phone version (period 150-250 months, ~0.5%/month), a plan
  version (~0.5%/month) and a PCP version (~0.5%/month, a switch within the same contract)
  change on their own clocks. A subscriber in the last month of a tenure is sometimes reported
  deceased. ~3% of members are attributed to a second practitioner in the same contract.
- ~members/5000 contracts, ~members/200 practitioners spread over organisations (~8 each).
So month m and m-1 from the same seed differ by those rates, and the same arguments give
byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from atr_pipeline.layouts.spec import MappingSpec
from atr_pipeline.layouts.write import file_name_for, write_rendered
from atr_pipeline.systems import PRODUCT_TYPES

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
MAX_GENERATIONS = 64
_MBI_LETTERS = "ACDEFGHJKMNPQRTUVWXY"
_MBI_RADIX = (9, 20, 30, 10, 20, 30, 10, 20, 20, 10, 10)
_MBI_SPACE = int(np.prod(np.array(_MBI_RADIX, dtype=np.float64)))
_EIN_PREFIXES = (10, 12, 20, 27, 35, 45, 46, 47, 54, 56, 61, 62, 65, 81, 82, 83, 84, 86, 91, 94)

_FAMILY = [
    a + b
    for a in ("Test", "Mock", "Sample", "Fake", "Demo", "Synth", "Proto", "Dummy")
    for b in ("erson", "well", "ley", "ford", "berg", "man", "ton", "ova", "field", "worth")
]
_GIVEN_F = [
    "Ada", "Beth", "Cara", "Dana", "Eva", "Fay", "Gina", "Hana", "Iris", "Jo", "Kim", "Lia",
    "Mae", "Nia", "Ona", "Pia", "Rae", "Sue", "Tia", "Uma", "Vi", "Wren", "Yara", "Zoe",
]
_GIVEN_M = [
    "Abe", "Ben", "Cal", "Dan", "Eli", "Finn", "Gus", "Hal", "Ian", "Jay", "Kai", "Leo",
    "Max", "Ned", "Otto", "Pat", "Ray", "Sam", "Ted", "Ugo", "Vic", "Walt", "Xan", "Zed",
]
_PROV_FAMILY = [a + b for a in ("Doc", "Clinic", "Pract", "Medi", "Cura") for b in ("sample", "test", "mock", "demo")]
_STREETS = ["Test", "Sample", "Mock", "Demo", "Example", "Placeholder", "Fixture", "Synthetic"]
_STREET_TYPES = ["St", "Ave", "Rd", "Ln", "Blvd", "Ct"]
# (city, state, first three ZIP digits): real state codes and ZIP prefixes, synthetic streets.
_PLACES = [
    ("Springfield", "IL", "627"), ("Columbus", "OH", "432"), ("Austin", "TX", "787"), ("Madison", "WI", "537"),
    ("Albany", "NY", "122"), ("Salem", "OR", "973"), ("Raleigh", "NC", "276"), ("Denver", "CO", "802"),
    ("Boise", "ID", "837"), ("Richmond", "VA", "232"), ("Lansing", "MI", "489"), ("Dover", "DE", "199"),
    ("Helena", "MT", "596"), ("Augusta", "ME", "043"), ("Phoenix", "AZ", "850"), ("Atlanta", "GA", "303"),
]
_AREA_CODES = [217, 614, 512, 608, 518, 503, 919, 303, 208, 804, 517, 302, 406, 207, 602, 404]
_ORG_WORDS = ["Primary Care", "Family Medicine", "Health Partners", "Medical Group", "Community Clinic"]
_MEDICARE_PRODUCTS = ("mediadv", "medicare")


# --- hashing ------------------------------------------------------------------------------------


def _mix(*parts: np.ndarray | np.integer | int) -> np.ndarray:
    """splitmix64 of the parts: a deterministic uint64 per element (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        h = np.asarray(np.uint64(0x9E3779B97F4A7C15))
        for p in parts:
            x = np.asarray(p).astype(np.uint64) + h
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = x ^ (x >> np.uint64(31))
        return h


def _pick(h: np.ndarray, n: int) -> np.ndarray:
    return (h % np.uint64(n)).astype(np.int64)


def _unit(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# --- identifiers --------------------------------------------------------------------------------


def luhn_npi(base9: np.ndarray) -> np.ndarray:
    """10-digit NPIs (as int64) from 9-digit bases: check digit computed with the 80840 prefix."""
    payload = np.asarray(base9, dtype=np.int64) + 80840 * 10**9  # 14 digits
    total = np.zeros_like(payload)
    x = payload.copy()
    for i in range(14):  # from the right; the rightmost payload digit is doubled
        d = x % 10
        x //= 10
        if i % 2 == 0:
            d = d * 2
            d = np.where(d > 9, d - 9, d)
        total += d
    check = (10 - total % 10) % 10
    return np.asarray(base9, dtype=np.int64) * 10 + check


def _mbi(x: np.ndarray) -> pl.Series:
    """CMS-format MBIs from distinct non-negative ints (bijective scramble, then mixed radix)."""
    v = (np.asarray(x, dtype=np.int64) * 611953 + 12345) % _MBI_SPACE
    alnum = _MBI_LETTERS + "0123456789"
    tables = ["123456789", _MBI_LETTERS, alnum, "0123456789", _MBI_LETTERS, alnum, "0123456789", _MBI_LETTERS, _MBI_LETTERS, "0123456789", "0123456789"]
    cols = []
    for radix, table in zip(reversed(_MBI_RADIX), reversed(tables), strict=True):
        cols.append(pl.Series(list(table)).gather(pl.Series(v % radix)))
        v = v // radix
    frame = pl.DataFrame({str(i): c for i, c in enumerate(reversed(cols))})
    return frame.select(pl.concat_str(pl.all()).alias("mbi"))["mbi"]


def _digits(values: np.ndarray, width: int) -> pl.Series:
    return pl.Series(values).cast(pl.String).str.pad_start(width, "0")


# --- the population -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Sizes of the synthetic world; defaults follow the member count."""

    contracts: int
    practitioners: int
    organizations: int

    @classmethod
    def for_members(cls, members: int) -> Shape:
        contracts = max(1, round(members / 5000))
        practitioners = max(2 * contracts, -(-members // 200))
        return cls(contracts, practitioners, max(1, -(-practitioners // 8)))


def _products(spec: MappingSpec) -> tuple[list[str], list[str]]:
    fs = spec.fields.get("product_type")
    if fs is None:
        return ["commppo"], []
    if fs.constant is not None:
        return [fs.constant], []
    codes = sorted({v for v in (fs.map or {}).values() if v}) or ["commppo"]
    return [c for c in codes if c not in _MEDICARE_PRODUCTS] or codes, [c for c in codes if c in _MEDICARE_PRODUCTS]


def _month_index(month: date) -> int:
    return month.year * 12 + month.month - 1


def _month_days(t: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of the first day of month index ``t`` (year * 12 + month - 1)."""
    return (np.asarray(t, dtype=np.int64) - 1970 * 12).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)


def _month_start(t: np.ndarray) -> pl.Series:
    return pl.Series(_month_days(t)).cast(pl.Int32).cast(pl.Date)


def population(
    spec: MappingSpec, *, members: int, month: date, seed: int = 0, shape: Shape | None = None, min_changes: int = 0
) -> pl.DataFrame:
    """Canonical rows (no lineage) for ``members`` people in ``month``; ~3% have two PCP rows.

    ``min_changes``: at least this many households turn over (a family dropped, another added),
    and as many change address, plan and provider clock, every month. The natural rates (a
    household every 36-64 months, the rest every 150-250) give a small file no change at all
    most months; above about 50 x ``min_changes`` households they already do and nothing differs.
    """
    if members < 1:
        raise ValueError("members must be at least 1")
    shape = shape or Shape.for_members(members)
    seed_u = np.uint64(seed)
    t = _month_index(month)

    # households: fixed sizes per unit, truncated at `members`
    units = np.arange(members, dtype=np.int64)
    r = _unit(_mix(seed_u, units, 1))
    sizes = np.select([r < 0.60, r < 0.75, r < 0.90], [1, 2, 3], 4)
    ends = np.cumsum(sizes)
    n_units = int(np.searchsorted(ends, members) + 1)
    u = np.repeat(units[:n_units], sizes[:n_units])[:members]
    pos = np.arange(members, dtype=np.int64) - np.repeat(ends[:n_units] - sizes[:n_units], sizes[:n_units])[:members]
    size = sizes[u]

    # tenure: the unit's family turns over every p months
    period = 36 + _pick(_mix(seed_u, u, 2), 29)
    phase = _pick(_mix(seed_u, u, 3), 1 << 20) % period
    # Too few households to see min_changes a month at natural rates: one short period for all,
    # phases spread over it, so every month the units with (t + phase) % p == 0 change (p >= 4).
    compressed = min_changes > 0 and n_units < 50 * min_changes
    if compressed:
        period = np.full_like(u, max(4, n_units // min_changes))
        phase = u % period
    gen = (t + phase) // period
    t0 = gen * period - phase
    last_month = t0 + period - 1 == t
    key = u * MAX_GENERATIONS + gen % MAX_GENERATIONS
    k = key.astype(np.uint64)

    def clock(salt: int) -> tuple[np.ndarray, np.ndarray]:
        p = 150 + _pick(_mix(seed_u, k, salt), 101)
        ph = _pick(_mix(seed_u, k, salt + 1), 1 << 20) % p
        if compressed:  # clocks 10, 20, 30 move the units 1, 2, 3 places after the turnover ones
            p = period
            ph = (u + salt // 10) % p
        v = (t + ph) // p
        return v, np.maximum(v * p - ph, t0)

    addr_v, _ = clock(10)
    plan_v, _ = clock(20)
    prov_v, prov_since = clock(30)

    # who is who: products per unit, Medicare only for single-person units
    commercial, medicare = _products(spec)
    prod_r = _unit(_mix(seed_u, u, 4))
    is_medicare = (size == 1) & (prod_r < 0.3) & bool(medicare)
    product = np.where(is_medicare, np.array(medicare or [""], dtype=object)[_pick(_mix(seed_u, u, 5), max(1, len(medicare)))],
                       np.array(commercial, dtype=object)[_pick(_mix(seed_u, u, 6), len(commercial))])
    relationship = np.select(
        [pos == 0, (pos == 1) & (_unit(_mix(seed_u, u, 7)) < 0.8)], [np.array("self"), np.array("spouse")], np.array("child")
    )
    self_male = _pick(_mix(seed_u, k, 8), 2) == 0
    gender_male = np.where(relationship == "self", self_male, np.where(relationship == "spouse", ~self_male, _pick(_mix(seed_u, k, pos, 9), 2) == 0))

    # dates (days since epoch)
    t0_days = _month_days(t0)
    adult_years = np.where(is_medicare, 65 + _pick(_mix(seed_u, k, pos, 11), 25), 22 + _pick(_mix(seed_u, k, pos, 11), 42))
    child_years = _pick(_mix(seed_u, k, pos, 12), 18)
    age_days = np.where(relationship == "child", child_years, adult_years) * 365 + _pick(_mix(seed_u, k, pos, 13), 365)
    birth = t0_days - age_days - 1
    month_days = int(_month_days(np.array([t]))[0])
    deceased = last_month & (pos == 0) & (_unit(_mix(seed_u, k, 14)) < 0.1)
    death = np.where(deceased, month_days + _pick(_mix(seed_u, k, 15), 28), -1)

    # contracts and providers
    c = _pick(_mix(seed_u, k, 16), shape.contracts)
    per_contract = (shape.practitioners - c + shape.contracts - 1) // shape.contracts
    slot1 = _pick(_mix(seed_u, k, pos, prov_v, 17), 1 << 30) % per_contract
    dual = (_unit(_mix(seed_u, k, pos, 18)) < 0.03) & (per_contract >= 2)
    slot2 = (slot1 + 1 + _pick(_mix(seed_u, k, pos, 19), 1 << 30) % np.maximum(per_contract - 1, 1)) % per_contract

    hh_digits = (key * 387_420_489 + seed * 7919 + 12_345) % 10**9
    base = pl.DataFrame(
        {
            "_i": np.arange(members, dtype=np.int64),
            "_sub": _digits(hh_digits, 9),
            "_pos": pos,
            "_c": c,
            "_p1": c + shape.contracts * slot1,
            "_p2": np.where(dual, c + shape.contracts * slot2, -1),
            "_prov_since": _month_start(prov_since),
            "_t0": _month_start(t0),
            "_product": pl.Series(product.astype(str)),
            "relationship": pl.Series(relationship.astype(str)),
            "gender": pl.Series(np.where(gender_male, "male", "female")),
            "birth_date": pl.Series(birth).cast(pl.Int32).cast(pl.Date),
            "deceased_date": pl.Series(np.where(death >= 0, death, 0)).cast(pl.Int32).cast(pl.Date),
            "_dead": deceased,
            "_fam": _pick(_mix(seed_u, k, 40), len(_FAMILY)),
            "_given": _pick(_mix(seed_u, k, pos, 41), len(_GIVEN_F)),
            "_middle": _pick(_mix(seed_u, k, pos, 42), 26),
            "_suffix": (relationship == "self") & gender_male & (_unit(_mix(seed_u, k, 43)) < 0.03),
            "_place": _pick(_mix(seed_u, k, addr_v, 44), len(_PLACES)),
            "_house": 1 + _pick(_mix(seed_u, k, addr_v, 45), 9899),
            "_street": _pick(_mix(seed_u, k, addr_v, 46), len(_STREETS) * len(_STREET_TYPES)),
            "_apt": _pick(_mix(seed_u, k, addr_v, 47), 40),
            "_zip2": _pick(_mix(seed_u, k, addr_v, 48), 100),
            "_phone": _pick(_mix(seed_u, k, addr_v, 49), 100),
            "_plan": 1 + _pick(_mix(seed_u, k, plan_v, 50), 3),
            "risk_score": (0.2 + 3.3 * _unit(_mix(seed_u, k, pos, addr_v, 51))).round(4),
            "_mbi_x": key * 4 + np.minimum(pos, 3),
        }
    )
    places = pl.DataFrame(
        {
            "_place": range(len(_PLACES)),
            "city": [p[0] for p in _PLACES],
            "state": [p[1] for p in _PLACES],
            "_zip3": [p[2] for p in _PLACES],
            "_area": _AREA_CODES,
        }
    )
    year0 = 2025 + 3 * ((month.year - 2025) // 3)
    contract_start, contract_end = date(year0, 1, 1), date(year0 + 2, 12, 31)
    df = base.join(places, on="_place", how="left").sort("_i")
    df = df.with_columns(
        pl.format("M{}{}", pl.col("_sub"), (pl.col("_pos") + 1).cast(pl.String).str.pad_start(2, "0")).alias("member_id"),
        pl.format("M{}", pl.col("_sub")).alias("subscriber_id"),
        pl.Series(_FAMILY).gather(df["_fam"]).alias("family_name"),
        pl.when(pl.col("gender") == "male")
        .then(pl.Series(_GIVEN_M).gather(df["_given"]))
        .otherwise(pl.Series(_GIVEN_F).gather(df["_given"]))
        .alias("given_name"),
        pl.Series(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")).gather(df["_middle"]).alias("middle_name"),
        pl.when(pl.col("_suffix")).then(pl.lit("Jr")).alias("name_suffix"),
        pl.format(
            "{} {} {}",
            pl.col("_house"),
            pl.Series(_STREETS).gather(df["_street"] // len(_STREET_TYPES)),
            pl.Series(_STREET_TYPES).gather(df["_street"] % len(_STREET_TYPES)),
        ).alias("address_line1"),
        pl.when(pl.col("_apt") < 5).then(pl.format("Apt {}", pl.col("_apt") + 1)).alias("address_line2"),
        pl.concat_str(pl.col("_zip3"), pl.col("_zip2").cast(pl.String).str.pad_start(2, "0")).alias("postal_code"),
        pl.format("{}555{}", pl.col("_area"), (pl.col("_phone") + 100).cast(pl.String).str.pad_start(4, "0")).alias("phone"),
        pl.when(pl.col("_product").is_in(list(_MEDICARE_PRODUCTS))).then(_mbi(base["_mbi_x"].to_numpy())).alias("mbi"),
        pl.when(pl.col("_dead")).then(pl.col("deceased_date")).alias("deceased_date"),
        pl.col("_product").alias("product_type"),
        pl.format("{}-{}", pl.col("_product").str.to_uppercase().str.slice(0, 6), pl.col("_plan").cast(pl.String).str.pad_start(2, "0")).alias("plan_id"),
        pl.format("{} Plan {}", pl.col("_product").replace_strict(PRODUCT_TYPES, default=pl.col("_product")), pl.col("_plan")).alias("plan_name"),
        pl.col("_t0").alias("coverage_start"),
        pl.lit(None, dtype=pl.Date).alias("coverage_end"),
        pl.format("VBC{}-{}", pl.lit(f"{year0 % 100:02d}"), (pl.col("_c") + 1).cast(pl.String).str.pad_start(4, "0")).alias("contract_id"),
        pl.format("Value-Based Contract {}", (pl.col("_c") + 1)).alias("contract_name"),
        pl.lit(contract_start).alias("contract_start"),
        pl.lit(contract_end).alias("contract_end"),
    )
    if "medicaid_id" in spec.fields:
        df = df.with_columns(pl.col("member_id").alias("medicaid_id"))

    # one row per (member, PCP): the second PCP row for dual-attributed members
    rows = pl.concat(
        [
            df.with_columns(pl.col("_p1").alias("_p"), pl.lit(0).alias("_rank")),
            df.filter(pl.col("_p2") >= 0).with_columns(pl.col("_p2").alias("_p"), pl.lit(1).alias("_rank")),
        ]
    ).sort("_i", "_rank")
    rows = rows.join(practitioners(shape, seed), on="_p", how="left").sort("_i", "_rank")
    rows = rows.with_columns(
        pl.max_horizontal(pl.col("_t0"), pl.col("_prov_since"), pl.lit(contract_start)).alias("attribution_start"),
        pl.col("deceased_date").alias("attribution_end"),
        pl.lit(None, dtype=pl.String).alias("change_reason"),
    )
    return rows.select([c for c in rows.columns if not c.startswith("_")])


def practitioners(shape: Shape, seed: int = 0) -> pl.DataFrame:
    """Practitioner index -> NPI, names, organisation (TIN, name, org NPI)."""
    p = np.arange(shape.practitioners, dtype=np.int64)
    o = p % shape.organizations
    s = np.uint64(seed)
    npi = luhn_npi(100_000_000 + (p * 48_271 + seed * 101 + 7) % 100_000_000)
    org_npi = luhn_npi(200_000_000 + (o * 16_807 + seed * 103 + 11) % 100_000_000)
    ein_prefix = np.array(_EIN_PREFIXES)[_pick(_mix(s, o, 60), len(_EIN_PREFIXES))]
    tin = ein_prefix * 10**7 + (o * 69_069 + seed * 13 + 1) % 10**7
    return pl.DataFrame(
        {
            "_p": p,
            "provider_npi": pl.Series(npi).cast(pl.String),
            "provider_family_name": pl.Series(_PROV_FAMILY).gather(pl.Series(_pick(_mix(s, p, 61), len(_PROV_FAMILY)))),
            "provider_given_name": pl.Series(_GIVEN_F + _GIVEN_M).gather(pl.Series(_pick(_mix(s, p, 62), len(_GIVEN_F) * 2))),
            "provider_tin": _digits(tin, 9),
            # one name per organisation (hundreds, not per member)
            "provider_org_name": pl.Series([f"Synthetic {_ORG_WORDS[i % len(_ORG_WORDS)]} {i + 1}" for i in range(shape.organizations)]).gather(pl.Series(o)),
            "provider_org_npi": pl.Series(org_npi).cast(pl.String),
        }
    )


def _payer_columns(spec: MappingSpec, rows: pl.DataFrame) -> pl.DataFrame:
    """Payer fields the mapping holds as constants are not written; others get a stand-in."""
    extra = []
    for name, default in (("payer_id", spec.source_id.upper()[:10]), ("payer_name", f"{spec.source_id} (synthetic)")):
        fs = spec.fields.get(name)
        extra.append(pl.lit(fs.constant if fs and fs.constant is not None else default).alias(name))
    return rows.with_columns(extra)


# `atr fixtures` files are for trying the pipeline: each month shows adds, drops and changes.
MONTHLY_CHANGES = 2


def write_synthetic(spec: MappingSpec, *, members: int, month: date, out_dir: Path, seed: int = 0) -> Path:
    """Write a synthetic file for ``month`` in ``spec``'s layout; returns its path.

    Consecutive months from one seed always differ (``MONTHLY_CHANGES``), however small the file.
    """
    month = month.replace(day=1)
    rows = _payer_columns(spec, population(spec, members=members, month=month, seed=seed, min_changes=MONTHLY_CHANGES))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / file_name_for(spec, month)
    # Streamed to the file a slice at a time: a 5M-member file does not fit in one Python string.
    write_rendered(spec, rows, month, path)
    return path
