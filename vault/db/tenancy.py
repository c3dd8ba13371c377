"""The tenant check every loader shares: a row is found only within the actor's tenant.

Another tenant's row and a missing row give the same NotFound, so ids never reveal
that something exists elsewhere (invariant 7)."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vault.db.base import Base
from vault.errors import NotFound

T = TypeVar("T", bound=Base)  # a model with ``id`` and ``tenant_id`` columns


async def owned(session: AsyncSession, model: type[T], row_id: str, tenant_id: str, *, lock: bool = False, what: str) -> T:
    columns = model.__table__.c
    query = select(model).where(columns.id == row_id, columns.tenant_id == tenant_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no such {what}")
    return row
