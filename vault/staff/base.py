"""What the parts of the staff service share: names, errors, the answers they return,
and a base holding the database, the audit log, the key store, the session settings and
the sealing of TOTP secrets. The service is :class:`vault.staff.service.StaffService`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from keys import aead
from vault.actor import Principal
from vault.audit.service import AuditLog
from vault.db import Database
from vault.errors import NotFound, VaultError
from vault.staff.models import StaffAccount
from vault.tenants.models import Tenant


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


class StaffBase:
    """The state every part of :class:`vault.staff.service.StaffService` uses."""

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

    # -- tenants and accounts as shown ----------------------------------------------------
    async def _tenant(self, session, slug: str) -> Tenant:
        tenant = (await session.execute(select(Tenant).where(Tenant.slug == slug))).scalar_one_or_none()
        if tenant is None:
            raise NotFound("no such tenant")
        return tenant

    async def tenant_slug(self, tenant_id: str) -> str:
        async with self.db.session() as session:
            return (await session.execute(select(Tenant.slug).where(Tenant.id == tenant_id))).scalar_one()

    @staticmethod
    def _info(row: StaffAccount, slug: str) -> StaffInfo:
        return StaffInfo(id=row.id, tenant_slug=slug, email=row.email, role=row.role, state=_state(row),
                         created_at=row.created_at)
