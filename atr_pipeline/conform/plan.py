"""How much of a resource set gets the full R4B structure check: the one rule `atr run` and
`atr conform` share.

In: the number of resources in the set. Out: ``(structural, sample_size)`` for ``Checker`` /
``check_ndjson_frames`` / ``check_export``. Every cheap rule (profiles, references, NPIs, JSON
hygiene) runs on every resource whatever this says; only the R4B models, which cost ~5-10k
resources/s, are limited.

Up to ``ATR_CONFORM_FULL_MAX`` resources (default 50,000) every resource is validated with the
models; above it, a seeded reservoir sample of ``ATR_CONFORM_SAMPLE_SIZE`` (default 2,000, seed 0)
drawn over the set in load order. The same set read in the same order gives the same sample,
so the run's stage and `atr conform` on its export validate the same resources.
"""

from __future__ import annotations

import os

FULL_MAX = 50_000
SAMPLE_SIZE = 2_000


def full_max() -> int:
    return int(os.environ.get("ATR_CONFORM_FULL_MAX", str(FULL_MAX)))


def sample_size() -> int:
    return int(os.environ.get("ATR_CONFORM_SAMPLE_SIZE", str(SAMPLE_SIZE)))


def structural_plan(total: int) -> tuple[str, int]:
    """``("all", n)`` for a set of at most the full-check limit, else ``("sample", n)``."""
    return ("all" if total <= full_max() else "sample"), sample_size()
