"""Alembic environment of the key store (separate from the vault's own migrations).

Run programmatically through :func:`keys.migrate.upgrade`, which hands us a connection
and the schema. The ``alembic`` command line works too:
``alembic -c <ini with script_location=keys/migrations> -x url=... [-x schema=...] upgrade head``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from keys.models import SCHEMA, metadata_for

VERSION_TABLE = "keystore_alembic_version"

config = context.config


def _run(connection: Connection) -> None:
    if "keystore_schema" not in config.attributes:
        requested = context.get_x_argument(as_dictionary=True).get("schema", SCHEMA)
        config.attributes["keystore_schema"] = None if connection.dialect.name == "sqlite" else requested
    schema = config.attributes["keystore_schema"]
    context.configure(
        connection=connection,
        target_metadata=metadata_for(schema),
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        # Autogenerate/check look only at the key store's own schema.
        include_schemas=schema is not None,
        include_name=lambda name, kind, _parent: kind != "schema" or name == schema,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    from keys import db
    from keys.migrate import ensure_schema

    schema = context.get_x_argument(as_dictionary=True).get("schema", SCHEMA)
    engine = db.create_engine(url, schema=schema).execution_options(**db.WRITE)
    try:
        await ensure_schema(engine, schema)
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the key store migrations run online only")

_connection = config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not _url:
        raise SystemExit("pass the key store database URL with -x url=...")
    asyncio.run(_run_standalone(_url))
