"""Listing object keys, for the vault's leftover sweep: an object key whose blob was
never stored (a writer killed between creating the key and storing the blob) is
found here and shredded through the shred ledger. Ids and times only."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keys.models import object_keys

if TYPE_CHECKING:
    from keys.store import KeyStore


@dataclass(frozen=True)
class ObjectKeyRow:
    object_id: str
    tenant_id: str
    patient_id: str
    created_at: datetime


def _rows(result: Iterable[sa.Row[Any]]) -> list[ObjectKeyRow]:
    return [ObjectKeyRow(object_id=r.object_id, tenant_id=r.tenant_id, patient_id=r.patient_id, created_at=r.created_at)
            for r in result]


_COLUMNS = (object_keys.c.object_id, object_keys.c.tenant_id, object_keys.c.patient_id, object_keys.c.created_at)


async def object_keys_page(store: KeyStore, *, after: str, limit: int, created_before: datetime) -> list[ObjectKeyRow]:
    """Object keys created before ``created_before``, by object id after ``after``."""
    query = (sa.select(*_COLUMNS)
             .where(object_keys.c.object_id > after, object_keys.c.created_at < created_before)
             .order_by(object_keys.c.object_id).limit(limit))
    async with store._reader.connect() as conn:
        return _rows(await conn.execute(query))


async def object_key_owners(store: KeyStore, object_ids: Collection[str]) -> dict[str, ObjectKeyRow]:
    """The key rows of these object ids (those that still have a key)."""
    ids = sorted(set(object_ids))
    if not ids:
        return {}
    async with store._reader.connect() as conn:
        rows = _rows(await conn.execute(sa.select(*_COLUMNS).where(object_keys.c.object_id.in_(ids))))
    return {row.object_id: row for row in rows}
