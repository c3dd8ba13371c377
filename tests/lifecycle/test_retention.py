"""Retention: durations parsed strictly, patients placed at chosen clock values (dates
set in the database) swept exactly per the rules, dry runs that change nothing, held
patients that survive, the limits of a real sweep and the reviewed-dry-run rule."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import update

from tests.lifecycle.support import Api, drain
from vault.consent.models import ConsentRecord
from vault.lifecycle.models import RetentionPolicy
from vault.media.models import Media
from vault.patients.models import Patient
from vault.treatments.models import Treatment
from vault.lifecycle.durations import Duration
from vault.lifecycle.retention import Clocks, Rule, due_reasons

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text,parts", [("P7Y", (7, 0, 0)), ("P24M", (0, 24, 0)), ("P3Y6M", (3, 6, 0)), ("P90D", (0, 0, 90)),
                                        ("P1Y2M3D", (1, 2, 3))])
def test_durations_parse(text, parts):
    d = Duration.parse(text)
    assert (d.years, d.months, d.days) == parts and str(d) == text


@pytest.mark.parametrize("text", ["", "P", "7Y", "P7y", "P1W", "PT1H", "P1.5Y", "P-1Y", "P0D", "P0Y0M", "P1Y ", " P1Y",
                                  "P1D2M", "P201Y", "P١Y", "P1Y\n"])
def test_durations_refuse_anything_else(text):
    with pytest.raises(ValueError):
        Duration.parse(text)


@pytest.mark.parametrize("start,text,expected", [
    (datetime(2019, 1, 31, tzinfo=UTC), "P1M", datetime(2019, 2, 28, tzinfo=UTC)),
    (datetime(2020, 2, 29, tzinfo=UTC), "P1Y", datetime(2021, 2, 28, tzinfo=UTC)),
    (datetime(2019, 11, 22, 12, tzinfo=UTC), "P7Y", datetime(2026, 11, 22, 12, tzinfo=UTC)),
    (datetime(2024, 11, 30, tzinfo=UTC), "P24M", datetime(2026, 11, 30, tzinfo=UTC)),
    (datetime(2026, 12, 31, tzinfo=UTC), "P1D", datetime(2027, 1, 1, tzinfo=UTC)),
])
def test_durations_add_on_the_calendar(start, text, expected):
    assert Duration.parse(text).after(start) == expected


def test_every_rule_must_say_due():
    rules = [Rule("last_treatment", Duration.parse("P7Y")), Rule("last_activity", Duration.parse("P24M"))]
    old = datetime(2018, 1, 1, tzinfo=UTC)
    due = Clocks("p", last_treatment=old, last_upload=old, last_consent=None, last_contact=old)
    assert [r.clock for r in due_reasons(rules, due, NOW)] == ["last_treatment", "last_activity"]
    recent_contact = Clocks("p", last_treatment=old, last_upload=old, last_consent=None, last_contact=NOW - timedelta(days=30))
    assert due_reasons(rules, recent_contact, NOW) is None
    never_treated = Clocks("p", last_treatment=None, last_upload=old, last_consent=None, last_contact=old)
    assert due_reasons(rules, never_treated, NOW) is None
    assert due_reasons([], due, NOW) is None


async def _place(api: Api, *, treated: date | None, contact: datetime, upload: datetime | None = None,
                 consent: datetime | None = None) -> str:
    """A patient whose clocks read exactly these values."""
    pid = await api.patient()
    if treated is not None:
        await _set(api, Treatment, await api.treatment(pid), performed_on=treated)
    if upload is not None:
        await _set(api, Media, await api.photo(pid), created_at=upload)
    if consent is not None:
        await _set(api, ConsentRecord, await api.consent(pid), recorded_at=consent)
    await _set(api, Patient, pid, updated_at=contact)
    return pid


async def _set(api: Api, model, row_id: str, **values) -> None:
    async with api.rt.db.transaction() as session:
        await session.execute(update(model).where(model.id == row_id).values(**values))


async def _policy(api: Api, rules: list[dict], *, settled: bool = True) -> None:
    await api.json("PUT", "/v1/retention-policy", json={"rules": rules})
    if settled:  # older than the 24 h a new policy waits
        async with api.rt.db.transaction() as session:
            await session.execute(update(RetentionPolicy).where(RetentionPolicy.tenant_id == api.clinic.id)
                                  .values(updated_at=datetime.now(UTC) - timedelta(days=2)))


async def _status(api: Api, pid: str) -> int:
    resp, _ = await api.call("GET", f"/v1/patients/{pid}", role="records")
    return resp.status


async def test_policy_is_validated_and_read_by_admin_and_dpo(api: Api):
    assert (await api.json("GET", "/v1/retention-policy", role="admin"))["rules"] == []
    for bad in ([{"clock": "last_visit", "erase_after": "P1Y"}], [{"clock": "last_contact", "erase_after": "P1W"}],
                [{"clock": "last_contact", "erase_after": "P0D"}],
                [{"clock": "last_contact", "erase_after": "P1Y"}, {"clock": "last_contact", "erase_after": "P2Y"}]):
        await api.call("PUT", "/v1/retention-policy", json={"rules": bad}, status=422)
    rules = [{"clock": "last_treatment", "erase_after": "P7Y"}, {"clock": "last_activity", "erase_after": "P24M"}]
    written = await api.json("PUT", "/v1/retention-policy", json={"rules": rules})
    assert written["rules"] == rules
    assert (await api.json("GET", "/v1/retention-policy", role="admin"))["rules"] == rules
    await api.call("PUT", "/v1/retention-policy", role="admin", json={"rules": []}, status=403)


async def test_sweep_follows_the_rules_exactly(api: Api):
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=365 * 9)
    due_all = await _place(api, treated=date(now.year - 8, 1, 1), contact=long_ago, upload=long_ago, consent=long_ago)
    recent_treatment = await _place(api, treated=date(now.year - 2, 1, 1), contact=long_ago)
    recent_upload = await _place(api, treated=date(now.year - 8, 1, 1), contact=long_ago, upload=now - timedelta(days=200))
    recent_consent = await _place(api, treated=date(now.year - 8, 1, 1), contact=long_ago, consent=now - timedelta(days=30))
    recent_contact = await _place(api, treated=date(now.year - 8, 1, 1), contact=now - timedelta(days=100))
    never_treated = await _place(api, treated=None, contact=long_ago)
    held = await _place(api, treated=date(now.year - 8, 1, 1), contact=long_ago)
    await api.json("PUT", f"/v1/patients/{held}/legal-hold", json={"reason": "claim pending"})
    await _set(api, Patient, held, updated_at=long_ago)
    await _policy(api, [{"clock": "last_treatment", "erase_after": "P7Y"}, {"clock": "last_activity", "erase_after": "P24M"}])

    dry = await api.json("POST", "/v1/retention/sweep", json={})
    assert dry["dry_run"] is True
    assert [d["patient_id"] for d in dry["due"]] == [due_all]
    assert [r["clock"] for r in dry["due"][0]["reasons"]] == ["last_treatment", "last_activity"]
    assert dry["blocked_without_review"] is None
    # A dry run changes nothing.
    for pid in (due_all, recent_treatment, recent_upload, recent_consent, recent_contact, never_treated, held):
        assert await _status(api, pid) == 200

    real = await api.json("POST", "/v1/retention/sweep", json={"dry_run": False})
    assert [e["patient_id"] for e in real["erased"]] == [due_all]
    assert await _status(api, due_all) == 410
    for pid in (recent_treatment, recent_upload, recent_consent, recent_contact, never_treated, held):
        assert await _status(api, pid) == 200
    receipt = real["erased"][0]["receipt_id"]
    signed = await api.json("POST", f"/v1/patients/{due_all}/erasure", json={"reason": "again"})
    assert signed["receipt"]["receipt_id"] == receipt

    # The held patient is due once the hold is lifted, never before.
    await api.json("DELETE", f"/v1/patients/{held}/legal-hold")
    await _set(api, Patient, held, updated_at=long_ago)
    again = await api.json("POST", "/v1/retention/sweep", json={})
    assert [d["patient_id"] for d in again["due"]] == [held]


async def test_no_rules_erase_nobody(api: Api):
    pid = await _place(api, treated=date(2000, 1, 1), contact=datetime(2000, 1, 1, tzinfo=UTC))
    await _policy(api, [])
    assert (await api.json("POST", "/v1/retention/sweep", json={}))["due"] == []
    assert (await api.json("POST", "/v1/retention/sweep", json={"dry_run": False}))["erased"] == []
    assert await _status(api, pid) == 200


async def test_a_real_sweep_over_the_limit_needs_a_review(api: Api):
    limit = api.rt.settings.retention_max_erasures
    old = datetime(2010, 1, 1, tzinfo=UTC)
    patients = [await _place(api, treated=None, contact=old) for _ in range(limit + 2)]
    await _policy(api, [{"clock": "last_contact", "erase_after": "P3Y"}])

    resp, body = await api.call("POST", "/v1/retention/sweep", json={"dry_run": False}, status=409)
    error = json.loads(body)
    assert error["error"] == "retention_blocked"
    assert error["details"] == {"reason": "over_limit", "due": limit + 2, "limit": limit}
    assert [await _status(api, p) for p in patients] == [200] * len(patients)

    dry = await api.json("POST", "/v1/retention/sweep", json={})
    assert dry["blocked_without_review"]["reason"] == "over_limit"
    # A patient contacted after the review is no longer due and is spared.
    await _set(api, Patient, patients[0], updated_at=datetime.now(UTC))
    late = await _place(api, treated=None, contact=old)  # due now, but not listed by the review
    real = await api.json("POST", "/v1/retention/sweep", json={"dry_run": False, "review_id": dry["id"]})
    assert sorted(e["patient_id"] for e in real["erased"]) == sorted(patients[1:])
    assert await _status(api, patients[0]) == 200 and await _status(api, late) == 200
    # A review acts once.
    resp, body = await api.call("POST", "/v1/retention/sweep", json={"dry_run": False, "review_id": dry["id"]}, status=409)
    assert json.loads(body)["details"]["reason"] == "review_used"


async def test_a_new_policy_waits_24_hours_unless_reviewed(api: Api):
    pid = await _place(api, treated=None, contact=datetime(2010, 1, 1, tzinfo=UTC))
    await _policy(api, [{"clock": "last_contact", "erase_after": "P3Y"}], settled=False)
    resp, body = await api.call("POST", "/v1/retention/sweep", json={"dry_run": False}, status=409)
    assert json.loads(body)["details"]["reason"] == "policy_recently_changed"
    assert await _status(api, pid) == 200
    dry = await api.json("POST", "/v1/retention/sweep", json={})
    # A dry run under an older policy does not authorise acting on a newer one.
    await _policy(api, [{"clock": "last_contact", "erase_after": "P2Y"}], settled=False)
    resp, body = await api.call("POST", "/v1/retention/sweep", json={"dry_run": False, "review_id": dry["id"]}, status=409)
    assert json.loads(body)["details"]["reason"] == "review_outdated"
    dry = await api.json("POST", "/v1/retention/sweep", json={})
    real = await api.json("POST", "/v1/retention/sweep", json={"dry_run": False, "review_id": dry["id"]})
    assert [e["patient_id"] for e in real["erased"]] == [pid]


async def test_review_ids_are_checked(api: Api, other_api: Api):
    await _policy(other_api, [{"clock": "last_contact", "erase_after": "P3Y"}])
    foreign = await other_api.json("POST", "/v1/retention/sweep", json={})
    await api.call("POST", "/v1/retention/sweep", json={"dry_run": False, "review_id": foreign["id"]}, status=404)
    await api.call("POST", "/v1/retention/sweep", json={"dry_run": True, "review_id": foreign["id"]}, status=422)


async def test_the_periodic_sweep_erases_only_within_the_limits(api: Api, other_api: Api):
    old = datetime(2010, 1, 1, tzinfo=UTC)
    few = [await _place(api, treated=None, contact=old) for _ in range(2)]
    await _policy(api, [{"clock": "last_contact", "erase_after": "P3Y"}])
    limit = other_api.rt.settings.retention_max_erasures
    many = [await _place(other_api, treated=None, contact=old) for _ in range(limit + 1)]
    await _policy(other_api, [{"clock": "last_contact", "erase_after": "P3Y"}])

    from vault.jobs import enqueue

    async with api.rt.db.transaction() as s:
        await enqueue(s, "retention.sweep", {"period_start": "test"})
    await drain(api.rt, "retention.sweep")
    assert [await _status(api, p) for p in few] == [410, 410]
    assert [await _status(other_api, p) for p in many] == [200] * len(many)
    entries = await other_api.json("GET", "/v1/audit", params={"action": "retention.sweep"})
    assert [e["outcome"] for e in entries["items"]] == ["over_limit"]


async def test_sweep_progress_follows_erasures_then_their_clean_up(api: Api, other_api: Api):
    """GET /v1/retention/sweeps/{id}: a real sweep's erasures, then its clean-up jobs (what
    the app's progress bar shows); another tenant's sweep or a dry run is 404; audited."""
    old = datetime(2010, 1, 1, tzinfo=UTC)
    patients = [await _place(api, treated=None, contact=old, upload=old) for _ in range(2)]
    await _policy(api, [{"clock": "last_contact", "erase_after": "P3Y"}])
    dry = await api.json("POST", "/v1/retention/sweep", json={})
    real = await api.json("POST", "/v1/retention/sweep", json={"dry_run": False, "review_id": dry["id"]})
    assert sorted(e["patient_id"] for e in real["erased"]) == sorted(patients)
    path = f"/v1/retention/sweeps/{real['id']}"
    before = await api.json("GET", path)
    assert {k: before[k] for k in ("status", "due", "erased", "skipped", "cleaned_up", "failed", "progress")} == {
        "status": "cleaning_up", "due": 2, "erased": 2, "skipped": 0, "cleaned_up": 0, "failed": 0, "progress": 0.5}
    await drain(api.rt, "lifecycle.purge_patient")
    after = await api.json("GET", path)
    assert (after["status"], after["cleaned_up"], after["progress"]) == ("done", 2, 1.0)
    await api.call("GET", f"/v1/retention/sweeps/{dry['id']}", status=404)  # a dry run has no progress
    await other_api.call("GET", path, status=404)
    await api.call("GET", path, role="admin", status=403)
    entries = (await api.json("GET", "/v1/audit?action=retention.sweep.read", role="auditor"))["items"]
    assert sum(e["targets"].get("sweep_id") == real["id"] for e in entries) == 2


def test_sweep_progress_while_erasing_counts_every_listed_patient():
    """Before the sweep has gone through its list, each listed patient is two steps away
    (erased, cleaned up) and nobody is counted as skipped yet."""
    from vault.lifecycle.models import RetentionSweep
    from vault.lifecycle.retention import SWEEP_FINISHED, SWEEP_RUNNING, sweep_progress

    due = json.dumps([{"patient_id": f"{i:032x}", "reasons": []} for i in range(4)])
    row = RetentionSweep(id="s" * 32, due=due, outcome=SWEEP_RUNNING, created_at=datetime(2026, 12, 5, tzinfo=UTC))
    erasing = sweep_progress(row, erased=2, waiting=1, failed=0)
    assert (erasing.status, erasing.skipped, erasing.cleaned_up, erasing.progress) == ("erasing", None, 1, 0.375)
    row.outcome = SWEEP_FINISHED
    stopped = sweep_progress(row, erased=3, waiting=0, failed=1)
    assert (stopped.status, stopped.skipped, stopped.cleaned_up, stopped.progress) == ("failed", 1, 2, 1.0)
