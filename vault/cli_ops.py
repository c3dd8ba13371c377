"""Operator commands: ``vault tenant list``, ``vault jobs retry|discard JOB_ID``, and the
shred journal's line in ``vault doctor``."""

from __future__ import annotations

import argparse
import logging

from vault.cli_runtime import request_id, run_with_runtime
from vault.config import Settings

log = logging.getLogger("vault.operator")


def cmd_tenant_list(settings: Settings, args) -> int:
    """Slug, creation and live (not erased) patients per tenant: counts only, no patient data."""
    from sqlalchemy import func, select

    from vault.patients.models import ERASED, Patient

    async def action(rt):
        async with rt.db.session() as session:
            live = dict((await session.execute(
                select(Patient.tenant_id, func.count()).where(Patient.status != ERASED).group_by(Patient.tenant_id))).all())
        tenants = await rt.tenants.tenants()
        print(f"{'slug':<32} {'created':<26} {'live patients':>13}")
        for tenant in tenants:
            print(f"{tenant.slug:<32} {tenant.created_at.isoformat(timespec='seconds'):<26} {live.get(tenant.id, 0):>13}")
        print(f"{len(tenants)} tenants")

    return run_with_runtime(settings, action)


def _jobs_action(settings: Settings, args, verb: str) -> int:
    from vault.actor import Actor
    from vault.audit.service import AuditEvent
    from vault.jobs.operator import discard_dead, retry_dead

    async def action(rt):
        done = await (retry_dead if verb == "retry" else discard_dead)(rt.db, args.job_id)
        reason = args.reason or "no reason given"
        # An operator action: in the tenant's audit chain when the job names one, else the log.
        if done.tenant_id is not None:
            await rt.audit.record(AuditEvent.of(Actor.cli(done.tenant_id, request_id()), f"jobs.{verb}",
                                                job_id=done.id, kind=done.kind))
        log.warning("operator %s of a dead job", verb, extra={"job_id": done.id, "kind": done.kind})
        print(f"job {done.id} ({done.kind}) was dead after {done.attempts} attempts: {done.last_error or 'no error recorded'}")
        if verb == "retry":
            print(f"queued again from attempt 0 (reason: {reason}); its dead path already ran when it died, "
                  "so it may fail again if that undid its input")
        else:
            print(f"discarded (reason: {reason}); its dead path ran when it died and is not run again")

    return run_with_runtime(settings, action)


def cmd_jobs_retry(settings: Settings, args) -> int:
    return _jobs_action(settings, args, "retry")


def cmd_jobs_discard(settings: Settings, args) -> int:
    return _jobs_action(settings, args, "discard")


def journal_line(settings: Settings) -> tuple[bool, str]:
    """``vault doctor``'s line for the shred journal: writable where configured; none
    configured is reported (restores then need --accept-resurrection-risk), not failed."""
    from vault.backup.journal import journal_for

    journal = journal_for(settings)
    if journal is None and settings.shred_journal_s3:
        return True, f"ok    {'journal':<10} ok  S3 only (VAULT_SHRED_JOURNAL_S3)"
    if journal is None:
        return True, f"ok    {'journal':<10} none  VAULT_SHRED_JOURNAL is not set: a restore cannot re-shred later erasures"
    if not journal.writable():
        return False, f"FAIL  {'journal':<10} journal_unwritable  the shred journal (VAULT_SHRED_JOURNAL) cannot be written"
    return True, f"ok    {'journal':<10} ok"


def add_commands(tenant: argparse._SubParsersAction, jobs: argparse._SubParsersAction) -> None:
    tenant.add_parser("list", help="tenants: slug, created, live patients (no patient data)").set_defaults(
        func=cmd_tenant_list)
    for verb, func, text in (("retry", cmd_jobs_retry, "queue a dead job again from attempt 0"),
                             ("discard", cmd_jobs_discard, "delete a dead job (its dead path already ran)")):
        parser = jobs.add_parser(verb, help=text + "; only dead jobs")
        parser.add_argument("job_id")
        parser.add_argument("--reason", help="why (printed and logged with the action)")
        parser.set_defaults(func=func)
