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

    import sqlalchemy as sa

    from keys import db as keys_db
    from keys.migrate import keystore_schema_status
    from keys.migrate import upgrade as upgrade_keys
    from keys.models import SCHEMA, metadata

    async def tables(url: str) -> set[str]:
        engine = keys_db.create_engine(url, schema=SCHEMA)
        schema = None if keys_db.is_sqlite(engine) else SCHEMA
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names(schema=schema)))
        finally:
            await engine.dispose()

    with fresh_database(backend, tmp_path) as db:
        assert asyncio.run(keystore_schema_status(db.keystore_url)) == "absent"
        asyncio.run(upgrade_keys(db.keystore_url))
        assert asyncio.run(keystore_schema_status(db.keystore_url)) == "current"
        assert {t.name for t in metadata.sorted_tables} <= asyncio.run(tables(db.keystore_url))
        asyncio.run(upgrade_keys(db.keystore_url))  # idempotent at every start
        assert asyncio.run(keystore_schema_status(db.keystore_url)) == "current"
