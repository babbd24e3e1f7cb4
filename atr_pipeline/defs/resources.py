"""Dagster resources: thin wrappers that hand the plain stage functions their settings."""

from __future__ import annotations

import dagster as dg

from atr_pipeline.config import Settings, load_settings
from atr_pipeline.layouts.spec import MappingSpec, load_mapping


class AtrHome(dg.ConfigurableResource):
    """Where state lives (ATR_HOME), where deliveries arrive (ATR_INBOX) and the mappings folder.

    Empty values fall back to the environment, then to the embedded defaults, so the same
    definitions run locally, in tests and in production without code changes.
    """

    home: str = ""
    inbox: str = ""
    mappings_dir: str = ""

    def settings(self) -> Settings:
        return load_settings(self.home or None, inbox=self.inbox or None, mappings_dir=self.mappings_dir or None)

    def mapping(self, source_id: str) -> MappingSpec:
        return load_mapping(self.settings().mappings_dir / f"{source_id}.yaml")
