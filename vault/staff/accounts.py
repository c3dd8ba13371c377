"""Staff accounts: the operator's and admin's commands (create, list, disable, reset) and
enrolment from the one-time link (opening it consumes nothing; completing it does)."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import delete, select

from vault.actor import Actor
from vault.audit.service import AuditEvent
from vault.db import utcnow
from vault.errors import Conflict, NotFound, ValidationFailed
from vault.permissions import ROLES
from vault.staff import passwords, totp
from vault.staff.base import ENROLMENT_TTL, EnrolmentForm, IssuedEnrolment, StaffBase, StaffInfo, _digest, actor_id
from vault.staff.models import StaffAccount, StaffEnrolment, StaffSession
from vault.tenants.models import ApiToken, Tenant


class Accounts(StaffBase):
    """Accounts and their enrolment."""

    # -- operator and admin commands -------------------------------------------------------
    async def _new_enrolment(self, session, row: StaffAccount) -> tuple[str, datetime]:
        await session.execute(delete(StaffEnrolment).where(StaffEnrolment.staff_id == row.id))
        token = secrets.token_urlsafe(32)
        expires = utcnow() + ENROLMENT_TTL
        sealed = await self._seal(row.tenant_id, row.id, totp.new_secret())
        session.add(StaffEnrolment(token_hash=_digest(token), staff_id=row.id, totp_sealed=sealed, expires_at=expires))
        return token, expires

    async def create(self, slug: str, email: str, role: str, *, request_id: str, actor: Actor | None = None) -> IssuedEnrolment:
        email = email.strip().lower()
        if role not in ROLES:
            raise ValidationFailed(f"role must be one of {', '.join(ROLES)}")
        if not (3 <= len(email) <= 254) or "@" not in email or any(c.isspace() for c in email):
            raise ValidationFailed("an e-mail address names the person who logs in")
        async with self.db.transaction() as session:
            tenant = await self._tenant(session, slug)
            taken = (await session.execute(select(StaffAccount.id).where(
                StaffAccount.tenant_id == tenant.id, StaffAccount.email == email))).first()
            if taken:
                raise Conflict("that tenant already has a login for this e-mail address")
            row = StaffAccount(tenant_id=tenant.id, email=email, role=role, totp_last_step=0, failed_logins=0)
            session.add(row)
            await session.flush()
            token, expires = await self._new_enrolment(session, row)
            if actor is not None and actor.tenant_id != tenant.id:
                raise NotFound("no such tenant")
            await self.audit.append(session, AuditEvent.of(actor or Actor.cli(tenant.id, request_id), "staff.create",
                                                           staff_id=row.id, role=role))
        return IssuedEnrolment(staff=self._info(row, slug), token=token, expires_at=expires)

    async def accounts(self, slug: str) -> list[StaffInfo]:
        async with self.db.session() as session:
            tenant = await self._tenant(session, slug)
            rows = (await session.execute(select(StaffAccount).where(StaffAccount.tenant_id == tenant.id)
                                          .order_by(StaffAccount.email))).scalars().all()
            return [self._info(r, slug) for r in rows]

    async def accounts_for(self, actor: Actor) -> list[StaffInfo]:
        """The staff of the actor's tenant (the admin's staff page)."""
        async with self.db.session() as session:
            slug = (await session.execute(select(Tenant.slug).where(Tenant.id == actor.tenant_id))).scalar_one()
        return await self.accounts(slug)

    async def names(self, tenant_id: str) -> dict[str, str]:
        """Audit actor id -> the person's e-mail, for the audit viewer."""
        async with self.db.session() as session:
            rows = (await session.execute(select(StaffAccount.id, StaffAccount.email)
                                          .where(StaffAccount.tenant_id == tenant_id))).all()
        return {actor_id(r.id): r.email for r in rows}

    async def token_labels(self, tenant_id: str) -> dict[str, str]:
        """Audit actor id (a token id) -> the token's label, for the audit viewer."""
        async with self.db.session() as session:
            rows = (await session.execute(select(ApiToken.id, ApiToken.label).where(ApiToken.tenant_id == tenant_id))).all()
        return {r.id: f"token: {r.label}" for r in rows}

    async def disable(self, staff_id: str, *, request_id: str, actor: Actor | None = None) -> StaffInfo:
        async with self.db.transaction() as session:
            row = await session.get(StaffAccount, staff_id)
            if row is None or (actor is not None and row.tenant_id != actor.tenant_id):
                raise NotFound("no such staff account")
            self._cache.clear()
            if row.disabled_at is None:
                row.disabled_at = utcnow()
            await session.execute(delete(StaffSession).where(StaffSession.staff_id == row.id))
            await session.execute(delete(StaffEnrolment).where(StaffEnrolment.staff_id == row.id))
            who = actor or Actor.cli(row.tenant_id, request_id)
            await self.audit.append(session, AuditEvent.of(who, "staff.disable", staff_id=row.id))
            slug = (await session.execute(select(Tenant.slug).where(Tenant.id == row.tenant_id))).scalar_one()
            return self._info(row, slug)

    async def reset(self, staff_id: str, *, request_id: str, actor: Actor | None = None) -> IssuedEnrolment:
        """Forget password and second factor, end every session, issue a new enrolment link."""
        async with self.db.transaction() as session:
            row = await session.get(StaffAccount, staff_id)
            if row is None or (actor is not None and row.tenant_id != actor.tenant_id):
                raise NotFound("no such staff account")
            self._cache.clear()
            row.password_hash, row.totp_sealed, row.enrolled_at, row.disabled_at = None, None, None, None
            row.failed_logins, row.locked_until = 0, None
            await session.execute(delete(StaffSession).where(StaffSession.staff_id == row.id))
            token, expires = await self._new_enrolment(session, row)
            who = actor or Actor.cli(row.tenant_id, request_id)
            await self.audit.append(session, AuditEvent.of(who, "staff.reset", staff_id=row.id))
            slug = (await session.execute(select(Tenant.slug).where(Tenant.id == row.tenant_id))).scalar_one()
            return IssuedEnrolment(staff=self._info(row, slug), token=token, expires_at=expires)

    # -- enrolment -----------------------------------------------------------------------
    async def _enrolment_row(self, session, token: str) -> tuple[StaffEnrolment, StaffAccount, str]:
        found = (await session.execute(
            select(StaffEnrolment, StaffAccount, Tenant.slug)
            .join(StaffAccount, StaffAccount.id == StaffEnrolment.staff_id)
            .join(Tenant, Tenant.id == StaffAccount.tenant_id)
            .where(StaffEnrolment.token_hash == _digest(token)))).first()
        if found is None or found[0].expires_at <= utcnow() or found[1].disabled_at is not None:
            raise NotFound("this enrolment link is not valid (used, replaced or expired)")
        return found[0], found[1], found[2]

    async def enrolment(self, token: str) -> EnrolmentForm:
        """What the enrolment page shows. Consumes nothing: mail scanners open links."""
        async with self.db.session() as session:
            enrolment, row, slug = await self._enrolment_row(session, token)
        secret = await self._open(row.tenant_id, row.id, enrolment.totp_sealed)
        uri = totp.provisioning_uri(secret, account=row.email, tenant_slug=slug)
        return EnrolmentForm(email=row.email, tenant_slug=slug, qr_svg=totp.qr_svg(uri), secret=secret)

    async def enrol(self, token: str, *, password: str, code: str, request_id: str) -> StaffInfo:
        async with self.db.transaction() as session:
            enrolment, row, slug = await self._enrolment_row(session, token)
            passwords.check_policy(password, email=row.email)
            secret = await self._open(row.tenant_id, row.id, enrolment.totp_sealed)
            step = totp.matching_step(secret, code)
            if step is None:
                raise ValidationFailed("that authenticator code is not right; check the app's clock and try again")
            row.password_hash = passwords.hash_password(password)
            row.totp_sealed = await self._seal(row.tenant_id, row.id, secret)
            row.totp_last_step = step
            row.enrolled_at = utcnow()
            row.failed_logins, row.locked_until = 0, None
            await session.delete(enrolment)
            actor = Actor(row.tenant_id, actor_id(row.id), row.role, request_id)
            await self.audit.append(session, AuditEvent.of(actor, "staff.enrol", staff_id=row.id))
            return self._info(row, slug)
