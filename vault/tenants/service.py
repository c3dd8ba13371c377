"""Tenants and their API tokens.

A token is 256 random bits, shown once; only its SHA-256 is stored. A token of
that strength needs no slow hash: nothing can be guessed, so the stored digest
is a lookup key and the comparison is constant-time on top of it.

Resolved tokens are cached per process. A revocation is announced on the
``vault_tokens`` channel (vault/db/notify.py) in the transaction that makes it, so every
node drops the token when it commits; the cache is trusted only while the channel is
heard (PostgreSQL) and for at most a second otherwise (SQLite, where the CLI is another
process). A token's expiry is checked on every request, cached or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, select, update

from vault.actor import Actor, Principal
from vault.db.notify import TOKENS, Notifier
from vault.audit.models import AuditHead
from vault.audit.service import AuditEvent, AuditLog, genesis_hash
from vault.db import Database, utcnow
from vault.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from vault.permissions import ROLES
from vault.tenants.models import ApiToken, Tenant

TOKEN_PREFIX = "vt_"
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
LAST_USED_RESOLUTION = timedelta(minutes=1)
#: how long a resolved token is trusted without asking the database again, while
#: revocations are heard from every node (vault/db/notify.py bounds it otherwise)
TOKEN_CACHE_SECONDS = 30.0
TOKEN_CACHE_SIZE = 10_000
_TOKEN_ID = re.compile(r"[0-9a-f]{32}")  # vault.db.new_id
_DURATION = re.compile(r"^(\d{1,5})([dhm])$")
_TOKEN_ROW = select(ApiToken.id, ApiToken.tenant_id, ApiToken.role, ApiToken.token_hash, ApiToken.revoked_at,
                    ApiToken.last_used_at, ApiToken.expires_at).where(ApiToken.token_hash == bindparam("digest"))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    id: str
    tenant_slug: str
    role: str
    label: str
    expires_at: datetime | None
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
    expires_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at is not None and self.expires_at <= now else "active"


def parse_expiry(text: str, *, now: datetime | None = None) -> datetime:
    """``30d``, ``12h``, ``90m`` from now, or an ISO 8601 date (00:00 UTC that day) or time
    (UTC unless it names an offset). It must lie in the future."""
    now = now or utcnow()
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        at = now + {"d": timedelta(days=amount), "h": timedelta(hours=amount), "m": timedelta(minutes=amount)}[unit]
    else:
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationFailed("expiry must be like 30d, 12h, 90m, 2027-01-31 or 2027-01-31T18:00:00+01:00") from None
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if at <= now:
        raise ValidationFailed("expiry must be in the future")
    return at


@dataclass(frozen=True, slots=True)
class _Cached:
    until: float  # monotonic
    principal: Principal
    expires_at: datetime | None


class TenantService:
    def __init__(self, db: Database, audit: AuditLog, keys, *, notifier: Notifier | None = None,
                 cache_seconds: float = TOKEN_CACHE_SECONDS) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.cache_seconds = cache_seconds
        self.notifier = notifier or Notifier()
        self._cache: dict[str, _Cached] = {}  # token digest -> resolved principal
        self._by_id: dict[str, str] = {}  # token id -> digest
        # Bumped by every revocation heard: a lookup that started before it must not cache
        # what it read (the row may predate the revocation).
        self._generation = 0
        self._lookups: dict[tuple[str, int], asyncio.Future[Principal]] = {}  # (digest, generation) -> in flight
        self.notifier.subscribe(TOKENS, self._revoked, self._reset)

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

    async def create_token(self, slug: str, role: str, *, label: str, request_id: str,
                           expires_at: datetime | None = None) -> IssuedToken:
        if role not in ROLES:
            raise ValidationFailed(f"role must be one of {', '.join(ROLES)}")
        label = label.strip()
        if not label or len(label) > 200:
            raise ValidationFailed("a token needs a label (1-200 characters) naming its person or system")
        if expires_at is not None and expires_at <= utcnow():
            raise ValidationFailed("expiry must be in the future")
        tenant = await self.tenant_by_slug(slug)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.db.transaction() as session:
            row = ApiToken(tenant_id=tenant.id, role=role, label=label, token_hash=hash_token(token), expires_at=expires_at)
            session.add(row)
            await session.flush()
            await self.audit.append(
                session, AuditEvent.of(Actor.cli(tenant.id, request_id), "token.create", token_id=row.id, role=role)
            )
        return IssuedToken(id=row.id, tenant_slug=slug, role=role, label=label, expires_at=expires_at, token=token)

    async def revoke_token(self, token_id: str, *, request_id: str, actor: Actor | None = None) -> None:
        """Revoke a token; every node refuses it once this returns. ``actor`` (an admin's
        request) may revoke only its own tenant's tokens: another's is NotFound. Revoking
        twice is not an error (and is audited again)."""
        async with self.db.transaction() as session:
            row = await session.get(ApiToken, token_id) if _TOKEN_ID.fullmatch(token_id) else None
            if row is None or (actor is not None and row.tenant_id != actor.tenant_id):
                raise NotFound("no such token")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            who = actor or Actor.cli(row.tenant_id, request_id)
            await self.audit.append(session, AuditEvent.of(who, "token.revoke", token_id=row.id))
            await self.notifier.publish_in(session, TOKENS, row.id)

    async def tokens(self, slug: str | None = None) -> list[TokenInfo]:
        query = select(ApiToken, Tenant.slug).join(Tenant, Tenant.id == ApiToken.tenant_id).order_by(Tenant.slug, ApiToken.created_at)
        if slug:
            query = query.where(Tenant.slug == slug)
        async with self.db.session() as session:
            return [TokenInfo(id=token.id, tenant_slug=tenant_slug, role=token.role, label=token.label,
                              created_at=token.created_at, last_used_at=token.last_used_at, revoked_at=token.revoked_at,
                              expires_at=token.expires_at)
                    for token, tenant_slug in (await session.execute(query)).all()]

    async def labels(self, tenant_id: str, token_ids: set[str]) -> dict[str, str]:
        """The labels of these tokens of the tenant (the audit log names machine tokens by them)."""
        if not token_ids:
            return {}
        async with self.db.session() as session:
            rows = await session.execute(select(ApiToken.id, ApiToken.label)
                                         .where(ApiToken.tenant_id == tenant_id, ApiToken.id.in_(sorted(token_ids))))
            return {token_id: label for token_id, label in rows.all()}

    async def authenticate(self, token: str) -> Principal:
        digest = hash_token(token)
        now_mono = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached.until > now_mono:
            if cached.expires_at is not None and cached.expires_at <= utcnow():
                raise Unauthorized()
            return cached.principal
        # When an entry expires, every request holding that token at that moment would ask
        # the database (16 at concurrency 16): they share one lookup instead.
        # A lookup that started before a revocation was heard is not joined: its row may
        # predate the revocation.
        key = (digest, self._generation)
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = self._lookups[key] = asyncio.ensure_future(self._lookup(digest, self._generation))
            lookup.add_done_callback(lambda done: self._lookup_done(key, done))
        return await asyncio.shield(lookup)

    def _lookup_done(self, key: tuple[str, int], lookup: asyncio.Future[Principal]) -> None:
        if self._lookups.get(key) is lookup:
            del self._lookups[key]
        if not lookup.cancelled():
            lookup.exception()  # retrieved here: its waiters may all have gone

    async def _lookup(self, digest: str, generation: int) -> Principal:
        row = await self.db.first(_TOKEN_ROW, {"digest": digest})  # one statement, no transaction
        now = utcnow()
        if (row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now)
                or not hmac.compare_digest(row.token_hash, digest)):
            raise Unauthorized()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            await self._touch(row.id, now)
        principal = Principal(tenant_id=row.tenant_id, token_id=row.id, role=row.role)
        seconds = self.notifier.cache_seconds(self.cache_seconds)
        if seconds > 0 and generation == self._generation:
            if len(self._cache) >= TOKEN_CACHE_SIZE:
                self._reset()
            self._cache[digest] = _Cached(time.monotonic() + seconds, principal, row.expires_at)
            self._by_id[row.id] = digest
        return principal

    def _revoked(self, token_id: str) -> None:
        """A revocation was announced (by any node, this one included)."""
        self._generation += 1
        digest = self._by_id.pop(token_id, None)
        if digest is not None:
            self._cache.pop(digest, None)

    def _reset(self) -> None:
        self._generation += 1
        self._cache.clear()
        self._by_id.clear()

    async def _touch(self, token_id: str, now: datetime) -> None:
        # Recorded to the minute: a write per request would serialise every read on SQLite.
        async with self.db.transaction() as session:
            await session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
