"""Staff accounts and their web sessions.

    issued = await staff.create("clinic", "dpo@clinic.example", "dpo", request_id=rid)  # link shown once
    form = await staff.enrolment(token)               # opening the link: nothing consumed
    await staff.enrol(token, password=..., code=...)  # consumes the link
    pending = await staff.login("clinic", email, password)      # -> PENDING session id
    session_id = await staff.second_factor(pending, code)       # -> a new, ACTIVE session id
    current = await staff.resolve(session_id)                    # every request

A session id is 256 random bits held only in the browser's cookie; the database keeps its
SHA-256. A pending session (password done, second factor not given) resolves only for the
second-factor form: :meth:`resolve` refuses it like no session at all.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update

from keys import aead
from vault.actor import Actor, Principal
from vault.audit.service import AuditEvent, AuditLog
from vault.db import Database, rowcount, utcnow
from vault.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed, VaultError
from vault.permissions import ROLES
from vault.staff import passwords, totp
from vault.staff.models import StaffAccount, StaffEnrolment, StaffSession
from vault.tenants.models import ApiToken, Tenant

PENDING, ACTIVE = "pending", "active"
ENROLMENT_TTL = timedelta(hours=24)
PENDING_TTL = timedelta(minutes=5)
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
#: an erasure or a retention sweep needs a TOTP code given this recently
FRESH_AUTH = timedelta(minutes=5)
SESSION_CACHE_SECONDS = 2.0
SESSION_CACHE_SIZE = 10_000
#: last_seen_at is written at most this often (a write per request would serialise SQLite)
SEEN_RESOLUTION = timedelta(seconds=30)
_SECRET_KEY_INDEX = "staff.totp-key"
_SECRET_LABEL = "vault.staff.v1.totp"
STAFF_ACTOR_PREFIX = "staff:"


class LockedOut(VaultError):
    status, code, default_message = 429, "locked_out", "too many failed attempts; try again later"


class FreshAuthRequired(VaultError):
    status, code, default_message = 403, "reauthentication_required", "confirm with a current authenticator code"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def actor_id(staff_id: str) -> str:
    """How a staff member is named in Principal.token_id and the audit log."""
    return STAFF_ACTOR_PREFIX + staff_id


@dataclass(frozen=True, slots=True)
class StaffInfo:
    id: str
    tenant_slug: str
    email: str
    role: str
    state: str  # invited | active | disabled
    created_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedEnrolment:
    staff: StaffInfo
    token: str  # shown once (in the link), only its hash is stored
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class EnrolmentForm:
    email: str
    tenant_slug: str
    qr_svg: str
    secret: str  # for typing in by hand when the camera cannot read the QR code


@dataclass(frozen=True, slots=True)
class CurrentSession:
    """An active session as the HTTP layer sees it."""

    staff_id: str
    tenant_id: str
    tenant_slug: str
    email: str
    role: str
    csrf: str
    verified_at: datetime | None

    @property
    def principal(self) -> Principal:
        return Principal(tenant_id=self.tenant_id, token_id=actor_id(self.staff_id), role=self.role)


def _state(row: StaffAccount) -> str:
    if row.disabled_at is not None:
        return "disabled"
    return "active" if row.enrolled_at is not None else "invited"


class StaffService:
    def __init__(self, db: Database, audit: AuditLog, keys, *, idle_seconds: int = 1800,
                 session_seconds: int = 43200, cache_seconds: float = SESSION_CACHE_SECONDS) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.idle = timedelta(seconds=idle_seconds)
        self.lifetime = timedelta(seconds=session_seconds)
        # Like tokens (vault/tenants/service.py): a resolved session is trusted for
        # SESSION_CACHE_SECONDS without the database; logging out, disabling or resetting
        # on this node clears it at once, on other nodes it ends within that time.
        self._cache: dict[str, tuple[float, CurrentSession]] = {}
        self.cache_seconds = cache_seconds

    # -- sealing the TOTP secret under a tenant-level key ----------------------------------
    async def _secret_key(self, tenant_id: str) -> bytes:
        # A long-lived key of its own purpose: the per-epoch index keys rotate, and a TOTP
        # secret must open after a KEK rotation (docs/keys.md, the long-lived keys).
        return await self.keys.purpose_key(tenant_id, _SECRET_KEY_INDEX)

    async def _seal(self, tenant_id: str, staff_id: str, secret: str) -> bytes:
        return aead.seal(await self._secret_key(tenant_id), secret.encode(), aead.aad(_SECRET_LABEL, tenant_id, staff_id))

    async def _open(self, tenant_id: str, staff_id: str, sealed: bytes) -> str:
        return aead.open_sealed(await self._secret_key(tenant_id), sealed, aead.aad(_SECRET_LABEL, tenant_id, staff_id)).decode()

    # -- operator commands ---------------------------------------------------------------
    async def _tenant(self, session, slug: str) -> Tenant:
        tenant = (await session.execute(select(Tenant).where(Tenant.slug == slug))).scalar_one_or_none()
        if tenant is None:
            raise NotFound("no such tenant")
        return tenant

    async def _new_enrolment(self, session, row: StaffAccount) -> tuple[str, datetime]:
        await session.execute(delete(StaffEnrolment).where(StaffEnrolment.staff_id == row.id))
        token = secrets.token_urlsafe(32)
        expires = utcnow() + ENROLMENT_TTL
        sealed = await self._seal(row.tenant_id, row.id, totp.new_secret())
        session.add(StaffEnrolment(token_hash=_digest(token), staff_id=row.id, totp_sealed=sealed, expires_at=expires))
        return token, expires

    async def tenant_slug(self, tenant_id: str) -> str:
        async with self.db.session() as session:
            return (await session.execute(select(Tenant.slug).where(Tenant.id == tenant_id))).scalar_one()

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

    @staticmethod
    def _info(row: StaffAccount, slug: str) -> StaffInfo:
        return StaffInfo(id=row.id, tenant_slug=slug, email=row.email, role=row.role, state=_state(row),
                         created_at=row.created_at)

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

    # -- login ---------------------------------------------------------------------------
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

    # -- sessions ------------------------------------------------------------------------
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

    async def session_is_live(self, staff_id: str) -> bool:
        """Signed links issued to a staff member work only while the member is enabled and logged in."""
        now = utcnow()
        async with self.db.session() as session:
            rows = (await session.execute(select(StaffSession.last_seen_at, StaffSession.created_at)
                                          .join(StaffAccount, StaffAccount.id == StaffSession.staff_id)
                                          .where(StaffSession.staff_id == staff_id, StaffSession.state == ACTIVE,
                                                 StaffAccount.disabled_at.is_(None)))).all()
        return any(r.last_seen_at + self.idle > now and r.created_at + self.lifetime > now for r in rows)


__all__ = ["ACTIVE", "PENDING", "CurrentSession", "EnrolmentForm", "Forbidden", "FreshAuthRequired", "IssuedEnrolment",
           "LockedOut", "StaffInfo", "StaffService", "actor_id"]
