"""Idempotent uploads, shared by the photo and the video paths.

A client's ``Idempotency-Key`` is scoped to its token and the patient, and stored only
as an HMAC under the tenant's long-lived key of that purpose (not the per-epoch index
key, so a retry that spans a KEK rotation still finds its upload); so is the body's
SHA-256 (keyed, so a stored digest cannot confirm a guessed photo). A replay with the same key and body returns the first media;
the same key with another body is a conflict.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keys.store import KeyStore
from vault.actor import Actor
from vault.errors import IdempotencyConflict
from vault.media.models import Media

IDEMPOTENCY_INDEX = "media.idempotency-key"
BODY_INDEX = "media.body"


async def digests(
    keys: KeyStore, actor: Actor, patient_id: str, idempotency_key: str | None, *, body_sha256: str
) -> tuple[str | None, str | None]:
    """(key digest, body digest), both None when the client sent no key."""
    if idempotency_key is None:
        return None, None
    scope = f"{actor.token_id}|{patient_id}|{idempotency_key}"
    key_digest = await keys.purpose_hmac(actor.tenant_id, IDEMPOTENCY_INDEX, scope)
    body_digest = await keys.purpose_hmac(actor.tenant_id, BODY_INDEX, body_sha256)
    return key_digest, body_digest


async def replayed(session: AsyncSession, tenant_id: str, key_digest: str, body_digest: str | None) -> Media | None:
    """The media a key already made, or None; IdempotencyConflict when its body differs."""
    existing = (
        await session.execute(select(Media).where(Media.tenant_id == tenant_id, Media.idempotency_key == key_digest))
    ).scalar_one_or_none()
    if existing is not None and existing.body_digest != body_digest:
        raise IdempotencyConflict()
    return existing
