"""Faces of a stored photo: the full-resolution search as a job, and its summary.

An upload answers after the quick search (a 640 px copy, one detector): its ``faces`` then
say ``pending``. The job ``media.search_faces`` (workers/jobs/faces.py) sends the stored
original to a decoder worker, which searches it whole at full resolution in four
orientations with two detector families (:mod:`vault.pipeline.faces_search`), and stores
the boxes (after the margin, in the displayed original's pixels), the detector set's
version and the state: ``searched``, or ``incomplete`` when a time or memory bound
stopped it or the worker failed on it (a person must review; never "no face"). Until the
state is ``searched`` the consent gate gives no de-identified release of the photo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keys.errors import KeyDestroyed
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.db import Database, utcnow
from vault.errors import DecoderBusy, DecoderFailed, Gone, MediaRejected, NotFound
from vault.jobs import enqueue
from vault.media.models import ORIGINAL, PHOTO, READY, Media, MediaBlob
from vault.media.processing import PhotoPipeline
from vault.media.video import Finish
from vault.sealed import SealedBlobs, SealedRef

SEARCH_JOB = "media.search_faces"
# The states, as vault.pipeline.faces_search names its answers (that module imports OpenCV
# and NumPy, which the server process leaves to the decoder workers: imported lazily below).
PENDING, SEARCHED, INCOMPLETE = "pending", "searched", "incomplete"
STATES = (PENDING, SEARCHED, INCOMPLETE)


@dataclass(frozen=True, slots=True)
class FaceDetection:
    """What the detectors say about one photo: ``state`` (``pending`` | ``searched`` |
    ``incomplete``), ``boxes`` ([x, y, w, h] in the displayed original's pixels, margin
    applied) and ``detector_version`` (e.g. ``yunet-2023mar+dlib-hog/1``)."""

    state: str
    boxes: tuple[tuple[int, int, int, int], ...]
    detector_version: str


def detection_summary(media: Media) -> FaceDetection:
    boxes = tuple((int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in json.loads(media.faces_boxes or "[]"))
    return FaceDetection(state=media.faces_state, boxes=boxes, detector_version=media.face_detector)


def grown_boxes(boxes: list[list[int]], width: int, height: int) -> list[list[int]]:
    """The quick search's boxes with the same margin as the full search's."""
    from vault.pipeline.faces_search import MARGIN, grow

    return [list(grow((b[0], b[1], b[2], b[3]), MARGIN, width, height)) for b in boxes]


async def enqueue_search(session: AsyncSession, media_id: str) -> None:
    """In the upload's transaction: the photo's full search runs once it is committed."""
    await enqueue(session, SEARCH_JOB, {"media_id": media_id}, dedupe_key=f"{SEARCH_JOB}:{media_id}")


class FaceSearches:
    """The job's body: search a ``pending`` photo and store what was found."""

    def __init__(self, db: Database, audit: AuditLog, sealed: SealedBlobs, pipeline: PhotoPipeline) -> None:
        self.db, self.audit, self.sealed, self.pipeline = db, audit, sealed, pipeline

    async def run(self, media_id: str, *, job_id: str, last_attempt: bool, finish: Finish) -> None:
        async with self.db.session() as session:
            media = await session.get(Media, media_id)
            blob = (await session.execute(
                select(MediaBlob).where(MediaBlob.media_id == media_id, MediaBlob.rendition == ORIGINAL))).scalar_one_or_none()
        if media is None or media.kind != PHOTO or media.status != READY or media.faces_state != PENDING or blob is None:
            return  # searched already, deleted, or erased: nothing to do
        ref = SealedRef(id=blob.id, tenant_id=blob.tenant_id, patient_id=blob.patient_id, plain_size=blob.plain_size)
        try:
            data = await self.sealed.read(ref)
        except (KeyDestroyed, NotFound, Gone):
            return  # erased or deleted meanwhile
        boxes: list[list[int]] = []
        detector = media.face_detector
        try:
            found = await self.pipeline.search_faces(data, width=media.width or 0, height=media.height or 0)
            state, boxes, detector = found.state, found.boxes, found.detector
        except DecoderBusy:
            if not last_attempt:
                raise  # the pool is full now: retried later
            state = INCOMPLETE
        except (DecoderFailed, MediaRejected):
            state = INCOMPLETE  # the worker died, ran out of time or memory on it: a person reviews
        finally:
            del data
        await self._store(media_id, state=state, boxes=boxes, detector=detector, job_id=job_id, finish=finish)

    async def give_up(self, media_id: str, *, job_id: str, finish: Finish) -> None:
        """The dead path: the photo stays flagged for a person's review (``incomplete``)."""
        await self._store(media_id, state=INCOMPLETE, boxes=[], detector=None, job_id=job_id, finish=finish)

    async def _store(self, media_id: str, *, state: str, boxes: list[list[int]], detector: str | None,
                     job_id: str, finish: Finish) -> None:
        async with self.db.transaction() as session:
            await finish(session)  # fenced first, as JobContext.transaction() does
            row = await session.get(Media, media_id, with_for_update=True)
            if row is None or row.status != READY or row.faces_state != PENDING:
                return  # deleted or erased meanwhile, or stored already
            from vault.pipeline.faces_search import merge

            # The quick search's boxes stay: every box any pass found is filled.
            every = [(float(b[0]), float(b[1]), float(b[2]), float(b[3]))
                     for b in [*json.loads(row.faces_boxes or "[]"), *boxes]]
            merged = [[round(v) for v in box] for box in merge(every)]
            row.faces_boxes = json.dumps(merged)
            row.faces_count = len(merged)
            row.faces_state = state
            if detector:
                row.face_detector = detector[:32]
            if state == SEARCHED:
                row.faces_detected, row.faces_assumed = bool(merged), False
            else:  # a face may be where the search did not reach: flagged, needs a person
                row.faces_detected, row.faces_assumed = True, True
            row.updated_at = utcnow()
            actor = Actor(row.tenant_id, "job", "system", job_id)
            await self.audit.append(session, AuditEvent.of(actor, "media.faces_searched", patient_id=row.patient_id,
                                                           media_id=media_id, state=state))
