"""Migrate the key store's own database (never the vault's metadata database).

await keys.migrate.upgrade("sqlite+aiosqlite:////data/keys.db")
await keys.migrate.upgrade("postgresql+asyncpg://vault@db/vault", schema="keystore")
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

from keys import db
from keys.models import SCHEMA
from keys.versions import (
    ABSENT,
    CURRENT,
    KEYSTORE_VERSION_TABLE,
    NEWER,
    OLDER,
    keystore_status,
)

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = KEYSTORE_VERSION_TABLE  # as in migrations/env.py


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def ensure_schema(engine: AsyncEngine, schema: str) -> None:
    if db.is_sqlite(engine):
        return
    quote = engine.dialect.identifier_preparer.quote
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")


async def upgrade(url: str | sa.URL, *, schema: str = SCHEMA, revision: str = "head") -> None:
    """Bring the key store to ``revision``; safe to run at every start."""
    engine = db.create_engine(url, schema=schema).execution_options(**db.WRITE)
    try:
        await ensure_schema(engine, schema)
        async with engine.connect() as conn:
            await conn.run_sync(_upgrade, None if db.is_sqlite(engine) else schema, revision)
            await conn.commit()
    finally:
        await engine.dispose()


def schema_status(
    connection: sa.Connection, script_location: Path, *, version_table: str = "alembic_version",
    schema: str | None = None,
) -> str:
    """``current`` (at head), ``older`` (behind: this code needs a migration),
    ``newer`` (a revision this code does not know: a rolling upgrade ran ahead; fine)
    or ``absent`` (never migrated). Reads only the version table, through Alembic and the
    scripts themselves: the reference for :mod:`keys.versions`, which the server uses."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    context = MigrationContext.configure(
        connection, opts={"version_table": version_table, "version_table_schema": schema}
    )
    current = set(context.get_current_heads())
    if not current:
        return ABSENT
    script = ScriptDirectory(str(script_location))
    if current == set(script.get_heads()):
        return CURRENT
    known = {rev.revision for rev in script.walk_revisions()}
    return OLDER if current <= known else NEWER


async def keystore_schema_status(url: str | sa.URL, *, schema: str = SCHEMA) -> str:
    engine = db.create_engine(url, schema=schema)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(keystore_status, schema=None if db.is_sqlite(engine) else schema)
    finally:
        await engine.dispose()


def _upgrade(connection: sa.Connection, schema: str | None, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    config.attributes["keystore_schema"] = schema
    command.upgrade(config, revision)
