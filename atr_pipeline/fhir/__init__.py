"""fhir/: vectorised Da Vinci ATR 2.1.0 builders with keyed-hash ids (entry point: fhir.build.build_resources)."""
