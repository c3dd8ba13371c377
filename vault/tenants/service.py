"""Tenants and their API tokens.

A token is 256 random bits, shown once; only its SHA-256 is stored. A token of
that strength needs no slow hash: nothing can be guessed, so the stored digest
is a lookup key and the comparison is constant-time on top of it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from vault.actor import Actor, Principal
from vault.audit.models import AuditHead
from vault.audit.service import AuditEvent, AuditLog, genesis_hash
from vault.db import Database, utcnow
from vault.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from vault.permissions import ROLES
from vault.tenants.models import ApiToken, Tenant

TOKEN_PREFIX = "vt_"
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
LAST_USED_RESOLUTION = timedelta(minutes=1)
#: how long a resolved token is trusted without asking the database again; a token
#: revoked on another node stops working within this time (in this process: at once)
TOKEN_CACHE_SECONDS = 2.0
TOKEN_CACHE_SIZE = 10_000


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    id: str
    tenant_slug: str
    role: str
    label: str
    token: str  # shown once, never stored


@dataclass(frozen=True, slots=True)
class TenantInfo:
    id: str
    slug: str
    created_at: datetime

    @classmethod
    def of(cls, row: Tenant) -> TenantInfo:
        return cls(id=row.id, slug=row.slug, created_at=row.created_at)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An API token as listed (never the token itself, nor its hash)."""

    id: str
    tenant_slug: str
    role: str
    label: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TenantService:
    def __init__(self, db: Database, audit: AuditLog, keys, *, cache_seconds: float = TOKEN_CACHE_SECONDS) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def create_tenant(self, slug: str, *, request_id: str) -> TenantInfo:
        if not _SLUG.match(slug):
            raise ValidationFailed("a tenant slug is 1-63 lowercase letters, digits and hyphens")
        async with self.db.transaction() as session:
            if (await session.execute(select(Tenant.id).where(Tenant.slug == slug))).first():
                raise Conflict("that tenant already exists")
            tenant = Tenant(slug=slug)
            session.add(tenant)
            await session.flush()
            session.add(AuditHead(tenant_id=tenant.id, seq=0, hash=genesis_hash(tenant.id)))
            await session.flush()
            await self.audit.append(session, AuditEvent.of(Actor.cli(tenant.id, request_id), "tenant.create", tenant_id=tenant.id))
        # Idempotent: a crash between the commit above and this call is mended on first use.
        await self.keys.ensure_tenant(tenant.id)
        return TenantInfo.of(tenant)

    async def tenant_by_slug(self, slug: str) -> TenantInfo:
        async with self.db.session() as session:
            tenant = (await session.execute(select(Tenant).where(Tenant.slug == slug))).scalar_one_or_none()
        if tenant is None:
            raise NotFound("no such tenant")
        return TenantInfo.of(tenant)

    async def tenants(self) -> list[TenantInfo]:
        async with self.db.session() as session:
            return [TenantInfo.of(t) for t in (await session.execute(select(Tenant).order_by(Tenant.slug))).scalars()]

    async def create_token(self, slug: str, role: str, *, label: str, request_id: str) -> IssuedToken:
        if role not in ROLES:
            raise ValidationFailed(f"role must be one of {', '.join(ROLES)}")
        label = label.strip()
        if not label or len(label) > 200:
            raise ValidationFailed("a token needs a label (1-200 characters) naming its person or system")
        tenant = await self.tenant_by_slug(slug)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.db.transaction() as session:
            row = ApiToken(tenant_id=tenant.id, role=role, label=label, token_hash=hash_token(token))
            session.add(row)
            await session.flush()
            await self.audit.append(
                session, AuditEvent.of(Actor.cli(tenant.id, request_id), "token.create", token_id=row.id, role=role)
            )
        return IssuedToken(id=row.id, tenant_slug=slug, role=role, label=label, token=token)

    async def revoke_token(self, token_id: str, *, request_id: str) -> None:
        async with self.db.transaction() as session:
            row = await session.get(ApiToken, token_id)
            if row is None:
                raise NotFound("no such token")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            self._cache.pop(row.token_hash, None)
            await self.audit.append(session, AuditEvent.of(Actor.cli(row.tenant_id, request_id), "token.revoke", token_id=row.id))

    async def tokens(self, slug: str | None = None) -> list[TokenInfo]:
        query = select(ApiToken, Tenant.slug).join(Tenant, Tenant.id == ApiToken.tenant_id).order_by(Tenant.slug, ApiToken.created_at)
        if slug:
            query = query.where(Tenant.slug == slug)
        async with self.db.session() as session:
            return [TokenInfo(id=token.id, tenant_slug=tenant_slug, role=token.role, label=token.label,
                              created_at=token.created_at, last_used_at=token.last_used_at, revoked_at=token.revoked_at)
                    for token, tenant_slug in (await session.execute(query)).all()]

    async def authenticate(self, token: str) -> Principal:
        digest = hash_token(token)
        now_mono = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now_mono:
            return cached[1]
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(ApiToken.id, ApiToken.tenant_id, ApiToken.role, ApiToken.token_hash, ApiToken.revoked_at, ApiToken.last_used_at)
                    .where(ApiToken.token_hash == digest)
                )
            ).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_hash, digest):
            raise Unauthorized()
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            await self._touch(row.id, now)
        principal = Principal(tenant_id=row.tenant_id, token_id=row.id, role=row.role)
        if self.cache_seconds > 0:
            if len(self._cache) >= TOKEN_CACHE_SIZE:
                self._cache.clear()
            self._cache[digest] = (now_mono + self.cache_seconds, principal)
        return principal

    async def _touch(self, token_id: str, now: datetime) -> None:
        # Recorded to the minute: a write per request would serialise every read on SQLite.
        async with self.db.transaction() as session:
            await session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
