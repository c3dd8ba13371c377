"""Consent records, the consent gate and the release paths that ask it."""
