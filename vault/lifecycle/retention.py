"""Retention policies and sweeps.

A tenant's policy is a list of rules ``{"clock", "erase_after"}``. A patient is *due*
when EVERY rule says so (a policy with no rules erases nobody), never while a legal
hold stands or an erasure is already under way. The clocks:

- ``last_treatment``: the latest ``performed_on`` of the patient's treatments (none: the
  rule cannot say "due", so the patient is not due);
- ``last_contact``: the patient record's ``updated_at`` — set when the record is created
  and on every rectification (PATCH), the clinic's contacts with the patient;
- ``last_activity``: the latest of an upload, a consent event, a treatment date and the
  last contact.

Safety (one mistyped duration or stolen token must not shred a clinic): a sweep is a
dry run unless told otherwise, and a real sweep — the periodic job or an explicit call
— acts only if the policy is older than 24 h and at most ``VAULT_RETENTION_MAX_ERASURES``
patients are due; otherwise it erases nobody. Naming a reviewed dry run (``review_id``:
a dry run of this tenant under the current policy, at most 7 days old, not used before)
lifts both limits, and then only patients that run listed and that are still due are
erased.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.consent.models import ConsentRecord
from vault.db import Database, new_id, rowcount, utcnow
from vault.errors import Conflict, LegalHold as LegalHoldError, NotFound, PatientErased, ValidationFailed
from vault.lifecycle.durations import Duration, start_of
from vault.jobs.models import DEAD, QUEUED, RUNNING, Job
from vault.lifecycle.erasure import PURGE_PATIENT, ErasureService, system_actor
from vault.lifecycle.models import BY_RETENTION, DONE, PENDING, ErasureRequest, LegalHold, RetentionPolicy, RetentionSweep
from vault.lifecycle.responses import (
    DryRunOut,
    DuePatientOut,
    DueReasonOut,
    ErasedPatientOut,
    RetentionPolicyOut,
    RetentionRuleOut,
    SkippedPatientOut,
    SweepProgressOut,
    SweepRunOut,
)
from vault.media.models import Media
from vault.patients.models import ERASED, Patient
from vault.treatments.models import Treatment

log = logging.getLogger("vault.lifecycle")

LAST_TREATMENT, LAST_ACTIVITY, LAST_CONTACT = "last_treatment", "last_activity", "last_contact"
CLOCKS = (LAST_TREATMENT, LAST_ACTIVITY, LAST_CONTACT)
MAX_RULES = 10
POLICY_SETTLE = timedelta(hours=24)
REVIEW_VALID = timedelta(days=7)
#: a real sweep's ``outcome`` while it erases, and once it has gone through its list
SWEEP_RUNNING, SWEEP_FINISHED = "running", "ok"
_PAGE = 1000


class RetentionBlocked(Conflict):
    code, default_message = "retention_blocked", "a real sweep needs the id of a reviewed dry run"


@dataclass(frozen=True, slots=True)
class Rule:
    clock: str
    erase_after: Duration

    @classmethod
    def parse(cls, raw: dict[str, str], index: int) -> Rule:
        if raw.get("clock") not in CLOCKS:
            raise ValidationFailed(details={"errors": [{"field": f"rules.{index}.clock", "problem": "unknown_clock",
                                                        "allowed": list(CLOCKS)}]})
        try:
            return cls(raw["clock"], Duration.parse(raw.get("erase_after", "")))
        except ValueError as exc:
            raise ValidationFailed(details={"errors": [{"field": f"rules.{index}.erase_after", "problem": str(exc)}]}) from None

    def as_dict(self) -> dict[str, str]:
        return {"clock": self.clock, "erase_after": str(self.erase_after)}


@dataclass(frozen=True, slots=True)
class Clocks:
    """One patient's clock readings (UTC datetimes, None when there is nothing to read)."""

    patient_id: str
    last_treatment: datetime | None
    last_upload: datetime | None
    last_consent: datetime | None
    last_contact: datetime | None

    def value(self, clock: str) -> datetime | None:
        if clock == LAST_TREATMENT:
            return self.last_treatment
        if clock == LAST_CONTACT:
            return self.last_contact
        readings = [v for v in (self.last_treatment, self.last_upload, self.last_consent, self.last_contact) if v is not None]
        return max(readings) if readings else None


def due_reasons(rules: Iterable[Rule], clocks: Clocks, now: datetime) -> list[DueReasonOut] | None:
    """Why the patient is due (one entry per rule), or None when any rule says no."""
    reasons = []
    for rule in rules:
        at = clocks.value(rule.clock)
        if at is None:
            return None
        due_since = rule.erase_after.after(at)
        if due_since > now:
            return None
        reasons.append(DueReasonOut(clock=rule.clock, at=at.isoformat(), erase_after=str(rule.erase_after),
                                    due_since=due_since.isoformat()))
    return reasons or None


