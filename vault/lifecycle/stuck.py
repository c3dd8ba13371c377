"""Items left in an intermediate state with no live job to finish them.

A job's dead path runs right after the job is recorded dead, but a crash in between
(or a failing dead path) would leave, say, a video ``processing`` for ever with its
original — metadata and location included — never shredded. :func:`stuck_items`
finds such items by the state of the domain rows, not by the job table's history:
a video ``processing`` or an export ``pending``/``running`` whose finishing job (the
one job per item, by its dedupe key) is neither queued nor running. The periodic
``lifecycle.reconcile`` job runs the kind's dead path for each (idempotent).
"""

from __future__ import annotations

from sqlalchemy import and_, exists, select

from vault.db import Database
from vault.jobs.models import QUEUED, RUNNING, Job
from vault.lifecycle.exports import BUILD_EXPORT
from vault.lifecycle.models import EXPORT_PENDING, EXPORT_RUNNING, Export
from vault.media.models import PROCESSING, Media
from vault.media.video import FINISH_JOB

_LIMIT = 500  # per run; the next minute takes the rest


def _no_live_job(kind: str, item_id):
    # The finishing jobs are enqueued with dedupe_key "<kind>:<item id>" (one per item).
    live = and_(Job.dedupe_key == kind + ":" + item_id, Job.state.in_((QUEUED, RUNNING)))
    return ~exists().where(live)


async def stuck_items(db: Database) -> list[tuple[str, dict[str, str]]]:
    """``(job kind, payload)`` of every item whose job can no longer finish it."""
    async with db.session() as session:
        videos = (await session.execute(
            select(Media.id).where(Media.status == PROCESSING, _no_live_job(FINISH_JOB, Media.id)).limit(_LIMIT)
        )).scalars().all()
        exports = (await session.execute(
            select(Export.id).where(Export.status.in_((EXPORT_PENDING, EXPORT_RUNNING)),
                                    _no_live_job(BUILD_EXPORT, Export.id)).limit(_LIMIT)
        )).scalars().all()
    return [(FINISH_JOB, {"media_id": m}) for m in videos] + [(BUILD_EXPORT, {"export_id": e}) for e in exports]
