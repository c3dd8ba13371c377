"""Opaque per-purpose handles: how marketing names a de-identified item.

A handle is a random value (``h_`` + 128 random bits), one per (photo, purpose), stored
in ``release_handles``: it is never equal to a media, blob, patient, consent or release
id, differs between purposes, and carries nothing derived from the photo. Marketing's
releasable listing is ordered by handle (random), so an item's place in the listing says
nothing about its media id or its time; the listing's cursor is sealed (AES-GCM under a
key derived from the tenant's key-store index key), so even a page boundary shows no
handle or id.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import exists, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from keys.store import KeyStore
from vault.consent import gate
from vault.consent.models import ConsentRecord
from vault.db import Database
from vault.errors import NotFound
from vault.media.models import Media
from vault.redaction.models import ReleaseHandle

PREFIX = "h_"
_CURSOR_KEY = "releasable-cursor"


def new_handle() -> str:
    return PREFIX + secrets.token_hex(16)


def is_handle(value: str) -> bool:
    return value.startswith(PREFIX)


async def ensure(db: Database, tenant_id: str, purposes: list[str]) -> None:
    """Give every photo or video of the tenant whose patient has some grant a handle per
    purpose: looked for in a read, inserted (once) only when some are missing; concurrent
    listings may race, the unique key settles it."""
    has_grant = exists(select(ConsentRecord.id).where(ConsentRecord.patient_id == Media.patient_id,
                                                      ConsentRecord.kind == gate.GRANT))
    missing: list[tuple[str, str]] = []
    async with db.session() as session:
        for purpose in purposes:
            has_handle = exists(select(ReleaseHandle.handle).where(ReleaseHandle.media_id == Media.id,
                                                                   ReleaseHandle.purpose == purpose))
            ids = (await session.execute(select(Media.id).where(Media.tenant_id == tenant_id, has_grant, ~has_handle))).scalars()
            missing += [(m, purpose) for m in ids]
    if not missing:
        return
    async with db.transaction() as session:
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        for start in range(0, len(missing), 500):
            rows = [{"handle": new_handle(), "tenant_id": tenant_id, "media_id": m, "purpose": p} for m, p in missing[start:start + 500]]
            await session.execute(insert(ReleaseHandle).values(rows).on_conflict_do_nothing())


async def lookup(session: AsyncSession, tenant_id: str, media_id: str, purpose: str) -> str | None:
    """The handle of (media, purpose), if it has one."""
    found: str | None = (await session.execute(
        select(ReleaseHandle.handle).where(ReleaseHandle.media_id == media_id, ReleaseHandle.purpose == purpose,
                                           ReleaseHandle.tenant_id == tenant_id)
    )).scalar_one_or_none()
    return found


async def resolve(session: AsyncSession, tenant_id: str, handle: str) -> ReleaseHandle:
    row = (await session.execute(
        select(ReleaseHandle).where(ReleaseHandle.handle == handle, ReleaseHandle.tenant_id == tenant_id)
    )).scalar_one_or_none()
    if row is None:
        raise NotFound("no such item")
    return row


async def _cursor_cipher(keys: KeyStore, tenant_id: str) -> AESGCM:
    return AESGCM(await keys.purpose_key(tenant_id, _CURSOR_KEY))


async def seal_cursor(keys: KeyStore, tenant_id: str, handle: str) -> str:
    nonce = secrets.token_bytes(12)
    sealed = (await _cursor_cipher(keys, tenant_id)).encrypt(nonce, handle.encode(), tenant_id.encode())
    return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")


async def open_cursor(keys: KeyStore, tenant_id: str, cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return (await _cursor_cipher(keys, tenant_id)).decrypt(raw[:12], raw[12:], tenant_id.encode()).decode()
    except (binascii.Error, ValueError, InvalidTag, UnicodeDecodeError):
        raise NotFound("no such cursor", details={"field": "cursor"}) from None
