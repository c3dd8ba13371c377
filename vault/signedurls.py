"""Short-lived signed URLs, for what a browser fetches without a bearer header
(an ``<img>`` thumbnail now, video playback later).

A signature is HMAC-SHA256 over ``v1|purpose|resource|token id|expiry`` under the
tenant's signed-URL key (:meth:`KeyStore.purpose_hmac`: a long-lived key of this one
purpose per tenant, held in the key store, the same on every node). It binds what may be fetched (purpose and
resource, e.g. ``release-thumbnail:education`` and ``<media id>:deidentified``), who
asked (the token id, or ``staff:<id>`` for a web session: then the link works only while
that person is enabled and has an active session) and until when. Verifying compares in constant time, and the
caller must still check that the token is live and re-run its own authorisation
(for release paths: the consent gate) — a signature only says "we issued this".

    params = await sign(keys, tenant_id, purpose=p, resource=r, token_id=t, expires_at=when)
    url = f"/v1/...?{urlencode(params.query())}"
    principal = await signer(session, params.token_id, staff=bounds)  # live token, its tenant
    await verify(keys, principal.tenant_id, purpose=p, resource=r, params=params, now=utcnow())
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vault.actor import Principal
from vault.errors import Forbidden, Gone
from vault.staff.models import StaffAccount, StaffSession
from vault.tenants.models import ApiToken

STAFF_PREFIX = "staff:"  # vault.staff.service.actor_id: a link asked for by a web session

INDEX_PURPOSE = "signed-url"
# Every field is lowercase ASCII without separators or spaces, so fields cannot run together.
_FIELD = re.compile(r"^[a-z0-9_.:-]{1,200}$")
SIGNATURE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, kw_only=True)
class StaffBounds:
    """How long a web session lives, as configured (``VAULT_STAFF_IDLE_SECONDS``,
    ``VAULT_STAFF_SESSION_SECONDS``): a link a person asked for works while one of their
    sessions is within both, exactly as long as the session itself would be accepted."""

    idle: timedelta
    lifetime: timedelta

    @classmethod
    def of(cls, settings) -> StaffBounds:
        return cls(idle=timedelta(seconds=settings.staff_idle_seconds),
                   lifetime=timedelta(seconds=settings.staff_session_seconds))


@dataclass(frozen=True, kw_only=True)
class SignedParams:
    token_id: str
    expires: int  # Unix seconds
    signature: str

    def query(self) -> dict[str, str]:
        return {"token": self.token_id, "expires": str(self.expires), "signature": self.signature}


def _payload(*, purpose: str, resource: str, token_id: str, expires: int) -> str:
    for value in (purpose, resource, token_id):
        if not _FIELD.match(value):
            raise ValueError("signed URL fields are lowercase ids and names")
    return f"v1|{purpose}|{resource}|{token_id}|{int(expires)}"


async def sign(keys, tenant_id: str, *, purpose: str, resource: str, token_id: str, expires_at: datetime) -> SignedParams:
    expires = int(expires_at.timestamp())
    payload = _payload(purpose=purpose, resource=resource, token_id=token_id, expires=expires)
    return SignedParams(token_id=token_id, expires=expires, signature=await keys.purpose_hmac(tenant_id, INDEX_PURPOSE, payload))


async def verify(keys, tenant_id: str, *, purpose: str, resource: str, params: SignedParams, now: datetime) -> None:
    """Raise Forbidden for a wrong signature, Gone for an expired one."""
    if not SIGNATURE.match(params.signature) or not all(_FIELD.match(v) for v in (purpose, resource, params.token_id)):
        # Fields come from the request (an uppercase media id in the path, say): one
        # that could never have been signed is a bad link, not a ValueError.
        raise Forbidden("the link is not valid")
    payload = _payload(purpose=purpose, resource=resource, token_id=params.token_id, expires=params.expires)
    expected = await keys.purpose_hmac(tenant_id, INDEX_PURPOSE, payload)
    if not hmac.compare_digest(expected, params.signature):
        raise Forbidden("the link is not valid")
    if params.expires <= now.timestamp():
        raise Gone("the link has expired")


async def signer(session: AsyncSession, token_id: str, *, staff: StaffBounds) -> Principal:
    """The live token a signed link was issued to; Forbidden when unknown or revoked
    (the same answer for both, so a link reveals nothing about tokens). A staff member's
    link needs one of their sessions live under ``staff`` (the configured expiry)."""
    if token_id.startswith(STAFF_PREFIX):
        return await _staff_signer(session, token_id, staff)
    row = (
        await session.execute(select(ApiToken.tenant_id, ApiToken.role, ApiToken.revoked_at).where(ApiToken.id == token_id))
    ).first()
    if row is None or row.revoked_at is not None:
        raise Forbidden("the link is not valid")
    return Principal(tenant_id=row.tenant_id, token_id=token_id, role=row.role)


async def _staff_signer(session: AsyncSession, token_id: str, bounds: StaffBounds) -> Principal:
    """A link a logged-in person asked for works while that person is enabled and still
    has an active session (logging out everywhere, or being disabled, ends it; so does
    the session's idle or absolute expiry)."""
    from vault.db import utcnow

    staff_id = token_id[len(STAFF_PREFIX):]
    now = utcnow()
    row = (await session.execute(select(StaffAccount.tenant_id, StaffAccount.role).where(
        StaffAccount.id == staff_id, StaffAccount.disabled_at.is_(None)))).first()
    live = (await session.execute(select(StaffSession.id_hash).where(
        StaffSession.staff_id == staff_id, StaffSession.state == "active",
        StaffSession.last_seen_at > now - bounds.idle, StaffSession.created_at > now - bounds.lifetime).limit(1))).first()
    if row is None or live is None:
        raise Forbidden("the link is not valid")
    return Principal(tenant_id=row.tenant_id, token_id=token_id, role=row.role)
