"""Web sessions: resolving the cookie on every request (briefly cached), logging out
(here or everywhere)."""

from __future__ import annotations

import time

from sqlalchemy import delete, func, select, update

from vault.actor import Actor
from vault.audit.service import AuditEvent
from vault.db import utcnow
from vault.errors import Unauthorized
from vault.staff.base import (ACTIVE, SEEN_RESOLUTION, SESSION_CACHE_SIZE, CurrentSession, StaffBase, _digest,
                              actor_id)
from vault.staff.models import StaffAccount, StaffSession
from vault.tenants.models import Tenant


class Sessions(StaffBase):
    """Resolving a session cookie, logging out."""

    async def resolve(self, session_id: str) -> CurrentSession:
        """The active session behind a cookie; Unauthorized when unknown, pending, idle too
        long, too old, or its account disabled."""
        digest = _digest(session_id)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        now = utcnow()
        async with self.db.session() as session:
            found = (await session.execute(
                select(StaffSession, StaffAccount, Tenant.slug)
                .join(StaffAccount, StaffAccount.id == StaffSession.staff_id)
                .join(Tenant, Tenant.id == StaffSession.tenant_id)
                .where(StaffSession.id_hash == _digest(session_id)))).first()
        if found is None:
            raise Unauthorized("log in")
        row, account, slug = found
        if (row.state != ACTIVE or account.disabled_at is not None or row.last_seen_at + self.idle <= now
                or row.created_at + self.lifetime <= now):
            raise Unauthorized("the session has ended; log in again")
        if now - row.last_seen_at > SEEN_RESOLUTION:
            async with self.db.transaction() as session:
                await session.execute(update(StaffSession).where(StaffSession.id_hash == row.id_hash)
                                      .values(last_seen_at=now))
        current = CurrentSession(staff_id=account.id, tenant_id=row.tenant_id, tenant_slug=slug, email=account.email,
                                 role=account.role, csrf=row.csrf, verified_at=row.verified_at)
        if self.cache_seconds > 0:
            if len(self._cache) >= SESSION_CACHE_SIZE:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + self.cache_seconds, current)
        return current

    async def logout(self, session_id: str, *, everywhere: bool = False, request_id: str) -> None:
        self._cache.clear()
        async with self.db.transaction() as session:
            row = await session.get(StaffSession, _digest(session_id))
            if row is None:
                return
            account = await session.get(StaffAccount, row.staff_id)
            assert account is not None
            if everywhere:
                await session.execute(delete(StaffSession).where(StaffSession.staff_id == row.staff_id))
            else:
                await session.delete(row)
            actor = Actor(row.tenant_id, actor_id(row.staff_id), account.role, request_id)
            await self.audit.append(session, AuditEvent.of(
                actor, "staff.logout_everywhere" if everywhere else "staff.logout", staff_id=row.staff_id))

    async def sessions_of(self, staff_id: str) -> int:
        async with self.db.session() as session:
            return int((await session.execute(select(func.count()).select_from(StaffSession).where(
                StaffSession.staff_id == staff_id, StaffSession.state == ACTIVE))).scalar_one())
