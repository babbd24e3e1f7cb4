"""What the Dagster assets hand each other: handles to data in ATR_HOME, never the rows.

Dagster stores every asset value (pickled, under DAGSTER_HOME/storage). Member rows are PHI
and can be gigabytes, so the row frames stay in ATR_HOME: canonical_rows and validated_rows
write them to ``ATR_HOME/staging/<source>/<YYYY-MM>/<sha256 prefix>/`` as owner-only parquet
and pass on a handle (the landed file, the staged paths, counts). The CLI chains the same stage
functions in memory and never stages. The staging folder of a delivery is removed once its
export is published (``discard``); a later re-run starts again from canonical_rows.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from atr_pipeline import pipeline
from atr_pipeline.config import Settings
from atr_pipeline.errors import AtrError
from atr_pipeline.layouts.read import ControlTotals, ReadResult
from atr_pipeline.private import private_dir, private_file
from atr_pipeline.sources.landing import LandedFile


class StagedRowsGone(AtrError):
    """A handle points at staged rows that were cleaned up (the export was published since)."""


@dataclass(frozen=True)
class ReadHandle:
    """canonical_rows' value: the landed file, where its canonical rows are staged, and counts."""

    landed: LandedFile
    folder: Path
    records_read: int
    rows: int
    control: ControlTotals
    source_columns: tuple[str, ...]
    reference_date: date | None  # what the row rules judge dates against (the file's own date)


@dataclass(frozen=True)
class ValidatedHandle:
    """validated_rows' value: the accepted rows' staged path, the rejects CSV and counts."""

    landed: LandedFile
    folder: Path
    records_read: int
    rows_accepted: int
    rows_rejected: int
    rejects_by_rule: dict[str, int]
    warnings_by_rule: dict[str, int]
    rejects_csv: Path


@dataclass(frozen=True)
class SnapshotKey:
    """attribution_snapshot's value: which month of which source history now holds."""

    source_id: str
    month: date
    file_sha256: str


def staging_folder(settings: Settings, landed: LandedFile) -> Path:
    return settings.home / "staging" / landed.source_id / pipeline.month_key(landed.month) / landed.sha256[:16]


def _write(frame: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    frame.write_parquet(tmp, compression="zstd")
    private_file(tmp)
    tmp.replace(path)


def _read(folder: Path, name: str) -> pl.DataFrame:
    path = folder / name
    if not path.is_file():
        raise StagedRowsGone(
            f"the staged rows {path.name} of this delivery are gone (its export was published, or "
            f"ATR_HOME/staging was cleaned): re-materialize the partition from canonical_rows"
        )
    return pl.read_parquet(path)


def stage_read(read: ReadResult, landed: LandedFile, settings: Settings) -> ReadHandle:
    folder = private_dir(staging_folder(settings, landed))
    # One delivery per source x month is current: an earlier delivery's staged rows go.
    for sibling in folder.parent.iterdir():
        if sibling != folder:
            discard(sibling)
    _write(read.rows, folder / "canonical_rows.parquet")
    _write(read.structural_rejects, folder / "structural_rejects.parquet")
    return ReadHandle(landed, folder, read.records_read, read.rows.height, read.control, tuple(read.source_columns), read.reference_date)


def load_read(handle: ReadHandle) -> ReadResult:
    return ReadResult(
        rows=_read(handle.folder, "canonical_rows.parquet"),
        structural_rejects=_read(handle.folder, "structural_rejects.parquet"),
        records_read=handle.records_read,
        reporting_month=handle.landed.month,
        control=handle.control,
        source_columns=list(handle.source_columns),
        reference_date=handle.reference_date,
    )


def stage_validated(read: ReadHandle, validated: pipeline.ValidatedFile, outcomes: list[bytes], rejects_csv: Path) -> ValidatedHandle:
    """Stage the accepted rows and the OperationOutcome lines beside the canonical rows of the same delivery."""
    folder = private_dir(read.folder)
    _write(validated.accepted, folder / "accepted.parquet")
    _write(pl.DataFrame({"outcome": [o.decode("utf-8") for o in outcomes]}, schema={"outcome": pl.String()}), folder / "outcomes.parquet")
    return ValidatedHandle(
        landed=validated.landed,
        folder=folder,
        records_read=validated.records_read,
        rows_accepted=validated.rows_accepted,
        rows_rejected=validated.rows_rejected,
        rejects_by_rule=dict(validated.rejects_by_rule),
        warnings_by_rule=dict(validated.warnings_by_rule),
        rejects_csv=Path(rejects_csv),
    )


def load_validated(handle: ValidatedHandle) -> pipeline.ValidatedFile:
    """The ValidatedFile record_history needs: the accepted rows back, counts from the handle."""
    from atr_pipeline.canonical import REJECT_SCHEMA

    return pipeline.ValidatedFile(
        landed=handle.landed,
        accepted=_read(handle.folder, "accepted.parquet"),
        rejects=pl.DataFrame(schema=REJECT_SCHEMA),  # already written to the rejects CSV
        records_read=handle.records_read,
        rows_accepted=handle.rows_accepted,
        rows_rejected=handle.rows_rejected,
        rejects_by_rule=dict(handle.rejects_by_rule),
        warnings_by_rule=dict(handle.warnings_by_rule),
        control={},
        source_columns=[],
    )


def load_outcomes(handle: ValidatedHandle) -> list[bytes]:
    return [o.encode("utf-8") for o in _read(handle.folder, "outcomes.parquet").get_column("outcome").to_list()]


def discard(folder: Path) -> None:
    """Remove a delivery's staged rows (after its export is published)."""
    shutil.rmtree(folder, ignore_errors=True)
