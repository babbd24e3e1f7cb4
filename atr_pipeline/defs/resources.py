"""Dagster resources: thin wrappers that hand the plain stage functions their settings.

Settings come in through ``dg.EnvVar`` (defs/build.py) so the UI shows which variable each one
is read from, and the values are read in the run, not frozen into the code location.
"""

from __future__ import annotations

import dagster as dg

from atr_pipeline.config import Settings, load_settings
from atr_pipeline.layouts.spec import MappingSpec, load_mapping
from atr_pipeline.private import protect_dagster_home


class AtrHome(dg.ConfigurableResource):
    """Where state lives (ATR_HOME), where deliveries arrive (ATR_INBOX) and the mappings folder.

    Empty values fall back to the environment, then to the embedded defaults, so the same
    definitions run locally, in tests and in production without code changes.
    """

    home: str = ""
    inbox: str = ""
    mappings_dir: str = ""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Every run: what Dagster wrote under DAGSTER_HOME so far (run and event storage, compute
        # logs, step outputs) becomes owner-only, and this process creates owner-only files.
        protect_dagster_home(context.instance.root_directory if context.instance else None)

    def settings(self) -> Settings:
        return load_settings(self.home or None, inbox=self.inbox or None, mappings_dir=self.mappings_dir or None)

    def mapping(self, source_id: str) -> MappingSpec:
        return load_mapping(self.settings().mappings_dir / f"{source_id}.yaml")


class FhirServer(dg.ConfigurableResource):
    """The FHIR server server_load PUTs into (ATR_FHIR_URL; ATR_FHIR_KIND and the token stay in the environment)."""

    url: str = ""
