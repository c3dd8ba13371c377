"""``Idempotency-Key`` for creating requests other than uploads (releases, ...): the same
semantics as uploads (vault/media/idempotency.py). The key is scoped to the token, the kind
of request and its target (``release|<media id or handle>``), and stored only as an HMAC
under the tenant's long-lived purpose key; so is the request body's SHA-256. A replay with
the same key and body answers with what the first request made; the same key with another
body is 409 ``idempotency_conflict``. The row is written in the creating transaction."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from keys.store import KeyStore
from vault.actor import Actor
from vault.db import Base, UTCDateTime, utcnow
from vault.errors import IdempotencyConflict, ValidationFailed

_HEADER = re.compile(r"^[\x21-\x7e]{1,255}$")
KEY_INDEX = "request.idempotency-key"
BODY_INDEX = "request.body"


class IdempotentRequest(Base):
    __tablename__ = "idempotent_requests"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    body_digest: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def header_value(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header's value, checked (1-255 visible ASCII characters)."""
    if value is not None and not _HEADER.match(value):
        raise ValidationFailed("Idempotency-Key must be 1-255 visible ASCII characters")
    return value


@dataclass(frozen=True, slots=True)
class Claim:
    tenant_id: str
    key_digest: str
    body_digest: str


async def claim(keys: KeyStore, actor: Actor, scope: str, key: str | None, body: Any) -> Claim | None:
    """The digests of a keyed request, or None without a key. ``body``: its JSON-able fields."""
    if key is None:
        return None
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return Claim(
        tenant_id=actor.tenant_id,
        key_digest=await keys.purpose_hmac(actor.tenant_id, KEY_INDEX, f"{actor.token_id}|{scope}|{key}"),
        body_digest=await keys.purpose_hmac(actor.tenant_id, BODY_INDEX, hashlib.sha256(canonical).hexdigest()),
    )


async def replayed(session: AsyncSession, claim: Claim | None) -> str | None:
    """The id of what this key already made, or None; IdempotencyConflict for another body."""
    if claim is None:
        return None
    row = await session.get(IdempotentRequest, (claim.tenant_id, claim.key_digest))
    if row is None:
        return None
    if row.body_digest != claim.body_digest:
        raise IdempotencyConflict()
    return row.resource_id


def remember(session: AsyncSession, claim: Claim | None, resource_id: str) -> None:
    if claim is not None:
        session.add(IdempotentRequest(tenant_id=claim.tenant_id, key_digest=claim.key_digest,
                                      body_digest=claim.body_digest, resource_id=resource_id))
