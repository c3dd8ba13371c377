"""Webhook tests run on a database of their own: the deliveries they queue and the
workers they run must not meet other tests' jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.support.databases import TestDatabase, backends, fresh_database


@pytest.fixture(scope="module", params=backends())
def migrated_db(request, tmp_path_factory) -> Iterator[TestDatabase]:
    from keys.migrate import upgrade as upgrade_keys
    from vault.migrate import upgrade

    with fresh_database(request.param, tmp_path_factory.mktemp(f"webhooks-{request.param}")) as db:
        upgrade(db.url)
        asyncio.run(upgrade_keys(db.keystore_url))
        yield db
