"""Content hashes of each contract's member list, which decide whether a Group gets a new version.

In: a member list (``HistoryStore.member_list``: canonical columns, change_type, inactive,
previous_month), any number of contracts.
Out: ``{contract_id: sha256 hex}``, the same digests ``pipeline.contract_content_hashes``
always produced (they are stored as Group version content hashes, so a different digest would
bump every Group's version on the next run): per contract, the sha256 of the CSV (header
included) of its rows without lineage columns, sorted by contract and member entry key.
Refused: nothing; a frame without rows gives an empty dict.

Faster than the original by not building Python strings: each contract's CSV is written
straight into a byte buffer (the original decoded it into a ``str`` and encoded it back), the
row order is found on a narrow frame of row numbers, and each contract is gathered, written and
hashed on one of two threads (polars and hashlib both release the GIL), so no copy of the whole
month is made.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor

import polars as pl

from atr_pipeline.canonical import LINEAGE_FIELDS, MEMBER_ENTRY_KEY
from atr_pipeline.history.changes import PREVIOUS_MONTH_COLUMN

# Lineage and the diff's bookkeeping column say where rows came from, not what the list holds.
NOT_CONTENT: frozenset[str] = frozenset((*LINEAGE_FIELDS, PREVIOUS_MONTH_COLUMN))
_ROW = "__row"


def contract_content_hashes(members: pl.DataFrame) -> dict[str, str]:
    """sha256 per contract of its member list (lineage excluded), to version Groups only on change."""
    content = [c for c in members.columns if c not in NOT_CONTENT]
    if not members.height:
        return {}
    # The order is the original's (contract, then member entry key; nulls first), found per
    # contract on a narrow frame of row numbers: 200 sorts of 5k keys are cheaper than one of 1M,
    # and the contract id no longer takes part in the comparisons. The key is unique within a
    # member list, so every sort gives the same order.
    key = list(MEMBER_ENTRY_KEY)
    groups = (
        members.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias(_ROW), *key)
        .group_by("contract_id")
        .agg(pl.col(_ROW).sort_by(key))
        .sort("contract_id", nulls_last=False)
    )
    contracts = groups.get_column("contract_id").to_list()
    lengths = groups.get_column(_ROW).list.len().to_list()
    rows = groups.get_column(_ROW).explode(empty_as_null=True)
    starts = [0]
    for length in lengths[:-1]:
        starts.append(starts[-1] + length)
    # Each contract's rows are gathered inside its digest thread, straight from the member list:
    # one contract's copy at a time. A rechunked, gathered copy of the whole month (the previous
    # way, ~20% less CPU) held the content columns twice more (~1 GB at 1M members).
    content_frame = members.select(content)

    def digest(start: int, length: int) -> str:
        buffer = io.BytesIO()
        content_frame[rows.slice(start, length)].write_csv(buffer)
        return hashlib.sha256(buffer.getbuffer()).hexdigest()

    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = list(pool.map(digest, starts, lengths))
    return {str(contract): hexdigest for contract, hexdigest in zip(contracts, digests, strict=True)}
