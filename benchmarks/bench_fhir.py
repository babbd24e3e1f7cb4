"""Benchmark: fhir.build_resources (column-wise) against a per-row fhir.resources R4B mapper.

Builds N synthetic, valid canonical member rows with a realistic shape (~5,000 members per
contract, ~200 members per practitioner, 10 practitioners per organization, ~20% dependents,
3% of members attributed to two providers, ~1% dropped), times build_resources on all of them
and the baseline (benchmarks/baseline_mapper.py) on the first few thousand, and prints
members/s for both and the ratio.

    python benchmarks/bench_fhir.py                  # 200k rows, baseline on 10k
    python benchmarks/bench_fhir.py --rows 50000 --baseline-rows 5000
    python benchmarks/bench_fhir.py --steps members.arrow   # prepare + each builder on a saved member list

``--steps`` reads a member list saved as Arrow IPC (e.g. ``HistoryStore(...).member_list(...)
.write_ipc(path)``), then prints wall, user + system CPU and peak RSS (sampled) of ``prepare``
and of each builder, and a sha256 per type (compare them before and after a change).

Figures on a shared machine are noisy: read the ratio, and run it twice.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path

import polars as pl
import psutil
from stdnum import luhn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_mapper import map_csv  # noqa: E402

from atr_pipeline.canonical import CANONICAL_SCHEMA  # noqa: E402
from atr_pipeline.fhir.build import BuildContext, build_resources  # noqa: E402
from atr_pipeline.layouts.spec import IdentifierSystems  # noqa: E402

SYSTEMS = IdentifierSystems(
    member_id="https://payer.example.org/fhir/sid/member-id",
    payer_id="https://payer.example.org/fhir/sid/payer-id",
    contract_id="https://payer.example.org/fhir/sid/contract-id",
    plan_id="https://payer.example.org/fhir/sid/plan-id",
    settlement_entity_id="https://payer.example.org/fhir/sid/aco-id",
    mrn="https://clinic.example.org/fhir/sid/mrn",
    medicaid_id="https://medicaid.example.org/fhir/sid/medicaid-id",
)
FAMILY = ["Rivera", "Okafor", "Novak", "Hale", "Quist", "Berg", "Tran", "Ueda", "Vega", "Wong", "Smith", "Garcia"]
GIVEN = ["Ann", "Bo", "Carmen", "Dana", "Eze", "Ivo", "Lena", "Omar", "Priya", "Sam", "Tess", "Yuri"]


def npi(i: int, base: int) -> str:
    body = f"{base + i:09d}"
    return body + luhn.calc_check_digit("80840" + body)


def synthetic_members(rows: int) -> pl.DataFrame:
    """``rows`` member entries (3% of members get a second provider row)."""
    members = max(1, round(rows / 1.03))
    idx = pl.int_range(0, members, eager=True)
    n_prac = members // 200 + 2
    prac_npis = pl.Series([npi(i, 100_000_000) for i in range(n_prac)])
    org_npis = pl.Series([npi(i, 300_000_000) for i in range(n_prac // 10 + 2)])
    i = pl.col("i")
    base = pl.DataFrame({"i": idx}).with_columns(
        (pl.lit("M") + i.cast(pl.String).str.zfill(9)).alias("member_id"),
        # every 5th member is a dependent of the member before it
        pl.when(i % 5 == 4).then(pl.lit("M") + (i - 1).cast(pl.String).str.zfill(9))
        .otherwise(pl.lit("M") + i.cast(pl.String).str.zfill(9)).alias("subscriber_id"),
        pl.when(i % 5 == 4).then(pl.when(i % 2 == 0).then(pl.lit("child")).otherwise(pl.lit("spouse")))
        .otherwise(pl.lit("self")).alias("relationship"),
        (i // 5000).alias("_contract"),
        (i // 200).alias("_prac"),
    )
    second = base.filter(pl.col("i") % 33 == 7).with_columns((pl.col("_prac") + 1).alias("_prac"))
    df = pl.concat([base, second]).head(rows).sort("i", "_prac")
    n = df.height
    r = pl.int_range(0, n)
    df = df.with_columns(
        pl.lit("bench_csv").alias("source_id"),
        pl.lit("bench_202603.csv").alias("file_name"),
        pl.lit("0" * 64).alias("file_sha256"),
        (r + 2).cast(pl.Int64).alias("line_number"),
        pl.lit(date(2026, 3, 1)).alias("reporting_month"),
        pl.lit("ACME").alias("payer_id"),
        pl.lit("Acme Health").alias("payer_name"),
        (pl.lit("VBC-") + pl.col("_contract").cast(pl.String).str.zfill(4)).alias("contract_id"),
        (pl.lit("Acme contract ") + pl.col("_contract").cast(pl.String)).alias("contract_name"),
        pl.lit(date(2026, 1, 1)).alias("contract_start"),
        pl.lit(date(2026, 12, 31)).alias("contract_end"),
        (pl.lit("ACO-") + (pl.col("_contract") % 3).cast(pl.String)).alias("settlement_entity_id"),
        pl.lit("Acme ACO").alias("settlement_entity_name"),
        pl.when(pl.col("i") % 2 == 0).then(pl.lit("PLAN-A")).otherwise(pl.lit("PLAN-B")).alias("plan_id"),
        pl.when(pl.col("i") % 2 == 0).then(pl.lit("Acme Advantage")).otherwise(pl.lit("Acme PPO")).alias("plan_name"),
        pl.when(pl.col("i") % 2 == 0).then(pl.lit("mediadv")).otherwise(pl.lit("commppo")).alias("product_type"),
        pl.lit(date(2025, 1, 1)).alias("coverage_start"),
        pl.lit(None, dtype=pl.Date).alias("coverage_end"),
        pl.when(pl.col("i") % 2 == 0).then(pl.lit("1EG4TE5MK7") + (pl.col("i") % 10).cast(pl.String)).alias("mbi"),
        pl.when(pl.col("i") % 7 == 0).then(pl.lit("MCD") + pl.col("i").cast(pl.String)).alias("medicaid_id"),
        pl.when(pl.col("i") % 3 == 0).then(pl.lit("MRN") + pl.col("i").cast(pl.String)).alias("mrn"),
        pl.lit(None, dtype=pl.String).alias("ssn"),
        pl.col("i").mod(len(FAMILY)).replace_strict(dict(enumerate(FAMILY)), return_dtype=pl.String).alias("family_name"),
        pl.col("i").mod(len(GIVEN)).replace_strict(dict(enumerate(GIVEN)), return_dtype=pl.String).alias("given_name"),
        pl.when(pl.col("i") % 4 == 0).then(pl.lit("Q")).alias("middle_name"),
        pl.lit(None, dtype=pl.String).alias("name_prefix"),
        pl.lit(None, dtype=pl.String).alias("name_suffix"),
        pl.when(pl.col("i") % 2 == 0).then(pl.lit("female")).otherwise(pl.lit("male")).alias("gender"),
        (pl.lit(date(1940, 1, 1)) + pl.duration(days=pl.col("i") % 25_000)).alias("birth_date"),
        pl.lit(None, dtype=pl.Date).alias("deceased_date"),
        ((pl.col("i") % 900 + 1).cast(pl.String) + pl.lit(" Main St")).alias("address_line1"),
        pl.lit(None, dtype=pl.String).alias("address_line2"),
        pl.lit("Springfield").alias("city"),
        pl.lit("IL").alias("state"),
        pl.lit("62701").alias("postal_code"),
        pl.lit("555-0100").alias("phone"),
        prac_npis.gather(df["_prac"].to_list()).alias("provider_npi") if n else pl.lit(None, dtype=pl.String).alias("provider_npi"),
        pl.col("_prac").mod(len(FAMILY)).replace_strict(dict(enumerate(FAMILY)), return_dtype=pl.String).alias("provider_family_name"),
        pl.col("_prac").mod(len(GIVEN)).replace_strict(dict(enumerate(GIVEN)), return_dtype=pl.String).alias("provider_given_name"),
        (pl.lit("12") + (pl.col("_prac") // 10).cast(pl.String).str.zfill(7)).alias("provider_tin"),
        (pl.lit("Clinic ") + (pl.col("_prac") // 10).cast(pl.String)).alias("provider_org_name"),
        org_npis.gather((df["_prac"] // 10).to_list()).alias("provider_org_npi") if n else pl.lit(None, dtype=pl.String).alias("provider_org_npi"),
        pl.lit(date(2026, 1, 1)).alias("attribution_start"),
        pl.when(pl.col("i") % 100 == 3).then(pl.lit(date(2026, 2, 28))).alias("attribution_end"),
        pl.lit(None, dtype=pl.String).alias("change_reason"),
        pl.lit(None, dtype=pl.Float64).alias("risk_score"),
        pl.when(pl.col("i") % 100 == 3).then(pl.lit("dropped")).when(pl.col("i") % 20 == 1).then(pl.lit("new"))
        .when(pl.col("i") % 20 == 2).then(pl.lit("changed")).otherwise(pl.lit("nochange")).alias("change_type"),
        (pl.col("i") % 100 == 3).alias("inactive"),
    )
    return df.select([*CANONICAL_SCHEMA.names(), "change_type", "inactive"]).cast(dict(CANONICAL_SCHEMA))  # type: ignore[arg-type]


def context() -> BuildContext:
    return BuildContext(id_key=b"bench-key", systems=SYSTEMS, transaction_time=datetime(2026, 3, 5, tzinfo=UTC), payer_name="Acme")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def steps(path: Path) -> None:
    """prepare + each builder on a saved member list: wall, CPU, peak RSS, sha256 per type."""
    from atr_pipeline.fhir.build import BUILDERS, prepare
    from atr_pipeline.systems import LOAD_ORDER

    proc = psutil.Process()
    peak = [0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        peak[0] = 0
        w0, c0 = time.perf_counter(), _cpu()
        out = fn()
        print(f"{name:17s} wall {time.perf_counter() - w0:6.2f} s  cpu {_cpu() - c0:6.2f} s  peak rss {peak[0] / 2**20:6,.0f} MiB", flush=True)
        return out

    members = pl.read_ipc(path, memory_map=False)
    ctx = BuildContext(id_key=b"benchmark-key", systems=SYSTEMS, transaction_time=datetime(2026, 9, 5, tzinfo=UTC))
    print(f"member entries: {members.height:,}  rss: {proc.memory_info().rss / 2**20:,.0f} MiB")
    w0, c0 = time.perf_counter(), _cpu()
    rows = timed("prepare", partial(prepare, members, ctx))  # not a lambda: `members` is deleted below
    del members
    build_cpu, build_wall = 0.0, 0.0
    for rtype in (t for t in LOAD_ORDER if t in BUILDERS):
        b0, bc = time.perf_counter(), _cpu()
        df = timed(rtype, lambda t=rtype: BUILDERS[t](rows, ctx))
        build_wall, build_cpu = build_wall + time.perf_counter() - b0, build_cpu + _cpu() - bc
        digest = hashlib.sha256()
        for part in df.iter_slices(20_000):
            for rid, text in part.iter_rows():
                digest.update(f"{rid}\t{text}\n".encode())
        print(f"{'':17s} {df.height:,} resources  sha256 {digest.hexdigest()}")
        del df
    print(f"prepare + builders: wall {time.perf_counter() - w0 - 0:.2f} s (hashing included), "
          f"cpu {_cpu() - c0:.2f} s; builders alone cpu {build_cpu:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--baseline-rows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs of build_resources")
    ap.add_argument("--steps", type=Path, help="time prepare + each builder on this member list (Arrow IPC)")
    args = ap.parse_args()
    if args.steps:
        steps(args.steps)
        return

    members = synthetic_members(args.rows)
    proc = psutil.Process()
    print(f"rows: {members.height:,}  contracts: {members['contract_id'].n_unique()}  "
          f"practitioners: {members['provider_npi'].n_unique()}  rss before: {proc.memory_info().rss / 2**20:,.0f} MiB")
    best = float("inf")
    out: dict[str, pl.DataFrame] = {}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out = build_resources(members, context())
        best = min(best, time.perf_counter() - t0)
    fast_rate = members.height / best
    sizes = {t: df.height for t, df in out.items()}
    mb = sum(df["json"].str.len_bytes().sum() for df in out.values()) / 2**20
    print(f"build_resources: {best:.2f} s  ->  {fast_rate:,.0f} members/s  ({mb:,.0f} MiB JSON; {sizes})")
    print(f"rss after: {proc.memory_info().rss / 2**20:,.0f} MiB")

    sample = members.head(args.baseline_rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "members.csv"
        sample.write_csv(path)
        t0 = time.perf_counter()
        count = map_csv(path, SYSTEMS)
        slow = time.perf_counter() - t0
    slow_rate = sample.height / slow
    print(f"baseline (per-row fhir.resources R4B): {slow:.2f} s for {sample.height:,} rows  ->  {slow_rate:,.0f} members/s  ({count:,} resources)")
    print(f"ratio: {fast_rate / slow_rate:,.0f}x")


if __name__ == "__main__":
    main()
