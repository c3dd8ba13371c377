"""A person's review of the redaction before a de-identified release (docs/consent.md)."""
