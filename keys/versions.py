"""Where a database's schema stands against the migrations this code ships, read without
Alembic: one ``SELECT`` of the version table through the driver already loaded.

Alembic, Mako and the migration scripts cost a serving process ~12 MiB resident (and
parsing every script on each ``/readyz``); they are needed only when something is to be
migrated. The revision ids below are constants; ``tests/test_migrations.py`` proves them
equal to Alembic's ``ScriptDirectory`` (heads and every revision) for both chains, so a new
migration fails that test until it is named here too.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

# How a database's schema compares with the migrations this code ships.
CURRENT, OLDER, NEWER, ABSENT = "current", "older", "newer", "absent"

KEYSTORE_VERSION_TABLE = "keystore_alembic_version"  # as in keys/migrations/env.py
KEYSTORE_HEADS = frozenset({"0003"})
KEYSTORE_REVISIONS = frozenset({"0001", "0002", "0003"})


def applied_revisions(connection: sa.Connection, *, version_table: str = "alembic_version",
                      schema: str | None = None) -> frozenset[str]:
    """The revisions stamped in ``version_table`` (empty when the table does not exist),
    as Alembic's ``MigrationContext.get_current_heads`` reads them."""
    if not connection.dialect.has_table(connection, version_table, schema=schema):
        return frozenset()
    table = sa.table(version_table, sa.column("version_num"), schema=schema)
    return frozenset(connection.execute(sa.select(table.c.version_num)).scalars())


def compare(applied: Collection[str], *, heads: Collection[str], revisions: Collection[str]) -> str:
    """``current`` (at head), ``older`` (behind: this code needs a migration), ``newer``
    (a revision this code does not know: a rolling upgrade ran ahead; fine) or ``absent``
    (never migrated)."""
    found = set(applied)
    if not found:
        return ABSENT
    if found == set(heads):
        return CURRENT
    return OLDER if found <= set(revisions) else NEWER


def keystore_status(connection: sa.Connection, *, schema: str | None = None) -> str:
    """The key store's schema (its own chain and version table) against this code."""
    return compare(applied_revisions(connection, version_table=KEYSTORE_VERSION_TABLE, schema=schema),
                   heads=KEYSTORE_HEADS, revisions=KEYSTORE_REVISIONS)
