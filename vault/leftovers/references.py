"""The one registry of every column that references a sealed blob.

The leftover sweep deletes a blob (and shreds its key) only when no column listed
here names it, so a table that starts referencing blobs MUST be added here:
``tests/leftovers/test_references.py`` fails when a model has a blob column that is
not listed. A referencing row committed in an ORM flush also ends the blob's writer
lease in the same transaction (:mod:`vault.leftovers.leases`).
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select, union
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from vault.consent.models import ConsentRecord, Release
from vault.lifecycle.models import Export
from vault.media.models import MediaBlob
from vault.redaction.models import Redaction

#: (model, column): a blob id in that column keeps the blob.
BLOB_REFERENCES: tuple[tuple[type, str], ...] = (
    (MediaBlob, "id"),
    (ConsentRecord, "evidence_blob_id"),
    (Release, "blob_id"),
    (Export, "blob_id"),
    (Redaction, "original_blob_id"),  # the original a redaction was read from (also a media blob)
)


def columns() -> list[InstrumentedAttribute]:
    return [getattr(model, name) for model, name in BLOB_REFERENCES]


async def referenced(session: AsyncSession, blob_ids: Collection[str]) -> set[str]:
    """The ids among ``blob_ids`` that some registered column names."""
    ids = list(blob_ids)
    if not ids:
        return set()
    query = union(*(select(column.label("blob_id")).where(column.in_(ids)) for column in columns()))
    return set((await session.execute(query)).scalars())
