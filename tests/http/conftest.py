"""Fixtures of the HTTP tests: a vault on a real socket (tests/support/liveserver.py)."""

from tests.support.liveserver import live  # noqa: F401  (a fixture, found here by pytest)
