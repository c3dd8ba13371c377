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

MIGRATIONS = Path(__file__).with_name("migrations")


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


def _upgrade(connection: sa.Connection, schema: str | None, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    config.attributes["keystore_schema"] = schema
    command.upgrade(config, revision)
