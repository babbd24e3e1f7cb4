"""atr_pipeline: payers' member-attribution files -> Da Vinci ATR 2.1.0 FHIR (see README.md)."""

import os

# polars allocates through its own jemalloc, which by default keeps freed pages for 10 s before
# returning them to the OS. Each stage frees GB-sized frames and allocates the next ones, so the
# previous stage's garbage stacked onto the next one's peak. Measured on the 1M-member benchmark
# (docs/PERFORMANCE.md): unset 50.3 s / 70.7 s CPU / 4.3 GB peak; 1 s dirty decay 47.5 s / 66.7 s
# CPU / 3.7 GB; immediate return (0) 59.0 s / 80.8 s CPU / 3.6 GB (page faults on every reuse).
# jemalloc reads this when polars is first loaded, so it only applies when atr_pipeline is
# imported before polars; a value already in the environment wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:0")