def parse_rules(raw: list[dict[str, str]]) -> list[Rule]:
    if len(raw) > MAX_RULES:
        raise ValidationFailed(details={"errors": [{"field": "rules", "problem": "too_many", "max": MAX_RULES}]})
    rules = [Rule.parse(r, i) for i, r in enumerate(raw)]
    if len({r.clock for r in rules}) != len(rules):
        raise ValidationFailed(details={"errors": [{"field": "rules", "problem": "duplicate_clock"}]})
    return rules


class RetentionService:
    def __init__(self, *, db: Database, audit: AuditLog, erasure: ErasureService, max_erasures: int) -> None:
        self.db = db
        self.audit = audit
        self.erasure = erasure
        self.max_erasures = max_erasures

    # -- the policy ----------------------------------------------------------------------
    async def policy(self, actor: Actor) -> RetentionPolicyOut:
        async with self.db.session() as session:
            row = await session.get(RetentionPolicy, actor.tenant_id)
        await self.audit.record(AuditEvent.of(actor, "retention.policy.read"))
        return _policy_view(row)

    async def set_policy(self, actor: Actor, raw_rules: list[dict[str, str]]) -> RetentionPolicyOut:
        rules = parse_rules(raw_rules)
        async with self.db.transaction() as session:
            row = await session.get(RetentionPolicy, actor.tenant_id, with_for_update=True)
            if row is None:
                row = RetentionPolicy(tenant_id=actor.tenant_id)
                session.add(row)
            row.rules = json.dumps([r.as_dict() for r in rules])
            row.updated_by, row.updated_at = actor.token_id, utcnow()
            await session.flush()
            await self.audit.append(session, AuditEvent.of(actor, "retention.policy.write", rules=str(len(rules))))
        return _policy_view(row)

    # -- who is due ------------------------------------------------------------------------
    async def due(self, session: AsyncSession, tenant_id: str, rules: list[Rule], now: datetime) -> list[DuePatientOut]:
        if not rules:
            return []
        found: list[DuePatientOut] = []
        after = ""
        while True:
            page = await _clocks(session, tenant_id, after)
            for clocks in page:
                reasons = due_reasons(rules, clocks, now)
                if reasons is not None:
                    found.append(DuePatientOut(patient_id=clocks.patient_id, reasons=reasons))
            if len(page) < _PAGE:
                return found
            after = page[-1].patient_id

    # -- sweeps ----------------------------------------------------------------------------
    async def sweep(self, actor: Actor, *, dry_run: bool = True, review_id: str | None = None, origin: str = "api",
                    now: datetime | None = None) -> DryRunOut | SweepRunOut:
        now = now or utcnow()
        async with self.db.session() as session:
            policy = await session.get(RetentionPolicy, actor.tenant_id)
            rules = [Rule.parse(r, i) for i, r in enumerate(json.loads(policy.rules))] if policy else []
            due = await self.due(session, actor.tenant_id, rules, now)
            review = await self._review(session, actor, review_id, policy, now) if review_id else None
        blocked = self._blocked(policy, due, now)
        if dry_run:
            return await self._record_dry_run(actor, policy, due, blocked, now)
        if review is None and blocked is not None:
            await self.audit.record(AuditEvent.of(actor, "retention.sweep", outcome=blocked["reason"], due=str(len(due))))
            raise RetentionBlocked(details=blocked)
        if review is not None:
            listed = {d["patient_id"] for d in json.loads(review.due)}
            due = [d for d in due if d.patient_id in listed]
        if not due and origin == "periodic":
            return SweepRunOut(id=None, dry_run=False, review_id=None, erased=[], skipped=[])
        sweep_id = await self._start(actor, policy, due, review, origin, now)
        erased: list[ErasedPatientOut] = []
        skipped: list[SkippedPatientOut] = []
        for entry in due:
            try:
                signed = await self.erasure.erase(actor, entry.patient_id, reason=f"retention sweep {sweep_id}",
                                                  origin=BY_RETENTION, sweep_id=sweep_id)
            except (LegalHoldError, PatientErased, NotFound) as exc:
                skipped.append(SkippedPatientOut(patient_id=entry.patient_id, reason=exc.code))
                continue
            erased.append(ErasedPatientOut(patient_id=entry.patient_id, receipt_id=signed.receipt["receipt_id"]))
        async with self.db.transaction() as session:
            row = await session.get(RetentionSweep, sweep_id, with_for_update=True)
            assert row is not None, "committed by _start; sweeps are never deleted"
            row.erased = json.dumps([e.patient_id for e in erased])
            row.outcome = SWEEP_FINISHED
            await self.audit.append(session, AuditEvent.of(actor, "retention.sweep", sweep_id=sweep_id, review_id=review_id,
                                                           erased=str(len(erased)), skipped=str(len(skipped))))
        return SweepRunOut(id=sweep_id, dry_run=False, review_id=review_id, erased=erased, skipped=skipped)

    async def progress(self, actor: Actor, sweep_id: str) -> SweepProgressOut:
        """A real sweep of the actor's tenant: erasures so far, then the clean-up jobs."""
        async with self.db.session() as session:
            row = (await session.execute(select(RetentionSweep).where(
                RetentionSweep.id == sweep_id, RetentionSweep.tenant_id == actor.tenant_id,
                RetentionSweep.dry_run.is_(False)))).scalar_one_or_none()
            if row is None:
                raise NotFound("no such sweep")
            erased = list((await session.execute(select(ErasureRequest.patient_id).where(
                ErasureRequest.tenant_id == actor.tenant_id, ErasureRequest.sweep_id == row.id,
                ErasureRequest.state == DONE))).scalars())
            waiting, failed = await cleanup_counts(session, erased)
        await self.audit.record(AuditEvent.of(actor, "retention.sweep.read", sweep_id=row.id))
        return sweep_progress(row, erased=len(erased), waiting=waiting, failed=failed)

    def _blocked(self, policy: RetentionPolicy | None, due: list[DuePatientOut], now: datetime) -> dict[str, Any] | None:
        """Why a real sweep without a review would refuse to act (None: it would act)."""
        if policy is not None and now - policy.updated_at < POLICY_SETTLE and due:
            return {"reason": "policy_recently_changed", "acts_after": (policy.updated_at + POLICY_SETTLE).isoformat()}
        if len(due) > self.max_erasures:
            return {"reason": "over_limit", "due": len(due), "limit": self.max_erasures}
        return None

    async def _review(self, session: AsyncSession, actor: Actor, review_id: str, policy: RetentionPolicy | None,
                      now: datetime) -> RetentionSweep:
        review = (await session.execute(
            select(RetentionSweep).where(RetentionSweep.id == review_id, RetentionSweep.tenant_id == actor.tenant_id)
        )).scalar_one_or_none()
        if review is None or not review.dry_run:
            raise NotFound("no such dry run", details={"field": "review_id"})
        if review.used_by is not None:
            raise RetentionBlocked("this dry run was already acted on", details={"reason": "review_used"})
        if policy is None or review.policy_updated_at != policy.updated_at:
            raise RetentionBlocked("the policy changed after this dry run", details={"reason": "review_outdated"})
        if now - review.created_at > REVIEW_VALID:
            raise RetentionBlocked("this dry run is too old; run a new one", details={"reason": "review_expired"})
        return review

    async def _record_dry_run(self, actor: Actor, policy: RetentionPolicy | None, due: list[DuePatientOut],
                              blocked: dict[str, Any] | None, now: datetime) -> DryRunOut:
        row = RetentionSweep(id=new_id(), tenant_id=actor.tenant_id, dry_run=True, origin="api", due=_due_json(due),
                             outcome="dry_run", policy_updated_at=policy.updated_at if policy else None,
                             created_by=actor.token_id, created_at=now)
        async with self.db.transaction() as session:
            session.add(row)
            await session.flush()
            await self.audit.append(session, AuditEvent.of(actor, "retention.sweep.dry_run", sweep_id=row.id, due=str(len(due))))
        return DryRunOut(id=row.id, dry_run=True, due=due, created_at=now.isoformat(), policy=_policy_view(policy),
                         blocked_without_review=blocked)

    async def _start(self, actor: Actor, policy: RetentionPolicy | None, due: list[DuePatientOut],
                     review: RetentionSweep | None, origin: str, now: datetime) -> str:
        row = RetentionSweep(id=new_id(), tenant_id=actor.tenant_id, dry_run=False, origin=origin, due=_due_json(due),
                             outcome=SWEEP_RUNNING, review_id=review.id if review else None,
                             policy_updated_at=policy.updated_at if policy else None, created_by=actor.token_id, created_at=now)
        async with self.db.transaction() as session:
            if review is not None:
                # Claim the dry run once: two real sweeps naming it cannot both act.
                claimed = await session.execute(
                    update(RetentionSweep).where(RetentionSweep.id == review.id, RetentionSweep.used_by.is_(None))
                    .values(used_by=row.id)
                )
                if rowcount(claimed) != 1:
                    raise RetentionBlocked("this dry run was already acted on", details={"reason": "review_used"})
            session.add(row)
        return row.id

    async def sweep_all(self, *, request_id: str, tenants: Iterable[str]) -> dict[str, Any]:
        """The periodic job: a real sweep of every tenant with rules, within the limits."""
        outcome: dict[str, Any] = {}
        for tenant_id in tenants:
            async with self.db.session() as session:
                policy = await session.get(RetentionPolicy, tenant_id)
            if policy is None or not json.loads(policy.rules):
                continue
            actor = system_actor(tenant_id, "retention.sweep", request_id)
            try:
                result = await self.sweep(actor, dry_run=False, origin="periodic")
                assert isinstance(result, SweepRunOut), "a real sweep"
                outcome[tenant_id] = len(result.erased)
            except RetentionBlocked as exc:
                log.warning("retention sweep blocked", extra={"tenant_id": tenant_id, "reason": exc.details.get("reason")})
                outcome[tenant_id] = exc.details.get("reason")
        return outcome


