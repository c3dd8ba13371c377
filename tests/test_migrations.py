"""Migrations build the schema on every backend, match the models (``alembic
check``) and run down and up again."""

import pytest

from tests.support.databases import backends, fresh_database
from vault.migrate import alembic_config, check, upgrade


@pytest.mark.parametrize("backend", backends())
def test_upgrade_check_downgrade_upgrade(backend, tmp_path):
    from alembic import command

    with fresh_database(backend, tmp_path) as db:
        upgrade(db.url)
        check(db.url)  # raises when models and migrations disagree
        command.downgrade(alembic_config(db.url), "base")
        upgrade(db.url)
        check(db.url)


@pytest.mark.parametrize("backend", backends())
def test_key_store_migrations(backend, tmp_path):
    import asyncio

    from keys.migrate import upgrade as upgrade_keys

    with fresh_database(backend, tmp_path) as db:
        asyncio.run(upgrade_keys(db.keystore_url))
        asyncio.run(upgrade_keys(db.keystore_url))  # idempotent at every start
