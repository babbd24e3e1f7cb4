"""history/: DuckDB monthly snapshots per source, change types, Group versions, trends.

In: accepted canonical rows per (source, reporting month). Out: ATR member lists with
changeType / inactive derived against the nearest earlier recorded month, Group versions and
list status, trend tables and charts. See ``store.py`` and docs/HISTORY.md.
"""

from atr_pipeline.history.changes import CHANGE_FIELDS, compute_changes
from atr_pipeline.history.locking import HistoryLocked
from atr_pipeline.history.store import GroupVersion, HistoryStore, SnapshotLineage

__all__ = ["CHANGE_FIELDS", "GroupVersion", "HistoryLocked", "HistoryStore", "SnapshotLineage", "compute_changes"]
