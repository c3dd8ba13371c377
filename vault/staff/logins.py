"""Logging in: the password (a pending session), the second factor (a new active
session), fresh re-authentication for sensitive steps, each TOTP code accepted once, and
the lockout after failed attempts."""

from __future__ import annotations

import secrets

from sqlalchemy import delete, select, update

from vault.actor import Actor
from vault.audit.service import AuditEvent
from vault.db import rowcount, utcnow
from vault.errors import Unauthorized
from vault.staff import passwords, totp
from vault.staff.base import (ACTIVE, FRESH_AUTH, LOCKOUT, MAX_FAILURES, PENDING, PENDING_TTL, CurrentSession,
                              FreshAuthRequired, LockedOut, _digest, actor_id)
from vault.staff.models import StaffAccount, StaffSession
from vault.staff.sessions import Sessions
from vault.tenants.models import Tenant


class Logins(Sessions):
    """The password, the second factor, re-authentication and the lockout."""

    async def _fail(self, row: StaffAccount, request_id: str, action: str) -> None:
        async with self.db.transaction() as session:
            fresh = await session.get(StaffAccount, row.id, with_for_update=True)
            assert fresh is not None
            fresh.failed_logins += 1
            if fresh.failed_logins >= MAX_FAILURES:
                fresh.locked_until = utcnow() + LOCKOUT
                fresh.failed_logins = 0
                await session.execute(delete(StaffSession).where(StaffSession.staff_id == row.id,
                                                                 StaffSession.state == PENDING))
            actor = Actor(row.tenant_id, actor_id(row.id), row.role, request_id)
            await self.audit.append(session, AuditEvent.of(
                actor, action, outcome="locked_out" if fresh.locked_until and fresh.failed_logins == 0 else "denied",
                staff_id=row.id))

    @staticmethod
    def _locked(row: StaffAccount) -> bool:
        return row.locked_until is not None and row.locked_until > utcnow()

    async def login(self, slug: str, email: str, password: str, *, request_id: str) -> str:
        """Check the password; return a PENDING session id (the second factor comes next).
        Unauthorized for any wrong part, the same answer whichever it was; LockedOut while
        the account is locked."""
        email = email.strip().lower()
        async with self.db.session() as session:
            row = (await session.execute(
                select(StaffAccount).join(Tenant, Tenant.id == StaffAccount.tenant_id)
                .where(Tenant.slug == slug.strip().lower(), StaffAccount.email == email))).scalar_one_or_none()
        usable = row is not None and row.disabled_at is None and row.enrolled_at is not None
        if usable and self._locked(row):  # type: ignore[arg-type]
            raise LockedOut()
        ok = passwords.verify_password(row.password_hash if usable else None, password)  # type: ignore[union-attr]
        if not usable:
            raise Unauthorized("wrong clinic, e-mail address or password")
        assert row is not None
        if not ok:
            await self._fail(row, request_id, "staff.login")
            raise Unauthorized("wrong clinic, e-mail address or password")
        session_id = secrets.token_urlsafe(32)
        async with self.db.transaction() as session:
            session.add(StaffSession(id_hash=_digest(session_id), staff_id=row.id, tenant_id=row.tenant_id,
                                     state=PENDING, csrf=secrets.token_urlsafe(32)))
        return session_id

    async def pending(self, session_id: str) -> str:
        """The CSRF token of a pending session (for the second-factor form); Unauthorized otherwise."""
        async with self.db.session() as session:
            row = await session.get(StaffSession, _digest(session_id))
        if row is None or row.state != PENDING or row.created_at + PENDING_TTL <= utcnow():
            raise Unauthorized("log in again")
        return row.csrf

    async def _check_code(self, account: StaffAccount, code: str, request_id: str, action: str) -> None:
        """Accept a TOTP code once; count a wrong one as a failed attempt."""
        if self._locked(account):
            raise LockedOut()
        assert account.totp_sealed is not None
        secret = await self._open(account.tenant_id, account.id, account.totp_sealed)
        step = totp.matching_step(secret, code, last_step=account.totp_last_step)
        if step is not None:
            async with self.db.transaction() as session:
                # Compare-and-set: of two requests with the same code, one wins.
                won = rowcount(await session.execute(update(StaffAccount).where(
                    StaffAccount.id == account.id, StaffAccount.totp_last_step < step)
                    .values(totp_last_step=step, failed_logins=0)))
            if won:
                return
        await self._fail(account, request_id, action)
        raise Unauthorized("that code is not right (each code works once)")

    async def second_factor(self, session_id: str, code: str, *, request_id: str) -> str:
        """Finish a login: a right code turns the pending session into a NEW active one
        (the id rotates), whose id is returned."""
        async with self.db.session() as session:
            pending = await session.get(StaffSession, _digest(session_id))
            account = await session.get(StaffAccount, pending.staff_id) if pending is not None else None
        if (pending is None or account is None or pending.state != PENDING
                or pending.created_at + PENDING_TTL <= utcnow() or account.disabled_at is not None):
            raise Unauthorized("log in again")
        await self._check_code(account, code, request_id, "staff.login.second_factor")
        fresh_id = secrets.token_urlsafe(32)
        now = utcnow()
        async with self.db.transaction() as session:
            gone = rowcount(await session.execute(delete(StaffSession).where(StaffSession.id_hash == _digest(session_id))))
            if not gone:
                raise Unauthorized("log in again")
            session.add(StaffSession(id_hash=_digest(fresh_id), staff_id=account.id, tenant_id=account.tenant_id,
                                     state=ACTIVE, csrf=secrets.token_urlsafe(32), created_at=now, last_seen_at=now,
                                     verified_at=now))
            actor = Actor(account.tenant_id, actor_id(account.id), account.role, request_id)
            await self.audit.append(session, AuditEvent.of(actor, "staff.login", staff_id=account.id))
        return fresh_id

    # -- fresh re-authentication ------------------------------------------------------------
    async def reauthenticate(self, session_id: str, code: str, *, request_id: str) -> None:
        """A fresh TOTP code for a sensitive step (erasure, sweep)."""
        current = await self.resolve(session_id)
        async with self.db.session() as session:
            account = await session.get(StaffAccount, current.staff_id)
        assert account is not None
        await self._check_code(account, code, request_id, "staff.reauthenticate")
        async with self.db.transaction() as session:
            await session.execute(update(StaffSession).where(StaffSession.id_hash == _digest(session_id))
                                  .values(verified_at=utcnow()))
        self._cache.pop(_digest(session_id), None)

    def require_fresh(self, current: CurrentSession) -> None:
        if current.verified_at is None or utcnow() - current.verified_at > FRESH_AUTH:
            raise FreshAuthRequired()

    async def fresh_step(self, session_id: str, code: str, *, request_id: str) -> CurrentSession:
        """Check a code given with a sensitive form and return the (now fresh) session."""
        await self.reauthenticate(session_id, code, request_id=request_id)
        current = await self.resolve(session_id)
        self.require_fresh(current)
        return current
