"""The Dagster code location (workspace.yaml loads this module)."""

from atr_pipeline.defs.build import build_definitions

defs = build_definitions()