async def _clocks(session: AsyncSession, tenant_id: str, after: str) -> list[Clocks]:
    held = exists().where(LegalHold.patient_id == Patient.id, LegalHold.lifted_at.is_(None))
    erasing = exists().where(ErasureRequest.patient_id == Patient.id, ErasureRequest.state == PENDING)
    last_treatment = select(func.max(Treatment.performed_on)).where(Treatment.patient_id == Patient.id).scalar_subquery()
    last_upload = select(func.max(Media.created_at)).where(Media.patient_id == Patient.id).scalar_subquery()
    last_consent = select(func.max(ConsentRecord.recorded_at)).where(ConsentRecord.patient_id == Patient.id).scalar_subquery()
    query = (
        select(Patient.id, Patient.updated_at, last_treatment.label("treated_on"), last_upload.label("uploaded_at"),
               last_consent.label("consented_at"))
        .where(Patient.tenant_id == tenant_id, Patient.status != ERASED, Patient.id > after, ~held, ~erasing)
        .order_by(Patient.id)
        .limit(_PAGE)
    )
    return [
        Clocks(patient_id=row.id, last_treatment=start_of(row.treated_on) if isinstance(row.treated_on, date) else None,
               last_upload=row.uploaded_at, last_consent=row.consented_at, last_contact=row.updated_at)
        for row in await session.execute(query)
    ]


