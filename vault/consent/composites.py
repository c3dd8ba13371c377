"""Before/after composite releases: one image with two photos of one patient side by
side at the same height, each labelled, rendered in a decoder worker
(:meth:`vault.media.processing.PhotoPipeline.composite`) into a fresh JPEG with no
metadata, stored as the release's own sealed blob and downloaded once.

The consent gate decides on each photo, with fresh rows, as for any release; the
composite is made only when both are allowed the same rendition for the purpose, and its
release row names both photos (``media_id`` the before, ``pair_media_id`` the after), so a
withdrawal or an erasure reaching either one recalls it. Marketing names the two photos by
media id: identifiable items may be grouped (the patient agreed to be identifiable). A
de-identified pair is never chosen by marketing: two handles are unlinkable by design, and
an answer that said whether two handles belong to one person would link them.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from vault import idempotent
from vault.actor import Actor
from vault.audit.service import AuditEvent
from vault.consent import gate
from vault.consent.models import Release
from vault.consent.releases import LINK_TTL, MadeRelease, ReleaseService, _Replayed, refusal
from vault.db import new_id, utcnow
from vault.errors import ValidationFailed
from vault.media.models import ORIGINAL, Media
from vault.media.service import sealed_ref
from vault.sealed import SealedRef


class CompositeReleases:
    """Composite releases over :class:`ReleaseService` (its gate calls and blobs)."""

    def __init__(self, releases: ReleaseService) -> None:
        self.releases = releases

    async def _pair(self, session: AsyncSession, actor: Actor, before: str, after: str) -> tuple[Media, Media]:
        first = await self.releases._media(session, actor.tenant_id, before)
        second = await self.releases._media(session, actor.tenant_id, after)
        if before == after or first.patient_id != second.patient_id:
            raise ValidationFailed("a composite is two photos of one patient", details={"reason": "not_a_pair"})
        if first.kind != "photo" or second.kind != "photo" or not (first.width and first.height and second.width and second.height):
            raise ValidationFailed("a composite is made of photos", details={"reason": "not_a_photo"})
        return first, second

    async def _allowed(self, session: AsyncSession, actor: Actor, pair: tuple[Media, Media], purpose: str, *,
                       lock: bool) -> list[gate.Decision]:
        decisions = []
        for media in pair:
            decision, _ = await self.releases._decide(session, actor, media, purpose, utcnow(), lock=lock)
            decisions.append(decision)
        return decisions

    async def release(self, actor: Actor, before: str, after: str, *, purpose: str, recipient: str,
                      idempotency_key: str | None = None) -> MadeRelease:
        """Release the composite of two identifiable photos (media ids) of one patient:
        403 ``consent_required`` with the gate's reason when either is not releasable."""
        key = await idempotent.claim(self.releases.keys, actor, f"composite|{before}|{after}", idempotency_key,
                                     {"purpose": purpose, "recipient": recipient})
        item = f"{before}+{after}"
        async with self.releases.db.session() as session:
            if (first := await idempotent.replayed(session, key)) is not None:
                return await self.releases._made(session, actor, first, item)
            pair = await self._pair(session, actor, before, after)
            decisions = await self._allowed(session, actor, pair, purpose, lock=False)
            originals = [await self.releases._blob(session, m.id, ORIGINAL) for m in pair]
        for media, decision in zip(pair, decisions, strict=True):
            if decision.outcome != gate.ALLOW:
                await self.releases._denied(actor, media, "release.composite", decision, by_handle=False)
        photos = [await self.releases.sealed.read(sealed_ref(blob)) for blob in originals]
        data = await self.releases.pipeline.composite(photos, [[], []], sizes=[(m.width or 0, m.height or 0) for m in pair])
        del photos
        made: SealedRef = await self.releases.sealed.put_bytes(actor.tenant_id, pair[0].patient_id, data)
        try:
            async with self.releases.db.transaction() as session:
                # Decide again under the patient's row lock: a withdrawal holds it too.
                again = await self._allowed(session, actor, pair, purpose, lock=True)
                if (first := await idempotent.replayed(session, key)) is not None:
                    raise _Replayed(first)
                for decision in again:
                    if decision.outcome != gate.ALLOW:
                        raise refusal(decision, by_handle=False)
                now = utcnow()
                release = Release(
                    id=new_id(), tenant_id=actor.tenant_id, patient_id=pair[0].patient_id, media_id=pair[0].id,
                    pair_media_id=pair[1].id, purpose=purpose, rendition=gate.ORIGINAL, consent_id=again[0].consent_id,
                    released_by=actor.token_id, created_at=now, expires_at=now + LINK_TTL, blob_id=made.id,
                    blob_size=made.plain_size, mime="image/jpeg",
                )
                release.recipient = await self.releases.keys.seal_field(actor.tenant_id, release.patient_id, table="releases",
                                                                        column="recipient", row_id=release.id, value=recipient)
                session.add(release)
                idempotent.remember(session, key, release.id)
                await session.flush()
                await self.releases.audit.append(session, AuditEvent.of(
                    actor, "release.create", patient_id=release.patient_id, media_id=release.media_id,
                    pair_media_id=release.pair_media_id, release_id=release.id, purpose=purpose, rendition="composite"))
        except _Replayed as replay:
            await self.releases.sealed.destroy(made)
            async with self.releases.db.session() as session:
                return await self.releases._made(session, actor, replay.release_id, item)
        except BaseException:
            await self.releases.sealed.destroy(made)
            raise
        return MadeRelease(id=release.id, item=item, purpose=purpose, rendition=gate.ORIGINAL, consent_id=release.consent_id,
                           expires_at=release.expires_at)
