"""FHIR reads as use cases over the media and patients services.

Nothing here reads patient data by itself: every read goes through
:class:`~vault.media.service.MediaService` or :class:`~vault.patients.service.PatientService`,
which do the tenant check (another tenant's resource is NotFound) and write the same
durable audit entry a ``/v1`` read writes (``media.read``, ``media.list``,
``patient.find``, ``patient.read``, ``media.content``). The only query of its own is
which renditions a listed media has (and their sizes), after those checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select

from vault.actor import Actor
from vault.db import Database
from vault.media.models import ORIGINAL, THUMBNAILS, MediaBlob
from vault.media.responses import MediaView
from vault.media.service import Content, MediaService
from vault.patients.service import PatientService, PatientView

#: rendition name -> thumbnail size in pixels
_THUMB_SIZES = {rendition: size for size, rendition in THUMBNAILS.items()}


@dataclass(frozen=True)
class MediaItem:
    """One media with what its FHIR resource links to: the original's size and the thumbnails it has."""

    view: MediaView
    original_size: int | None
    thumbnails: tuple[int, ...] = ()


@dataclass(frozen=True)
class MediaHits:
    """A page of one patient's media; ``patient_id`` is None when no patient matched."""

    patient_id: str | None
    items: list[MediaItem] = field(default_factory=list)
    next_cursor: str | None = None


class FhirService:
    def __init__(self, db: Database, media: MediaService, patients: PatientService) -> None:
        self.db = db
        self.media = media
        self.patients = patients

    async def _renditions(self, media_ids: list[str], tenant_id: str) -> dict[str, dict[str, int]]:
        if not media_ids:
            return {}
        query = select(MediaBlob.media_id, MediaBlob.rendition, MediaBlob.plain_size).where(
            MediaBlob.media_id.in_(media_ids), MediaBlob.tenant_id == tenant_id
        )
        found: dict[str, dict[str, int]] = {}
        async with self.db.session() as session:
            for media_id, rendition, size in (await session.execute(query)).all():
                found.setdefault(media_id, {})[rendition] = size
        return found

    def _item(self, view: MediaView, renditions: dict[str, int]) -> MediaItem:
        thumbs = tuple(sorted(_THUMB_SIZES[r] for r in renditions if r in _THUMB_SIZES))
        return MediaItem(view=view, original_size=renditions.get(ORIGINAL), thumbnails=thumbs)

    async def read_media(self, actor: Actor, media_id: str) -> MediaItem:
        view = await self.media.get(actor, media_id)  # tenant check, 404/410, audit "media.read"
        renditions = await self._renditions([view.id], actor.tenant_id)
        return self._item(view, renditions.get(view.id, {}))

    async def media_of_patient(self, actor: Actor, patient_id: str, *, cursor: str | None, limit: int) -> MediaHits:
        page = await self.media.page(actor, patient_id, cursor=cursor, limit=limit, phase=None, treatment_id=None)
        renditions = await self._renditions([v.id for v in page.items], actor.tenant_id)
        items = [self._item(v, renditions.get(v.id, {})) for v in page.items]
        return MediaHits(patient_id=patient_id, items=items, next_cursor=page.next_cursor)

    async def media_by_identifier(self, actor: Actor, value: str, *, limit: int) -> MediaHits:
        """The media of the patient whose external_ref is ``value`` (the blind-index lookup
        of ``GET /v1/patients?external_ref=``, audited as ``patient.find``)."""
        found = await self.patients.find(actor, value)
        if not found:
            return MediaHits(patient_id=None)
        return await self.media_of_patient(actor, found[0].id, cursor=None, limit=limit)

    async def read_patient(self, actor: Actor, patient_id: str) -> PatientView:
        return await self.patients.get(actor, patient_id)  # tenant check, 404/410, audit "patient.read"

    async def binary(self, actor: Actor, media_id: str, *, if_none_match: Iterable[str] | None = None) -> Content:
        """The stripped original, through the ``/v1/media/{id}/content`` read path and its
        audit (a matching tag: ``not_modified``, audited as such, as there)."""
        return await self.media.content(actor, media_id, rendition=ORIGINAL, action="media.content",
                                        if_none_match=if_none_match)

    async def read_all(self, content: Content) -> bytes:
        return await self.media.read_all(content)

    async def stream(self, content: Content, start: int, end: int) -> AsyncIterator[bytes]:
        return await self.media.stream(content, start, end)
