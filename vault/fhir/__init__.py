"""FHIR R4 read-only adapter over the media and patients domains (docs/fhir.md)."""
