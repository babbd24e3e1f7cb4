"""atr_pipeline: payers' member-attribution files -> Da Vinci ATR 2.1.0 FHIR (see README.md)."""

import os

# polars allocates through its own jemalloc, which by default keeps freed pages for 10 s before
# returning them to the OS. Each stage frees GB-sized frames and allocates the next ones, so
# that retention stacked up to ~0.6 GB of a 1M-member month's peak RSS. Returning pages at once
# costs ~1 s of CPU (page faults) on such a month (docs/PERFORMANCE.md). jemalloc reads this
# when polars is first loaded, so it only applies when atr_pipeline is imported before polars;
# a value already in the environment wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
