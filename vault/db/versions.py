"""The metadata database's schema against this code, read without Alembic
(see :mod:`keys.versions`; ``tests/test_migrations.py`` proves these ids equal to the
migration scripts' own)."""

from __future__ import annotations

import sqlalchemy as sa

from keys.versions import applied_revisions, compare

METADATA_HEADS = frozenset({"0022"})
METADATA_REVISIONS = frozenset({
    "0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0011", "0012", "0013", "0015", "0017",
    "0019", "0020", "0021", "0022",
})


def metadata_status(connection: sa.Connection) -> str:
    """``current``, ``older``, ``newer`` or ``absent`` (:func:`keys.versions.compare`)."""
    return compare(applied_revisions(connection), heads=METADATA_HEADS, revisions=METADATA_REVISIONS)
