"""Small files in the three edge layouts (fixtures/edge/mappings and the bundled mappings), built
in code so each test shows the bytes it is about. Synthetic people only."""

from __future__ import annotations

from pathlib import Path

from atr_pipeline.layouts.spec import load_mapping, load_mappings

ROOT = Path(__file__).resolve().parents[1]
EDGE_MAPPINGS = ROOT / "fixtures" / "edge" / "mappings"
EDGE_PIPE = load_mapping(EDGE_MAPPINGS / "edge_pipe.yaml")
EDGE_CSV = load_mapping(EDGE_MAPPINGS / "edge_csv.yaml")
BUNDLED = load_mappings(ROOT / "mappings")
SWMCD = BUNDLED["statewide_medicaid"]
ACME = BUNDLED["acme_commercial"]

NPI = "1234567893"

# --- pipe with header/detail/trailer records (edge_pipe) ----------------------------------------


def pipe_detail(member: str, family: str = "Doe", given: str = "Jane", *, risk: str = "0012345", end: str = "99991231", addr: str = "1 Main St") -> str:
    return "|".join(["D", member, family, given, "F", "19800412", NPI, "C1", "PL1", "20260101", end, addr, risk])


def pipe_file(details: list[str], *, period: str = "202609", created: str = "20260915", header_count: int | None = None,
              trailer_count: int | None = None, risk_hash: str | None = None, risk_sum: str | None = None, payer: str = "edgepayer") -> str:
    """A whole edge_pipe file; control totals are computed from the details unless given."""
    risks = [d.rsplit("|", 1)[1] for d in details]
    digits = sum(int("".join(c for c in r if c.isdigit()) or 0) for r in risks)
    n = len(details)
    hash_value = risk_hash if risk_hash is not None else str(digits)
    sum_value = risk_sum if risk_sum is not None else f"{digits / 10_000:.4f}"
    header = f"H|{payer}|{period}|{created}|{n if header_count is None else header_count}"
    trailer = f"T|{n if trailer_count is None else trailer_count}|{hash_value}|{sum_value}"
    return "\n".join([header, *details, trailer]) + "\n"


PIPE_NAME = "EDGEPIPE.ATTR.D20260915.txt"


def good_pipe(n: int = 6) -> str:
    return pipe_file([pipe_detail(f"P{i:05d}", given=f"Ann{chr(97 + i)}") for i in range(n)])


# --- CSV with a header row (edge_csv) ----------------------------------------------------------

CSV_COLUMNS = ["MEMBER_ID", "LAST_NAME", "FIRST_NAME", "SEX", "DOB", "PCP_NPI", "CONTRACT_ID", "PLAN_CODE", "ATTRIB_EFF_DT", "ADDR1", "CITY", "PHONE"]


def q(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def csv_row(member: str, *, family: str = "Roe", given: str = "Ben", addr: str = "2 Elm St", phone: str = "6175550100",
            columns: list[str] = CSV_COLUMNS) -> str:
    values = {
        "MEMBER_ID": member, "LAST_NAME": family, "FIRST_NAME": given, "SEX": "M", "DOB": "01/30/1979", "PCP_NPI": NPI,
        "CONTRACT_ID": "C1", "PLAN_CODE": "PL1", "ATTRIB_EFF_DT": "01/01/2026", "ADDR1": addr, "CITY": "Boston", "PHONE": phone,
    }
    return ",".join(q(values[c]) for c in columns)


def csv_file(rows: list[str], columns: list[str] = CSV_COLUMNS, line_end: str = "\r\n") -> str:
    return line_end.join([",".join(columns), *rows]) + line_end


def good_csv(n: int = 6) -> str:
    return csv_file([csv_row(f"E{i:05d}") for i in range(n)])


# --- fixed width with HD/ME/TR records (statewide_medicaid) -------------------------------------


def swmcd_header_only(period: str = "202611") -> str:
    header = ("HD" + "SWMCD".ljust(10) + "".ljust(10) + "  " + period + "0".zfill(9)).ljust(400)
    trailer = ("TR" + "0".zfill(9) + "0".zfill(16)).ljust(400)
    return header + "\r\n" + trailer + "\r\n"
