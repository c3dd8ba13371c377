"""Background jobs as rows in the metadata database.

Domain code enqueues in its own transaction and never imports the runner::

    async with db.transaction() as session:
        media = ...                                  # the change
        await enqueue(session, "media.finish_video", {"media_id": media.id})

The handlers and the worker loop live in ``workers/``; see ``docs/jobs.md``.
"""

from vault.jobs.models import DEAD, DONE, QUEUED, RUNNING, STATES, Job, JobSchedule
from vault.jobs.queue import LeaseLost, enqueue

__all__ = ["DEAD", "DONE", "QUEUED", "RUNNING", "STATES", "Job", "JobSchedule", "LeaseLost", "enqueue"]
