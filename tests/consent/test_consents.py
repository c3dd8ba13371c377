"""Consent records over HTTP: append-only events, scopes owned by the patient of the path,
sealed notes and evidence, history, withdrawal with its recall list."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from tests.consent.conftest import plain_jpeg
from vault.appkeys import RUNTIME, SETTINGS
from vault.audit.models import AuditEntry
from vault.consent.models import ConsentRecord

NOTE = "Patient Hilda Example signed at front desk"


FORM_MARKER = b"LeakConsentForm Hilda Example"


def _pdf() -> bytes:
    """A PDF whose bytes carry a marker (no compression), to grep storage for."""
    return b"%PDF-1.4\n%" + FORM_MARKER + b"\n" + bytes(range(256)) * 64 + b"\n%%EOF\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _token_id(client, clinic, role: str) -> str:
    tokens = await client.server.app[RUNTIME].tenants.tokens(clinic.slug)
    return next(t.id for t in tokens if t.role == role)


async def test_record_read_history_with_sealed_notes_and_evidence(api, client, clinic, tmp_path):
    pid = await api.patient()
    form = _pdf()
    expires = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    made = await api.consent(pid, role="practitioner", purposes=["social_media", "education"], identifiable=False,
                             expires_at=expires, notes=NOTE, evidence={"content_type": "application/pdf", "data": _b64(form)})
    assert made["kind"] == "grant" and made["scope"] == "patient" and made["purposes"] == ["education", "social_media"]
    assert made["identifiable"] is False and made["notes"] == NOTE
    assert made["evidence"] == {"mime": "application/pdf", "size": len(form)}
    assert made["recorded_by"] == await _token_id(client, clinic, "practitioner")

    resp = await client.get(f"/v1/patients/{pid}/consents", headers=clinic.auth("dpo"))
    history = (await resp.json())["items"]
    assert [e["id"] for e in history] == [made["id"]] and history[0]["withdrawn_purposes"] == []

    resp = await client.get(f"/v1/consents/{made['id']}/evidence", headers=clinic.auth("dpo"))
    assert resp.status == 200 and resp.content_type == "application/pdf" and await resp.read() == form

    # Neither the notes nor the form are stored in the clear anywhere.
    async with client.server.app[RUNTIME].db.session() as session:
        row = (await session.execute(select(ConsentRecord).where(ConsentRecord.id == made["id"]))).scalar_one()
    assert NOTE.encode() not in row.notes
    stored = [p.read_bytes() for p in client.server.app[SETTINGS].data_dir.rglob("*") if p.is_file()]
    assert stored and not any(FORM_MARKER in data for data in stored)


async def test_scopes_must_belong_to_the_patient_of_the_path(api, other_api):
    pid, other_pid = await api.patient(), await api.patient()
    mine, theirs = await api.photo(pid), await api.photo(other_pid)
    foreign_tenant = await other_api.photo(await other_api.patient())
    treatment, other_treatment = await api.treatment(pid), await api.treatment(other_pid)

    listed = await api.consent(pid, media_ids=[mine["id"]])
    assert listed["scope"] == "media" and listed["media_ids"] == [mine["id"]]
    assert (await api.consent(pid, treatment_id=treatment))["scope"] == "treatment"
    for body in ({"media_ids": [mine["id"], theirs["id"]]}, {"media_ids": [foreign_tenant["id"]]},
                 {"treatment_id": other_treatment}):
        refused = await api.consent(pid, status=404, **body)
        assert refused["error"] == "not_found"
        assert theirs["id"] not in str(refused) and foreign_tenant["id"] not in str(refused)
    await api.consent(pid, status=422, media_ids=[mine["id"]], treatment_id=treatment)
    await api.consent(pid, status=422, purposes=["advertising"])
    await api.consent(pid, status=422, purposes=[])
    await api.consent(pid, status=422, expires_at=(datetime.now(UTC) - timedelta(minutes=1)).isoformat())
    await api.consent(pid, status=422, expires_at="2030-01-01T00:00:00")  # no time zone
    # Another tenant's patient is 404 and nothing is recorded.
    await other_api.consent(pid, status=404)


async def test_evidence_must_be_what_it_claims(api):
    pid = await api.patient()
    not_pdf = {"content_type": "application/pdf", "data": _b64(plain_jpeg())}
    assert (await api.consent(pid, status=415, evidence=not_pdf))["error"] == "unsupported_media_type"
    await api.consent(pid, status=422, evidence={"content_type": "application/pdf", "data": "%%%not base64"})
    await api.consent(pid, status=422, evidence={"content_type": "text/html", "data": _b64(b"<html>")})
    big = json.dumps({"purposes": ["education"], "identifiable": True,
                      "evidence": {"content_type": "application/pdf", "data": _b64(b"%PDF-" + bytes(8 * 1024 * 1024))}})
    resp = await api.client.post(f"/v1/patients/{pid}/consents", data=io.BytesIO(big.encode()),
                                 headers={**api.clinic.auth("dpo"), "Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["error"] == "too_large"
    # Just under the cap, over many TCP chunks, is accepted.
    form = _pdf() + bytes(6 * 1024 * 1024)
    fits = json.dumps({"purposes": ["education"], "identifiable": True,
                       "evidence": {"content_type": "application/pdf", "data": _b64(form)}})
    resp = await api.client.post(f"/v1/patients/{pid}/consents", data=io.BytesIO(fits.encode()),
                                 headers={**api.clinic.auth("dpo"), "Content-Type": "application/json"})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["evidence"]["size"] == len(form)


async def test_marketing_and_other_tenants_cannot_touch_consents(api, client, clinic, other_clinic):
    pid = await api.patient()
    made = await api.consent(pid)
    for method, path in (("POST", f"/v1/patients/{pid}/consents"), ("GET", f"/v1/patients/{pid}/consents"),
                         ("POST", f"/v1/consents/{made['id']}/withdraw"), ("GET", f"/v1/consents/{made['id']}/evidence")):
        resp = await client.request(method, path, json={"purposes": ["education"], "identifiable": True} if "patients" in path and method == "POST" else None,
                                    headers=clinic.auth("marketing"))
        assert resp.status == 403, (method, path)
        resp = await client.request(method, path, json={"purposes": ["education"], "identifiable": True} if "patients" in path and method == "POST" else None,
                                    headers=other_clinic.auth("dpo"))
        assert resp.status == 404, (method, path)
    assert len((await (await client.get(f"/v1/patients/{pid}/consents", headers=clinic.auth("dpo"))).json())["items"]) == 1


async def test_withdrawal_is_a_new_event_and_returns_the_recall_list(api, client, clinic):
    pid = await api.patient()
    first, second = await api.photo(pid), await api.photo(pid)
    grant = await api.consent(pid, purposes=["education", "social_media"])
    edu = await api.release(first["id"], recipient="Dermatology congress 2026")
    social = await api.release(second["id"], purpose="social_media", recipient="Clinic Instagram")

    result = await api.withdraw(grant["id"], purposes=["education"], notes="by phone")
    withdrawal = result["withdrawal"]
    assert withdrawal["kind"] == "withdrawal" and withdrawal["withdraws_id"] == grant["id"] and withdrawal["purposes"] == ["education"]
    assert [(r["id"], r["purpose"], r["recipient"], r["media_id"]) for r in result["recall"]] == [
        (edu["id"], "education", "Dermatology congress 2026", first["id"])]
    recalled = result["recall"][0]
    assert recalled["released_by"] == await _token_id(client, clinic, "marketing") and recalled["recalled_at"]

    # The remaining purpose goes next; the whole grant cannot be withdrawn twice.
    result = await api.withdraw(grant["id"])
    assert [r["id"] for r in result["recall"]] == [social["id"]]
    assert (await api.withdraw(grant["id"], status=409))["error"] == "conflict"
    assert (await api.withdraw(withdrawal["id"], status=409))["error"] == "conflict"

    history = (await (await client.get(f"/v1/patients/{pid}/consents", headers=clinic.auth("practitioner"))).json())["items"]
    assert [e["kind"] for e in history] == ["grant", "withdrawal", "withdrawal"]
    assert history[0]["withdrawn_purposes"] == ["education", "social_media"]

    async with client.server.app[RUNTIME].db.session() as session:
        actions = set((await session.execute(select(AuditEntry.action).where(AuditEntry.tenant_id == clinic.id))).scalars())
    assert {"consent.record", "consent.withdraw", "release.create", "consent.list"} <= actions
