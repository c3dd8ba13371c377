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


def test_the_servers_revision_constants_are_the_scripts_own():
    """vault serve and /readyz compare the version tables with constants (no Alembic in the
    server): they must name exactly the migration scripts' heads and revisions. A new
    migration fails here until keys/versions.py or vault/db/versions.py names it."""
    from alembic.script import ScriptDirectory

    from keys.migrate import MIGRATIONS as KEYS_MIGRATIONS
    from keys.versions import KEYSTORE_HEADS, KEYSTORE_REVISIONS
    from vault.db.versions import METADATA_HEADS, METADATA_REVISIONS
    from vault.migrate import MIGRATIONS

    for folder, heads, revisions in ((MIGRATIONS, METADATA_HEADS, METADATA_REVISIONS),
                                     (KEYS_MIGRATIONS, KEYSTORE_HEADS, KEYSTORE_REVISIONS)):
        script = ScriptDirectory(str(folder))
        assert set(script.get_heads()) == heads, folder
        assert {rev.revision for rev in script.walk_revisions()} == revisions, folder


@pytest.mark.parametrize("backend", backends())
def test_the_cheap_schema_status_agrees_with_alembics(backend, tmp_path):
    """absent, older, current and newer read the same through keys.versions (one SELECT)
    as through Alembic's MigrationContext and ScriptDirectory, for both chains."""
    import asyncio

    import sqlalchemy as sa

    from keys import db as keys_db
    from keys.migrate import MIGRATIONS as KEYS_MIGRATIONS
    from keys.migrate import VERSION_TABLE, schema_status
    from keys.migrate import upgrade as upgrade_keys
    from keys.models import SCHEMA
    from keys.versions import keystore_status
    from vault.db.engine import Database
    from vault.db.versions import metadata_status
    from vault.migrate import MIGRATIONS

    def both(url: str, keystore: bool) -> tuple[str, str]:
        async def read() -> tuple[str, str]:
            if keystore:
                engine = keys_db.create_engine(url, schema=SCHEMA)
                schema = None if keys_db.is_sqlite(engine) else SCHEMA
                try:
                    async with engine.connect() as conn:
                        cheap = await conn.run_sync(keystore_status, schema=schema)
                        reference = await conn.run_sync(schema_status, KEYS_MIGRATIONS, version_table=VERSION_TABLE,
                                                        schema=schema)
                        return cheap, reference
                finally:
                    await engine.dispose()
            database = Database(url)
            try:
                async with database.read_engine.connect() as conn:
                    return await conn.run_sync(metadata_status), await conn.run_sync(schema_status, MIGRATIONS)
            finally:
                await database.close()

        return asyncio.run(read())

    def stamp(url: str, table: str, revision: str, schema: str | None) -> None:
        async def write() -> None:
            engine = keys_db.create_engine(url, schema=SCHEMA)
            try:
                async with engine.begin() as conn:
                    await conn.execute(sa.table(table, sa.column("version_num"), schema=schema).update()
                                       .values(version_num=revision))
            finally:
                await engine.dispose()

        asyncio.run(write())

    with fresh_database(backend, tmp_path) as db:
        keys_schema = None if backend == "sqlite" else SCHEMA
        assert both(db.url, False) == ("absent", "absent")
        assert both(db.keystore_url, True) == ("absent", "absent")
        upgrade(db.url, "0006")
        asyncio.run(upgrade_keys(db.keystore_url, revision="0002"))
        assert both(db.url, False) == ("older", "older")
        assert both(db.keystore_url, True) == ("older", "older")
        upgrade(db.url)
        asyncio.run(upgrade_keys(db.keystore_url))
        assert both(db.url, False) == ("current", "current")
        assert both(db.keystore_url, True) == ("current", "current")
        stamp(db.url, "alembic_version", "9999_from_a_newer_release", None)
        stamp(db.keystore_url, VERSION_TABLE, "9999_from_a_newer_release", keys_schema)
        assert both(db.url, False) == ("newer", "newer")
        assert both(db.keystore_url, True) == ("newer", "newer")
