"""The operators' view of the queue (``vault jobs list``): counts and recent dead jobs.

Only ids, kinds, counts, times and the stored error summaries are shown; payloads
are never printed.
"""

from __future__ import annotations

from vault.db import Database
from vault.jobs.models import STATES
from vault.jobs.queue import recent_dead, stats, stats_by_kind


async def job_report(db: Database, *, dead_limit: int = 10) -> str:
    async with db.session() as session:
        totals = await stats(session)
        by_kind = await stats_by_kind(session)
        dead = await recent_dead(session, limit=dead_limit)
    lines = [f"{'state':<10}{'jobs':>8}"]
    lines += [f"{state:<10}{totals[state]:>8}" for state in STATES]
    if by_kind:
        width = max(len("kind"), *(len(kind) for kind in by_kind)) + 2
        lines += ["", f"{'kind':<{width}}" + "".join(f"{state:>9}" for state in STATES)]
        lines += [f"{kind:<{width}}" + "".join(f"{counts[state]:>9}" for state in STATES) for kind, counts in by_kind.items()]
    lines += ["", f"recent dead jobs ({len(dead)}):" if dead else "no dead jobs"]
    for job in dead:
        when = job.finished_at.isoformat(timespec="seconds") if job.finished_at else "-"
        lines.append(f"  {job.id}  {job.kind}  attempts {job.attempts}  at {when}  {job.last_error or ''}".rstrip())
    return "\n".join(lines)