async def cleanup_counts(session: AsyncSession, patient_ids: list[str]) -> tuple[int, int]:
    """Of these erased patients' clean-up jobs: how many are still to run, how many gave
    up. A finished job is done or already pruned (it is enqueued with the erasure)."""
    waiting = failed = 0
    for i in range(0, len(patient_ids), _PAGE):
        keys = [f"{PURGE_PATIENT}:{p}" for p in patient_ids[i:i + _PAGE]]
        for state, count in (await session.execute(select(Job.state, func.count()).where(
                Job.dedupe_key.in_(keys)).group_by(Job.state))).all():
            if state in (QUEUED, RUNNING):
                waiting += count
            elif state == DEAD:
                failed += count
    return waiting, failed


def sweep_progress(row: RetentionSweep, *, erased: int, waiting: int, failed: int) -> SweepProgressOut:
    due = len(json.loads(row.due))
    finished = row.outcome != SWEEP_RUNNING
    skipped = due - erased if finished else None
    cleaned = erased - waiting - failed
    # Two steps a patient: erased, then cleaned up; a skipped one has neither to do.
    steps = 2 * (erased if finished else due)
    progress = 1.0 if steps == 0 else round((erased + cleaned + failed) / steps, 4)
    status = ("erasing" if not finished else "cleaning_up" if waiting else "failed" if failed else "done")
    return SweepProgressOut(id=row.id, status=status, progress=progress, due=due, erased=erased, skipped=skipped,
                            cleaned_up=cleaned, failed=failed, created_at=row.created_at.isoformat())


def _policy_view(row: RetentionPolicy | None) -> RetentionPolicyOut:
    if row is None:
        return RetentionPolicyOut(rules=[], updated_at=None, updated_by=None, acts_after=None)
    return RetentionPolicyOut(
        rules=[RetentionRuleOut.model_validate(r) for r in json.loads(row.rules)],
        updated_at=row.updated_at.isoformat(),
        updated_by=row.updated_by,
        acts_after=(row.updated_at + POLICY_SETTLE).isoformat(),
    )


def _due_json(due: list[DuePatientOut]) -> str:
    """The due list as the sweeps table has always stored it (a review reads it back)."""
    return json.dumps([d.model_dump(mode="json") for d in due])
